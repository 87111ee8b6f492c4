// DOM building without innerHTML: every value lands as text, so nothing from the job can inject markup.

/** `el("td", {class: "num", title: t}, "12")`: attributes (`on*` functions become listeners, `dataset`
 *  an object, `false`/null are left out) and children (strings, numbers, nodes, arrays, null). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = String(value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : String(child));
  }
}

/** Replace a node's children. A focused control inside that has a `data-key` gets the focus back on its
 *  rebuilt twin, so a live re-render never throws a keyboard user out of a table or a pager. */
export function fill(node, ...children) {
  const focused = document.activeElement;
  const key = focused && node.contains(focused) ? focused.dataset.key : undefined;
  node.replaceChildren();
  append(node, children);
  if (key !== undefined) {
    const twin = node.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (twin && !twin.disabled) twin.focus();
    else node.closest("[tabindex]")?.focus?.();
  }
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);

/** A table: `columns` = [{label, num?, cell(row) -> node|string, cls?}]; `rowAttrs(row)` for the <tr>. */
export function table(columns, rows, { rowAttrs = null, caption = null, empty = "Nothing yet." } = {}) {
  if (!rows.length) return el("p", { class: "empty" }, empty);
  const head = el("tr", {}, columns.map((c) => el("th", { class: c.num ? "num" : null, scope: "col" }, c.label)));
  const body = rows.map((row) => el("tr", rowAttrs ? rowAttrs(row) : {},
    columns.map((c) => el("td", { class: [c.num ? "num" : "", c.cls || ""].join(" ").trim() || null }, c.cell(row)))));
  return el("div", { class: "table-wrap" },
    el("table", { class: "data" }, caption ? el("caption", { class: "hint" }, caption) : null,
      el("thead", {}, head), el("tbody", {}, body)));
}

/** A key/value table from [[key, value], ...]. */
export function kvTable(pairs) {
  return el("table", { class: "data kv" }, el("tbody", {},
    pairs.map(([k, v]) => el("tr", {}, el("th", { scope: "row" }, k), el("td", {}, v)))));
}

/** A stat card. `tone`: "bad" | "warn" | null. */
export function card(label, value, sub = null, tone = null) {
  return el("div", { class: `card${tone ? " " + tone : ""}` }, el("div", { class: "label" }, label),
    el("div", { class: "value", title: String(value) }, value), sub === null ? null : el("div", { class: "sub" }, sub));
}

/** Fill a `.cards` section with `card(...)`s and fit each value to its card (see `fitValues`). */
export function fillCards(node, ...cards) {
  fill(node, ...cards);
  fitValues(node);
  return node;
}

const FIT_FLOOR = 0.6;  // a value never shrinks below 60% of the card's font size; past that the ellipsis shows

/** Shrink the font of each `.card .value` under `root` whose text is wider than its card ("850 µs / 1.25 s" on a
 *  slow machine, a narrow window), so the number is read whole rather than cut. All resets first, then all
 *  measures, then all writes: two layouts, whatever the number of cards. */
export function fitValues(root = document) {
  const values = [...root.querySelectorAll(".card .value")];
  for (const v of values) v.style.fontSize = "";
  const sizes = values.map((v) => (v.clientWidth > 0 && v.scrollWidth > v.clientWidth
    ? parseFloat(getComputedStyle(v).fontSize) * Math.max(FIT_FLOOR, (v.clientWidth / v.scrollWidth) * 0.97) : null));
  values.forEach((v, i) => { if (sizes[i] !== null) v.style.fontSize = `${sizes[i].toFixed(1)}px`; });
}

let fitQueued = false;
window.addEventListener("resize", () => {  // the cards' widths follow the window's
  if (fitQueued) return;
  fitQueued = true;
  requestAnimationFrame(() => { fitQueued = false; fitValues(); });
});

/** A progress bar: fraction 0..1 (null: indeterminate), a state class, a text on it. */
export function progress(fraction, text, state = "") {
  const fillNode = el("div", { class: "fill" });
  const known = typeof fraction === "number" && Number.isFinite(fraction);
  fillNode.style.width = `${known ? Math.max(0, Math.min(1, fraction)) * 100 : 100}%`;
  return el("div", {
    class: `progress ${state}${known ? "" : " indeterminate"}`, role: "progressbar", "aria-valuemin": 0,
    "aria-valuemax": 100, "aria-valuenow": known ? Math.round(fraction * 100) : null, "aria-label": text,
  }, fillNode, el("span", { class: "text" }, text));
}

/** A state chip (`.state.running` ...). */
export const stateChip = (state) => el("span", { class: `state ${state}` }, state);

/** Prev / next buttons over `{total, offset}` with `limit` rows a page; `go(offset)` on a click. */
export function pager(total, offset, limit, go, noun = "rows") {
  const last = Math.max(0, Math.ceil(total / limit) - 1) * limit;
  const shown = total ? `${noun} ${offset + 1}–${Math.min(total, offset + limit)} of ${total}` : `no ${noun}`;
  return el("div", { class: "pager" },
    el("button", { type: "button", "data-key": "pager-first", disabled: offset <= 0, onclick: () => go(0) }, "First"),
    el("button", { type: "button", "data-key": "pager-prev", disabled: offset <= 0,
      onclick: () => go(Math.max(0, offset - limit)) }, "Previous"),
    el("button", { type: "button", "data-key": "pager-next", disabled: offset + limit >= total,
      onclick: () => go(offset + limit) }, "Next"),
    el("button", { type: "button", "data-key": "pager-last", disabled: offset >= last, onclick: () => go(last) }, "Last"),
    el("span", { class: "info", role: "status" }, shown));
}
