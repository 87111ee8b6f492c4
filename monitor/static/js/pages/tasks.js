// Tasks: one progress bar per worker through the current epoch, with its rate and ETA; stragglers and
// stalled ranks marked. The workers come a page of 50 at a time (the websocket's want), so a thousand
// workers are twenty pages, not one huge table; `?rank=N` opens the page that holds rank N.

import { card, el, fill, fillCards, pager, progress, stateChip, table } from "../dom.js";
import { Directory, STALLED, STRAGGLING, lastProgress, workerStatus } from "../directory.js";
import { ago, duration, int, ms, num, pct } from "../format.js";
import { startPage } from "../shell.js";

const LIMIT = 50;
const dir = new Directory();
const wanted = Number(new URL(location.href).searchParams.get("rank"));
let selected = Number.isInteger(wanted) && new URL(location.href).searchParams.has("rank") ? wanted : null;
let offset = selected !== null ? Math.floor(selected / LIMIT) * LIMIT : 0;
let scrolled = false;

document.getElementById("goto").addEventListener("submit", (event) => {
  event.preventDefault();
  const rank = Number(document.getElementById("goto-rank").value);
  if (!Number.isInteger(rank) || rank < 0) return;
  selectRank(rank);
});

function selectRank(rank) {
  selected = rank;
  scrolled = false;
  offset = Math.floor(rank / LIMIT) * LIMIT;
  const here = new URL(location.href);
  here.searchParams.set("rank", String(rank));
  history.replaceState(null, "", here.pathname + here.search);
  ctl.rewant();
}

const ctl = startPage({
  wants: () => [{ part: "workers", kind: "workers", offset, limit: LIMIT }],
  render,
  refresh: async (view, force) => { if (await dir.refresh(force)) ctl.rerender(); },
});

/** Where a worker is in its epoch: {fraction, remaining samples of this rank} from its last report and
 *  its dataset's size (the position is the job's: every rank reads its share of each global step). */
export function epochProgress(row, datasets) {
  const data = row.dataset ? datasets[row.dataset] : null;
  if (!data || typeof data.size !== "number" || typeof row.position !== "number" || data.size <= 0) return null;
  const fraction = Math.min(1, row.position / data.size);
  const world = data.world_size || row.world_size || 1;
  return { fraction, remaining: Math.max(0, data.size - row.position) / world };
}

function eta(row, where) {
  if (!where || row.state !== "running" || !(row.samples_per_s > 0)) return null;
  return where.remaining / row.samples_per_s;
}

function render(view) {
  const s = view.snapshot;
  const w = s.workers || {};
  const prog = w.progress || {};
  const datasets = s.datasets || {};
  const main = Object.values(datasets)[0];
  const epochFraction = main && main.size ? Math.min(1, (main.position || 0) / main.size) : null;
  const page = view.pages.get(`workers/workers?offset=${offset}&limit=${LIMIT}`);
  const reporting = prog.step && prog.step.max !== null && prog.step.max !== undefined;
  const last = reporting ? prog : lastProgress(page ? page.items : []);
  fillCards(document.getElementById("cards"),
    card("Epoch", last.epoch.max !== null && last.epoch.max !== undefined ? String(last.epoch.max) : main ? String(main.epoch) : "–",
      main ? `${main.name}: ${pct(epochFraction)} of ${int(main.size)} samples` : "no dataset registered"),
    card("Samples/s", num(prog.samples_per_s), `${int(prog.reporting || 0)} ranks reporting`),
    card("Step", last.step.max !== null ? int(last.step.max) : "–",
      !reporting ? "last reported" : last.step.min !== last.step.max ? `slowest rank at ${int(last.step.min)}` : "all ranks together"),
    card("Step time", ms(prog.step_ms && prog.step_ms.median), `median · max ${ms(prog.step_ms && prog.step_ms.max)}`),
    card("Stragglers", int(((w.alerts || {}).counts || {})[STRAGGLING] || 0), "ranks slower than the others",
      ((w.alerts || {}).counts || {})[STRAGGLING] ? "warn" : null),
    card("Stalled", int(((w.alerts || {}).counts || {})[STALLED] || 0), "ranks that stopped reporting",
      ((w.alerts || {}).counts || {})[STALLED] ? "bad" : null),
  );
  renderAttention(view);
  if (!page) return;
  fill(document.getElementById("tasks"), table([
    { label: "Worker", cell: (r) => el("span", { class: "task-name" }, dir.name(r)) },
    { label: "Rank", num: true, cell: (r) => r.rank },
    { label: "Status", cell: (r) => statusCell(r, view) },
    { label: "Epoch progress", cls: "bar-cell", cell: (r) => {
      const where = epochProgress(r, datasets);
      const status = workerStatus(r, dir, view.snapshot);
      const text = where ? `epoch ${r.epoch ?? "?"} · ${pct(where.fraction)}` : `step ${int(r.step)}`;
      return progress(where ? where.fraction : null, text, status);
    } },
    { label: "Step", num: true, cell: (r) => int(r.step) },
    { label: "Rate", num: true, cell: (r) => (typeof r.samples_per_s === "number" ? `${num(r.samples_per_s)}/s` : "–") },
    { label: "ETA", num: true, cell: (r) => duration(eta(r, epochProgress(r, datasets))) },
    { label: "Step time", num: true, cell: (r) => ms(r.step_ms) },
    { label: "Data wait", num: true, cell: (r) => ms(r.data_wait_ms) },
    { label: "Last report", cell: (r) => ago(r.reported_at, view.now) },
  ], page.items, {
    empty: "No worker has started yet.",
    rowAttrs: (r) => ({ class: r.rank === selected ? "selected" : null, id: `rank-${r.rank}`, "data-rank": r.rank }),
  }), pager(page.total, offset, LIMIT, (o) => { offset = o; ctl.rewant(); }, "workers"));
  if (selected !== null && !scrolled) {
    const row = document.getElementById(`rank-${selected}`);
    if (row) { row.scrollIntoView({ block: "center" }); scrolled = true; }
  }
}

function statusCell(row, view) {
  const status = workerStatus(row, dir, view.snapshot);
  const alerts = row.alerts || {};
  const extra = [];
  const straggling = alerts[STRAGGLING];
  if (straggling && straggling.measure === "data_wait_ms") {
    // the others' waits are often microseconds: "4,349× longer" says less than the two times
    extra.push(typeof straggling.value_ms === "number" && typeof straggling.median_ms === "number"
      ? `waits ${ms(straggling.value_ms)} a step for data, the others ${ms(straggling.median_ms)}` : "waits for data");
  } else if (straggling && typeof straggling.ratio === "number") extra.push(`${num(straggling.ratio, 1)}× slower`);
  if (alerts[STALLED] && typeof alerts[STALLED].silent_s === "number") extra.push(`silent ${duration(alerts[STALLED].silent_s)}`);
  return el("span", {}, stateChip(status), extra.length ? el("span", { class: "hint" }, ` ${extra.join(", ")}`) : null);
}

function renderAttention(view) {
  const w = view.snapshot.workers || {};
  const prog = w.progress || {};
  const alerted = (w.alerts || {}).ranks || [];
  const chip = (rank, text, tone) => el("button", { type: "button", class: "button", "data-key": `att-${rank}-${text}`,
    onclick: () => selectRank(rank) }, el("span", { class: `tag ${tone}` }, text), `rank ${rank}`);
  const groups = [
    ["Alerted", alerted.map((r) => chip(r.rank, r.alerts.map((a) => a.replace("rank_", "")).join(", "),
      r.alerts.includes(STALLED) ? "err" : "warn"))],
    ["Slowest steps", (prog.slowest || []).map((r) => chip(r.rank, ms(r.step_ms), "info"))],
    ["Furthest behind", (prog.behind || []).map((r) => chip(r.rank, `step ${int(r.step)}`, "info"))],
  ];
  fill(document.getElementById("attention"), groups.map(([title, chips]) => el("div", { class: "filters" },
    el("strong", {}, title), chips.length ? chips : el("span", { class: "empty" }, "none"))));
}
