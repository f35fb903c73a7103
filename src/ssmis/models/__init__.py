"""Backbones by name, so configs (``model.name`` / ``model.options``) pick the network.

Both backbones are an encoder returning 5 feature maps plus one or more decoders; methods that
need extra decoders, other upsampling or intermediate features ask for them through options
(``num_decoders``, ``up_types``) and the ``encode`` / ``decode`` methods.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from ssmis.errors import SSMISError
from ssmis.models.sam_lora import SamLoRA
from ssmis.models.unet2d import UNet2D, UNetDecoder, UNetEncoder
from ssmis.models.vnet3d import VNet3D, VNetDecoder, VNetEncoder

# sam_lora imports the optional ``segment-anything`` package only when it is built
_REGISTRY: dict[str, type[nn.Module]] = {"unet2d": UNet2D, "vnet3d": VNet3D, "sam_lora": SamLoRA}
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)

__all__ = [
    "MODEL_NAMES",
    "SamLoRA",
    "UNet2D",
    "UNetDecoder",
    "UNetEncoder",
    "VNet3D",
    "VNetDecoder",
    "VNetEncoder",
    "build_model",
    "count_parameters",
    "input_problem",
    "spatial_dims",
]


def _model_class(name: str) -> type[nn.Module]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SSMISError(
            f"model.name: unknown model {name!r}; expected one of: {', '.join(MODEL_NAMES)}"
        ) from None


def model_options(name: str) -> tuple[str, ...]:
    """Option names ``model.options`` may set for this model (constructor keywords)."""
    params = inspect.signature(_model_class(name).__init__).parameters
    return tuple(p for p in params if p not in ("self", "in_channels", "num_classes"))


def build_model(name: str, in_channels: int, num_classes: int, **options: Any) -> nn.Module:
    """The named backbone; unknown names or options are user errors reported on one line."""
    cls = _model_class(name)
    valid = model_options(name)
    for key in options:
        if key not in valid:
            raise SSMISError(
                f"model.options.{key}: unknown option for {name}; valid: {', '.join(valid)}"
            )
    return cls(in_channels=in_channels, num_classes=num_classes, **options)


def input_problem(name: str, options: dict[str, Any], patch: list[int],
                  batch: int) -> str | None:
    """Why training inputs of ``patch`` in forward batches of ``batch`` cannot go through the
    named model, or None (models without a rule accept any size)."""
    check = getattr(_model_class(name), "input_problem", None)
    return check(patch, batch, options) if check is not None else None


def spatial_dims(name: str) -> int:
    """2 for slice-wise models, 3 for volumetric ones (decides the data pipeline)."""
    return int(_model_class(name).spatial_dims)  # type: ignore[attr-defined]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once), as quoted in papers."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
