// Rounds: the rendezvous timeline. The round being formed (why it is not complete yet: who waits, who
// of the last round is missing, the restarts that caused it, timeouts), a Gantt of the rounds formed
// (waiting and last call, with the restarts that led to each), every round's figures and members, and
// the nodes (when each joined, its state now). Rounds and nodes come a page at a time.

import { cssColor } from "../charts.js";
import { card, el, fill, fillCards, pager, stateChip, table } from "../dom.js";
import { ago, clock, duration, int, seconds } from "../format.js";
import { pageKey } from "../api.js";
import { startPage } from "../shell.js";

const LIMIT = 25;
const KEPT = 500; // rounds the view keeps (torchrt/view/rendezvous.py KEEP_ROUNDS)
let roundsBack = 0; // rounds skipped from the newest (the table is newest first)
let nodesOffset = 0;

/** The rounds page (counted back from the newest) and the nodes page. */
function wantsOf(view) {
  const kept = Math.min((((view.snapshot || {}).rendezvous || {}).rounds_total) || 0, KEPT);
  const end = Math.max(0, kept - roundsBack);
  return [{ part: "rendezvous", kind: "rounds", offset: Math.max(0, end - LIMIT), limit: Math.min(LIMIT, end) || LIMIT },
          { part: "rendezvous", kind: "nodes", offset: nodesOffset, limit: LIMIT }];
}

const ctl = startPage({ wants: wantsOf, render });

const list = (listed) => (listed && listed.count ? `${listed.first.join(", ")}${listed.count > listed.first.length
  ? ` and ${listed.count - listed.first.length} more` : ""}` : "none");

function render(view) {
  const r = view.snapshot.rendezvous || {};
  const nodes = (r.nodes || {}).by_status || {};
  const current = r.current;
  fillCards(document.getElementById("cards"),
    card("Current round", current ? `#${current.round}` : "–", current
      ? `${current.world_size} nodes · ${current.reason || ""} · formed ${ago(current.completed_at, view.now)}` : "none formed yet"),
    card("Rounds formed", int(r.rounds_total), r.closed ? `closed${r.closed_by ? ` by ${r.closed_by}` : ""}` : "rendezvous open"),
    card("Nodes", int((r.nodes || {}).total), Object.entries(nodes).map(([k, v]) => `${v} ${k}`).join(" · ") || "none"),
    card("Job shape", r.min_nodes !== undefined ? `${r.min_nodes}–${r.max_nodes}` : "–", "nodes (min–max)"),
    card("Last round took", current ? seconds(current.total_s) : "–", current
      ? `waiting ${seconds(current.waiting_s)} · last call ${seconds(current.last_call_s)}` : ""));
  renderPending(view, r);
  const [roundsWant, nodesWant] = wantsOf(view);
  const roundsPage = view.pages.get(pageKey(roundsWant));
  if (roundsPage) {
    renderGantt(roundsPage.items, view);
    renderRounds(roundsPage);
  }
  const nodesPage = view.pages.get(pageKey(nodesWant));
  if (nodesPage) renderNodes(nodesPage, view);
}

function renderPending(view, r) {
  const p = r.pending;
  const box = document.getElementById("pending");
  if (!p) {
    fill(box, el("p", { class: "empty" }, r.closed ? "The rendezvous is closed: the job ended." : "No round is being formed: the current round stands."));
    return;
  }
  const missing = p.missing || {};
  const why = missing.count
    ? el("p", { class: "missing" }, `Not complete yet: ${missing.count} node${missing.count === 1 ? "" : "s"} of round ${r.current ? r.current.round : "?"} ` +
      `have not asked to rejoin: ${list(missing)}.`)
    : el("p", {}, `Waiting for enough nodes (at least ${r.min_nodes ?? "?"}); then a last call.`);
  fill(box, why, table([
    { label: "Round", cell: () => `#${p.round}` },
    { label: "Why", cell: () => p.reason || "–" },
    { label: "Started", cell: () => `${clock(p.started_at)} (${ago(p.started_at, view.now)})` },
    { label: "Waiting", cell: () => list(p.waiting) },
    { label: "Missing", cell: () => (missing.count ? el("span", { class: "missing" }, list(missing)) : "none") },
    { label: "Timeouts", num: true, cell: () => int(p.timeouts) },
  ], [p]), causes(p.causes || []));
}

function causes(items) {
  if (!items.length) return null;
  return el("div", {}, el("h3", {}, "Restarts that caused it"), table([
    { label: "Time", cell: (c) => clock(c.ts) },
    { label: "Node", cell: (c) => c.node },
    { label: "From round", num: true, cell: (c) => c.round ?? "–" },
    { label: "Reason", cell: (c) => c.reason || "–" },
  ], items));
}

function renderGantt(rounds, view) {
  const wrap = document.getElementById("gantt");
  let canvas = wrap.querySelector("canvas");
  if (!canvas) {
    canvas = el("canvas", { class: "timeline", role: "img" });
    wrap.append(canvas);
  }
  const timed = rounds.filter((x) => typeof x.completed_at === "number");
  canvas.setAttribute("aria-label", `${timed.length} rounds: ${timed.map((x) => `round ${x.round} took ${seconds(x.total_s)}`).join(", ")}`);
  canvas.dataset.rounds = String(timed.length);
  const width = Math.max(300, wrap.clientWidth);
  const rowH = 20;
  const height = Math.max(1, timed.length) * rowH + 22;
  const ratio = window.devicePixelRatio || 1;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  if (!timed.length) return;
  const t0 = Math.min(...timed.map((x) => x.started_at ?? x.completed_at - (x.total_s || 0)));
  const t1 = Math.max(view.now || 0, ...timed.map((x) => x.completed_at));
  const left = 70;
  const x = (t) => left + ((t - t0) / Math.max(1e-9, t1 - t0)) * (width - left - 10);
  ctx.font = "12px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  const [wait, call, text, muted, restart] = ["--chart-1", "--chart-3", "--text", "--muted", "--chart-4"].map(cssColor);
  timed.forEach((round, i) => {
    const y = i * rowH + 2;
    const start = round.started_at ?? round.completed_at - (round.total_s || 0);
    const lastCall = round.completed_at - (round.last_call_s || 0);
    ctx.fillStyle = muted;
    ctx.fillText(`#${round.round}`, 4, y + rowH / 2 - 1);
    ctx.fillStyle = wait;
    ctx.fillRect(x(start), y + 3, Math.max(2, x(lastCall) - x(start)), rowH - 8);
    ctx.fillStyle = call;
    ctx.fillRect(x(lastCall), y + 3, Math.max(2, x(round.completed_at) - x(lastCall)), rowH - 8);
    ctx.fillStyle = restart;
    for (const c of round.causes || []) {
      if (typeof c.ts !== "number") continue;
      ctx.beginPath();
      ctx.arc(x(c.ts), y + rowH / 2 - 1, 4, 0, Math.PI * 2);
      ctx.fill();
    }
    ctx.fillStyle = text;
    ctx.fillText(`${round.world_size ?? "?"} nodes · ${seconds(round.total_s)} · ${round.reason || ""}`,
      Math.min(width - 220, x(round.completed_at) + 6), y + rowH / 2 - 1);
  });
  ctx.fillStyle = muted;
  ctx.fillText(clock(t0), left, height - 9);
  ctx.textAlign = "right";
  ctx.fillText(clock(t1), width - 10, height - 9);
  ctx.textAlign = "left";
}

/** Who asked for the round when: the first arrivals, and the last one, which completed it. */
function arrivals(x) {
  const a = x.arrivals;
  if (!a || !a.count) return "–";
  const at = (e) => `${e.node} +${seconds(e.after_s)}`;
  const shown = a.first.map(at);
  if (a.count > a.first.length + 1) shown.push(`… ${a.count - a.first.length - 1} more`);
  if (a.count > a.first.length) shown.push(at(a.last));
  return shown.join(", ");
}

function renderRounds(page) {
  const rows = [...page.items].reverse();
  fill(document.getElementById("rounds"), table([
    { label: "Round", cell: (x) => `#${x.round}` },
    { label: "Completed", cell: (x) => clock(x.completed_at) },
    { label: "Reason", cell: (x) => x.reason || "–" },
    { label: "Nodes", num: true, cell: (x) => int(x.world_size) },
    { label: "Waiting", num: true, cell: (x) => seconds(x.waiting_s) },
    { label: "Last call", num: true, cell: (x) => seconds(x.last_call_s) },
    { label: "Total", num: true, cell: (x) => seconds(x.total_s) },
    { label: "Members (rank order)", cell: (x) => (x.participants || []).join(", ") || "–" },
    { label: "Arrived (s after start)", cell: arrivals },
    { label: "Dropped / spare", cell: (x) => [...(x.dropped || []).map((d) => `${d} (dropped)`), ...(x.spares || []).map((d) => `${d} (spare)`)].join(", ") || "–" },
    { label: "After restarts", cell: (x) => (x.causes || []).map((c) => `${c.node}: ${c.reason || "?"}`).join("; ") || "–" },
    { label: "Timeouts", num: true, cell: (x) => int(x.timeouts) },
  ], rows, { empty: "No round formed yet." }),
  pager(page.total, roundsBack, LIMIT, (back) => { roundsBack = back; ctl.rewant(); }, "rounds (newest first)"));
}

function renderNodes(page, view) {
  fill(document.getElementById("nodes"), table([
    { label: "Node", cell: (n) => el("span", { class: "mono" }, n.node_id) },
    { label: "Host", cell: (n) => n.hostname || n.addr || "–" },
    { label: "Status", cell: (n) => stateChip(n.status) },
    { label: "Since", cell: (n) => `${clock(n.since)} (${ago(n.since, view.now)})` },
    { label: "Rank", num: true, cell: (n) => n.rank ?? "–" },
    { label: "Round", num: true, cell: (n) => n.round ?? "–" },
    { label: "Joins", num: true, cell: (n) => int(n.joins) },
    { label: "Workers", num: true, cell: (n) => int(n.nproc) },
    { label: "Devices", cell: (n) => `${n.device_kind || "–"}${n.device_count ? ` × ${n.device_count}` : ""}` },
    { label: "Why", cell: (n) => n.reason || (n.dropped_from !== null && n.dropped_from !== undefined ? `dropped from round ${n.dropped_from}` : "–") +
      (n.silent_s ? ` (silent ${duration(n.silent_s)})` : "") },
  ], page.items, { empty: "No node has joined yet." }), pager(page.total, nodesOffset, LIMIT, (o) => { nodesOffset = o; ctl.rewant(); }, "nodes"));
}
