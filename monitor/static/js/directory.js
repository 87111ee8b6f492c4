// Who is where: nodes (rendezvous/nodes) and their machines (machines/machines) by node id, read a page
// of 1,000 at a time and refreshed at most every few seconds; and what state a worker is in, as a
// person would say it (running, straggling, stalled, restarting, dead, finished, stopped).

import { getAllRows } from "./api.js";
import { workerName } from "./names.js";
import { Poll } from "./shell.js";

export const STALLED = "rank_stalled";
export const STRAGGLING = "rank_straggling";

export class Directory {
  constructor(everyMs = 5000) {
    this.nodes = new Map();
    this.machines = new Map();
    this.poll = new Poll(everyMs);
  }

  /** Read both lists again (at most every `everyMs`, or now when `force`). */
  refresh(force = false) {
    return this.poll.run(async () => {
      const [nodes, machines] = await Promise.all([getAllRows("rendezvous", "nodes"), getAllRows("machines", "machines")]);
      this.nodes = new Map(nodes.map((n) => [n.node_id, n]));
      this.machines = new Map(machines.map((m) => [m.node_id, m]));
    }, force);
  }

  node(id) { return this.nodes.get(id) || null; }
  host(id) { return this.node(id)?.hostname || this.machines.get(id)?.hostname || null; }
  deviceKind(id) { return this.node(id)?.device_kind || null; }

  /** The worker process row (machines page) of a node's pid. */
  process(id, pid) {
    const machine = this.machines.get(id);
    return machine ? (machine.workers || []).find((w) => w.pid === pid) || null : null;
  }

  /** `cpu-worker-01` for a workers row. */
  name(row) { return workerName(row.rank, this.deviceKind(row.node_id)); }
}

/** A workers row's state for people (see the module docstring). */
export function workerStatus(row, directory, snapshot) {
  const alerts = row.alerts || {};
  if (row.state === "running") {
    if (alerts[STALLED]) return "stalled";
    if (alerts[STRAGGLING]) return "straggling";
    return "running";
  }
  const node = directory ? directory.node(row.node_id) : null;
  const proc = directory ? directory.process(row.node_id, row.pid) : null;
  if (node && node.status === "dead") return "dead";
  if (proc && typeof proc.exit_code === "number") return proc.exit_code === 0 ? "finished" : "dead";
  const rendezvous = (snapshot && snapshot.rendezvous) || {};
  const workers = (snapshot && snapshot.workers) || {};
  if (rendezvous.pending || (Number.isInteger(workers.round) && Number.isInteger(row.round) && workers.round > row.round
      && (workers.by_state || {}).running)) return "restarting";
  if ((snapshot && snapshot.run && snapshot.run.running === false) || rendezvous.closed) return "finished";
  return "stopped";
}

export const STATUS_ORDER = ["running", "straggling", "stalled", "restarting", "dead", "finished", "stopped"];
export const STATUS_COLOR = { running: "--ok", straggling: "--warn", stalled: "--err", restarting: "--chart-4",
                              dead: "--err", finished: "--info", stopped: "--idle" };

/** Step and epoch ranges over worker rows (a stopped row keeps its last logged report): what the cards
 *  show once no rank reports any more (a finished run, a replay at its end). */
export function lastProgress(rows) {
  const steps = rows.map((r) => r.step).filter(Number.isInteger);
  const epochs = rows.map((r) => r.epoch).filter(Number.isInteger);
  const range = (xs) => (xs.length ? { min: Math.min(...xs), max: Math.max(...xs) } : { min: null, max: null });
  return { step: range(steps), epoch: range(epochs) };
}
