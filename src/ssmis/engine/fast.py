"""The training step's speed settings (``train.compile``, ``train.channels_last``,
``train.foreach``), applied once to the built method by :func:`ssmis.engine.prepare.prepare`.

None of them changes a method's maths: channels-last and compiled kernels give the same losses to
float tolerance, the foreach SGD/EMA updates the same arithmetic bitwise
(``tests/test_speed.py``). Measured costs and gains: ``docs/benchmarks.md``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ssmis.methods import teacher as teacher_module
from ssmis.models.shared import SharedEncoderNet


def use_channels_last(setting: str | bool, device: torch.device) -> bool:
    """``train.channels_last``: auto = on for CUDA runs only."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def memory_format(spatial_dims: int) -> torch.memory_format:
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


def apply_speed_settings(method: nn.Module, train: Any, device: torch.device,
                         spatial_dims: int) -> bool:
    """Channels-last weights, foreach EMA, compiled encoders/decoders, as ``train`` asks.
    Returns whether input batches should be made channels-last too."""
    teacher_module.EMA_FOREACH = bool(train.foreach)
    channels_last = use_channels_last(train.channels_last, device)
    if channels_last:
        method.to(memory_format=memory_format(spatial_dims))
    if train.compile:
        compile_networks(method)
    return channels_last


def compile_networks(method: nn.Module, backend: str = "inductor") -> int:
    """``torch.compile`` (in place, so checkpoint keys stay the same) the encoder and every
    decoder of each backbone of ``method``: methods call them through ``encode``/``decode``, so
    compiling the backbone's ``forward`` alone would miss most calls. Other networks (SAM) stay
    eager. ``backend``: torch.compile's (the tests use ``aot_eager``, which traces forward and
    backward without generating code). Returns the number of modules compiled."""
    n = 0
    for module in method.modules():
        if isinstance(module, SharedEncoderNet):
            module.encoder.compile(backend=backend)
            for dec in module.decoders:
                dec.compile(backend=backend)
            n += 1 + len(module.decoders)
    return n


def batch_to_device(batch: dict[str, Any], device: torch.device,
                    channels_last: bool = False) -> dict[str, Any]:
    """Tensors of ``batch`` on ``device`` (asynchronous copies from pinned memory on CUDA);
    with ``channels_last`` the image in channels-last layout."""
    non_blocking = device.type == "cuda"
    out = {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v
           for k, v in batch.items()}
    image = out.get("image")
    if channels_last and torch.is_tensor(image) and image.ndim in (4, 5):
        out["image"] = image.contiguous(memory_format=memory_format(image.ndim - 2))
    return out
