"""``RNGState``: the process's random number generators as a Stateful object.

Put ``"rng": RNGState()`` in the state to checkpoint Python's ``random``,
NumPy's global generator, torch's CPU generator and (when CUDA is initialised)
every CUDA device's generator. RNG states differ per rank, so keep ``rng`` a
per-rank key (not in ``replicated``).
"""

from __future__ import annotations

import random
from typing import Any

import torch

__all__ = ["RNGState"]


class RNGState:
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
        try:
            import numpy as np
        except ImportError:  # pragma: no cover - numpy is a torch dependency in practice
            pass
        else:
            state["numpy"] = np.random.get_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        torch.set_rng_state(state["torch"])
        if "numpy" in state:
            import numpy as np

            np.random.set_state(state["numpy"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
