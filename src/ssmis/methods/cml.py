"""CML (Cross-View Mutual Learning, ACM MM 2024), as the authors' code runs it:
``SongwuJob/CML`` @ ``1229a71`` (``code/CML_LA_train.py``, ``code/CML_ACDC_train.py``,
``code/utils/CML_utils.py``, ``code/networks/{VNet.py,unet.py}``); the faithful defaults and
fixes are listed in ``docs/methods.md``.

Two subnets (encoder + decoder each, independent init) that differ in their decoder's
upsampling (3D: subnet 1 transposed conv, subnet 2 trilinear + conv; 2D: subnet 1 bilinear,
subnet 2 transposed conv). ``e_k`` = the bottleneck feature of encoder k (after its dropout).

* supervision ``S(z, y) = 1/2 [CE + Dice]`` (per-sample, linear-denominator Dice,
  background included);
* conflict-based feature learning ``D(e_a, e_b) = 1 + mean cos(e_a, stopgrad(e_b))`` used
  symmetrically (:func:`~ssmis.methods.cotraining.cosine_discrepancy`);
* phase 1 (``pretrain_iterations``, labeled only): CutMix of the two labeled halves,
  ``w_l [S(z1) + S(z2)] + w_dis [D(e1,e2) + D(e2,e1)]``;
* phase 2 (from the best phase-1 weights, optimizer state kept): the same on a new labeled mix,
  plus pseudo-labels of both subnets on the *un-mixed* unlabeled halves (no grad; 2 classes:
  ``softmax >= 0.5``, more: argmax; then the largest connected component per class), a CutMix of
  the unlabeled halves and heterogeneous targets (:func:`heterogeneous_targets`),
  ``L = L_l + w_u [S(z1, T1) + S(z2, T2)] + w_dis (D_l + D_u)``; no ramp-up.
* inference: the average of the two subnets' logits.

Faithful vs fixed (defaults = the code):

* ``single_subnet`` (null = the authors' code: true in 2D, false in 3D): the authors' 2D model
  has ONE encoder and decodes it twice with the same decoder (a bug: the two "subnets" differ
  only by dropout draws; ``decoder2`` is dead; class ``UNet`` of ``code/networks/unet.py``,
  ``SongwuJob/CML`` @ ``1229a71``). true
  reproduces that exactly (2D only); false (the fix) builds the two real subnets, as the
  authors' 3D model does.
* ``cross_region`` ('outside_box', the code): each subnet is taught by the *other* subnet's
  pseudo-label outside the pasted box and by its own inside it; 'inside_box' swaps the roles
  (what the paper's wording and the code comment say).
* ``average_space`` ('logits', the code; the paper says probabilities).
* ``pseudo_label_train_mode`` (true, the code: pseudo-labels from the current model in train
  mode, dropout on, BN on batch statistics, running statistics updated); false = eval mode.
Not reproduced on purpose: model selection on the test list (LA), the GT of unlabeled images
being loaded for logging.

Forward passes per iteration, each through both subnets: phase 1: 1 (labeled mix); phase 2: 3
(labeled mix, raw unlabeled for the pseudo-labels, unlabeled mix). With ``single_subnet`` each
"subnet pass" is a pass of the one U-Net (still two per forward, two dropout draws).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from ssmis.errors import SSMISError
from ssmis.losses import cross_entropy, linear_dice_loss
from ssmis.methods.base import Batch, Phase
from ssmis.methods.copy_paste import pseudo_labels
from ssmis.methods.cotraining import DualNetMethod, DualNetParams, cosine_discrepancy
from ssmis.methods.teacher import teacher_mode
from ssmis.methods.two_phase import (
    HalvedBatches,
    halves,
    local_step,
    pretrain_note,
    two_phases,
    with_published_pretrain,
)
from ssmis.mixing import box_mask, mix
from ssmis.ramps import ShareOrInt, run_share


class CMLParams(DualNetParams):
    predict_mode: Literal["net1", "net2", "average", "best"] = Field(
        default="average", description="CML averages the two subnets at inference")
    pretrain_iterations: ShareOrInt | None = Field(
        default=None, description="labeled-only CutMix pre-training, carved from "
        "train.iterations (LA 2000 of 17000, ACDC 10000 of 40000); or a share of it ('25%'); "
        "null = that published share of train.iterations",
        json_schema_extra=run_share("iterations"))
    reset_optimizer: bool = Field(
        default=False, description="false = as the code: phase 2 keeps the optimizer state "
        "(the engine keeps the state at the end of phase 1; the code reloads the one saved with "
        "the best phase-1 checkpoint)")
    w_l: float = Field(default=1.0, ge=0, description="labeled supervision weight")
    w_u: float | None = Field(default=None, ge=0,
                              description="unlabeled weight; null = LA 1.0 (3D) / ACDC 0.5 (2D)")
    w_dis: float | None = Field(default=None, ge=0, description="discrepancy weight; null = "
                                "LA 0.2 (3D) / ACDC 0.1 (2D)")
    mask_ratio: float | None = Field(default=None, gt=0, lt=1, description="CutMix box side per "
                                     "axis; null = LA 2/3 (3D) / ACDC 1/2 (2D)")
    cross_region: Literal["outside_box", "inside_box"] = Field(
        default="outside_box", description="where a subnet learns from the OTHER subnet's "
        "pseudo-label: 'outside_box' (the code) or 'inside_box' (the paper's wording)")
    single_subnet: bool | None = Field(
        default=None, description="2D only: reproduce the authors' bug exactly (one U-Net run "
        "twice, two dropout draws); false = two real subnets (the fix); null = the authors' "
        "code (true in 2D, false in 3D)")
    up_types: list[str] | None = Field(
        default=None, description="upsampling of subnet 1 / subnet 2; null = 3D "
        "transpose/trilinear, 2D bilinear/transpose (the authors')")
    pseudo_label_train_mode: bool = Field(
        default=True, description="pseudo-labels from the model in train mode (the code)")
    pseudo_label_lcc: bool = Field(default=True,
                                   description="largest connected component per class")


def supervision(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """CML ``S = 1/2 [CE + mask_DiceLoss]`` (linear-denominator Dice per sample and class)."""
    return 0.5 * (cross_entropy(logits, label)
                  + linear_dice_loss(torch.softmax(logits, 1), label))


def heterogeneous_targets(
    pl1_a: torch.Tensor, pl1_b: torch.Tensor, pl2_a: torch.Tensor, pl2_b: torch.Tensor,
    mask: torch.Tensor, cross_region: str = "outside_box",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets (T1, T2) of the two subnets on ``mix(u_a, u_b, mask)`` (mask 1 = from u_a).

    'outside_box' (code): ``T1 = M PL2(u_a) + (1-M) PL1(u_b)``, ``T2 = M PL1(u_a) + (1-M)
    PL2(u_b)``; 'inside_box': ``T1 = M PL1(u_a) + (1-M) PL2(u_b)`` and symmetrically.
    """
    if cross_region == "outside_box":
        return mix(pl2_a, pl1_b, mask), mix(pl1_a, pl2_b, mask)
    if cross_region == "inside_box":
        return mix(pl1_a, pl2_b, mask), mix(pl2_a, pl1_b, mask)
    raise ValueError(f"unknown cross_region {cross_region!r}")


class CML(HalvedBatches, DualNetMethod[CMLParams]):
    name = "cml"
    paired_halves = False  # CutMix within the labeled and within the unlabeled halves
    summary = ("CML: two heterogeneous subnets, feature-conflict loss, CutMix with "
               "cross/self pseudo-labels (ACM MM 2024)")
    Params = CMLParams

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        p = self.params
        dims = cfg.data.spatial_dims
        if p.single_subnet and dims != 2:
            raise SSMISError("method.params.single_subnet: the one-subnet bug is the 2D code's "
                             "only (the 3D model has two subnets)")
        up = p.up_types or (["bilinear", "transpose"] if dims == 2 else ["transpose", "trilinear"])
        if len(up) != 2:
            raise SSMISError("method.params.up_types: expected 2 entries (subnet 1, subnet 2)")
        self.single = p.single_subnet if p.single_subnet is not None else dims == 2
        self.net1 = self.build_network(up_types=[up[0]])
        if not self.single:  # the single-subnet bug: no second module (not even a dead one)
            self.net2 = self.build_network(up_types=[up[1]])
        self.mask_ratio = p.mask_ratio or (0.5 if dims == 2 else 2.0 / 3.0)
        self.w_u = p.w_u if p.w_u is not None else (0.5 if dims == 2 else 1.0)
        self.w_dis = p.w_dis if p.w_dis is not None else (0.1 if dims == 2 else 0.2)
        self.recipe = "acdc" if dims == 2 else "la"
        self._init_choice()

    @classmethod
    def run_params(cls, cfg: Any, declared: Any) -> Any:
        """Shares resolved, and an unset ``pretrain_iterations`` the published share (ACDC in
        2D, LA in 3D)."""
        recipe = "acdc" if cfg.data.spatial_dims == 2 else "la"
        return with_published_pretrain(super().run_params(cfg, declared), recipe,
                                       cfg.train.iterations, declared.pretrain_iterations)

    # -- the two subnets --------------------------------------------------------------------
    def subnets(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                torch.Tensor]:
        """(z1, z2, e1, e2): logits and bottleneck features of both subnets."""
        net2 = self.second
        f1, f2 = self.net1.encode(x), net2.encode(x)
        return self.net1.decode(f1), net2.decode(f2), f1[4], f2[4]

    @property
    def second(self) -> nn.Module:
        """Subnet 2 (subnet 1 again with ``single_subnet``)."""
        return self.net1 if self.single else self.net2

    def discrepancy(self, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
        return cosine_discrepancy(e1, e2) + cosine_discrepancy(e2, e1)

    def _mask(self, image: torch.Tensor) -> torch.Tensor:
        return box_mask(image.shape[2:], self.mask_ratio, device=image.device)

    def labeled_terms(self, labeled: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(S(z1) + S(z2), D12 + D21) on a CutMix of the two labeled halves."""
        ia, ib, la, lb = halves(labeled)
        m = self._mask(ia)
        z1, z2, e1, e2 = self.subnets(mix(ia, ib, m))
        y = mix(la, lb, m)
        return supervision(z1, y) + supervision(z2, y), self.discrepancy(e1, e2)

    @torch.no_grad()
    def pseudo_labels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        with teacher_mode(self, p.pseudo_label_train_mode):
            z1, z2 = self.net1(x), self.second(x)
        return pseudo_labels(z1, p.pseudo_label_lcc), pseudo_labels(z2, p.pseudo_label_lcc)

    # -- the interface ----------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        p = self.params
        return two_phases(self.cfg.train.iterations, p.pretrain_iterations, p.reset_optimizer,
                          self.recipe)

    def phase_note(self) -> str:
        return pretrain_note(self.declared_params, self.recipe)

    def training_step(
        self, labeled: Batch, unlabeled: Batch | None, step: int
    ) -> dict[str, torch.Tensor]:
        p = self.params
        pre, _ = local_step(step, p.pretrain_iterations)
        sup_l, dis_l = self.labeled_terms(labeled)
        if pre:
            loss = p.w_l * sup_l + self.w_dis * dis_l
            return {"loss": loss, "loss_sup_l": sup_l.detach(), "loss_dis": dis_l.detach()}
        if unlabeled is None:
            raise SSMISError(f"method {self.name}: phase 2 needs an unlabeled batch")
        ua, ub, _, _ = halves({"image": unlabeled["image"]})
        pl1, pl2 = self.pseudo_labels(torch.cat([ua, ub], dim=0))
        h = ua.shape[0]
        mu = self._mask(ua)
        t1, t2 = heterogeneous_targets(pl1[:h], pl1[h:], pl2[:h], pl2[h:], mu, p.cross_region)
        z1, z2, e1, e2 = self.subnets(mix(ua, ub, mu))
        sup_u = supervision(z1, t1) + supervision(z2, t2)
        dis_u = self.discrepancy(e1, e2)
        loss = p.w_l * sup_l + self.w_u * sup_u + self.w_dis * (dis_l + dis_u)
        return {"loss": loss, "loss_sup_l": sup_l.detach(), "loss_sup_u": sup_u.detach(),
                "loss_dis": (dis_l + dis_u).detach()}

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        if self.single:  # both "subnets" are the same network: one pass suffices in eval
            return self.net1(images)
        return super().predict(images)
