// The per-rank heat strip: one cell per rank on a canvas, so a thousand ranks fit in one glance.
//
// Cells are coloured by the caller (status, or step time against the median); a cell under the mouse
// or the keyboard cursor shows its label in a tooltip. The canvas takes the focus: arrow keys move the
// cursor, Home/End jump, Enter picks the rank (`onPick`). Its aria-label is the caller's summary.

import { cssColor } from "./charts.js";
import { el } from "./dom.js";

export class HeatStrip {
  constructor(wrap, { onPick = null, label = "ranks" } = {}) {
    this.wrap = wrap;
    this.canvas = el("canvas", { class: "strip", tabindex: 0, role: "img", "aria-label": label });
    this.tip = el("div", { class: "tooltip", hidden: true });
    wrap.append(this.canvas, this.tip);
    this.cells = [];
    this.cursor = -1;
    this.onPick = onPick;
    this.geometry = { size: 12, gap: 2, cols: 1 };
    this.canvas.addEventListener("mousemove", (e) => this.hover(e));
    this.canvas.addEventListener("mouseleave", () => { this.tip.hidden = true; });
    this.canvas.addEventListener("click", (e) => {
      const i = this.hit(e);
      if (i >= 0 && this.onPick) this.onPick(this.cells[i]);
    });
    this.canvas.addEventListener("keydown", (e) => this.key(e));
    this.canvas.addEventListener("focus", () => { if (this.cursor < 0 && this.cells.length) this.moveTo(0); });
    this.canvas.addEventListener("blur", () => { this.tip.hidden = true; this.cursor = -1; this.draw(); });
    new ResizeObserver(() => this.draw()).observe(wrap);
  }

  /** cells: [{rank, color (a custom property name), label}] in rank order. */
  set(cells, summary) {
    this.cells = cells;
    this.canvas.setAttribute("aria-label", summary);
    this.canvas.dataset.cells = String(cells.length);
    if (this.cursor >= cells.length) this.cursor = cells.length - 1;
    this.draw();
  }

  layout() {
    const n = Math.max(1, this.cells.length);
    const width = Math.max(100, this.wrap.clientWidth);
    const size = n <= 64 ? 22 : n <= 256 ? 14 : n <= 1024 ? 9 : 6;
    const gap = size > 10 ? 3 : 1;
    const cols = Math.max(1, Math.floor((width + gap) / (size + gap)));
    const rows = Math.ceil(n / cols);
    this.geometry = { size, gap, cols };
    return { width, height: rows * (size + gap) - gap };
  }

  draw() {
    const { width, height } = this.layout();
    const ratio = window.devicePixelRatio || 1;
    this.canvas.width = Math.round(width * ratio);
    this.canvas.height = Math.round(Math.max(height, 1) * ratio);
    this.canvas.style.height = `${Math.max(height, 1)}px`;
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const { size, gap, cols } = this.geometry;
    const colours = new Map();
    const colour = (name) => {
      if (!colours.has(name)) colours.set(name, cssColor(name));
      return colours.get(name);
    };
    this.cells.forEach((cell, i) => {
      const x = (i % cols) * (size + gap);
      const y = Math.floor(i / cols) * (size + gap);
      ctx.fillStyle = colour(cell.color);
      ctx.fillRect(x, y, size, size);
      if (i === this.cursor) {
        ctx.strokeStyle = colour("--text");
        ctx.lineWidth = 2;
        ctx.strokeRect(x + 1, y + 1, size - 2, size - 2);
      }
    });
  }

  hit(event) {
    const box = this.canvas.getBoundingClientRect();
    const { size, gap, cols } = this.geometry;
    const col = Math.floor((event.clientX - box.left) / (size + gap));
    const row = Math.floor((event.clientY - box.top) / (size + gap));
    const i = row * cols + col;
    return col < cols && i >= 0 && i < this.cells.length ? i : -1;
  }

  showTip(i, x, y) {
    if (i < 0) { this.tip.hidden = true; return; }
    this.tip.textContent = this.cells[i].label;
    this.tip.hidden = false;
    this.tip.style.left = `${Math.min(x + 12, this.wrap.clientWidth - 200)}px`;
    this.tip.style.top = `${y + 14}px`;
  }

  hover(event) {
    const i = this.hit(event);
    const box = this.wrap.getBoundingClientRect();
    this.showTip(i, event.clientX - box.left, event.clientY - box.top);
  }

  /** Put the keyboard cursor on cell i and show its label. */
  moveTo(i) {
    const { cols, size, gap } = this.geometry;
    this.cursor = i;
    this.draw();
    this.showTip(i, (i % cols) * (size + gap), Math.floor(i / cols) * (size + gap));
  }

  key(event) {
    const n = this.cells.length;
    if (!n) return;
    const { cols } = this.geometry;
    const moves = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: cols, ArrowUp: -cols, Home: -n, End: n };
    if (event.key in moves) {
      event.preventDefault();
      this.moveTo(Math.max(0, Math.min(n - 1, (this.cursor < 0 ? 0 : this.cursor + moves[event.key]))));
    } else if ((event.key === "Enter" || event.key === " ") && this.cursor >= 0 && this.onPick) {
      event.preventDefault();
      this.onPick(this.cells[this.cursor]);
    }
  }
}
