"""Checkpoints that execute no code on load, written atomically.

Weights go to safetensors; the training state (optimizer, step, random states) goes to a
``torch.save`` file holding only tensors and plain containers, loaded with ``weights_only=True``.
Both are written to a temporary file in the same folder and renamed, so a crash never leaves a
half-written checkpoint behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ssmis.errors import SSMISError


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise SSMISError(f"{path}: checkpoint not found")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises several types for a damaged file
        raise SSMISError(f"{path}: not a readable safetensors checkpoint ({err})") from None


def read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def save_state(path: Path, state: dict[str, Any]) -> None:
    _atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SSMISError(f"{path}: training state not found (was the run started?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SSMISError(f"{path}: unreadable training state ({err})") from None
