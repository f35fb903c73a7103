"""Supervised baseline: the labeled half of each batch only (the lower bound of every table)."""

from __future__ import annotations

import torch
from pydantic import Field

from ssmis.losses import cross_entropy, dice_loss
from ssmis.methods.base import Batch, Method, MethodParams


class SupervisedParams(MethodParams):
    ce_weight: float = Field(default=0.5, ge=0)
    dice_weight: float = Field(default=0.5, ge=0)
    dice_include_background: bool = Field(
        default=True,
        description="SSL4MIS 2D averages Dice over all classes; UA-MT 3D uses the foreground only",
    )


class Supervised(Method):
    """loss = ce_weight * CE + dice_weight * Dice(softmax) on labeled samples (SSL4MIS recipe)."""

    name = "supervised"
    summary = "labeled data only, 0.5 CE + 0.5 Dice: the lower bound of every table"
    Params = SupervisedParams
    uses_unlabeled = False

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.net = self.build_network()

    def training_step(
        self, labeled: Batch, unlabeled: Batch | None, step: int
    ) -> dict[str, torch.Tensor]:
        p: SupervisedParams = self.params  # type: ignore[assignment]
        logits = self.net(labeled["image"])
        label = labeled["label"]
        loss_ce = cross_entropy(logits, label)
        loss_dice = dice_loss(
            torch.softmax(logits, dim=1), label, include_background=p.dice_include_background
        )
        loss = p.ce_weight * loss_ce + p.dice_weight * loss_dice
        return {"loss": loss, "loss_ce": loss_ce.detach(), "loss_dice": loss_dice.detach()}

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
