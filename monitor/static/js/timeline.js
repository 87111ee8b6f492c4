// The incident timeline: rounds, restarts, checkpoints, alerts and errors on one time axis, one lane
// each, so an incident reads as one story (GET /api/v1/timeline items: {ts, kind, label, type, seq}).
//
// Drawn on a canvas (thousands of marks stay cheap); the mouse or the keyboard (the canvas takes the
// focus; Left/Right step through the marks in time order, Enter picks) shows a mark's time and label,
// and a pick calls `onPick(item)` (replaying: the slider jumps there). `at` draws the replay cursor.

import { cssColor } from "./charts.js";
import { el } from "./dom.js";
import { clock } from "./format.js";

export const LANES = ["round", "restart", "checkpoint", "alert", "error"];
export const LANE_COLOR = { round: "--chart-1", restart: "--chart-4", checkpoint: "--chart-3", alert: "--warn",
                            error: "--err" };
const LABEL_W = 86;
const LANE_H = 24;
const AXIS_H = 22;

export class Timeline {
  constructor(wrap, { onPick = null } = {}) {
    this.wrap = wrap;
    this.canvas = el("canvas", { class: "timeline", tabindex: 0, role: "img", "aria-label": "timeline" });
    this.tip = el("div", { class: "tooltip", hidden: true });
    wrap.append(this.canvas, this.tip);
    this.items = [];
    this.range = [0, 1];
    this.at = null;
    this.cursor = -1;
    this.onPick = onPick;
    this.marks = [];
    this.canvas.addEventListener("mousemove", (e) => this.hover(e));
    this.canvas.addEventListener("mouseleave", () => { this.tip.hidden = true; });
    this.canvas.addEventListener("click", (e) => {
      const m = this.hit(e);
      if (m && this.onPick) this.onPick(m.item);
    });
    this.canvas.addEventListener("keydown", (e) => this.key(e));
    new ResizeObserver(() => this.draw()).observe(wrap);
  }

  set(items, range, at = null) {
    this.items = [...items].filter((i) => typeof i.ts === "number").sort((a, b) => a.ts - b.ts);
    this.range = range;
    this.at = at;
    this.canvas.dataset.items = String(this.items.length);
    const counts = {};
    for (const item of this.items) counts[item.kind] = (counts[item.kind] || 0) + 1;
    this.canvas.setAttribute("aria-label", `timeline: ${Object.entries(counts).map(([k, n]) => `${n} ${k}`).join(", ")
      || "nothing yet"}`);
    this.draw();
  }

  lanes() {
    const kinds = new Set(this.items.map((i) => i.kind));
    return [...LANES, ...[...kinds].filter((k) => !LANES.includes(k)).sort()];
  }

  x(ts, width) {
    const [t0, t1] = this.range;
    const span = Math.max(1e-9, t1 - t0);
    return LABEL_W + ((ts - t0) / span) * (width - LABEL_W - 10);
  }

  draw() {
    const lanes = this.lanes();
    const width = Math.max(200, this.wrap.clientWidth);
    const height = lanes.length * LANE_H + AXIS_H;
    const ratio = window.devicePixelRatio || 1;
    this.canvas.width = Math.round(width * ratio);
    this.canvas.height = Math.round(height * ratio);
    this.canvas.style.height = `${height}px`;
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const text = cssColor("--text");
    const muted = cssColor("--muted");
    const grid = cssColor("--grid");
    ctx.font = "12px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    lanes.forEach((lane, i) => {
      const y = i * LANE_H + LANE_H / 2;
      ctx.fillStyle = muted;
      ctx.fillText(lane, 4, y);
      ctx.strokeStyle = grid;
      ctx.beginPath();
      ctx.moveTo(LABEL_W, y);
      ctx.lineTo(width - 10, y);
      ctx.stroke();
    });
    // axis: about one tick per 110 px
    const [t0, t1] = this.range;
    const ticks = Math.max(2, Math.floor((width - LABEL_W) / 110));
    ctx.fillStyle = muted;
    ctx.textAlign = "center";
    for (let k = 0; k <= ticks; k += 1) {
      const ts = t0 + ((t1 - t0) * k) / ticks;
      ctx.fillText(clock(ts), Math.min(width - 30, Math.max(LABEL_W + 20, this.x(ts, width))), lanes.length * LANE_H + 11);
    }
    ctx.textAlign = "left";
    this.marks = [];
    const colours = new Map();
    for (const item of this.items) {
      const lane = lanes.indexOf(item.kind);
      const x = this.x(item.ts, width);
      const y = lane * LANE_H + LANE_H / 2;
      const name = LANE_COLOR[item.kind] || "--chart-5";
      if (!colours.has(name)) colours.set(name, cssColor(name));
      ctx.fillStyle = colours.get(name);
      ctx.beginPath();
      ctx.arc(x, y, 5, 0, Math.PI * 2);
      ctx.fill();
      this.marks.push({ x, y, item });
    }
    if (this.cursor >= 0 && this.marks[this.cursor]) {
      const m = this.marks[this.cursor];
      ctx.strokeStyle = text;
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.arc(m.x, m.y, 8, 0, Math.PI * 2);
      ctx.stroke();
      ctx.lineWidth = 1;
    }
    if (typeof this.at === "number") {
      const x = this.x(this.at, width);
      ctx.strokeStyle = cssColor("--accent");
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.moveTo(x, 0);
      ctx.lineTo(x, lanes.length * LANE_H);
      ctx.stroke();
      ctx.lineWidth = 1;
    }
  }

  hit(event) {
    const box = this.canvas.getBoundingClientRect();
    const x = event.clientX - box.left;
    const y = event.clientY - box.top;
    let best = null;
    let bestD = 64;
    for (const m of this.marks) {
      const d = (m.x - x) ** 2 + (m.y - y) ** 2;
      if (d < bestD) { best = m; bestD = d; }
    }
    return best;
  }

  showTip(m) {
    if (!m) { this.tip.hidden = true; return; }
    this.tip.textContent = `${clock(m.item.ts, true)}  ${m.item.kind}\n${m.item.label || m.item.type || ""}`;
    this.tip.hidden = false;
    this.tip.style.left = `${Math.min(m.x + 10, this.wrap.clientWidth - 260)}px`;
    this.tip.style.top = `${m.y + 10}px`;
  }

  hover(event) { this.showTip(this.hit(event)); }

  key(event) {
    if (!this.marks.length) return;
    const step = { ArrowRight: 1, ArrowLeft: -1, Home: -Infinity, End: Infinity }[event.key];
    if (step !== undefined) {
      event.preventDefault();
      const next = this.cursor < 0 ? (step > 0 ? 0 : this.marks.length - 1) : this.cursor + step;
      this.cursor = Math.max(0, Math.min(this.marks.length - 1, next));
      this.draw();
      this.showTip(this.marks[this.cursor]);
    } else if (event.key === "Enter" && this.cursor >= 0 && this.onPick) {
      event.preventDefault();
      this.onPick(this.marks[this.cursor].item);
    }
  }
}
