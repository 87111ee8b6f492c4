// Settings: where the monitor looks (coordinator endpoint, run id, run directory, its own and
// TensorBoard's URLs), versions, the effective configuration (no secrets: the server leaves them out),
// and this browser's own preference: how often live updates are drawn.

import { getJSON } from "../api.js";
import { el, fill, kvTable } from "../dom.js";
import { brief } from "../format.js";
import { Poll, refreshInterval, setRefreshInterval, startPage } from "../shell.js";

const poll = new Poll(10000);
let settings = null;
const refresh = document.getElementById("refresh");
refresh.value = String(refreshInterval());
if (refresh.selectedIndex < 0) refresh.value = "0";
refresh.addEventListener("change", () => setRefreshInterval(Number(refresh.value)));

const ctl = startPage({
  wants: () => [],
  render,
  refresh: (view, force) => poll.run(async () => {
    settings = await getJSON("/settings", {}, { atTime: false });
    ctl.rerender();
  }, force),
});

const link = (url) => (url ? el("a", { href: url, target: "_blank", rel: "noopener noreferrer" }, url) : "–");

/** A nested value as nested key/value tables (lists and scalars as one line). */
function value(v) {
  if (v && typeof v === "object" && !Array.isArray(v)) {
    const entries = Object.entries(v);
    return entries.length ? kvTable(entries.map(([k, x]) => [k, value(x)])) : "–";
  }
  return el("span", { class: "mono" }, brief(v, 400));
}

function render(view) {
  if (!settings) return;
  const s = settings;
  const versions = s.versions || {};
  fill(document.getElementById("connection"), kvTable([
    ["Mode", s.mode === "replay" ? "replay of a run directory" : `live${s.connected === false ? " (not connected)" : ""}`],
    ["Coordinator endpoint", el("span", { class: "mono" }, s.endpoint || "–")],
    ["Run id", el("span", { class: "mono" }, s.run_id || "–")],
    ["Run directory", el("span", { class: "mono" }, `${s.run_dir || "–"}${s.run_dir_readable === false ? " (not readable from here)" : ""}`)],
    ["Monitor URL", link(s.monitor_url)],
    ["TensorBoard URL", link(s.tensorboard_url)],
    ["TensorBoard event files", el("span", { class: "mono" }, s.tensorboard_dir || "–")],
    ["torch", versions.torch || "–"],
    ["torchrt", versions.torchrt || "–"],
    ["Python", versions.python || "–"],
    ["Coordinator's versions", value(versions.coordinator)],
  ]));
  const config = s.config || {};
  fill(document.getElementById("config"), Object.keys(config).length
    ? Object.entries(config).map(([name, v]) => el("div", {}, el("h3", {}, name), value(v)))
    : el("p", { class: "empty" }, "No configuration recorded yet."));
}
