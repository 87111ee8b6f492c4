// Overview: the job at a glance. Summary cards from the snapshot, the per-rank heat strip (every rank,
// read a page of 1,000 at a time every 2 s), open alerts, the incident timeline and a short workers
// table (a page of 16, through the websocket). Nothing here lists every rank: at 1,000 workers the
// page stays the same size.

import { getAllRows, getJSON } from "../api.js";
import { card, el, fill, fillCards, pager, stateChip, table } from "../dom.js";
import { Directory, STATUS_COLOR, STATUS_ORDER, lastProgress, workerStatus } from "../directory.js";
import { ago, bytes, clock, int, mbps, ms, num, pair, pct, rate, us } from "../format.js";
import { HeatStrip } from "../heatstrip.js";
import { Poll, startPage, withAt } from "../shell.js";
import { Timeline } from "../timeline.js";

const LIMIT = 16;
const dir = new Directory();
const allRows = { rows: [], poll: new Poll(2000) };
const timeline = { items: [], poll: new Poll(3000) };
let offset = 0;
let colorBy = "status";

const strip = new HeatStrip(document.getElementById("strip"), {
  label: "ranks",
  onPick: (cell) => location.assign(withAt(`/tasks?rank=${cell.rank}`)),
});
const lanes = new Timeline(document.getElementById("timeline"), {
  onPick: (item) => { if (ctl.view.jump) ctl.view.jump(item.ts); },
});

for (const button of document.querySelectorAll("#color-by button")) {
  button.addEventListener("click", () => {
    colorBy = button.dataset.color;
    for (const b of document.querySelectorAll("#color-by button")) b.setAttribute("aria-pressed", String(b === button));
    ctl.rerender();
  });
}

const want = () => [{ part: "workers", kind: "workers", offset, limit: LIMIT }];

const ctl = startPage({
  wants: want,
  render,
  async refresh(view, force) {
    await Promise.all([
      dir.refresh(force).then((ran) => ran && ctl.rerender()),
      allRows.poll.run(async () => { allRows.rows = await getAllRows("workers", "workers"); ctl.rerender(); }, force),
      timeline.poll.run(async () => {
        // the whole run, with the replay cursor at `at`
        timeline.items = (await getJSON("/timeline", {}, { atTime: false })).items || [];
        ctl.rerender();
      }, force || view.events.length > 0 && performance.now() - timeline.poll.last > 1000),
    ]);
  },
});

function render(view) {
  const s = view.snapshot;
  renderCards(s);
  renderStrip(view);
  renderAlerts(view);
  renderTimeline(view);
  renderWorkers(view);
}

function renderCards(s) {
  const w = s.workers || {};
  const byState = w.by_state || {};
  const prog = w.progress || {};
  const rdzv = s.rendezvous || {};
  const nodes = (rdzv.nodes || {}).by_status || {};
  const alerts = (w.alerts || {}).counts || {};
  const ck = s.checkpoints || {};
  const saving = ck.saving || [];
  const lastCommit = (ck.committed || []).at(-1);
  const machines = s.machines || {};
  const barriers = ((s.barriers || {}).names || []).slice().sort((a, b) => (b.last_at || 0) - (a.last_at || 0));
  const barrier = barriers[0];
  const open = Object.values(alerts).reduce((a, b) => a + b, 0);
  const reporting = prog.step && prog.step.max !== null && prog.step.max !== undefined;
  const last = reporting ? prog : lastProgress(allRows.rows);
  const stepRange = last.step && last.step.min !== null && last.step.min !== undefined
    ? (last.step.min === last.step.max ? int(last.step.max) : `${int(last.step.min)}–${int(last.step.max)}`) : "–";
  const epochs = last.epoch && last.epoch.min !== null && last.epoch.min !== undefined
    ? (last.epoch.min === last.epoch.max ? `epoch ${last.epoch.max}` : `epochs ${last.epoch.min}–${last.epoch.max}`) : "no epoch";
  const epochRange = reporting ? epochs : `${epochs} · last reported`;
  const slowest = (prog.slowest || [])[0];
  const pending = rdzv.pending;
  const gpus = machines.gpus || {};
  fillCards(document.getElementById("cards"),
    card("Workers", `${int(byState.running || 0)} / ${int(w.total || 0)}`,
      `running${w.world_size ? ` · world size ${w.world_size}` : ""}${w.restarted ? ` · ${w.restarted} restarted` : ""}`,
      (alerts.rank_stalled || 0) > 0 ? "bad" : null),
    card("Nodes", int((rdzv.nodes || {}).total || 0),
      Object.entries(nodes).map(([k, v]) => `${v} ${k}`).join(" · ") || "none yet", nodes.dead ? "bad" : null),
    card("Samples/s", num(prog.samples_per_s, 1), `${int(prog.reporting || 0)} ranks reporting`),
    card("Step", stepRange, epochRange),
    card("Step time", ms(prog.step_ms && prog.step_ms.median),
      slowest ? `median · slowest rank ${slowest.rank}: ${ms(slowest.step_ms)}` : "median"),
    card("Checkpoint write", lastCommit ? mbps(lastCommit.mb_s) : "–",
      ck.durable_step !== null && ck.durable_step !== undefined
        ? `durable step ${ck.durable_step}${lastCommit ? ` · ${bytes(lastCommit.bytes)}` : ""}${saving.length ? " · saving" : ""}`
        : saving.length ? "saving the first" : "none yet",
      ck.problems_total ? "warn" : null),
    card("Barrier p50 / p99", barrier ? pair(us(barrier.p50_us), us(barrier.p99_us)) : "–",
      barrier ? `max ${us(barrier.max_us)} · worst ${us(barrier.worst_us)} · ${barrier.name}` : "no barrier reported"),
    card("Round", rdzv.current ? `#${rdzv.current.round}` : "–",
      pending ? `forming #${pending.round}: ${pending.reason || ""}` : rdzv.current
        ? `${rdzv.current.world_size} nodes · ${rdzv.rounds_total} formed${rdzv.closed ? " · closed" : ""}` : "no round yet",
      pending ? "warn" : null),
    card("Machines", machines.cpu_percent && machines.cpu_percent.mean !== null ? pct(machines.cpu_percent.mean, false) : "–",
      `CPU mean · max ${pct((machines.cpu_percent || {}).max, false)} · memory max ${pct(machines.mem_percent_max, false)}` +
      (gpus.count ? ` · ${gpus.count} GPUs ${pct(gpus.util_percent_mean, false)}` : "")),
    card("Alerts", int(open), open ? Object.entries(alerts).map(([k, v]) => `${v} ${k.replace("rank_", "")}`).join(" · ")
      : `${int((s.alerts || {}).total || 0)} problems logged`, open ? "bad" : null),
  );
}

function cellColor(row, status, median, maxStep) {
  if (colorBy === "status") return STATUS_COLOR[status] || "--idle";
  if (row.state !== "running") return "--idle";
  if (colorBy === "step_ms") {
    if (typeof row.step_ms !== "number" || !median) return "--idle";
    const ratio = row.step_ms / median;
    return ratio < 1.15 ? "--ok" : ratio < 1.5 ? "--chart-6" : ratio < 2.5 ? "--warn" : "--err";
  }
  if (typeof row.step !== "number" || typeof maxStep !== "number") return "--idle";
  const behind = maxStep - row.step;
  return behind <= 1 ? "--ok" : behind <= 5 ? "--chart-6" : behind <= 20 ? "--warn" : "--err";
}

function renderStrip(view) {
  const rows = allRows.rows;
  const prog = (view.snapshot.workers || {}).progress || {};
  const median = prog.step_ms ? prog.step_ms.median : null;
  const maxStep = prog.step ? prog.step.max : null;
  const counts = {};
  const cells = rows.map((row) => {
    const status = workerStatus(row, dir, view.snapshot);
    counts[status] = (counts[status] || 0) + 1;
    return { rank: row.rank, color: cellColor(row, status, median, maxStep),
             label: `${dir.name(row)} (rank ${row.rank}) · ${status}\nstep ${row.step ?? "–"} · ${ms(row.step_ms)}` +
                    `\nnode ${dir.host(row.node_id) || row.node_id || "–"}` };
  });
  const summary = STATUS_ORDER.filter((k) => counts[k]).map((k) => `${counts[k]} ${k}`).join(", ");
  strip.set(cells, `${rows.length} ranks: ${summary || "none yet"}`);
  const legend = colorBy === "status"
    ? STATUS_ORDER.filter((k) => counts[k]).map((k) => [STATUS_COLOR[k], `${k} ${counts[k]}`])
    : colorBy === "step_ms"
      ? [["--ok", "< 1.15× median"], ["--chart-6", "< 1.5×"], ["--warn", "< 2.5×"], ["--err", "slower"], ["--idle", "no report"]]
      : [["--ok", "≤ 1 step behind"], ["--chart-6", "≤ 5"], ["--warn", "≤ 20"], ["--err", "more"], ["--idle", "no report"]];
  fill(document.getElementById("strip-legend"), legend.map(([color, text]) => {
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = `var(${color})`;
    return el("span", {}, swatch, text);
  }));
}

function renderAlerts(view) {
  const s = view.snapshot;
  const ranks = ((s.workers || {}).alerts || {}).ranks || [];
  const recent = ((s.alerts || {}).recent || []).slice().reverse();
  const pending = (s.rendezvous || {}).pending;
  const items = [];
  if (pending) {
    const missing = pending.missing || {};
    items.push(el("li", {}, el("span", { class: "tag warn" }, "round"),
      `round ${pending.round} forming (${pending.reason || "?"})`,
      missing.count ? el("span", { class: "missing" }, ` · waiting for ${missing.count}: ${missing.first.join(", ")}`) : null));
  }
  for (const r of ranks) {
    const row = allRows.rows.find((x) => x.rank === r.rank);
    items.push(el("li", {}, el("span", { class: `tag ${r.alerts.includes("rank_stalled") ? "err" : "warn"}` },
      r.alerts.map((a) => a.replace("rank_", "")).join(", ")),
      el("a", { class: "keep-at", href: withAt(`/tasks?rank=${r.rank}`) }, row ? dir.name(row) : `rank ${r.rank}`),
      ` rank ${r.rank}`));
  }
  const openList = items.length ? el("ul", {}, items) : el("p", { class: "empty" }, "No open alerts.");
  const recentTable = table([
    { label: "Time", cell: (e) => clock(e.ts) },
    { label: "Type", cell: (e) => el("span", { class: `tag ${/error|failed|dead|stalled|timeout/.test(e.type) ? "err" : "warn"}` }, e.type) },
    { label: "What", cell: (e) => e.what || e.error || e.message || e.reason || e.detail || (e.rank !== undefined ? `rank ${e.rank}` : e.node || "") },
  ], recent.slice(0, 6), { empty: "Nothing has gone wrong." });
  fill(document.getElementById("alerts"), el("h3", {}, "Open"), openList, el("h3", {}, "Recent problems"), recentTable);
}

function renderTimeline(view) {
  const start = view.span[0] ?? (timeline.items[0] || {}).ts ?? view.now - 60;
  const end = view.mode === "replay" ? view.span[1] : Math.max(view.now || 0, view.span[1] || 0);
  lanes.set(timeline.items, [start, Math.max(end, start + 1)], view.mode === "replay" ? view.now : null);
  document.getElementById("timeline-hint").textContent = view.mode === "replay"
    ? "Click a mark (or focus the timeline, arrow keys, Enter) to see the job at that moment."
    : "rounds, restarts, checkpoints, alerts and errors on one time axis";
  const shown = timeline.items.filter((i) => view.mode !== "replay" || i.ts <= view.now).slice(-8).reverse();
  fill(document.getElementById("timeline-list"), table([
    { label: "Time", cell: (i) => clock(i.ts) },
    { label: "Kind", cell: (i) => el("span", { class: `tag ${i.kind === "error" ? "err" : i.kind === "alert" ? "warn" : "info"}` }, i.kind) },
    { label: "What", cell: (i) => i.label || i.type },
    ...(view.mode === "replay" ? [{ label: "", cell: (i) => el("button", { type: "button", "data-key": `jump-${i.seq}`,
      onclick: () => view.jump(i.ts) }, "Show") }] : []),
  ], shown, { empty: "Nothing on the timeline yet." }));
}

function renderWorkers(view) {
  const page = view.pages.get(`workers/workers?offset=${offset}&limit=${LIMIT}`);
  if (!page) return;
  const now = view.now;
  fill(document.getElementById("workers"), table([
    { label: "Worker", cell: (r) => el("span", { class: "task-name" }, dir.name(r)) },
    { label: "Rank", num: true, cell: (r) => r.rank },
    { label: "Host", cell: (r) => dir.host(r.node_id) || r.node_id || "–" },
    { label: "Status", cell: (r) => stateChip(workerStatus(r, dir, view.snapshot)) },
    { label: "Epoch", num: true, cell: (r) => r.epoch ?? "–" },
    { label: "Step", num: true, cell: (r) => int(r.step) },
    { label: "Samples/s", num: true, cell: (r) => rate(r.samples_per_s, "") },
    { label: "Step time", num: true, cell: (r) => ms(r.step_ms) },
    { label: "Last report", cell: (r) => ago(r.reported_at, now) },
    { label: "Restarts", num: true, cell: (r) => Math.max(0, (r.starts || 1) - 1) },
  ], page.items, { empty: "No worker has started yet." }),
  page.total > LIMIT ? pager(page.total, offset, LIMIT, (o) => { offset = o; ctl.rewant(); }, "workers") : null);
}
