// Stacks: take a dump of one or every rank with a click (POST /api/v1/stacks; live only, and with the
// token when the monitor has one), see it grouped (ranks whose stacks are the same in one group,
// largest first, with the collectives each waits in; torchrt.view.stacks), and open earlier dumps
// (GET /api/v1/stacks: also the ones the coordinator took itself of stalled ranks).

import { ApiError, getJSON, postJSON } from "../api.js";
import { el, fill, table } from "../dom.js";
import { clock, ranges, seconds } from "../format.js";
import { Poll, report, startPage } from "../shell.js";

let shown = null; // the grouped dump on screen
const earlier = { rows: [], poll: new Poll(5000) };
const internal = document.getElementById("show-internal");

const ctl = startPage({
  wants: () => [],
  render,
  refresh: (view, force) => earlier.poll.run(async () => {
    earlier.rows = (await getJSON("/stacks")).items || [];
    ctl.rerender();
  }, force || view.events.some((e) => e.type === "stacks_dumped")),
});

document.getElementById("take").addEventListener("submit", (event) => { event.preventDefault(); take(null); });
document.getElementById("take-one").addEventListener("click", () => {
  const value = document.getElementById("take-rank").value;
  const rank = Number(value);
  if (value === "" || !Number.isInteger(rank) || rank < 0) {
    document.getElementById("take-hint").textContent = "Give a rank (0 or more) to dump one rank.";
    document.getElementById("take-rank").focus();
    return;
  }
  take(rank);
});
internal.addEventListener("change", () => showDump(shown));

async function take(rank) {
  const buttons = [document.getElementById("take-all"), document.getElementById("take-one")];
  buttons.forEach((b) => { b.disabled = true; });
  fill(document.getElementById("dump"), el("p", { class: "empty" }, rank === null ? "Asking every rank…" : `Asking rank ${rank}…`));
  try {
    showDump(await postJSON("/stacks", { rank }));
    earlier.poll.run(async () => {
      earlier.rows = (await getJSON("/stacks")).items || [];
      ctl.rerender();
    }, true);
  } catch (error) {
    if (error instanceof ApiError) {
      fill(document.getElementById("dump"), el("p", { class: "error-text", role: "alert" },
        error.status === 409 ? "This is a replay: stacks can only be taken of a running job. Earlier dumps are below."
          : error.status === 401 || error.status === 403 ? "Taking stacks needs the job's token: sign in first."
            : `The dump failed: ${error.message}`));
    } else report(error);
  } finally {
    buttons.forEach((b) => { b.disabled = ctl.view.mode === "replay"; });
  }
}

async function open(request) {
  try {
    showDump(await getJSON(`/stacks/${encodeURIComponent(request)}`, {}, { atTime: false }));
  } catch (error) { report(error); }
}

function frames(thread) {
  const list = [...(thread.frames || [])].reverse(); // innermost first, as py-spy prints them
  return el("pre", { class: "stack" }, list.map((f) => el("span", { class: "frame" },
    el("span", { class: "fn" }, f.function || "?"), el("span", { class: "loc" }, ` (${f.file}:${f.line})`),
    f.code ? el("span", { class: "code" }, `\n    ${f.code}`) : null, "\n")),
    thread.truncated ? el("span", { class: "loc" }, `… ${thread.truncated} outer frames not shown`) : null);
}

function showDump(dump) {
  shown = dump;
  const meta = document.getElementById("dump-meta");
  const box = document.getElementById("dump");
  if (!dump) return;
  meta.textContent = `dump ${dump.request}${dump.reason ? ` (${dump.reason})` : ""} · ${clock(dump.ts)} · ${dump.ranks ?? "?"} ranks` +
    (dump.path ? ` · ${dump.path}` : "");
  const groups = dump.groups || [];
  const total = groups.reduce((n, g) => n + g.ranks.length, 0);
  fill(box, el("p", {}, el("strong", {}, dump.summary || "no ranks")),
    groups.length ? groups.map((g, i) => {
      const threads = (g.threads || []).filter((t) => internal.checked || !t.internal);
      const title = g.answer === "answered" ? `in ${g.where || "?"}` : g.answer.replace("_", " ") + (g.detail ? `: ${g.detail}` : "");
      return el("details", { class: "group", open: i < 3, "data-group": i, "data-ranks": g.ranks.join(",") },
        el("summary", {}, `${g.ranks.length} of ${total} rank${g.ranks.length === 1 ? "" : "s"} ${title}`,
          el("span", { class: "ranks" }, `ranks ${ranges(g.ranks)}`)),
        g.answer === "answered" ? [
          threads.map((t) => el("div", {}, el("h3", {}, `Thread ${t.name}${t.internal ? " (torchrt)" : ""}`), frames(t))),
          (g.collectives || []).length ? el("div", {}, el("h3", {}, "Waiting in collectives"), el("ul", {},
            g.collectives.map((c) => el("li", {}, el("code", {}, c.collective), ` — ranks ${ranges(c.ranks)}`)))) : null,
        ] : el("p", { class: "hint" }, g.answer === "no_answer" ? `No answer within ${seconds(dump.timeout_s)}: the rank may be stuck in C code holding the GIL.`
          : g.answer === "gone" ? "These ranks have no live worker." : ""));
    }) : el("p", { class: "empty" }, "The dump was too large to send whole: read it in the run directory."));
}

function render(view) {
  const replay = view.mode === "replay";
  for (const id of ["take-all", "take-one"]) document.getElementById(id).disabled = replay;
  document.getElementById("take-hint").textContent = replay
    ? "Replaying a run directory: new dumps need a running job; the dumps it took are below."
    : "Every thread's Python stack of each rank, and the collectives it is waiting in; ranks with the same stacks are grouped.";
  const rows = replay && view.at !== null ? earlier.rows.filter((r) => !(r.ts > view.at)) : earlier.rows;
  fill(document.getElementById("earlier"), table([
    { label: "Dump", cell: (r) => el("button", { type: "button", "data-key": `open-${r.request}`, onclick: () => open(r.request) },
      `Open #${r.request}`) },
    { label: "Time", cell: (r) => clock(r.ts) },
    { label: "Why", cell: (r) => r.reason || "–" },
    { label: "Ranks", cell: (r) => (Array.isArray(r.ranks) ? ranges(r.ranks) : r.ranks ?? "–") },
    { label: "Answered", num: true, cell: (r) => (Array.isArray(r.answered) ? r.answered.length : r.answered ?? "–") },
    { label: "Missing", cell: (r) => (r.missing && typeof r.missing === "object" ? Object.entries(r.missing)
      .map(([why, ranks]) => `${why}: ${Array.isArray(ranks) ? ranges(ranks) : ranks}`).join("; ") || "none" : r.missing ?? "none") },
    { label: "Slowest answer", num: true, cell: (r) => seconds(r.slowest_s) },
  ], rows, { empty: "No dump taken yet." }));
}
