// The monitor's JSON API (/api/v1, docs/api.md): GET/POST helpers, page keys, and the replay time.
//
// Replaying a run, every GET carries `at=<unix ts>` (the header's time slider, see shell.js): the
// server answers with the view as of that time. Errors come back as ApiError with the server's
// message and the offending key.

const BASE = "/api/v1";
let replayAt = null;

export class ApiError extends Error {
  constructor(message, status, key = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.key = key;
  }
}

/** The time the pages show while replaying (null: the end / live). */
export const getAt = () => replayAt;
export function setAt(ts) { replayAt = typeof ts === "number" && Number.isFinite(ts) ? ts : null; }

function url(path, params = {}, atTime = true) {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined && v !== "") query.set(k, String(v));
  }
  if (atTime && replayAt !== null && !query.has("at")) query.set("at", replayAt.toFixed(3));
  const q = query.toString();
  return `${BASE}${path}${q ? `?${q}` : ""}`;
}

async function answer(response) {
  let body = null;
  const type = response.headers.get("content-type") || "";
  if (type.includes("json")) body = await response.json();
  if (!response.ok) {
    const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    throw new ApiError(message, response.status, body && body.key);
  }
  return body;
}

/** GET `/api/v1<path>?params` (plus `at` while replaying) as JSON. */
export async function getJSON(path, params = {}, { signal, atTime = true } = {}) {
  const response = await fetch(url(path, params, atTime), { headers: { Accept: "application/json" },
    credentials: "same-origin", signal });
  if (response.status === 401) goLogin();
  return answer(response);
}

/** POST a JSON body (actions: with a token set, the login cookie carries it). */
export async function postJSON(path, body) {
  const headers = { "Content-Type": "application/json", Accept: "application/json" };
  const response = await fetch(url(path, {}, false), { method: "POST", headers, body: JSON.stringify(body),
    credentials: "same-origin" });
  return answer(response);
}

function goLogin() {
  if (location.pathname !== "/login") location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
}

/** The key a page has in a websocket update's `pages` (monitor-contract.md). */
export const pageKey = ({ part, kind, offset = 0, limit = 100 }) => `${part}/${kind}?offset=${offset}&limit=${limit}`;

/** One page of a part's rows: {total, offset, items}. */
export const getPage = ({ part, kind, offset = 0, limit = 100 }) =>
  getJSON(`/pages/${encodeURIComponent(part)}/${encodeURIComponent(kind)}`, { offset, limit });

/** Every row of a list, a page of 1,000 at a time, at most `max` rows. */
export async function getAllRows(part, kind, max = 20000) {
  const rows = [];
  let total = Infinity;
  while (rows.length < Math.min(total, max)) {
    const page = await getPage({ part, kind, offset: rows.length, limit: 1000 });
    total = page.total;
    rows.push(...page.items);
    if (!page.items.length) break;
  }
  return rows;
}

/** One series' points: {resolution_s, partial, t, count, min, max, mean, last}. */
export const getSeries = (part, subject, measure = "", level = 0) =>
  getJSON("/series", { part, subject, measure, level });
