// Datasets: every registered dataset (size, shards, epoch and position, consumed so far, read rate,
// resumes), the live preview of the samples being trained on (a thumbnail for images, the tensor's
// summary otherwise, with label and index; GET /api/v1/datasets/<name>/previews every 2 s live), and
// which rank reads which part of the epoch (the datasets/ranks rows, a page of 50 at a time).

import { getJSON } from "../api.js";
import { card, el, fill, fitValues, kvTable, pager, progress, table } from "../dom.js";
import { ago, brief, int, num, pct } from "../format.js";
import { Poll, startPage } from "../shell.js";

const LIMIT = 50;
let offset = 0;
const previews = { byName: new Map(), poll: new Poll(2000) };

const ctl = startPage({
  wants: () => [{ part: "datasets", kind: "ranks", offset, limit: LIMIT }],
  render,
  refresh: (view, force) => previews.poll.run(async () => {
    const names = Object.keys(view.snapshot.datasets || {});
    const answers = await Promise.all(names.map((name) => getJSON(`/datasets/${encodeURIComponent(name)}/previews`)));
    names.forEach((name, i) => previews.byName.set(name, answers[i].items || []));
    ctl.rerender();
  }, force),
});

function render(view) {
  const datasets = view.snapshot.datasets || {};
  const names = Object.keys(datasets);
  fill(document.getElementById("datasets"), names.length
    ? names.map((name) => datasetPanel(datasets[name], view))
    : el("section", { class: "panel" }, el("p", { class: "empty" },
      "No dataset registered yet: a job that reads through torchrt.data shows its datasets here.")));
  fitValues(document.getElementById("datasets"));
  renderRanks(view);
}

/** A sample's fields for people: "input float32 [1, 8, 8] · target int64 scalar" (anything else: its JSON). */
function fieldsText(fields) {
  if (!fields || typeof fields !== "object") return brief(fields);
  const one = ([name, f]) => (f && typeof f.dtype === "string" && Array.isArray(f.shape)
    ? `${name} ${f.dtype} ${f.shape.length ? `[${f.shape.join(", ")}]` : "scalar"}` : `${name} ${brief(f)}`);
  return Object.entries(fields).map(one).join(" · ") || "–";
}

function datasetPanel(d, view) {
  const fraction = d.size ? Math.min(1, (d.position || 0) / d.size) : null;
  const timing = d.timing || {};
  const facts = [
    ["Kind", d.kind || "–"], ["Path", d.path || "–"], ["Fields", fieldsText(d.fields)], ["Batch size", int(d.batch_size)],
    ["World size", int(d.world_size)], ["Tail", d.tail || "–"], ["Shuffle", d.shuffle === undefined ? "–" : `${d.shuffle} (seed ${d.seed ?? "–"})`],
    ["Loader workers", d.workers === undefined ? "–" : `${d.workers}${d.worker_mode ? ` (${d.worker_mode})` : ""}`],
    ["Resumes", d.resumes ? `${d.resumes}: last at epoch ${d.last_resume?.epoch}, position ${d.last_resume?.position}` +
      (d.last_resume?.saved_world_size ? ` (saved at world size ${d.last_resume.saved_world_size})` : "") : "none"],
  ];
  const shown = previews.byName.get(d.name) || [];
  return el("section", { class: "panel", "aria-label": `dataset ${d.name}`, "data-dataset": d.name },
    el("div", { class: "panel-head" }, el("h2", {}, d.name), el("span", { class: "tag info" }, d.kind || "dataset")),
    el("div", { class: "cards" },
      card("Size", int(d.size), typeof d.shards === "number" ? `${int(d.shards)} shard${d.shards === 1 ? "" : "s"}` : "samples"),
      card("Epoch", int(d.epoch), `position ${int(d.position)}`),
      card("Consumed this epoch", int(d.samples_in_epoch), `by ${int(d.ranks)} ranks`),
      card("Read rate", num(timing.samples_per_s), `samples/s · ${int(timing.ranks)} ranks timed`),
      card("Waiting for data", pct(timing.wait_fraction_mean), `mean · worst ${pct(timing.wait_fraction_max)}` +
        (Number.isInteger(timing.wait_fraction_max_rank) && timing.wait_fraction_max > 0
          ? ` (rank ${timing.wait_fraction_max_rank})` : ""),
        timing.wait_fraction_max > 0.3 ? "warn" : null)),
    progress(fraction, `epoch ${d.epoch ?? "?"}: ${int(d.position)} of ${int(d.size)} (${pct(fraction)})`),
    el("div", { class: "grid-2" },
      el("div", {}, el("h3", {}, "Live preview"), previewGrid(shown, view)),
      el("div", {}, el("h3", {}, "Facts"), kvTable(facts))));
}

function previewGrid(items, view) {
  if (!items.length) return el("p", { class: "empty" }, view.mode === "replay"
    ? "Previews are live only; the run directory holds none." : "No sample previewed yet.");
  return el("div", { class: "previews" }, [...items].sort((a, b) => a.rank - b.rank).map((p) => {
    const body = p.kind === "image" && p.png_b64
      ? el("img", { src: `data:${p.mime || "image/png"};base64,${p.png_b64}`, alt: `sample ${p.index ?? "?"}, label ${p.label ?? "?"}`,
                    width: p.width || null, height: p.height || null })
      : el("div", { class: "text" }, p.summary || brief(p));
    return el("figure", { class: "preview", "data-rank": p.rank }, body,
      el("figcaption", {}, el("div", { class: "label" }, `label ${p.label ?? "–"}`),
        el("div", { class: "meta" }, `#${p.index ?? "–"} · rank ${p.rank} · epoch ${p.epoch ?? "–"}`),
        p.ts ? el("div", { class: "meta" }, ago(p.ts, view.now)) : null));
  }));
}

function renderRanks(view) {
  const page = view.pages.get(`datasets/ranks?offset=${offset}&limit=${LIMIT}`);
  if (!page) return;
  const datasets = view.snapshot.datasets || {};
  fill(document.getElementById("ranks"), table([
    { label: "Dataset", cell: (r) => r.dataset },
    { label: "Rank", num: true, cell: (r) => r.rank },
    { label: "Reads", cell: (r) => (r.assignment ? r.assignment.rule || r.assignment.scheme || brief(r.assignment) : "–") },
    { label: "Slots", cell: (r) => (r.assignment ? `${int(r.assignment.start_position)}–${int(r.assignment.end_position)}` : "–") },
    { label: "Share", cls: "bar-cell", cell: (r) => {
      const a = r.assignment;
      const epoch = (datasets[r.dataset] || {}).epoch ?? r.epoch;
      const done = (r.samples || {})[epoch] ?? (r.samples || {})[String(epoch)] ?? 0;
      const share = a && a.samples ? done / a.samples : null;
      return progress(share, a && a.samples ? `${int(done)} of ${int(a.samples)} this epoch` : `${int(done)} this epoch`);
    } },
    { label: "Steps", num: true, cell: (r) => int(r.assignment && r.assignment.steps) },
    { label: "Epoch", num: true, cell: (r) => int(r.epoch) },
    { label: "Position", num: true, cell: (r) => int(r.position) },
    { label: "Read samples/s", num: true, cell: (r) => num(r.timing && r.timing.samples_per_s) },
    { label: "Waiting", num: true, cell: (r) => pct(r.timing && r.timing.wait_fraction) },
  ], page.items, { empty: "No rank has registered a dataset yet." }),
  pager(page.total, offset, LIMIT, (o) => { offset = o; ctl.rewant(); }, "ranks"));
}
