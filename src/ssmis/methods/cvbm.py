"""CVBM (Cao et al. 2025), as the authors' code runs it: ``caoluyang0830/CVBM`` @ ``2ca4aad``
(``LA_train.py``, ``ACDC_train.py``, ``networks/CVBM.py``, ``networks/unet.py``,
``utils/BCP_utils.py``, ``utils/losses.py``); the faithful defaults and fixes are listed in
``docs/methods.md``.

BCP (see :mod:`ssmis.methods.bcp`) with a second, *background* decoder on the shared encoder and
a mixing layer:

* network: encoder + foreground decoder (``z_fg``) + background decoder (``z_bg``; 3D: nearest
  upsampling + conv, 2D: the same bilinear U-Net decoder since the authors' U-Net ignores the
  up type) + mixing layer ``z_M = conv1x1(concat[z_fg, z_bg])`` (2C -> C, on logits). Only the
  foreground decoder is used at inference. CVBM's unused tanh heads are not built.
* background branch targets: complementary labels (3D ``1[y == 0]``; 2D the complementary
  one-hot ``1[y != c]`` per channel); pseudo-labels from the teacher's bg branch with LCC.
* pre-training: region losses on both branches (mixing layer untrained);
* self-training: region-weighted losses on both branches + bidirectional consistency
  ``MSE(softmax z_fg, softmax(1 - z_bg)) + MSE(softmax z_M, softmax z_fg)`` on both mixes (no
  stop-gradient), weighted by ``consistency * sigmoid_rampup(t // 150, consistency_rampup)``
  (LA 1.0 / 40, ACDC 5 x 0.1 = 0.5 / 200).

Faithful defaults, with the fixes as options:

* ``pretrain_double_softmax`` (3D): Dice on softmax(softmax(z)) in pre-training -> false fixes.
* ``bg_ce_double_softmax`` (2D): the bg-branch CE on softmax(softmax(z_bg)) -> false fixes.
* ``dice_mask_background`` (2D): class-0 Dice ignores the region mask -> true fixes.
* ``bg_pseudo_label``: 'faithful' (2D: channel c = c * LCC(argmax_bg == c), channel 0 always 0;
  3D: LCC of the bg-branch background mask) or 'complement_fg' (the complement of the fg
  pseudo-label, consistent with the labeled bg target).
* ``reverse_consistency``: 'softmax_neg' (code: softmax(1 - z_bg) = softmax(-z_bg), "1 - Q_bg" only
  for two classes) or 'complement' ((1 - Q_bg) / (C - 1), equal to the former for C = 2).
* ``bg_activation`` (acdc recipe): 'softmax' (code; the 3-hot complementary target has optimum 1/3)
  or 'sigmoid' (multi-label bg head: BCE + Dice per channel, 1 - Q_bg = 1 - sigmoid(z_bg)).
* ``teacher_train_mode``, ``mask_origin_extent``, ``ema_buffers`` as for BCP.

Forward passes per iteration (one pass = encoder + the decoders it needs): pre-training 1
(encoder + fg + bg, no mixing layer); self-training 4: teacher on u_a and u_b (encoder + fg + bg;
the teacher's mixing output is unused and not computed) and student on the two mixes (encoder +
fg + bg + mixing layer).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ssmis.components import largest_component_per_class
from ssmis.errors import SSMISError
from ssmis.losses import (
    class_argmax,
    cross_entropy,
    linear_dice_loss,
    soft_cross_entropy,
    soft_dice_loss,
)
from ssmis.methods.base import Batch, UnsupervisedTerm
from ssmis.methods.bcp import CopyPasteParams
from ssmis.methods.copy_paste import pseudo_labels, region_loss_2d, region_loss_3d
from ssmis.methods.teacher import teacher_mode
from ssmis.methods.terms import RampedConsistencyParams
from ssmis.methods.two_phase import TwoPhaseMethod, halves
from ssmis.mixing import box_mask, mix
from ssmis.ramps import ShareOrFloat, run_share


class CVBMParams(RampedConsistencyParams, CopyPasteParams):
    consistency: float = Field(
        default=1.0, ge=0, description="max weight of the bidirectional consistency (LA 1.0; "
        "ACDC 0.5 = the script's 5 x 0.1)")
    consistency_rampup: ShareOrFloat = Field(
        default=40.0, description="LA 40, ACDC 200 'epochs' of rampup_iters_per_epoch, counted "
        "from the start of self-training; or a share of train.iterations ('40%': a "
        "per-iteration ramp over 40 % of the run)", json_schema_extra=run_share("epochs"))
    up_types: list[str] | None = Field(
        default=None, description="fg/bg decoder upsampling; null = 2D bilinear/bilinear, "
        "3D transpose/nearest (the authors')")
    pretrain_double_softmax: bool = Field(
        default=True, description="la recipe: faithful Dice on softmax(softmax(z)) in "
        "pre-training; false = softmax once")
    bg_ce_double_softmax: bool = Field(
        default=True, description="acdc recipe: faithful bg CE on softmax(softmax(z_bg))")
    bg_pseudo_label: Literal["faithful", "complement_fg"] = "faithful"
    reverse_consistency: Literal["softmax_neg", "complement"] = "softmax_neg"
    bg_activation: Literal["softmax", "sigmoid"] = "softmax"


class CVBMNet(nn.Module):
    """Backbone with two decoders (fg = 0, bg = 1) and the 1x1 mixing layer on their logits."""

    def __init__(self, net: nn.Module, num_classes: int, spatial_dims: int) -> None:
        super().__init__()
        self.net = net
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.mix = conv(2 * num_classes, num_classes, kernel_size=1)

    def forward(
        self, x: torch.Tensor, with_mix: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        feats = self.net.encode(x)
        z_fg, z_bg = self.net.decode(feats, 0), self.net.decode(feats, 1)
        z_m = self.mix(torch.cat([z_fg, z_bg], dim=1)) if with_mix else None
        return z_fg, z_m, z_bg


def complement_onehot(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """B x C x spatial map ``1[label != c]`` (CVBM's 2D background target)."""
    return 1.0 - F.one_hot(label.long(), num_classes).movedim(-1, 1).float()


def reverse_target(z_bg: torch.Tensor, mode: str = "softmax_neg") -> torch.Tensor:
    """What CVBM calls ``1 - Q_bg``: 'softmax_neg' = softmax(1 - z_bg) (the code), 'complement'
    = (1 - softmax(z_bg)) / (C - 1), 'sigmoid' = 1 - sigmoid(z_bg) (multi-label bg head)."""
    if mode == "sigmoid":
        return 1.0 - torch.sigmoid(z_bg)
    if mode == "complement":
        return (1.0 - torch.softmax(z_bg, 1)) / max(z_bg.shape[1] - 1, 1)
    if mode == "softmax_neg":
        return torch.softmax(1 - z_bg, dim=1)
    raise ValueError(f"unknown reverse consistency mode {mode!r}")


def bidirectional_consistency(
    z_fg: torch.Tensor, z_m: torch.Tensor, z_bg: torch.Tensor, mode: str = "softmax_neg"
) -> torch.Tensor:
    """Reverse ``MSE(Q_fg, 1 - Q_bg)`` + direct ``MSE(Q_M, Q_fg)`` (means over all elements);
    no stop-gradient, as in the code."""
    q_fg = torch.softmax(z_fg, 1)
    reverse = torch.mean((q_fg - reverse_target(z_bg, mode)) ** 2)
    direct = torch.mean((torch.softmax(z_m, 1) - q_fg) ** 2)
    return reverse + direct


class CVBM(TwoPhaseMethod[CVBMParams]):
    name = "cvbm"
    summary = ("CVBM: BCP plus a background decoder, mixing layer and bidirectional consistency "
               "(Cao et al. 2025)")
    Params = CVBMParams
    ddp_find_unused_parameters = True  # the mixing layer gets no gradient in pre-training

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        p = self.params
        dims = cfg.data.spatial_dims
        if p.bg_activation == "sigmoid" and self.recipe != "acdc":
            raise SSMISError("method.params.bg_activation: 'sigmoid' needs the acdc recipe")
        up = p.up_types or (["bilinear", "bilinear"] if dims == 2 else ["transpose", "nearest"])
        net = self.build_network(num_decoders=2, up_types=up)
        self.num_classes = cfg.data.num_classes
        self.student = CVBMNet(net, self.num_classes, dims)
        self._init_teacher()

    # -- pieces -----------------------------------------------------------------------------
    def _mask(self, image: torch.Tensor) -> torch.Tensor:
        p = self.params
        return box_mask(image.shape[2:], p.mask_ratio, origin_extent=p.mask_origin_extent,
                        device=image.device)

    def _bg_probs(self, z_bg: torch.Tensor) -> torch.Tensor:
        p = self.params
        return torch.sigmoid(z_bg) if p.bg_activation == "sigmoid" else torch.softmax(z_bg, 1)

    def bg_region_loss_2d(
        self, z_bg: torch.Tensor, t_out: torch.Tensor, t_in: torch.Tensor, mask: torch.Tensor,
        w_out: float, w_in: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CVBM ``onehot_mix_loss``: C-channel targets and masks (Dice2d + custom CE)."""
        p = self.params
        m = mask.to(z_bg.device).expand_as(z_bg)
        probs = self._bg_probs(z_bg)
        dice = w_out * soft_dice_loss(probs, t_out, m) + w_in * soft_dice_loss(probs, t_in, 1 - m)
        if p.bg_activation == "sigmoid":
            def ce(t: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
                per = F.binary_cross_entropy_with_logits(z_bg, t.float(), reduction="none")
                dims = [0] + list(range(2, z_bg.ndim))
                return ((per * region).sum(dims) / (region.sum(dims) + 1e-16)).mean()
        else:
            ce_in = probs if p.bg_ce_double_softmax else z_bg

            def ce(t: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
                return soft_cross_entropy(ce_in, t, region)
        return dice, w_out * ce(t_out, m) + w_in * ce(t_in, 1 - m)

    def bidirectional_consistency(
        self, z_fg: torch.Tensor, z_m: torch.Tensor, z_bg: torch.Tensor
    ) -> torch.Tensor:
        p = self.params
        mode = "sigmoid" if p.bg_activation == "sigmoid" else p.reverse_consistency
        return bidirectional_consistency(z_fg, z_m, z_bg, mode)

    @torch.no_grad()
    def teacher_targets(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fg pseudo-label B x spatial, bg target: 3D labels B x spatial / 2D maps B x C x ...)."""
        p = self.params
        with teacher_mode(self.teacher, p.teacher_train_mode):
            z_fg, _, z_bg = self.teacher(x, with_mix=False)
        pl_fg = pseudo_labels(z_fg, p.pseudo_label_lcc)
        c = self.num_classes
        if self.recipe == "la":
            if p.bg_pseudo_label == "complement_fg":
                return pl_fg, (pl_fg == 0).long()
            return pl_fg, pseudo_labels(z_bg, p.pseudo_label_lcc)
        if p.bg_pseudo_label == "complement_fg" or p.bg_activation == "sigmoid":
            return pl_fg, complement_onehot(pl_fg, c)
        arg = class_argmax(torch.softmax(z_bg.float(), 1))
        channels = []
        for k in range(c):
            comp = (arg == k).long()
            if p.pseudo_label_lcc:
                comp = largest_component_per_class(comp, [1])
            channels.append(comp.float() * k)  # [BUG] kept: channel k holds k, channel 0 is 0
        return pl_fg, torch.stack(channels, dim=1)

    # -- phases -----------------------------------------------------------------------------
    def pretrain_step(self, labeled: Batch, step: int) -> dict[str, torch.Tensor]:
        p = self.params
        ia, ib, la, lb = halves(labeled)
        m = self._mask(ia)
        z_fg, _, z_bg = self.student(mix(ia, ib, m), with_mix=False)
        if self.recipe == "acdc":
            c = self.num_classes
            d_fg, c_fg = region_loss_2d(z_fg, la, lb, m, 1.0, 1.0,
                                        mask_background=p.dice_mask_background)
            d_bg, c_bg = self.bg_region_loss_2d(z_bg, complement_onehot(la, c),
                                                complement_onehot(lb, c), m, 1.0, 1.0)
            loss = (d_fg + d_bg + c_fg + c_bg) / 2
            return {"loss": loss, "loss_fg": (d_fg + c_fg).detach(),
                    "loss_bg": (d_bg + c_bg).detach()}
        y = mix(la, lb, m)
        y_bg = (y == 0).long()

        def dice(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            probs = torch.softmax(z, 1)
            if p.pretrain_double_softmax:
                probs = torch.softmax(probs, 1)
            return linear_dice_loss(probs, t)

        l_fg = cross_entropy(z_fg, y) + dice(z_fg, y)
        l_bg = cross_entropy(z_bg, y_bg) + dice(z_bg, y_bg)
        loss = (l_fg + l_bg) / 2
        return {"loss": loss, "loss_fg": l_fg.detach(), "loss_bg": l_bg.detach()}

    def self_train_step(
        self, labeled: Batch, unlabeled: Batch, step: int
    ) -> dict[str, torch.Tensor]:
        p = self.params
        u = p.u_weight
        ia, ib, la, lb = halves(labeled)
        ua, ub, _, _ = halves(unlabeled)
        pa_fg, pa_bg = self.teacher_targets(ua)
        pb_fg, pb_bg = self.teacher_targets(ub)
        m = self._mask(ia)
        weight = p.consistency_weight(step)
        if self.recipe == "acdc":
            c = self.num_classes
            fg1, m1, bg1 = self.student(mix(ua, ia, m))  # unlabeled outside, labeled box
            fg2, m2, bg2 = self.student(mix(ib, ub, m))  # labeled outside, unlabeled box
            mb = p.dice_mask_background
            d1, c1 = region_loss_2d(fg1, pa_fg, la, m, u, 1.0, mask_background=mb)
            d2, c2 = region_loss_2d(fg2, lb, pb_fg, m, 1.0, u, mask_background=mb)
            d3, c3 = self.bg_region_loss_2d(bg1, pa_bg, complement_onehot(la, c), m, u, 1.0)
            d4, c4 = self.bg_region_loss_2d(bg2, complement_onehot(lb, c), pb_bg, m, 1.0, u)
            l_fg, l_bg = d1 + d2 + c1 + c2, d3 + d4 + c3 + c4
        else:
            fg1, m1, bg1 = self.student(mix(ia, ua, m))  # labeled outside, unlabeled box
            fg2, m2, bg2 = self.student(mix(ub, ib, m))  # unlabeled outside, labeled box
            l_fg = (region_loss_3d(fg1, la, pa_fg, m, 1.0, u)
                    + region_loss_3d(fg2, pb_fg, lb, m, u, 1.0))
            l_bg = (region_loss_3d(bg1, (la == 0).long(), pa_bg, m, 1.0, u)
                    + region_loss_3d(bg2, pb_bg, (lb == 0).long(), m, u, 1.0))
        assert m1 is not None and m2 is not None
        cons = self.bidirectional_consistency(fg1, m1, bg1) + self.bidirectional_consistency(
            fg2, m2, bg2)
        loss = l_fg + l_bg + weight * cons
        return {"loss": loss, "loss_fg": l_fg.detach(), "loss_bg": l_bg.detach(),
                "loss_consistency": cons.detach(), "consistency_weight": torch.tensor(weight)}

    def unsupervised_terms(self) -> list[UnsupervisedTerm]:
        p = self.params
        pre = p.pretrain_iterations

        def weight(s: int) -> float:  # off in pre-training, ramped from self-training's start
            return 0.0 if s < pre else p.consistency_weight(s - pre)

        return [UnsupervisedTerm("bidirectional consistency", weight, p.consistency,
                                 ("consistency_rampup", "pretrain_iterations"))]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Foreground decoder only (no extra inference cost)."""
        return self.student.net(images)
