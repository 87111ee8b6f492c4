// What every page shares: the header (run, mode, connection, replay slider), the data loop, the banner.
//
// `startPage(spec)` loads the snapshot and the pages the page wants over REST, renders, then
//  - live: opens the one websocket (live.js), asks it for the same pages, renders each update;
//  - replay: shows the time slider (and Play); moving it re-requests the snapshot and the pages with
//    `at=` and renders again. The time is kept in the address (?at=) and on the navigation links, so
//    going to another page keeps the moment.
// spec: {wants(): [{part, kind, offset, limit}], render(view), refresh?(view, force): Promise}.
// view: {mode, snapshot, pages: Map(key -> page), events (new since the last render), missed (events the
//        server coalesced away since: read the log again), now, at, span, first (a render after a (re)load:
//        refresh everything)}; `now` is the coordinator's clock (live: the snapshot's written_at;
//        replay: the slider's time), so "3 s ago" never depends on the browser's clock.
// A page asks for a re-read with `ctl.rewant()` (it paged, it changed a filter) or a re-render with
// `ctl.rerender()`. Once the first data (the snapshot, the pages and what `refresh` reads) is drawn,
// `document.body.dataset.rendered` is "1" (what benchmarks and tests wait for).

import { ApiError, getAt, getJSON, getPage, pageKey, setAt } from "./api.js";
import { $, fill } from "./dom.js";
import { dateTime } from "./format.js";
import { LiveSocket } from "./live.js";

const PLAY_TICK_MS = 400;
const PLAY_SPEED = 10; // seconds of the run per second of playback
const REFRESH_KEY = "torchrt.monitor.refresh_ms";

/** The client-side render interval (Settings page): 0 renders every update the server sends. */
export const refreshInterval = () => Number(localStorage.getItem(REFRESH_KEY) || 0);
export const setRefreshInterval = (value) => localStorage.setItem(REFRESH_KEY, String(value));

export function banner(message) {
  const node = $("#banner");
  if (!node) return;
  node.hidden = !message;
  node.textContent = message || "";
}

function setConn(state, text) {
  const node = $("#conn");
  if (!node) return;
  node.className = `conn ${state}`;
  node.textContent = text;
}

/** Throttled REST reads of a page: `poll.run(fn, force)` runs fn when `ms` passed since the last run
 *  (or when forced, e.g. the replay time moved), never two at once; a forced run asked for while one is
 *  under way runs right after it, and a run asked for too soon runs once the interval is over. */
export class Poll {
  constructor(ms) {
    this.ms = ms;
    this.last = 0;
    this.busy = false;
    this.again = false;
    this.trailing = null;
  }

  /** True when fn ran (and did not fail). */
  async run(fn, force = false) {
    if (this.busy) { this.again = this.again || force; return false; }
    const wait = this.ms - (performance.now() - this.last);
    if (!force && wait > 0) {
      if (!this.trailing) this.trailing = setTimeout(() => { this.trailing = null; this.run(fn); }, wait);
      return false;
    }
    clearTimeout(this.trailing);
    this.trailing = null;
    this.busy = true;
    this.last = performance.now();
    try {
      await fn();
      return true;
    } catch (error) {
      report(error);
      return false;
    } finally {
      this.busy = false;
      if (this.again) { this.again = false; this.run(fn, true); }
    }
  }
}

/** An API error shows in the banner; anything else is a bug and goes to the console too. */
export function report(error) {
  if (error instanceof ApiError) banner(`The monitor answered: ${error.message}`);
  else if (error && error.name === "AbortError") return;
  else if (error instanceof TypeError && /fetch/i.test(error.message)) banner("The monitor cannot be reached.");
  else { banner(`This page failed: ${error}`); console.error(error); }
}

/** `path` (a local path, maybe with a query) with the replay time the page shows, if any. */
export function withAt(path, at = getAt()) {
  const target = new URL(path, location.href);
  if (at === null) target.searchParams.delete("at"); else target.searchParams.set("at", at.toFixed(3));
  return target.pathname + target.search + target.hash;
}

function updateNavLinks(at) {
  for (const link of document.querySelectorAll("a[data-nav], a.keep-at")) link.setAttribute("href", withAt(link.getAttribute("href"), at));
  history.replaceState(null, "", withAt(location.pathname + location.search + location.hash, at));
}

async function fillTensorBoardLink() {
  const link = $("#nav-tensorboard");
  if (!link || link.getAttribute("aria-disabled") !== "true") return;
  try {
    const settings = await getJSON("/settings", {}, { atTime: false });
    if (settings && settings.tensorboard_url) {
      link.href = settings.tensorboard_url;
      link.removeAttribute("aria-disabled");
      link.removeAttribute("title");
    }
  } catch (error) {
    /* the link stays disabled */
  }
}

/** Start a page (see the module docstring); returns its controller. */
export function startPage(spec) {
  const view = { mode: null, snapshot: null, pages: new Map(), events: [], missed: 0, now: null, at: null,
                 span: [null, null], first: true };
  let markRendered = false;
  let marking = false;
  let socket = null;
  let renderQueued = false;
  let lastRender = 0;
  let renderTimer = null;
  let sentWants = "[]";

  const doRender = () => {
    renderQueued = false;
    lastRender = performance.now();
    if (!view.snapshot) return;
    view.now = view.mode === "replay" ? (view.at ?? view.span[1]) : (view.snapshot.written_at ?? Date.now() / 1000);
    header(view);
    try {
      spec.render(view);
      if (markRendered) document.body.dataset.rendered = "1";
      // replaying, nothing changes but the time: the page reads again only when it moved
      const reading = spec.refresh && (view.first || view.mode !== "replay") ? spec.refresh(view, view.first) : null;
      if (!markRendered && !marking) { // the next render after the first reads is the first complete one
        marking = true;
        const done = () => { markRendered = true; rerender(); };
        Promise.resolve(reading).then(done, done);
      }
      if (reading) reading.catch(report);
    } catch (error) {
      report(error);
    }
    view.events = [];
    view.missed = 0;
    view.first = false;
    // a page whose wants follow the snapshot (the newest rounds) asks again when they moved
    if (spec.wants && JSON.stringify(spec.wants(view)) !== sentWants) ctl.rewant();
  };

  const rerender = () => {
    if (renderQueued) return;
    renderQueued = true;
    const wait = Math.max(0, refreshInterval() - (performance.now() - lastRender));
    clearTimeout(renderTimer);
    renderTimer = setTimeout(() => requestAnimationFrame(doRender), wait);
  };

  const loadPages = async () => {
    const wants = spec.wants ? spec.wants(view) : [];
    sentWants = JSON.stringify(wants);
    const pages = await Promise.all(wants.map((want) => getPage(want)));
    wants.forEach((want, i) => view.pages.set(pageKey(want), pages[i]));
  };

  const load = async () => {
    const answer = await getJSON("/snapshot");
    view.mode = answer.mode;
    view.snapshot = answer.snapshot;
    view.span = answer.span || [null, null];
    await loadPages();
    banner(null);
  };

  const ctl = {
    view,
    rerender,
    /** The page's wants changed (paging, filters): read them now and tell the socket. */
    async rewant() {
      sentWants = JSON.stringify(spec.wants(view));
      if (socket) socket.want(spec.wants(view));
      try {
        await loadPages();
        view.first = true; // a forced refresh of what the page reads itself
        rerender();
      } catch (error) { report(error); }
    },
    /** The replay time moved: everything again as of `at`. */
    async reload() {
      try { await load(); view.first = true; rerender(); } catch (error) { report(error); }
    },
  };

  const boot = async () => {
    const fromUrl = Number(new URL(location.href).searchParams.get("at"));
    if (fromUrl > 0) setAt(fromUrl);
    try {
      await load();
    } catch (error) {
      report(error);
      setConn("down", "no answer");
      return;
    }
    document.body.dataset.mode = view.mode;
    if (view.mode === "replay") {
      view.at = getAt();
      setupReplay(view, ctl);
      setConn("replay", "replaying the run directory");
    } else {
      setAt(null);
      socket = new LiveSocket({
        onState: (state) => setConn(state === "live" ? "live" : state === "down" ? "down" : "",
                                    state === "live" ? "live" : state === "down" ? "reconnecting" : "connecting"),
        onMessage: (msg) => {
          if (msg.kind !== "update") return;
          if (msg.snapshot) view.snapshot = msg.snapshot;
          if (typeof msg.ts === "number") view.span = [view.span[0] ?? msg.ts, msg.ts];
          for (const [key, page] of Object.entries(msg.pages || {})) view.pages.set(key, page);
          if (Array.isArray(msg.events)) view.events.push(...msg.events);
          if (msg.events_missed) view.missed += msg.events_missed;
          rerender();
        },
      }).start();
      socket.want(spec.wants ? spec.wants(view) : []);
    }
    doRender();
    fillTensorBoardLink();
  };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot, { once: true });
  else boot();
  return ctl;
}

function header(view) {
  const badge = $("#mode-badge");
  if (badge) {
    const ended = view.mode === "live" && view.snapshot.run && view.snapshot.run.running === false;
    badge.className = `badge ${view.mode}`;
    badge.textContent = view.mode === "replay" ? "replay" : ended ? "live · ended" : "live";
  }
  const run = view.snapshot.run || {};
  const runNode = $("#run-id");
  if (runNode && run.run_id) runNode.textContent = `run ${run.run_id}`;
}

function setupReplay(view, ctl) {
  const box = $("#replay");
  const slider = $("#replay-at");
  const label = $("#replay-label");
  const play = $("#replay-play");
  const end = $("#replay-end");
  if (!box || !slider) return;
  const [first, last] = view.span;
  if (typeof first !== "number" || typeof last !== "number") return;
  box.hidden = false;
  slider.min = String(Math.floor(first));
  slider.max = String(Math.ceil(last));
  slider.step = "1";
  const show = () => {
    const at = view.at ?? last;
    slider.value = String(Math.round(at));
    const into = at - first;
    fill(label, `${dateTime(at)} (+${Math.round(into)} s)`);
    slider.setAttribute("aria-valuetext", `${dateTime(at)}, ${Math.round(into)} seconds into the run`);
  };
  let timer = null;
  const goTo = (ts, now = false) => {
    view.at = ts >= last ? null : Math.max(first, ts);
    setAt(view.at);
    updateNavLinks(view.at);
    show();
    clearTimeout(timer);
    timer = setTimeout(() => ctl.reload(), now ? 0 : 150);
  };
  slider.addEventListener("input", () => goTo(Number(slider.value)));
  end.addEventListener("click", () => { stopPlay(); goTo(last, true); });
  let playing = null;
  const stopPlay = () => {
    clearInterval(playing);
    playing = null;
    play.setAttribute("aria-pressed", "false");
    play.textContent = "Play";
  };
  play.addEventListener("click", () => {
    if (playing) { stopPlay(); return; }
    if (view.at === null) goTo(first, true);
    play.setAttribute("aria-pressed", "true");
    play.textContent = "Pause";
    playing = setInterval(() => {
      const next = (view.at ?? last) + (PLAY_TICK_MS / 1000) * PLAY_SPEED;
      if (next >= last) stopPlay();
      goTo(next, true);
    }, PLAY_TICK_MS);
  });
  view.jump = (ts) => { stopPlay(); goTo(ts, true); };
  updateNavLinks(view.at);
  show();
}
