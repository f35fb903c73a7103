"""Seeding and random-state capture, so a resumed run continues the same random stream."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def capture_rng_state() -> dict[str, object]:
    """RNG states as tensors/lists only, so the file loads with ``weights_only=True``."""
    np_state = np.random.get_state()
    state: dict[str, object] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, object]) -> None:
    torch.set_rng_state(state["torch"])  # type: ignore[arg-type]
    keys = state["numpy_keys"].numpy().astype(np.uint32)  # type: ignore[attr-defined]
    np.random.set_state(("MT19937", keys, int(state["numpy_pos"]), 0, 0.0))  # type: ignore[arg-type]
    random.setstate((3, tuple(state["python"]), None))  # type: ignore[arg-type]
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])  # type: ignore[arg-type]
