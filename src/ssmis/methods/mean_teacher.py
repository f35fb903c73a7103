"""Mean Teacher (Tarvainen & Valpola 2017) as SSL4MIS ``train_mean_teacher_2D`` / UA-MT run it.

One student forward on the labeled + unlabeled batch (concatenated, so BatchNorm sees both);
supervised loss ``ce_weight * CE + dice_weight * Dice`` on the labeled part; the teacher (EMA of
the student, never put in eval mode by the originals) sees the unlabeled images plus
``clamp(randn * noise_std, -noise_clip, noise_clip)``; consistency = mean squared difference of
the softmax maps, weighted by ``consistency * sigmoid_rampup(step // rampup_iters_per_epoch,
consistency_rampup)``. SSL4MIS 2D additionally sets the consistency to 0 for the first 1,000
iterations (``consistency_start``). EMA after every step with
``alpha = min(1 - 1/(step + 1), ema_decay)``, over parameters only (and the BatchNorm buffers
too with ``teacher_train_mode: false``, see :func:`~ssmis.methods.teacher.buffer_policy`).

Forward passes per iteration: 2 (student on L+U, teacher on noisy U); 1 while the consistency is
off (``step < consistency_start``), because then the teacher output would be unused.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from pydantic import Field, model_validator

from ssmis.methods.base import Batch, Method, UnsupervisedTerm
from ssmis.methods.teacher import (
    EMAParams,
    buffer_policy,
    ema_update,
    gaussian_noise,
    make_teacher,
    teacher_mode,
)
from ssmis.methods.terms import RampedConsistencyParams, SupervisedLossParams
from ssmis.ramps import ShareOrInt, run_share


class MeanTeacherParams(SupervisedLossParams, RampedConsistencyParams, EMAParams):
    consistency_start: ShareOrInt = Field(
        default=0, description="iterations with the consistency switched off "
        "(SSL4MIS train_mean_teacher_2D: 1000), or a share of train.iterations ('3%')",
        json_schema_extra=run_share("iterations"))
    noise_std: float = Field(default=0.1, ge=0, description="teacher input noise std")
    noise_clip: float = Field(default=0.2, ge=0, description="teacher input noise clamp")

    @model_validator(mode="before")
    @classmethod
    def _buffer_default(cls, raw: Any) -> Any:
        """An unset ``ema_buffers`` is 'own' (SSL4MIS, UA-MT) for a train-mode teacher and
        'ema' for an eval-mode one, resolved here so ``config.yaml`` records it."""
        if isinstance(raw, dict) and raw.get("ema_buffers") is None:
            raw = {**raw, "ema_buffers": "own" if raw.get("teacher_train_mode", True) is not
                   False else "ema"}
        return raw


TeacherParamsT = TypeVar("TeacherParamsT", bound=MeanTeacherParams)


class MeanTeacher(Method[TeacherParamsT]):
    name = "mean_teacher"
    summary = ("Mean Teacher: EMA teacher, MSE of softmax outputs with a sigmoid ramp "
               "(Tarvainen & Valpola 2017)")
    Params = MeanTeacherParams

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.student = self.build_network()
        self.teacher = make_teacher(self.student)

    # -- shared with UA-MT ------------------------------------------------------------------
    def supervised(self, logits: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.params
        loss, ce, dice = p.supervised_loss(logits, label)
        return {"loss_sup": loss, "loss_ce": ce, "loss_dice": dice}

    def consistency_weight(self, step: int) -> float:
        p = self.params
        return p.consistency_weight(step)

    def consistency_active(self, step: int) -> bool:
        p = self.params
        return step >= p.consistency_start and p.consistency > 0

    def unsupervised_terms(self) -> list[UnsupervisedTerm]:
        p = self.params
        return [UnsupervisedTerm(
            "consistency",
            lambda s: self.consistency_weight(s) if self.consistency_active(s) else 0.0,
            p.consistency, ("consistency_rampup", "consistency_start"))]

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        p = self.params
        with teacher_mode(self.teacher, p.teacher_train_mode):
            return self.teacher(gaussian_noise(images, p.noise_std, p.noise_clip))

    def consistency_loss(
        self, student_u: torch.Tensor, unlabeled: torch.Tensor, step: int
    ) -> torch.Tensor:
        t = self.teacher_logits(unlabeled)
        return torch.mean((torch.softmax(student_u, 1) - torch.softmax(t, 1)) ** 2)

    # -- the interface ----------------------------------------------------------------------
    def training_step(
        self, labeled: Batch, unlabeled: Batch | None, step: int
    ) -> dict[str, torch.Tensor]:
        if unlabeled is None:
            raise ValueError(f"{self.name} needs an unlabeled batch")
        n = labeled["image"].shape[0]
        logits = self.student(torch.cat([labeled["image"], unlabeled["image"]], dim=0))
        out = self.supervised(logits[:n], labeled["label"])
        weight = self.consistency_weight(step)
        if self.consistency_active(step):
            cons = self.consistency_loss(logits[n:], unlabeled["image"], step)
        else:
            cons = logits.new_zeros(())
        loss = out["loss_sup"] + weight * cons
        logged = {k: v.detach() for k, v in out.items()}
        return {"loss": loss, **logged, "loss_consistency": cons.detach(),
                "consistency_weight": torch.tensor(weight)}

    def on_step_end(self, step: int) -> None:
        p = self.params
        ema_update(self.teacher, self.student, p.ema_decay,
                   step=step if p.ema_warmup else None,
                   buffers=buffer_policy(p.ema_buffers, p.teacher_train_mode))

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.student(images)
