"""Mean-teacher machinery shared by every method with an EMA teacher (MT, UA-MT, BCP, CVBM, ...).

* :func:`make_teacher`: a frozen (:func:`freeze`) copy of the student, registered by the caller
  as a submodule so it is checkpointed with the method;
* :func:`ema_update`: the teacher update, in the variants the reference codes use;
* :func:`teacher_mode`: run the teacher in train mode (the originals never call ``.eval()``:
  dropout on, BatchNorm on batch statistics) or in eval mode;
* :func:`gaussian_noise`: SSL4MIS's input perturbation ``clamp(randn * 0.1, -0.2, 0.2)``.

The LCC filter BCP and CVBM apply to pseudo-labels lives in :mod:`ssmis.components`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from ssmis.methods.base import MethodParams

BufferPolicy = Literal["own", "ema"]


class EMAParams(MethodParams):
    """Teacher options shared by the teacher-student methods."""

    ema_decay: float = Field(default=0.99, ge=0, le=1, description="EMA decay alpha")
    ema_warmup: bool = Field(
        default=True,
        description="SSL4MIS/UA-MT: alpha = min(1 - 1/(step + 1), ema_decay) (true average "
        "early on); false = constant alpha (BCP/CVBM)",
    )
    ema_buffers: BufferPolicy | None = Field(
        default=None,
        description="'own': EMA over parameters only, the teacher's BatchNorm statistics come "
        "from its own train-mode forwards (SSL4MIS, UA-MT, BCP/CVBM LA); 'ema': EMA over the "
        "whole state_dict incl. BN running stats (BCP/CVBM ACDC); null = 'own' while the "
        "teacher runs in train mode, 'ema' with teacher_train_mode false (an eval-mode teacher "
        "never updates its own statistics)",
    )
    teacher_train_mode: bool = Field(
        default=True,
        description="faithful: the teacher is never put in eval mode (dropout active, BN on "
        "batch statistics); false = eval mode for teacher predictions (its BN statistics then "
        "follow the student's by EMA)",
    )



def frozen_teacher_problem(params: Any) -> str | None:
    """One line when teacher options leave an eval-mode teacher's BatchNorm statistics frozen
    (``ema_buffers: own`` with ``teacher_train_mode: false``: only train-mode forwards update
    them); None otherwise. Asked for new experiments (:func:`ssmis.experiment.load_config`);
    runs recorded that way by older versions still load and resume as they trained."""
    if getattr(params, "ema_buffers", None) == "own" and \
            getattr(params, "teacher_train_mode", True) is False:
        return ("method.params.ema_buffers: 'own' with teacher_train_mode false leaves the "
                "eval-mode teacher's BatchNorm statistics frozen (only train-mode forwards "
                "update them); expected 'ema' or null")
    return None


def buffer_policy(ema_buffers: BufferPolicy | None, teacher_train_mode: bool,
                  default: BufferPolicy = "own") -> BufferPolicy:
    """The teacher's buffer update: ``ema_buffers`` when set; else 'ema' for an eval-mode
    teacher (``teacher_train_mode`` false: nothing else would move its BatchNorm statistics)
    and ``default`` (the method's recipe) for a train-mode one."""
    if ema_buffers is not None:
        return ema_buffers
    return default if teacher_train_mode else "ema"


def freeze(module: nn.Module) -> nn.Module:
    """``module`` with every parameter set not to require gradients (a teacher)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` whose parameters do not require gradients."""
    return freeze(copy.deepcopy(student))


def ema_alpha(decay: float, step: int | None = None) -> float:
    """``min(1 - 1/(step + 1), decay)`` with a step (SSL4MIS warm-up), else ``decay``."""
    if step is None:
        return float(decay)
    return float(min(1.0 - 1.0 / (step + 1), decay))


@torch.no_grad()
def copy_weights(teacher: nn.Module, student: nn.Module) -> None:
    """teacher <- student (parameters and buffers)."""
    teacher.load_state_dict(student.state_dict())


@torch.no_grad()
def ema_update(
    teacher: nn.Module,
    student: nn.Module,
    decay: float,
    *,
    step: int | None = None,
    buffers: BufferPolicy = "own",
    names: Sequence[str] | None = None,
) -> float:
    """theta_t <- a theta_t + (1 - a) theta_s; returns the alpha used.

    ``step`` given: SSL4MIS warm-up ``a = min(1 - 1/(step + 1), decay)`` (step 0 copies the
    student). ``buffers='ema'`` also averages floating-point buffers (BN running mean/var) and
    copies integer ones (``num_batches_tracked``), like BCP's state_dict EMA. ``names``: only
    these parameters (SynFoC's LoRA weights; the frozen SAM tensors the teacher shares with the
    student must not be averaged with themselves).
    """
    alpha = ema_alpha(decay, step)
    if names is None:
        t_params, s_params = _pairs(teacher.parameters(), student.parameters())
    else:
        t_named, s_named = dict(teacher.named_parameters()), dict(student.named_parameters())
        t_params, s_params = _pairs(iter([t_named[n] for n in names]),
                                    iter([s_named[n] for n in names]))
    t_float, s_float, t_other, s_other = [], [], [], []
    if buffers == "ema":
        t_buf, s_buf = _pairs(teacher.buffers(), student.buffers())
        for t, s in zip(t_buf, s_buf, strict=True):
            (t_float if t.is_floating_point() else t_other).append(t)
            (s_float if t.is_floating_point() else s_other).append(s)
    targets, sources = t_params + t_float, s_params + s_float
    if EMA_FOREACH:  # one multi-tensor kernel per op instead of two per tensor, same arithmetic
        for group_t, group_s in _same_device_dtype(targets, sources):
            torch._foreach_mul_(group_t, alpha)
            torch._foreach_add_(group_t, group_s, alpha=1.0 - alpha)
    else:  # the plain path (kept for the equality test and for comparisons)
        for t, s in zip(targets, sources, strict=True):
            t.mul_(alpha).add_(s, alpha=1.0 - alpha)
    for t, s in zip(t_other, s_other, strict=True):
        t.copy_(s)
    return alpha


#: ``ema_update`` through ``torch._foreach_*`` (default) or one ``mul_``/``add_`` pair per
#: tensor (the plain path; bitwise the same result, see tests/test_speed.py).
EMA_FOREACH = True


def _pairs(teacher: Iterator[torch.Tensor], student: Iterator[torch.Tensor]
           ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    t, s = list(teacher), [x.detach() for x in student]
    if len(t) != len(s):
        raise ValueError(f"EMA: teacher has {len(t)} tensors, student {len(s)}")
    return t, s


def _same_device_dtype(targets: list[torch.Tensor], sources: list[torch.Tensor]
                       ) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    groups: dict[tuple[torch.device, torch.dtype], tuple[list, list]] = {}
    for t, s in zip(targets, sources, strict=True):
        if s.device != t.device or s.dtype != t.dtype:
            s = s.to(t.device, t.dtype)
        g = groups.setdefault((t.device, t.dtype), ([], []))
        g[0].append(t)
        g[1].append(s)
    return list(groups.values())


@contextmanager
def teacher_mode(teacher: nn.Module, train: bool) -> Iterator[nn.Module]:
    """Run the teacher in train or eval mode inside the block, restoring its mode after."""
    was_training = teacher.training
    teacher.train(train)
    try:
        yield teacher
    finally:
        teacher.train(was_training)


def gaussian_noise(x: torch.Tensor, std: float = 0.1, clip: float = 0.2) -> torch.Tensor:
    """``x + clamp(randn_like(x) * std, -clip, clip)`` (SSL4MIS / UA-MT teacher input)."""
    return x + torch.clamp(torch.randn_like(x) * std, -clip, clip)

