#!/bin/bash
# GPU check (run by hand on a CUDA machine, e.g. the device tool): NCCL auto-selection through
# torchrun --rdzv-backend=torchrt, and the checkpoint CUDA staging path (pinned buffer + copy
# stream) with a bit-exact round trip. Writes under $OUT (default /tmp/torchrt-gpu-check).
: "${OUT:=/tmp/torchrt-gpu-check}"
set -x
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
python3 -c "import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.device_count())"
mkdir -p $OUT/res
RESULT_DIR=$OUT/res timeout 60 python3 -m torch.distributed.run --rdzv-backend=torchrt --rdzv-endpoint=127.0.0.1:29777 \
  --nnodes=1 --nproc-per-node=1 --rdzv-conf run_dir=$OUT/run examples/allreduce.py > $OUT/torchrun.log 2>&1
echo "torchrun rc=$?"; cat $OUT/res/rank0.json; tail -5 $OUT/torchrun.log
timeout 60 python3 - <<'PY'
import tempfile, torch
from torchrt.checkpoint import CheckpointManager
torch.manual_seed(0)
m = torch.nn.Linear(256, 256).cuda(); opt = torch.optim.Adam(m.parameters())
m(torch.randn(8, 256, device="cuda")).sum().backward(); opt.step()
d = tempfile.mkdtemp()
events = []
from torchrt.telemetry import NullReporter, set_reporter
class R(NullReporter):
    def emit(self, type, **f): events.append((type, f))
set_reporter(R())
with CheckpointManager(d, keep=2) as ck:
    h = ck.save({"model": m, "optim": opt}, step=1); print("status", h.wait())
m2 = torch.nn.Linear(256, 256).cuda(); opt2 = torch.optim.Adam(m2.parameters())
m2(torch.randn(8, 256, device="cuda")).sum().backward(); opt2.step()
with CheckpointManager(d) as ck:
    r = ck.load_latest({"model": m2, "optim": opt2}); print("restored", r.step)
same = all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
print("bit-exact", same, "device", next(m2.parameters()).device)
print([ (t, f.get("staging"), f.get("stall_s")) for t, f in events if t == "checkpoint_saved"])
PY
echo "ckpt rc=$?"
