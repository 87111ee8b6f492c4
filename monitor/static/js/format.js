// How numbers, sizes, times and durations read on every page. null/undefined/NaN read "–".

export const DASH = "–";
const known = (v) => typeof v === "number" && Number.isFinite(v);

/** A number with at most `digits` decimals (fewer for big values), grouped. */
export function num(v, digits = 1) {
  if (!known(v)) return DASH;
  const abs = Math.abs(v);
  const d = abs >= 1000 ? 0 : abs >= 100 ? Math.min(digits, 1) : digits;
  return v.toLocaleString("en-US", { maximumFractionDigits: d, minimumFractionDigits: 0 });
}

export const int = (v) => (known(v) ? Math.round(v).toLocaleString("en-US") : DASH);

/** 0.423 -> "42.3%" (a fraction) ; pct(42.3, false) -> "42.3%" (already a percentage). */
export function pct(v, fraction = true, digits = 1) {
  return known(v) ? `${num(fraction ? v * 100 : v, digits)}%` : DASH;
}

const BYTE_UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

export function bytes(v) {
  if (!known(v)) return DASH;
  let i = 0;
  let x = Math.abs(v);
  while (x >= 1024 && i < BYTE_UNITS.length - 1) { x /= 1024; i += 1; }
  return `${v < 0 ? "-" : ""}${num(x, x >= 10 ? 1 : 2)} ${BYTE_UNITS[i]}`;
}

/** Milliseconds: "850 µs", "12.4 ms", "1.25 s". */
export function ms(v) {
  if (!known(v)) return DASH;
  if (v === 0) return "0 ms";
  if (Math.abs(v) < 1) return `${num(v * 1000, 0)} µs`;
  if (Math.abs(v) < 1000) return `${num(v, v < 10 ? 2 : 1)} ms`;
  return `${num(v / 1000, 2)} s`;
}

export const us = (v) => (known(v) ? ms(v / 1000) : DASH);
export const seconds = (v) => (known(v) ? ms(v * 1000) : DASH);

/** Two formatted values as "a / b", with their unit written once when they share it: "716 / 980 µs"
 * (a card fits a longer value by shrinking its font: dom.js fitValues). */
export function pair(a, b) {
  const unit = (text) => (text.includes(" ") ? text.slice(text.lastIndexOf(" ") + 1) : null);
  const shared = unit(a);
  if (shared === null || shared !== unit(b)) return `${a} / ${b}`;
  return `${a.slice(0, -shared.length - 1)} / ${b}`;
}

/** A span of seconds for people: "42 s", "3 min 12 s", "2 h 05 min", "3 d 4 h". */
export function duration(s) {
  if (!known(s)) return DASH;
  if (s < 0) return `-${duration(-s)}`;
  if (s < 10) return `${num(s, 1)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(Math.round(s % 60)).padStart(2, "0")} s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ${String(m % 60).padStart(2, "0")} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

/** How long before `now` (both unix seconds): "3.2 s ago". */
export function ago(ts, now) {
  if (!known(ts) || !known(now)) return DASH;
  const d = now - ts;
  return d < 0.5 ? "now" : `${duration(d)} ago`;
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

/** Unix seconds -> local "HH:MM:SS" (with tenths when asked). */
export function clock(ts, tenths = false) {
  if (!known(ts)) return DASH;
  const d = new Date(ts * 1000);
  const base = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return tenths ? `${base}.${Math.floor(d.getMilliseconds() / 100)}` : base;
}

/** Unix seconds -> local "YYYY-MM-DD HH:MM:SS". */
export function dateTime(ts) {
  if (!known(ts)) return DASH;
  const d = new Date(ts * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(ts)}`;
}

export const rate = (v, unit = "/s") => (known(v) ? `${num(v, v < 10 ? 2 : 1)} ${unit}` : DASH);
export const mbps = (v) => (known(v) ? `${num(v, v < 10 ? 2 : 1)} MB/s` : DASH);

/** "0-3, 5, 7-9" from a list of ranks. */
export function ranges(values) {
  const sorted = [...new Set(values)].filter(Number.isInteger).sort((a, b) => a - b);
  const out = [];
  for (let i = 0; i < sorted.length; i += 1) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j] + 1) j += 1;
    out.push(i === j ? `${sorted[i]}` : `${sorted[i]}-${sorted[j]}`);
    i = j;
  }
  return out.join(", ");
}

/** Any JSON value as one short line (for tables of settings, event fields). */
export function brief(v, max = 160) {
  if (v === null || v === undefined) return DASH;
  const s = typeof v === "string" ? v : JSON.stringify(v);
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}
