// Worker names as people read them: `cpu-worker-01`, `gpu-worker-01` (the node's device kind, global rank + 1).

const KIND = { cuda: "gpu", gpu: "gpu", cpu: "cpu" };

/** The worker's name from its global rank and its node's device kind ("cuda" | "cpu"). */
export function workerName(rank, deviceKind) {
  if (!Number.isInteger(rank)) return "worker-?";
  const kind = KIND[deviceKind] ?? (typeof deviceKind === "string" && deviceKind ? deviceKind : null);
  const number = String(rank + 1).padStart(2, "0");
  return kind ? `${kind}-worker-${number}` : `worker-${number}`;
}
