#!/usr/bin/env bash
# One-command demo (placeholder until the demo issue): set everything up, then
# run a small 2-node job through `torchrt run` on this machine and show its status.
set -euo pipefail
cd "$(dirname "$0")"
make -s setup
PORT="${TORCHRT_DEMO_PORT:-29400}"
ENDPOINT="127.0.0.1:${PORT}"
RUN_DIR="torchrt_runs/demo-$(date +%s)"
echo "== torchrt demo: two nodes x two workers on ${ENDPOINT}, run dir ${RUN_DIR}"
.venv/bin/torchrt doctor
# The first `torchrt run` starts the coordinator; the second joins it as node 2.
.venv/bin/torchrt run configs/allreduce.yaml --set rendezvous.endpoint="${ENDPOINT}" \
    --set job.run_dir="${RUN_DIR}" --set nodes.min=2 &
FIRST=$!
.venv/bin/torchrt run configs/allreduce.yaml --set rendezvous.endpoint="${ENDPOINT}" \
    --set job.run_dir="${RUN_DIR}" --set nodes.min=2 --set rendezvous.is_host=false
wait "${FIRST}"
echo "== events of the run (${RUN_DIR}/events.jsonl):"
cut -c1-160 "${RUN_DIR}/events.jsonl"
