// What the checkpoint part of the snapshot means for the pages.

/** The saves really in flight: the snapshot's `saving` without an entry that only began after that
 *  step's commit (a rank's `checkpoint_saved` can reach the coordinator after rank 0 committed the
 *  step, and the fold then lists it as a new save; a durable step is not shown as in flight). */
export function inFlight(checkpoints) {
  const committedAt = new Map((checkpoints.committed || []).map((c) => [c.step, c.ts]));
  return (checkpoints.saving || []).filter((s) => {
    const at = committedAt.get(s.step);
    return !(typeof at === "number" && typeof s.first_at === "number" && at <= s.first_at);
  });
}
