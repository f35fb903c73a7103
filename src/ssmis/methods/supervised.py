"""Supervised baseline: the labeled half of each batch only (the lower bound of every table)."""

from __future__ import annotations

import torch

from ssmis.methods.base import Batch, Method
from ssmis.methods.terms import SupervisedLossParams


class SupervisedParams(SupervisedLossParams):
    """The supervised loss's weights alone."""


class Supervised(Method[SupervisedParams]):
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
        p = self.params
        loss, loss_ce, loss_dice = p.supervised_loss(self.net(labeled["image"]), labeled["label"])
        return {"loss": loss, "loss_ce": loss_ce.detach(), "loss_dice": loss_dice.detach()}

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
