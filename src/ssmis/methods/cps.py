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

from ssmis.losses import class_argmax, cross_entropy
from ssmis.methods.base import Batch, UnsupervisedTerm
from ssmis.methods.cotraining import DualNetMethod, DualNetParams, init_conv_weights
from ssmis.methods.terms import RampedConsistencyParams, SupervisedLossParams


class CPSParams(SupervisedLossParams, RampedConsistencyParams, DualNetParams):
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


class CPS(DualNetMethod[CPSParams]):
    name = "cps"
    summary = ("CPS: two networks trained on each other's hard pseudo-labels "
               "(Chen et al. 2021, SSL4MIS)")
    Params = CPSParams

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        p = self.params
        kinds = ("kaiming", "xavier") if p.init == "kaiming_xavier" else ("default", "default")
        self.net1 = init_conv_weights(self.build_network(), kinds[0])
        self.net2 = init_conv_weights(self.build_network(), kinds[1])
        self._init_choice()

    def unsupervised_terms(self) -> list[UnsupervisedTerm]:
        p = self.params
        return [UnsupervisedTerm("cross pseudo supervision", p.consistency_weight, p.consistency,
                                 ("consistency_rampup",))]

    def training_step(
        self, labeled: Batch, unlabeled: Batch | None, step: int
    ) -> dict[str, torch.Tensor]:
        if unlabeled is None:
            raise ValueError(f"{self.name} needs an unlabeled batch")
        p = self.params
        n = labeled["image"].shape[0]
        x = torch.cat([labeled["image"], unlabeled["image"]], dim=0)
        z1, z2 = self.net1(x), self.net2(x)
        sup1 = p.supervised_loss(z1[:n], labeled["label"])[0]
        sup2 = p.supervised_loss(z2[:n], labeled["label"])[0]
        start = 0 if p.pseudo_on == "all" else n
        cps1, cps2 = cps_loss(z1[start:], z2[start:]), cps_loss(z2[start:], z1[start:])
        weight = p.consistency_weight(step)
        loss = sup1 + sup2 + weight * (cps1 + cps2)
        return {"loss": loss, "loss_sup1": sup1.detach(), "loss_sup2": sup2.detach(),
                "loss_cps1": cps1.detach(), "loss_cps2": cps2.detach(),
                "consistency_weight": torch.tensor(weight)}
