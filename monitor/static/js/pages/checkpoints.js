// Checkpoints: the last durable step, the saves in flight with their per-rank progress (ranks whose
// shard is durable out of the world size, bytes so far), the history (step, bytes, stall, write time,
// MB/s, with every rank's figures on request), failures and skips, restores, and a chart of each
// rank's write throughput. Lists come a page at a time, newest first.

import { getSeries, pageKey } from "../api.js";
import { TimeChart, columns } from "../charts.js";
import { card, el, fill, fillCards, pager, progress, stateChip, table } from "../dom.js";
import { ago, brief, bytes, clock, int, mbps, seconds } from "../format.js";
import { Poll, startPage } from "../shell.js";

const LIMIT = 20;
const KEPT = 50; // committed checkpoints the view keeps (CheckpointFold keep)
let historyBack = 0;
const open = new Set(); // steps whose per-rank figures are shown
const chart = new TimeChart(document.getElementById("ck-chart"), {
  series: [{ label: "mean", color: 3 }, { label: "min", color: 3, faint: true }, { label: "max", color: 3, faint: true }],
  bands: [[3, 2, 3]], format: (v) => mbps(v), yMin: 0,
});
const series = { points: null, poll: new Poll(3000) };

function wantsOf(view) {
  const ck = (view.snapshot || {}).checkpoints || {};
  const kept = Math.min(ck.committed_total || 0, KEPT);
  const end = Math.max(0, kept - historyBack);
  return [{ part: "checkpoints", kind: "committed", offset: Math.max(0, end - LIMIT), limit: Math.min(LIMIT, end) || LIMIT },
          { part: "checkpoints", kind: "problems", offset: Math.max(0, Math.min(ck.problems_total || 0, KEPT) - 10), limit: 10 },
          { part: "checkpoints", kind: "restored", offset: Math.max(0, Math.min(ck.restored_ranks_total || 0, KEPT) - 10), limit: 10 }];
}

const ctl = startPage({
  wants: wantsOf,
  render,
  refresh: (view, force) => series.poll.run(async () => {
    const has = (((view.snapshot.series || {}).checkpoints || {}).last || {})["saved/mb_s"];
    series.points = has ? await getSeries("checkpoints", "saved", "mb_s", 0) : null;
    ctl.rerender();
  }, force),
});

function render(view) {
  const ck = view.snapshot.checkpoints || {};
  const last = (ck.committed || []).at(-1);
  const saving = ck.saving || [];
  fillCards(document.getElementById("cards"),
    card("Last durable step", ck.durable_step ?? "–", ck.durable_by === "restore"
      ? "restored from; its commit is not in the record" : last ? `committed ${ago(last.ts, view.now)}` : "nothing committed yet"),
    card("Committed", int(ck.committed_total), last ? `last ${bytes(last.bytes)} in ${seconds(last.total_s)}` : ""),
    card("Last write", last ? mbps(last.mb_s) : "–", last && last.ranks ? `slowest rank: stall ${seconds(last.ranks.max_stall_s)}, write ${seconds(last.ranks.max_write_s)}` : ""),
    card("In flight", int(saving.length), saving.length ? `step ${saving.map((s) => s.step).join(", ")}` : "no save under way"),
    card("Problems", int(ck.problems_total), "failed or skipped", ck.problems_total ? "warn" : null),
    card("Restores", int(ck.restores_total), ck.last_restore
      ? `last from step ${ck.last_restore.step} · ${int(ck.last_restore.ranks)} rank${ck.last_restore.ranks === 1 ? "" : "s"}` : "none"));
  fill(document.getElementById("flight"), saving.length ? table([
    { label: "Step", cell: (s) => s.step },
    { label: "Ranks durable", cls: "bar-cell", cell: (s) => {
      const world = s.world_size || null;
      return progress(world ? s.ranks / world : null, `${s.ranks}${world ? ` of ${world}` : ""} ranks`);
    } },
    { label: "Bytes so far", num: true, cell: (s) => bytes(s.bytes) },
    { label: "First shard", cell: (s) => `${clock(s.first_at)} (${ago(s.first_at, view.now)})` },
    { label: "Latest shard", cell: (s) => clock(s.last_at) },
  ], saving) : el("p", { class: "empty" }, "No save under way."));
  const [historyWant, problemsWant, restoredWant] = wantsOf(view);
  const history = view.pages.get(pageKey(historyWant));
  if (history) renderHistory(history);
  const problems = view.pages.get(pageKey(problemsWant));
  if (problems) {
    fill(document.getElementById("problems"), table([
      { label: "Time", cell: (p) => clock(p.ts) },
      { label: "What", cell: (p) => stateChip(p.kind) },
      { label: "Step", num: true, cell: (p) => p.step ?? "–" },
      { label: "Rank", num: true, cell: (p) => p.rank ?? "–" },
      { label: "Why", cell: (p) => [p.stage, p.reason, p.error_type, p.error || p.detail].filter(Boolean).join(": ") || "–" },
    ], [...problems.items].reverse(), { empty: "No checkpoint failed or was skipped." }));
  }
  const restored = view.pages.get(pageKey(restoredWant));
  if (restored) {
    fill(document.getElementById("restores"), table([
      { label: "Time", cell: (r) => clock(r.ts) },
      { label: "Step", num: true, cell: (r) => r.step ?? "–" },
      { label: "Rank", num: true, cell: (r) => r.rank ?? "–" },
      { label: "Read", num: true, cell: (r) => seconds(r.read_s) },
      { label: "MB/s", num: true, cell: (r) => mbps(r.mb_s) },
    ], [...restored.items].reverse(), { empty: "The job has not restored a checkpoint." }));
  }
  const cols = columns(series.points, ["mean", "min", "max"]);
  chart.setData(cols, [view.span[0] ?? cols[0][0] ?? view.now - 60, view.now]);
  document.getElementById("ck-readout").textContent = cols[0].length ? `${cols[0].length} seconds with saves` : "no save yet";
}

function perRank(c) {
  const ranks = Array.isArray(c.ranks) ? c.ranks : [];
  return table([
    { label: "Rank", num: true, cell: (r) => r.rank ?? "–" },
    { label: "Bytes", num: true, cell: (r) => bytes(r.bytes) },
    { label: "Stall", num: true, cell: (r) => seconds(r.stall_s) },
    { label: "Write", num: true, cell: (r) => seconds(r.write_s) },
    { label: "MB/s", num: true, cell: (r) => mbps(r.mb_s) },
  ], ranks, { empty: "No per-rank figures in this commit." });
}

function renderHistory(page) {
  const rows = [...page.items].reverse();
  const ranksOf = (c) => (Array.isArray(c.ranks) ? c.ranks : []);
  const max = (c, key) => Math.max(...ranksOf(c).map((r) => (typeof r[key] === "number" ? r[key] : -Infinity)));
  fill(document.getElementById("history"), table([
    { label: "Step", cell: (c) => el("span", {}, stateChip("committed"), ` ${c.step}`) },
    { label: "Committed", cell: (c) => clock(c.ts) },
    { label: "Bytes", num: true, cell: (c) => bytes(c.bytes) },
    { label: "Ranks", num: true, cell: (c) => int(ranksOf(c).length || c.world_size) },
    { label: "Max stall", num: true, cell: (c) => seconds(max(c, "stall_s")) },
    { label: "Max write", num: true, cell: (c) => seconds(max(c, "write_s")) },
    { label: "Save to commit", num: true, cell: (c) => seconds(c.total_s) },
    { label: "MB/s", num: true, cell: (c) => mbps(c.mb_s) },
    { label: "Retired", cell: (c) => brief(c.deleted) },
    { label: "Per rank", cell: (c) => {
      const details = el("details", { class: "row-detail", open: open.has(c.step) },
        el("summary", { "data-key": `ck-${c.step}` }, `${ranksOf(c).length} ranks`), perRank(c));
      details.addEventListener("toggle", () => { if (details.open) open.add(c.step); else open.delete(c.step); });
      return details;
    } },
  ], rows, { empty: "No checkpoint committed yet." }),
  pager(page.total, historyBack, LIMIT, (back) => { historyBack = back; ctl.rewant(); }, "checkpoints (newest first)"));
}
