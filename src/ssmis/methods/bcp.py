"""BCP: Bidirectional Copy-Paste (Bai et al., CVPR 2023), as its ACDC and LA scripts run it.

Phase 1 (``pretrain``, labeled only): the labeled half-batch is split into halves A, B; the
network sees ``M * x_A + (1 - M) * x_B`` (one box of side ``mask_ratio`` x patch, 2/3, per
iteration) and is trained with the region-weighted Dice + CE against ``y_A`` outside the box and
``y_B`` inside (both weights 1). The unlabeled half-batch is loaded by the engine and unused.

Phase 2 (``self_train``): student and EMA teacher start from the best pre-trained weights. The
teacher (train mode, as the original) labels the unlabeled halves ``u_a``, ``u_b`` (threshold /
argmax, then the largest connected component per class); the student sees two mixes, one with
a labeled image outside and an unlabeled box, one the other way round, and each region is scored
against its own source: ground truth with weight 1, pseudo-label with weight ``u_weight`` (0.5).

Recipes (``recipe``, auto = by dimensionality):

* ``acdc``: mixes ``M u_a + (1-M) l_a`` and ``M l_b + (1-M) u_b``;
  loss = (sum Dice + sum CE) / 2 with the SSL4MIS 2D Dice; EMA over the full state_dict.
* ``la``: mixes ``M l_a + (1-M) u_a`` and ``M u_b + (1-M) l_b``; loss = RW(X1) + RW(X2) with the
  per-sample linear Dice (RW contains the 1/2); EMA over parameters; fresh optimizer.

Faithful by default; ``dice_mask_background=true`` fixes the 2D Dice ignoring the region mask
for class 0; ``mask_origin_extent`` reproduces the Pancreas box-origin bug; ``teacher_train_mode
=false`` runs the teacher in eval mode.

Forward passes per iteration: pre-training 1 (student on the mixed labeled pair); self-training
4 (teacher on u_a and on u_b, student on the two mixes; kept separate because BatchNorm/dropout
in train mode make batching them change the result).
"""

from __future__ import annotations

import torch
from pydantic import Field

from ssmis.losses import cross_entropy, linear_dice_loss
from ssmis.methods.base import Batch
from ssmis.methods.copy_paste import pseudo_labels, region_loss_2d, region_loss_3d
from ssmis.methods.teacher import teacher_mode
from ssmis.methods.two_phase import TwoPhaseMethod, TwoPhaseParams, halves
from ssmis.mixing import box_mask, mix


class CopyPasteParams(TwoPhaseParams):
    u_weight: float = Field(default=0.5, ge=0, description="weight of pseudo-labeled regions")
    mask_ratio: float = Field(default=2.0 / 3.0, gt=0, lt=1, description="box side / patch side")
    mask_origin_extent: list[int] | None = Field(
        default=None,
        description="extent the box origin is drawn from (default: the patch). [112,112,80] on "
        "96^3 patches reproduces the BCP/CVBM Pancreas bug",
    )
    pseudo_label_lcc: bool = Field(default=True, description="largest component per class")
    dice_mask_background: bool = Field(
        default=False,
        description="acdc recipe: false = faithful SSL4MIS DiceLoss whose class-0 term ignores "
        "the region mask; true = every class respects it",
    )


class BCP(TwoPhaseMethod[CopyPasteParams]):
    name = "bcp"
    summary = ("BCP: bidirectional copy-paste of labeled/unlabeled boxes with an EMA teacher "
               "(Bai et al. 2023)")
    Params = CopyPasteParams

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.student = self.build_network()
        self._init_teacher()

    # -- helpers ----------------------------------------------------------------------------
    def _mask(self, image: torch.Tensor) -> torch.Tensor:
        p = self.params
        return box_mask(image.shape[2:], p.mask_ratio, origin_extent=p.mask_origin_extent,
                        device=image.device)

    @torch.no_grad()
    def _teacher_labels(self, *images: torch.Tensor) -> list[torch.Tensor]:
        p = self.params
        with teacher_mode(self.teacher, p.teacher_train_mode):
            return [pseudo_labels(self.teacher(x), p.pseudo_label_lcc) for x in images]

    # -- phases -----------------------------------------------------------------------------
    def pretrain_step(self, labeled: Batch, step: int) -> dict[str, torch.Tensor]:
        p = self.params
        ia, ib, la, lb = halves(labeled)
        m = self._mask(ia)
        logits = self.student(mix(ia, ib, m))
        if self.recipe == "acdc":
            dice, ce = region_loss_2d(logits, la, lb, m, 1.0, 1.0,
                                      mask_background=p.dice_mask_background)
        else:
            target = mix(la, lb, m)
            ce = cross_entropy(logits, target)
            dice = linear_dice_loss(torch.softmax(logits, dim=1), target)
        loss = (dice + ce) / 2
        return {"loss": loss, "loss_dice": dice.detach(), "loss_ce": ce.detach()}

    def self_train_step(
        self, labeled: Batch, unlabeled: Batch, step: int
    ) -> dict[str, torch.Tensor]:
        p = self.params
        u = p.u_weight
        ia, ib, la, lb = halves(labeled)
        ua, ub, _, _ = halves(unlabeled)
        pa, pb = self._teacher_labels(ua, ub)
        m = self._mask(ia)
        if self.recipe == "acdc":
            z1 = self.student(mix(ua, ia, m))  # unlabeled outside, labeled box
            z2 = self.student(mix(ib, ub, m))  # labeled outside, unlabeled box
            d1, c1 = region_loss_2d(z1, pa, la, m, u, 1.0, mask_background=p.dice_mask_background)
            d2, c2 = region_loss_2d(z2, lb, pb, m, 1.0, u, mask_background=p.dice_mask_background)
            dice, ce = d1 + d2, c1 + c2
            loss = (dice + ce) / 2
            return {"loss": loss, "loss_dice": dice.detach(), "loss_ce": ce.detach()}
        z1 = self.student(mix(ia, ua, m))  # labeled outside, unlabeled box
        z2 = self.student(mix(ub, ib, m))  # unlabeled outside, labeled box
        loss_l = region_loss_3d(z1, la, pa, m, 1.0, u)
        loss_u = region_loss_3d(z2, pb, lb, m, u, 1.0)
        return {"loss": loss_l + loss_u, "loss_l": loss_l.detach(), "loss_u": loss_u.detach()}

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.student(images)
