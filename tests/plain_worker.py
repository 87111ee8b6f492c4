"""A plain torchrun script: it never imports torchrt (nor torch).

It holds about 64 MB and keeps half a core busy until the file ``STOP_FILE`` appears (at most
60 s), then exits 0; tests/test_job_view.py watches it through the torchrt rendezvous handler
of its agent alone.
"""

import os
import time

held = bytearray(64 * 1024 * 1024)
for i in range(0, len(held), 4096):
    held[i] = 1
deadline = time.monotonic() + 60
while not os.path.exists(os.environ["STOP_FILE"]) and time.monotonic() < deadline:
    busy_until = time.monotonic() + 0.01
    while time.monotonic() < busy_until:
        pass
    time.sleep(0.01)
