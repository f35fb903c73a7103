"""Loss terms several methods share, each with the ``method.params`` fields that set it.

* :class:`SupervisedLossParams`: the SSL4MIS supervised loss ``ce_weight * CE + dice_weight *
  Dice(softmax)`` on labeled samples (supervised, mean teacher, UA-MT, CPS);
* :class:`RampedConsistencyParams`: the weight of an unsupervised term ramped up the SSL4MIS way,
  ``consistency * sigmoid_rampup(step // rampup_iters_per_epoch, consistency_rampup)`` (mean
  teacher, UA-MT, CPS, ALHVR, CVBM).

Both are mixins of :class:`ssmis.methods.base.MethodParams`: put them before the method's other
Params base so that their fields follow that base's in the config.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ssmis.losses import cross_entropy, dice_loss
from ssmis.methods.base import MethodParams
from ssmis.ramps import ShareOrFloat, ramped_weight, run_share


class SupervisedLossParams(MethodParams):
    """The weighted CE + Dice loss on labeled samples."""

    ce_weight: float = Field(default=0.5, ge=0)
    dice_weight: float = Field(default=0.5, ge=0)
    dice_include_background: bool = Field(
        default=True,
        description="SSL4MIS 2D averages Dice over all classes; UA-MT 3D uses the foreground only",
    )

    def supervised_loss(self, logits: torch.Tensor, label: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(``ce_weight * CE + dice_weight * Dice``, CE, Dice) of ``logits`` against the
        integer ``label`` (Dice of the softmax, over all classes or the foreground only)."""
        ce = cross_entropy(logits, label)
        dice = dice_loss(torch.softmax(logits, dim=1), label,
                         include_background=self.dice_include_background)
        return self.ce_weight * ce + self.dice_weight * dice, ce, dice


class RampedConsistencyParams(MethodParams):
    """An unsupervised weight ramped up with SSL4MIS's sigmoid ramp over 'epochs'."""

    consistency: float = Field(default=0.1, ge=0, description="maximum unsupervised weight")
    consistency_rampup: ShareOrFloat = Field(
        default=200.0, description="ramp length in 'epochs' of rampup_iters_per_epoch "
        "iterations (SSL4MIS ACDC 200, UA-MT LA 40), or a share of train.iterations ('40%': "
        "a per-iteration ramp over 40 % of the run)", json_schema_extra=run_share("epochs"))
    rampup_iters_per_epoch: int = Field(
        default=150, ge=1, description="SSL4MIS feeds iter_num // 150 to the ramp")

    def consistency_weight(self, step: int) -> float:
        """``consistency * sigmoid_rampup(step // rampup_iters_per_epoch, consistency_rampup)``
        at the 0-based iteration ``step`` of the ramp."""
        return ramped_weight(step, self.consistency, self.consistency_rampup,
                             self.rampup_iters_per_epoch)
