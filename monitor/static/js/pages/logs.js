// Logs: the run's event log (GET /api/v1/events: newest first, filtered by level, type, node, rank and
// text on the server, paged with `before`), errors standing out. Live tail: when the websocket brings
// new events and the newest page is shown, they go on top of it in the same frame (each pushed event
// carries its level; the level, type, node and rank filters are plain equalities, tested here as the
// server tests them). A text search, events the socket missed, or no page yet: the page is read again
// at once instead (one read at a time). The filters live in the address (?level=error&rank=3), so
// other pages link to a filtered log.

import { getAllRows, getJSON } from "../api.js";
import { el, fill, table } from "../dom.js";
import { brief, clock, dateTime } from "../format.js";
import { Poll, startPage } from "../shell.js";

const LIMIT = 100;
const FIELDS = ["level", "type", "node", "rank", "q"];
const ENVELOPE = new Set(["seq", "ts", "type", "level", "what", "node", "node_id", "rank"]);
const form = document.getElementById("filters");
const tail = document.getElementById("f-tail");
let before = null; // null: the newest page
let answer = null;
const seenTypes = new Set();
const poll = new Poll(500);
const nodes = new Poll(10000);

function filters() {
  const out = {};
  for (const name of FIELDS) {
    const value = form.elements[name].value.trim();
    if (value !== "") out[name] = value;
  }
  return out;
}

// the address's filters into the form
const here = new URL(location.href);
for (const name of FIELDS) if (here.searchParams.has(name)) form.elements[name].value = here.searchParams.get(name);

function keepInAddress() {
  const url = new URL(location.href);
  for (const name of FIELDS) url.searchParams.delete(name);
  for (const [k, v] of Object.entries(filters())) url.searchParams.set(k, v);
  history.replaceState(null, "", url.pathname + url.search);
}

async function query() {
  const page = await getJSON("/events", { ...filters(), before, limit: LIMIT });
  answer = (before === null && withPushed(page)) || page;
  for (const e of answer.items || []) seenTypes.add(e.type);
  ctl.rerender();
}

function reread() {
  before = null;
  keepInAddress();
  poll.run(query, true);
}

form.addEventListener("submit", (event) => { event.preventDefault(); reread(); });
form.elements.level.addEventListener("change", reread);
document.getElementById("f-clear").addEventListener("click", () => {
  for (const name of FIELDS) form.elements[name].value = "";
  reread();
});
document.getElementById("older").addEventListener("click", () => {
  if (!answer || answer.next_before === null || answer.next_before === undefined) return;
  before = answer.next_before;
  poll.run(query, true);
});
document.getElementById("newest").addEventListener("click", () => {
  before = null;
  poll.run(query, true);
});

const pushed = []; // the newest events the socket brought that the filters keep (at most LIMIT), newest last

/** The current filters as a test of one event, or null when only the server can tell (a text search). */
function matcher() {
  const f = filters();
  if (f.q !== undefined) return null;
  const types = f.type ? new Set(f.type.split(",").map((t) => t.trim()).filter(Boolean)) : null;
  const rank = f.rank !== undefined ? Number(f.rank) : null;
  return (e) => (!f.level || e.level === f.level) && (!types || types.has(e.type))
    && (!f.node || e.node_id === f.node || e.node === f.node) && (rank === null || e.rank === rank);
}

/** The newest page `page` with the pushed events newer than its newest on top (also for a read that
 * answers from before events the page had already shown); null when the filters cannot be tested here. */
function withPushed(page) {
  const keep = matcher();
  if (!keep) return null;
  const items = page.items || [];
  const newest = items.length ? items[0].seq : 0;
  const fresh = pushed.filter((e) => e.seq > newest && keep(e)).reverse();
  if (fresh.length === 0) return page;
  for (const e of fresh) seenTypes.add(e.type);
  const shown = [...fresh, ...items];
  const trimmed = shown.length > LIMIT;
  return {
    ...page,
    items: shown.slice(0, LIMIT),
    total: typeof page.total === "number" ? page.total + fresh.length : page.total,
    next_before: trimmed ? shown[LIMIT - 1].seq : page.next_before,
  };
}

/** Keep what the socket brought; true when the shown page now has it on top (no read needed).
 * Only events the filters keep are kept: one update can bring an error and, after it, more than
 * LIMIT events of other levels (1,000 ranks log ~100 a second), which must not push it out. */
function foldPushed(view) {
  const last = pushed.length ? pushed[pushed.length - 1].seq : 0;
  const keep = matcher() || (() => true);
  pushed.push(...view.events.filter((e) => e.seq > last && keep(e)));
  pushed.splice(0, Math.max(0, pushed.length - LIMIT));
  if (!answer || view.missed > 0 || !tailing(view)) return false;
  const merged = withPushed(answer);
  if (merged) answer = merged;
  return merged !== null;
}

let folded = false; // this render showed the pushed events itself: no read needed for them

const ctl = startPage({
  wants: () => [],
  render,
  async refresh(view, force) {
    const fresh = (view.events.length > 0 || view.missed > 0) && tailing(view) && !folded;
    await Promise.all([
      (force || fresh) && poll.run(query, true), // else nothing new: no read
      nodes.run(async () => {
        const rows = await getAllRows("rendezvous", "nodes", 2000);
        fill(document.getElementById("nodes"), rows.map((n) => el("option", { value: n.node_id }, n.hostname || "")));
      }, force),
    ]);
  },
});

/** An event's sentence ("what", from the server) with its fields behind it; without one, the fields. */
function details(e) {
  const rest = Object.entries(e).filter(([k]) => !ENVELOPE.has(k));
  const line = rest.map(([k, v]) => `${k}=${brief(v, 80)}`).join("  ");
  if (!e.what && line.length <= 110) return line;
  return el("details", { class: "row-detail" }, el("summary", { "data-key": `ev-${e.seq}` }, e.what || brief(line, 110)),
    el("pre", { class: "stack" }, JSON.stringify(Object.fromEntries(rest), null, 2)));
}

function tailing(view) {
  return tail.checked && before === null && view.mode === "live";
}

function render(view) {
  tail.disabled = view.mode === "replay";
  if (view.mode === "replay") tail.checked = false;
  folded = view.mode === "live" && view.events.length > 0 && foldPushed(view);
  if (!answer) return;
  fill(document.getElementById("types"), [...seenTypes].sort().map((t) => el("option", { value: t })));
  const items = answer.items || [];
  fill(document.getElementById("events"), table([
    { label: "Time", cell: (e) => el("time", { datetime: new Date(e.ts * 1000).toISOString(), title: dateTime(e.ts) }, clock(e.ts, true)) },
    { label: "Level", cls: "lvl", cell: (e) => e.level },
    { label: "Type", cell: (e) => el("code", {}, e.type) },
    { label: "Node", cls: "nowrap mono", cell: (e) => e.node_id || e.node || "–" },
    { label: "Rank", num: true, cell: (e) => (e.rank === undefined || e.rank === null ? "–" : e.rank) },
    { label: "Details", cls: "msg", cell: details },
  ], items, {
    empty: "No event matches these filters.",
    rowAttrs: (e) => ({ class: `level-${e.level}`, "data-seq": e.seq, "data-type": e.type }),
  }));
  const total = typeof answer.total === "number" ? ` of ${answer.total}` : "";
  document.getElementById("count").textContent = `${items.length}${total} events${answer.partial ? " (scan budget reached: older events may match)" : ""}`;
  document.getElementById("older").disabled = answer.next_before === null || answer.next_before === undefined;
  document.getElementById("newest").disabled = before === null;
}
