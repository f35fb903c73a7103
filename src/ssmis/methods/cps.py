"""Cross Pseudo Supervision (Chen et al., CVPR 2021) as SSL4MIS
``train_cross_pseudo_supervision_2D.py`` / ``_3D.py`` run it.

Two networks of the same architecture with different initialisations (SSL4MIS: Kaiming-normal
for net 1, Xavier-normal for net 2, conv weights only). Each sees the concatenated batch
[labeled; unlabeled] once (train mode) and is trained on

* ``sup_k = ce_weight * CE(z_k[L], y) + dice_weight * Dice(softmax z_k[L], y)`` (SSL4MIS Dice:
  squared denominators, all classes);
* ``cps_k = CE(z_k[U], argmax softmax z_kbar[U])``: the other network's hard pseudo-label
  (detached);

``loss = sum_k sup_k + w(t) * cps_k`` with ``w(t) = consistency * sigmoid_rampup(t // 150,
consistency_rampup)`` (0.1 and 200). One backward; the two SGD optimizers of the original equal
one SGD over both networks.

Faithful vs the paper: SSL4MIS applies the cross pseudo-label loss to the unlabeled part only
(``pseudo_on='unlabeled'``); the paper also uses it on the labeled images (``'all'``).
Inference: net 1 (SSL4MIS evaluates and saves ``model1``); ``predict_mode`` 'average' averages
both, 'best' lets validation pick.

Forward passes per iteration: 2 (each network once on L+U).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ssmis.losses import class_argmax, cross_entropy, dice_loss
from ssmis.methods.base import Batch, UnsupervisedTerm
from ssmis.methods.cotraining import DualNetMethod, DualNetParams, init_conv_weights
from ssmis.ramps import ShareOrFloat, ramped_weight, run_share


class CPSParams(DualNetParams):
    consistency: float = Field(default=0.1, ge=0, description="max weight of the CPS loss")
    consistency_rampup: ShareOrFloat = Field(
        default=200.0, description="ramp length in 'epochs' of 150 iterations, or a share of "
        "train.iterations ('40%': a per-iteration ramp over 40 % of the run)",
        json_schema_extra=run_share("epochs"))
    rampup_iters_per_epoch: int = Field(default=150, ge=1,
                                        description="SSL4MIS feeds iter_num // 150 to the ramp")
    ce_weight: float = Field(default=0.5, ge=0)
    dice_weight: float = Field(default=0.5, ge=0)
    dice_include_background: bool = Field(
        default=True, description="SSL4MIS CPS (2D and 3D) averages Dice over all classes")
    pseudo_on: Literal["unlabeled", "all"] = Field(
        default="unlabeled",
        description="images the cross pseudo-label loss is applied to: 'unlabeled' (SSL4MIS "
        "code) or 'all' (labeled + unlabeled, the paper)")
    init: Literal["kaiming_xavier", "default"] = Field(
        default="kaiming_xavier",
        description="SSL4MIS: Kaiming-normal net 1, Xavier-normal net 2; 'default' = PyTorch "
        "init for both (still different random draws)")


def cps_loss(logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """CE of ``logits`` against the hard (argmax, detached) prediction of the other network."""
    target = class_argmax(other_logits.detach())
    return cross_entropy(logits, target)


class CPS(DualNetMethod):
    name = "cps"
    summary = ("CPS: two networks trained on each other's hard pseudo-labels "
               "(Chen et al. 2021, SSL4MIS)")
    Params = CPSParams

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        p: CPSParams = self.params  # type: ignore[assignment]
        kinds = ("kaiming", "xavier") if p.init == "kaiming_xavier" else ("default", "default")
        self.net1 = init_conv_weights(self.build_network(), kinds[0])
        self.net2 = init_conv_weights(self.build_network(), kinds[1])
        self._init_choice()

    def supervised(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        p: CPSParams = self.params  # type: ignore[assignment]
        dice = dice_loss(torch.softmax(logits, 1), label,
                         include_background=p.dice_include_background)
        return p.ce_weight * cross_entropy(logits, label) + p.dice_weight * dice

    def unsupervised_terms(self) -> list[UnsupervisedTerm]:
        p = self.params

        def weight(s: int) -> float:
            return ramped_weight(s, p.consistency, p.consistency_rampup,
                                 p.rampup_iters_per_epoch)

        return [UnsupervisedTerm("cross pseudo supervision", weight, p.consistency,
                                 ("consistency_rampup",))]

    def training_step(
        self, labeled: Batch, unlabeled: Batch | None, step: int
    ) -> dict[str, torch.Tensor]:
        if unlabeled is None:
            raise ValueError(f"{self.name} needs an unlabeled batch")
        p: CPSParams = self.params  # type: ignore[assignment]
        n = labeled["image"].shape[0]
        x = torch.cat([labeled["image"], unlabeled["image"]], dim=0)
        z1, z2 = self.net1(x), self.net2(x)
        sup1, sup2 = self.supervised(z1[:n], labeled["label"]), self.supervised(z2[:n],
                                                                                labeled["label"])
        start = 0 if p.pseudo_on == "all" else n
        cps1, cps2 = cps_loss(z1[start:], z2[start:]), cps_loss(z2[start:], z1[start:])
        weight = ramped_weight(step, p.consistency, p.consistency_rampup,
                               p.rampup_iters_per_epoch)
        loss = sup1 + sup2 + weight * (cps1 + cps2)
        return {"loss": loss, "loss_sup1": sup1.detach(), "loss_sup2": sup2.detach(),
                "loss_cps1": cps1.detach(), "loss_cps2": cps2.detach(),
                "consistency_weight": torch.tensor(weight)}
