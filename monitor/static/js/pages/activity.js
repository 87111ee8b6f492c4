// Activity: charts over time of what the job view keeps as series (docs/view.md "Series"), with a
// selectable window. A window picks the finest level that spans it (1 s points up to 15 min, 10 s up
// to 3 h, 1 min up to a day, 10 min up to a week); live, the charts re-read their series every 2 s
// (every 10 s at the coarser levels); replaying, whenever the time slider moves. Charts whose series
// the job does not have yet say so; GPU, dataset and user-metric charts appear when their series exist.

import { getJSON, getSeries } from "../api.js";
import { TimeChart, columns, joinColumns } from "../charts.js";
import { el, fill } from "../dom.js";
import { mbps, ms, num, pct, us } from "../format.js";
import { Poll, startPage } from "../shell.js";

const LEVELS = [[900, 0], [10800, 1], [86400, 2], [604800, 3]]; // longest window each level serves

/** Chart specs: series = [{part, name ("SUBJECT/MEASURE"), label, kind: "band" | "line" | "sum", color}]. */
const FIXED = [
  { id: "requests", title: "Monitor requests/s", format: (v) => num(v, 1),
    series: [{ part: "monitor", name: "requests/per_s", label: "requests/s", kind: "line", color: 5 }] },
  { id: "samples", title: "Samples/s (the job: sum over ranks)", format: (v) => num(v, 1),
    series: [{ part: "workers", name: "steps/samples_per_s", label: "samples/s", kind: "sum", color: 1 }] },
  { id: "step", title: "Step time", format: ms,
    series: [{ part: "workers", name: "steps/step_ms", label: "step", kind: "band", color: 2 },
             { part: "workers", name: "steps/data_wait_ms", label: "data wait", kind: "line", color: 6 }] },
  { id: "checkpoint", title: "Checkpoint write MB/s", format: (v) => mbps(v),
    series: [{ part: "checkpoints", name: "saved/mb_s", label: "per rank", kind: "band", color: 3 },
             { part: "checkpoints", name: "committed/mb_s", label: "job", kind: "line", color: 1 }] },
  { id: "barrier", title: "Barrier latency", format: us, barriers: true, series: [] },
  { id: "cpu", title: "Node CPU", format: (v) => pct(v, false),
    series: [{ part: "machines", name: "node/cpu_percent", label: "CPU", kind: "band", color: 4 }] },
  { id: "memory", title: "Node memory", format: (v) => pct(v, false),
    series: [{ part: "machines", name: "node/mem_percent", label: "memory", kind: "band", color: 5 }] },
];

let windowChoice = "run"; // "run" (from the first event) or seconds
const charts = new Map(); // id -> {spec, chart, panel, readout}
const poll = new Poll(2000);

for (const button of document.querySelectorAll("#window button")) {
  button.addEventListener("click", () => {
    windowChoice = button.dataset.window === "run" ? "run" : Number(button.dataset.window);
    for (const b of document.querySelectorAll("#window button")) b.setAttribute("aria-pressed", String(b === button));
    ctl.rerender();
    poll.run(() => readAll(ctl.view), true);
  });
}

document.getElementById("tb-embed").addEventListener("click", async (event) => {
  const button = event.currentTarget;
  const frame = document.getElementById("tb-frame");
  if (frame.firstChild) { fill(frame); button.textContent = "Show TensorBoard here"; return; }
  const settings = await getJSON("/settings", {}, { atTime: false });
  if (!settings.tensorboard_url) {
    fill(frame, el("p", { class: "empty" }, "TensorBoard is not running for this monitor."));
    return;
  }
  fill(frame, el("iframe", { class: "tensorboard", src: settings.tensorboard_url, title: "TensorBoard", loading: "lazy" }));
  button.textContent = "Hide TensorBoard";
});

const ctl = startPage({
  wants: () => [],
  render,
  refresh: (view, force) => poll.run(() => readAll(view), force),
});

function split(part, name) {
  if (part === "metrics") return [name, ""];
  const cut = name.lastIndexOf("/");
  return cut < 0 ? [name, ""] : [name.slice(0, cut), name.slice(cut + 1)];
}

const has = (snapshot, part, name) => Boolean((((snapshot.series || {})[part] || {}).last || {})[name]);

/** Every chart the snapshot's series call for: the fixed ones, GPUs, datasets, user metrics. */
function specs(snapshot) {
  const out = FIXED.map((spec) => {
    if (!spec.barriers) return spec;
    const names = Object.keys(((snapshot.series || {}).barriers || {}).last || {})
      .filter((n) => n.endsWith("/p50_us")).map((n) => n.slice(0, -"/p50_us".length)).slice(0, 3);
    return { ...spec, series: names.flatMap((n, i) => [
      { part: "barriers", name: `${n}/p50_us`, label: `${n} p50`, kind: "line", color: 1 + i * 2 },
      { part: "barriers", name: `${n}/p99_us`, label: `${n} p99`, kind: "line", color: 2 + i * 2, faint: true }]) };
  });
  if (has(snapshot, "machines", "gpu/util_percent")) {
    out.push({ id: "gpu", title: "GPU utilisation", format: (v) => pct(v, false),
      series: [{ part: "machines", name: "gpu/util_percent", label: "GPU", kind: "band", color: 1 }] });
  }
  for (const name of Object.keys(((snapshot.series || {}).datasets || {}).last || {})) {
    if (!name.endsWith("/samples_per_s")) continue;
    const dataset = name.slice(0, -"/samples_per_s".length);
    out.push({ id: `data-${dataset}`, title: `Dataset ${dataset}: samples/s read`, format: (v) => num(v, 1),
      series: [{ part: "datasets", name, label: "samples/s", kind: "sum", color: 3 }] });
  }
  for (const name of Object.keys(((snapshot.series || {}).metrics || {}).last || {}).slice(0, 8)) {
    out.push({ id: `metric-${name}`, title: name === "loss" ? "Loss" : `Metric ${name}`, format: (v) => num(v, 4),
      series: [{ part: "metrics", name, label: name, kind: "band", color: 2 }] });
  }
  return out;
}

function ensure(spec) {
  let entry = charts.get(spec.id);
  if (entry && entry.key === spec.series.map((s) => s.name).join("|")) return entry;
  if (entry) entry.chart.destroy();
  const host = entry ? entry.host : el("div", { class: "chart", "data-chart": spec.id });
  const readout = entry ? entry.readout : el("span", { class: "readout" });
  const panel = entry ? entry.panel : el("section", { class: "panel chart-panel", "aria-label": spec.title },
    el("div", { class: "panel-head" }, el("h2", {}, spec.title), el("span", { class: "spacer" }), readout), host);
  if (!entry) document.getElementById("charts").append(panel);
  const lines = [];
  const bands = [];
  for (const s of spec.series) {
    if (s.kind === "band") {
      const mean = lines.length + 1;
      lines.push({ label: `${s.label} mean`, color: s.color },
                 { label: `${s.label} min`, color: s.color, faint: true },
                 { label: `${s.label} max`, color: s.color, faint: true });
      bands.push([mean + 2, mean + 1, s.color]);
    } else {
      lines.push({ label: s.label, color: s.color, faint: s.faint });
    }
  }
  const chart = new TimeChart(host, { series: lines.length ? lines : [{ label: "–", color: 1 }], bands,
                                      format: spec.format, yMin: 0 });
  entry = { spec, chart, host, panel, readout, key: spec.series.map((s) => s.name).join("|"), data: null };
  charts.set(spec.id, entry);
  return entry;
}

/** [since, until] of the chosen window, as of the page's time. */
function range(view) {
  const end = view.mode === "replay" ? view.now : Math.max(view.now || 0, view.span[1] || 0);
  if (windowChoice !== "run") return [end - windowChoice, end];
  const start = typeof view.span[0] === "number" ? view.span[0] : end - 900;
  return [start, Math.max(end, start + 10)];
}

/** The finest level whose ring spans the window. */
function level(view) {
  const [since, until] = range(view);
  return (LEVELS.find(([span]) => until - since <= span) || LEVELS.at(-1))[1];
}

async function readAll(view) {
  const lvl = level(view);
  poll.ms = lvl > 0 ? 10000 : 2000;
  const [since, until] = range(view);
  const wanted = specs(view.snapshot);
  await Promise.all(wanted.map(async (spec) => {
    const entry = ensure(spec);
    const sets = await Promise.all(spec.series.map(async (s) => {
      if (!has(view.snapshot, s.part, s.name)) return null;
      const [subject, measure] = split(s.part, s.name);
      try {
        return { s, points: await getSeries(s.part, subject, measure, lvl) };
      } catch (error) {
        if (error.status === 400) return null; // not there (yet) at this time
        throw error;
      }
    }));
    const cols = [];
    for (const got of sets) {
      if (!got) { cols.push(null); continue; }
      const { s, points } = got;
      if (s.kind === "band") cols.push(columns(points, ["mean", "min", "max"], { since, until }));
      else if (s.kind === "sum") {
        // a rank reports once a second: a bucket's sum over its seconds is the job's rate times its length
        const per = points.resolution_s || 1;
        cols.push(columns(points, [(i, p) => (p.mean[i] * p.count[i]) / per], { since, until }));
      } else cols.push(columns(points, ["last"], { since, until }));
    }
    entry.data = { cols, since, until };
  }));
  ctl.rerender();
}

function render(view) {
  const wanted = specs(view.snapshot);
  for (const spec of wanted) {
    const entry = ensure(spec);
    const data = entry.data;
    if (!data) continue;
    const present = data.cols.map((c, i) => c || emptyFor(spec.series[i]));
    const joined = joinColumns(present);
    entry.chart.setData(joined.length > 1 ? joined : [joined[0], []], [data.since, data.until]);
    const points = joined[0].length;
    const lastValues = present.map((c) => c[1].filter((v) => v !== null).at(-1));
    entry.readout.textContent = points
      ? `now ${spec.format(lastValues.find((v) => v !== undefined))} · ${points} points`
      : "no data in this window";
  }
  const hint = document.getElementById("window-hint");
  hint.dataset.level = String(level(view));
}

function emptyFor(s) {
  return s.kind === "band" ? [[], [], [], []] : [[], []];
}
