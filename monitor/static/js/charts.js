// Time charts over the vendored uPlot (static/vendor/uplot, MIT): one class for every chart of the monitor.
//
// A chart takes columns (`[t[], y1[], y2[], ...]`, t in unix seconds) and draws lines, with optional
// bands between two of its series (the spread between ranks: a series point is an aggregate of every
// rank's samples in its bucket, so min..max shows how far apart they were). Colours are the page's
// custom properties (--chart-N, --text, --grid), resolved through a probe element so the light-dark
// values are the ones in force; a change of the colour scheme rebuilds the chart. The chart follows
// its container's width, and marks itself with `data-points` (how many points it shows) for tests.

import uPlot from "../vendor/uplot/uPlot.esm.js";

const dark = window.matchMedia("(prefers-color-scheme: dark)");
const charts = new Set();
dark.addEventListener("change", () => charts.forEach((chart) => chart.rebuild()));

let probe = null;
/** A custom property's colour as the browser resolves it (rgb(...)). */
export function cssColor(name) {
  if (!probe) {
    probe = document.createElement("span");
    probe.hidden = true;
    document.body.append(probe);
  }
  probe.style.color = `var(${name})`;
  return getComputedStyle(probe).color;
}

function withAlpha(rgb, alpha) {
  const m = rgb.match(/rgba?\(([^)]+)\)/);
  if (!m) return rgb;
  const [r, g, b] = m[1].split(",").map((v) => v.trim());
  return `rgba(${r}, ${g}, ${b}, ${alpha})`;
}

export class TimeChart {
  /** series: [{label, color (1..6), width?, dash?, faint?}]; bands: [[upperIndex, lowerIndex, color]]
   *  (1-based series indexes); format(value) for the y axis and the legend. */
  constructor(container, { series, bands = [], format = (v) => String(v), height = 210, yMin = null }) {
    this.container = container;
    this.spec = { series, bands, format, height, yMin };
    this.data = [[], ...series.map(() => [])];
    this.range = null;
    this.plot = null;
    this.observer = new ResizeObserver(() => this.resize());
    this.observer.observe(container);
    charts.add(this);
    this.rebuild();
  }

  options() {
    const { series, bands, format, height, yMin } = this.spec;
    const text = cssColor("--muted");
    const grid = cssColor("--grid");
    const axis = { stroke: text, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    return {
      width: Math.max(200, this.container.clientWidth || 400),
      height,
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
      scales: {
        x: { time: true, range: (u, min, max) => (this.range ? this.range : [min, max]) },
        y: { range: (u, min, max) => {
          const lo = yMin !== null ? Math.min(yMin, min ?? yMin) : min;
          const hi = max === null || max === undefined ? 1 : max;
          return lo === hi ? [lo - 1, hi + 1] : [lo, hi + (hi - lo) * 0.08];
        } },
      },
      axes: [{ ...axis }, { ...axis, size: 78, values: (u, splits) => splits.map((v) => format(v)) }],
      series: [
        { label: "time", value: (u, v) => (v === null ? "–" : new Date(v * 1000).toLocaleTimeString()) },
        ...series.map((s) => {
          const color = cssColor(`--chart-${s.color || 1}`);
          return { label: s.label, stroke: s.faint ? withAlpha(color, 0.45) : color, width: s.width ?? (s.faint ? 1 : 2),
                   dash: s.dash, points: { show: false }, spanGaps: false,
                   value: (u, v) => (v === null || v === undefined ? "–" : format(v)) };
        }),
      ],
      bands: bands.map(([upper, lower, color]) => ({ series: [upper, lower],
                                                      fill: withAlpha(cssColor(`--chart-${color || 1}`), 0.15) })),
    };
  }

  rebuild() {
    if (this.plot) this.plot.destroy();
    this.plot = new uPlot(this.options(), this.data, this.container);
  }

  resize() {
    if (!this.plot) return;
    const width = Math.max(200, this.container.clientWidth);
    if (width !== this.plot.width) this.plot.setSize({ width, height: this.spec.height });
  }

  /** New columns; `range`: [xmin, xmax] to show (the selected window), else the data's. */
  setData(columns, range = null) {
    this.data = columns;
    this.range = range;
    this.container.dataset.points = String(columns[0].length);
    this.plot.setData(columns);
  }

  destroy() {
    this.observer.disconnect();
    charts.delete(this);
    if (this.plot) this.plot.destroy();
  }
}

/** Columns from a series' points (api getSeries): t and the chosen aggregates, scaled, cut to `since`.
 *  `pick`: names of point fields ("mean", "min", "max", "last") or functions (point index, points) -> value. */
export function columns(points, pick, { since = -Infinity, until = Infinity, scale = 1 } = {}) {
  const t = [];
  const ys = pick.map(() => []);
  if (!points) return [t, ...ys];
  for (let i = 0; i < points.t.length; i += 1) {
    const ts = points.t[i];
    if (ts < since || ts > until) continue;
    t.push(ts);
    pick.forEach((p, j) => {
      const v = typeof p === "function" ? p(i, points) : points[p][i];
      ys[j].push(typeof v === "number" && Number.isFinite(v) ? v * scale : null);
    });
  }
  return [t, ...ys];
}

/** Several column sets (each `[t, ...ys]`) on one time axis: the union of their times, null where a set
 *  has no point (uPlot needs one x column). */
export function joinColumns(sets) {
  const times = [...new Set(sets.flatMap((set) => set[0]))].sort((a, b) => a - b);
  const index = new Map(times.map((t, i) => [t, i]));
  const out = [times];
  for (const set of sets) {
    for (let j = 1; j < set.length; j += 1) {
      const col = new Array(times.length).fill(null);
      set[0].forEach((t, i) => { col[index.get(t)] = set[j][i]; });
      out.push(col);
    }
  }
  return out;
}
