"""Optimizers that methods may ask the engine for (see :meth:`Method.make_optimizer`).

:class:`CombinedOptimizer` steps several torch optimizers as one (SynFoC: AdamW for the SAM
adapter and decoder, SGD for the U-Net). Its ``param_groups`` is the concatenation of theirs, so
the engine's learning-rate schedule reaches every group; a group may carry ``lr_scale`` (its
learning rate relative to ``train.lr``), which the engine multiplies in.
"""

from __future__ import annotations

from typing import Any

import torch


class CombinedOptimizer:
    """Several optimizers behind the subset of the ``torch.optim.Optimizer`` API the engine
    uses (``param_groups``, ``zero_grad``, ``step``, ``state_dict``, ``load_state_dict``)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        if not optimizers:
            raise ValueError("CombinedOptimizer needs at least one optimizer")
        self.optimizers = list(optimizers)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        states = state.get("optimizers") if isinstance(state, dict) else None
        if not isinstance(states, list) or len(states) != len(self.optimizers):
            raise ValueError("optimizer state does not match this CombinedOptimizer")
        for opt, s in zip(self.optimizers, states, strict=True):
            opt.load_state_dict(s)
