#!/usr/bin/env bash
# One-command demo: set everything up (make setup: .venv with torch and torchrt), then run
# launch/demo.py: a coordinator with its monitor (the URL is printed at once) and two nodes x two
# workers training a small CNN on scikit-learn's digits, a worker killed and a node frozen on the
# way (configs/demo.yaml, demo.faults). The monitor stays up after training until Ctrl-C;
# ./demo.sh --once exits with the job's exit status instead. Any option of launch/demo.py works:
#   ./demo.sh --port 29500 --set demo.epochs=2 --set demo.faults.stop_node=null
set -euo pipefail
cd "$(dirname "$0")"
make -s setup
exec .venv/bin/python -m launch.demo "$@"
