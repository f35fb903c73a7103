"""ALHVR (Adaptive Learning of High-Value Regions, ICCV 2025), as the authors' code runs it:
``ziziyao/ALHVR`` @ ``c13efae`` (``train_ALHVR/code/train_ALHVR_acdc.py``,
``train_ALHVR_brats.py``, ``utils/Generate_Prototype.py``, ``utils/losses.py``,
``networks/{unet.py,VNet.py}``); the faithful defaults and fixes are listed in
``docs/methods.md``.

Two networks (same backbone, independent init). Each encodes the batch [L; U] once and decodes
it twice: from the clean encoder features (logits ``z``, tapped feature ``h``) and from
perturbed ones (``z~``, ``h~``; one perturbation per call for all five levels: with p = 0.5
feature dropout of the most activated region, threshold ``U(0.7, 0.9) x max`` of the channel
mean, else multiplicative uniform noise ``x + x U(-0.3, 0.3)`` shared across the batch). The tap
is the 2D U-Net's ``proj2`` (64 ch at 1/8) / the V-Net's ``dec1`` (``block_six``, 128 ch at 1/8).

On the unlabeled part (``c~_k`` = max softmax of the perturbed prediction):

* adaptive threshold ``gamma`` = mean of the lowest ``floor(beta N)`` values of
  ``(c~_1 + c~_2) / 2`` (:func:`adaptive_threshold`); regions (:func:`region_masks`):
  unreliable-stable ``R_u = [c~_1 < g][c~_2 < g]``, reliable-unstable ``R_12 = [c~_1 <= g]
  [c~_2 > g]`` (net 1 learns from net 2) and ``R_21``; reliable-stable: no loss;
* CG-CPCL on ``R_{k<-kbar}``: perturbed features of net k (upsampled to the input size) are
  classified by cosine similarity to the *other* net's class prototypes (masked means of its
  clean features under its clean pseudo-label), CE against that pseudo-label plus a cosine term
  (:func:`masked_prototypes`, :func:`cross_prototype_loss`);
* DTCT on ``R_u``: per pixel the more confident clean prediction is the teacher, sharpened with
  T = 0.1; MSE of net k's perturbed prediction to it + entropy of net k's clean and perturbed
  predictions (:func:`sharpen`, :func:`dtct_loss`);
* ``L = sum_k [CE + Dice_ALHVR](z_k[L], y) + lambda(t) (L_focus^k + L_pro^k)``,
  ``lambda = 0.1 sigmoid_rampup(t // 150, 200)`` (the SSL4MIS Gaussian ramp).

Faithful vs fixed (defaults = the code; each fix is a named param):

* ``dice_factor_two`` (false): the code's Dice lacks the factor 2 (``1 - sum pg / (sum p^2 +
  sum g^2)``); true = the usual soft Dice.
* ``ce_mode`` ('broadcast'): the code multiplies a B x 1 x V mask by a B x V CE map, which
  broadcasts to B x B x V (region of sample i weights the CE of every sample j, ~B_u times too
  large); 'per_pixel' is the intended masked mean.
* ``cos_mode`` ('all_classes'): ``mean_{b,c,v} (1 - s) R`` pulls a feature to every prototype
  and is normalised by all pixels x classes; 'target_class' = ``1 - cos`` to the target class's
  prototype averaged over the region.
* ``renormalize_sharpen`` (false): the per-channel binary sharpening is not renormalised for
  more than 2 classes; true divides by the sum over classes.
* ``detach_targets`` (false): nothing is detached in the code (prototypes, the DTCT teacher);
  true stops the gradient through the other network's targets.
* ``entropy_over_region`` (false): the entropy terms are averaged over all unlabeled pixels
  (zeros outside ``R_u``); true averages over the region.
* ``perturb_labeled`` (true): the perturbed decode runs on the whole batch although only its
  unlabeled part is used (it shapes the BatchNorm batch statistics); false decodes the
  unlabeled part only.
* ``predict_mode`` ('best'): the code leaves the choice of network to the user; here the
  engine scores both at every validation and keeps the better one with the checkpoint
  ('net1', 'net2', 'average' are also available). Clean head only, no post-processing.

Forward passes per iteration: 2 (each network once on L+U: one encoder pass and two decoder
passes, clean and perturbed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ssmis.losses import class_argmax
from ssmis.methods.base import Batch, UnsupervisedTerm
from ssmis.methods.cotraining import DualNetMethod, DualNetParams, PredictMode
from ssmis.methods.terms import RampedConsistencyParams

ENTROPY_EPS = 1e-6
REGION_EPS = 1e-16
#: prototypes and cosine similarities from the low-resolution tapped features (the default;
#: same losses to float rounding) instead of from features upsampled to the input size first
#: (the plain path, as the authors' code computes it).
FAST_PROTOTYPES = True


class ALHVRParams(RampedConsistencyParams, DualNetParams):
    predict_mode: PredictMode = Field(
        default="best", description="best = the network with the higher validation Dice "
        "(chosen automatically); net1, net2 or average")
    beta: float = Field(default=0.8, gt=0, le=1, description="fraction of the lowest "
                        "confidences averaged into gamma (--proportion: ACDC 0.8, BraTS 0.7)")
    temperature: float = Field(default=0.1, gt=0, description="DTCT sharpening temperature")
    scaler: float = Field(default=1.0, gt=0, description="multiplier of the cosine logits")
    feature_tap: str | None = Field(
        default=None, description="decoder feature for the prototypes; null = 2D 'proj2', "
        "3D 'dec1' (the authors')")
    dropout_range: list[float] = Field(default=[0.7, 0.9], min_length=2, max_length=2,
                                       description="feature dropout threshold factor range")
    noise_range: float = Field(default=0.3, ge=0, description="feature noise U(-r, r)")
    dice_factor_two: bool = Field(default=False, description="fix: Dice with the factor 2")
    ce_mode: Literal["broadcast", "per_pixel"] = Field(
        default="broadcast", description="prototype CE: the code's cross-sample broadcast or "
        "the intended per-pixel masked mean")
    cos_mode: Literal["all_classes", "target_class"] = Field(
        default="all_classes", description="cosine term over all classes / all pixels (code) "
        "or to the target prototype over the region (fix)")
    renormalize_sharpen: bool = Field(default=False,
                                      description="fix: renormalise the sharpened teacher")
    detach_targets: bool = Field(default=False,
                                 description="fix: stop-gradient on prototypes and teacher")
    entropy_over_region: bool = Field(
        default=False, description="fix: average the entropy over R_u instead of all pixels")
    perturb_labeled: bool = Field(
        default=True, description="decode the perturbed features of the labeled part too "
        "(unused by the losses; BatchNorm statistics as the code)")


# -- pure pieces (pinned in tests/test_cotraining_losses.py) ----------------------------------


def feature_dropout(x: torch.Tensor, low: float = 0.7, high: float = 0.9) -> torch.Tensor:
    """CCT/ALHVR FeatureDropout: zero (all channels of) the positions whose channel mean is at
    least ``u x`` its per-sample maximum, ``u ~ U(low, high)`` drawn once for the batch."""
    attention = x.mean(dim=1, keepdim=True)
    max_val = attention.flatten(1).max(dim=1).values.view(-1, *[1] * (x.ndim - 1))
    u = torch.empty((), device=x.device).uniform_(low, high)
    return x * (attention < max_val * u).to(x.dtype)


def feature_noise(x: torch.Tensor, radius: float = 0.3) -> torch.Tensor:
    """``x + x * n`` with ``n ~ U(-r, r)`` of shape C x spatial, shared across the batch."""
    noise = torch.empty(x.shape[1:], device=x.device, dtype=x.dtype).uniform_(-radius, radius)
    return x + x * noise


def perturb_features(feats: Sequence[torch.Tensor], dropout_range: Sequence[float],
                     noise_range: float) -> list[torch.Tensor]:
    """One perturbation type per call (p = 0.5 dropout, else noise) for all levels."""
    if float(torch.rand(())) < 0.5:
        return [feature_dropout(f, *dropout_range) for f in feats]
    return [feature_noise(f, noise_range) for f in feats]


def adaptive_threshold(confidence: torch.Tensor, beta: float) -> torch.Tensor:
    """gamma = mean of the lowest ``floor(beta N)`` (at least 1) of all ``N`` values."""
    flat = confidence.detach().flatten()
    k = max(int(beta * flat.numel()), 1)
    return torch.topk(flat, k, largest=False).values.mean()


def region_masks(conf1: torch.Tensor, conf2: torch.Tensor, gamma: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(R_u, R_12, R_21) as float masks: unreliable-stable ``[c1 < g][c2 < g]``;
    reliable-unstable ``[c1 <= g][c2 > g]`` (net 1 learns) and ``[c2 <= g][c1 > g]``."""
    r_u = (conf1 < gamma) & (conf2 < gamma)
    r_12 = (conf1 <= gamma) & (conf2 > gamma)
    r_21 = (conf2 <= gamma) & (conf1 > gamma)
    return r_u.float(), r_12.float(), r_21.float()


def masked_prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                      eps: float = 1e-5) -> torch.Tensor:
    """C x D prototypes: per sample the mean feature of each class's pixels (``sum / (count +
    eps)``, zero vector when absent), then the mean over the batch."""
    b, d = features.shape[:2]
    onehot = F.one_hot(labels.long(), num_classes).reshape(b, -1, num_classes).to(features.dtype)
    flat = features.reshape(b, d, -1)
    sums = torch.einsum("bdv,bvc->bcd", flat, onehot)
    counts = onehot.sum(dim=1).unsqueeze(-1)
    return (sums / (counts + eps)).mean(dim=0)


def upsample_adjoint(grid: torch.Tensor, low_shape: Sequence[int]) -> torch.Tensor:
    """The transpose of :func:`upsample` (bilinear/trilinear, ``align_corners=False``) applied
    to ``grid`` (B x K x full-size): ``<upsample(h), g> = <h, upsample_adjoint(g)>`` for every
    ``h`` of shape ``low_shape`` (B x D x low-size, D ignored). Computed as the interpolation's
    own backward, so it is exact to float rounding."""
    with torch.enable_grad():
        z = torch.zeros(grid.shape[0], grid.shape[1], *low_shape[2:], dtype=grid.dtype,
                        device=grid.device, requires_grad=True)
        (adj,) = torch.autograd.grad(upsample(z, grid.shape[2:]), z, grid.detach())
    return adj


def upsample(h: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """ALHVR's feature upsampling to the input size (bilinear / trilinear, corners not
    aligned)."""
    mode = "bilinear" if h.ndim == 4 else "trilinear"
    return F.interpolate(h, size=tuple(size), mode=mode, align_corners=False)


def masked_prototypes_lowres(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                             eps: float = 1e-5) -> torch.Tensor:
    """``masked_prototypes(upsample(features, labels.shape[1:]), labels, num_classes)`` without
    the full-size D-channel feature map: the masked sums are linear in the features, so they are
    taken at the features' own size against the upsampling's adjoint of the (C-channel) one-hot
    labels. Same value to float rounding (``tests/test_speed.py``)."""
    b, d = features.shape[:2]
    onehot = F.one_hot(labels.long(), num_classes).movedim(-1, 1).to(features.dtype)
    weights = upsample_adjoint(onehot, features.shape).reshape(b, num_classes, -1)
    sums = torch.einsum("bdv,bcv->bcd", features.reshape(b, d, -1), weights)
    counts = onehot.flatten(2).sum(-1).unsqueeze(-1)
    return (sums / (counts + eps)).mean(dim=0)


def prototype_similarity_lowres(features: torch.Tensor, prototypes: torch.Tensor,
                                size: Sequence[int]) -> torch.Tensor:
    """``prototype_similarity(upsample(features, size), prototypes)`` with the dot products
    taken before upsampling (C channels instead of D are interpolated; upsampling is linear);
    only the per-pixel norm needs the full-size features. Same value to float rounding."""
    p = F.normalize(prototypes, dim=1, eps=1e-8)
    dots = upsample(torch.einsum("bd...,cd->bc...", features, p), size)
    norm = upsample(features, size).norm(dim=1, keepdim=True).clamp_min(1e-8)
    return dots / norm


def prototype_similarity(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """B x C x spatial cosine similarity of each pixel's feature to each class prototype."""
    f = F.normalize(features, dim=1, eps=1e-8)
    p = F.normalize(prototypes, dim=1, eps=1e-8)
    return torch.einsum("bd...,cd->bc...", f, p)


def cross_prototype_loss(
    features: torch.Tensor, prototypes: torch.Tensor, target: torch.Tensor, region: torch.Tensor,
    *, scaler: float = 1.0, ce_mode: str = "broadcast", cos_mode: str = "all_classes",
    size: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_ce, L_cos) of CG-CPCL: ``features`` (net k's perturbed, B x D x spatial) against the
    other net's ``prototypes`` (C x D), its pseudo-label ``target`` and the region ``R_{k<-kbar}``.
    With ``size``, ``features`` are the low-resolution tapped ones and are upsampled to ``size``
    implicitly (:func:`prototype_similarity_lowres`).
    """
    s = (prototype_similarity(features, prototypes) if size is None else
         prototype_similarity_lowres(features, prototypes, size)) * scaler
    ce = F.cross_entropy(s, target.long(), reduction="none")
    denom = region.sum() + REGION_EPS
    if ce_mode == "broadcast":  # the code's (B x 1 x V) * (B x V) -> B x B x V
        l_ce = (region.sum(0) * ce.sum(0)).sum() / denom
    elif ce_mode == "per_pixel":
        l_ce = (region * ce).sum() / denom
    else:
        raise ValueError(f"unknown ce_mode {ce_mode!r}")
    if cos_mode == "all_classes":
        l_cos = ((1.0 - s) * region.unsqueeze(1)).mean()
    elif cos_mode == "target_class":
        s_t = s.gather(1, target.long().unsqueeze(1)).squeeze(1)
        l_cos = ((1.0 - s_t) * region).sum() / denom
    else:
        raise ValueError(f"unknown cos_mode {cos_mode!r}")
    return l_ce, l_cos


def sharpen(p: torch.Tensor, temperature: float = 0.1, renormalize: bool = False
            ) -> torch.Tensor:
    """MC-Net sharpening per channel ``p^(1/T) / (p^(1/T) + (1 - p)^(1/T))``; optionally
    renormalised over the class axis (dim 1)."""
    a, b = p ** (1.0 / temperature), (1.0 - p) ** (1.0 / temperature)
    out = a / (a + b)
    if renormalize:
        out = out / out.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return out


def competition_teacher(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """Per pixel the prediction of the more confident network (net 2 on ties)."""
    c1, c2 = p1.max(dim=1, keepdim=True).values, p2.max(dim=1, keepdim=True).values
    return torch.where(c1 > c2, p1, p2)


def entropy_map(q: torch.Tensor) -> torch.Tensor:
    """``-sum_c q log(q + 1e-6)`` per pixel."""
    return -(q * torch.log(q + ENTROPY_EPS)).sum(dim=1)


def dtct_loss(
    p_pert: torch.Tensor, p_clean: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor,
    region: torch.Tensor, *, temperature: float = 0.1, renormalize: bool = False,
    detach_teacher: bool = False, entropy_over_region: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_mse, L_ent) of DTCT for one network: ``p_pert`` / ``p_clean`` its perturbed / clean
    probabilities, ``p1`` / ``p2`` the clean probabilities of both networks, ``region`` R_u."""
    teacher = competition_teacher(p1, p2)
    if detach_teacher:
        teacher = teacher.detach()
    target = sharpen(teacher, temperature, renormalize)
    r = region.unsqueeze(1)
    mse = (r * (p_pert - target) ** 2).sum() / (region.sum() + REGION_EPS)
    h = entropy_map(p_clean * r) + entropy_map(p_pert * r)
    ent = h.sum() / (region.sum() + REGION_EPS) if entropy_over_region else h.mean()
    return mse, ent


def alhvr_dice_loss(probs: torch.Tensor, label: torch.Tensor, factor_two: bool = False,
                    smooth: float = 1e-10) -> torch.Tensor:
    """ALHVR Dice: per class over the whole batch ``1 - f sum pg / (sum p^2 + sum g^2 + s)``,
    mean over all classes; the code has ``f = 1`` (``factor_two`` fixes it to 2)."""
    onehot = F.one_hot(label.long(), probs.shape[1]).movedim(-1, 1).to(probs.dtype)
    dims = [0] + list(range(2, probs.ndim))
    inter = (probs * onehot).sum(dims)
    denom = (probs * probs).sum(dims) + (onehot * onehot).sum(dims) + smooth
    return (1.0 - (2.0 if factor_two else 1.0) * inter / denom).mean()


# -- the method -------------------------------------------------------------------------------


class ALHVR(DualNetMethod[ALHVRParams]):
    name = "alhvr"
    summary = ("ALHVR: two networks, adaptive-threshold regions, cross-prototype "
               "consistency and teacher competition (ICCV 2025)")
    Params = ALHVRParams

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        p = self.params
        self.net1 = self.build_network()
        self.net2 = self.build_network()
        self.tap = p.feature_tap or ("proj2" if cfg.data.spatial_dims == 2 else "dec1")
        self.num_classes = cfg.data.num_classes
        self._init_choice()

    def dual_forward(self, net, x: torch.Tensor, n_labeled: int):
        """(z, z~, h, h~): clean and perturbed logits and tapped features of one network; the
        perturbed ones cover the unlabeled rows only unless ``perturb_labeled``."""
        p = self.params
        feats = net.encode(x)
        z, named = net.decode(feats, 0, return_features=True)
        if not p.perturb_labeled:
            feats = [f[n_labeled:] for f in feats]
        zt, named_t = net.decode(perturb_features(feats, p.dropout_range, p.noise_range), 0,
                                 return_features=True)
        if p.perturb_labeled:
            zt, ht = zt[n_labeled:], named_t[self.tap][n_labeled:]
        else:
            ht = named_t[self.tap]
        return z, zt, named[self.tap], ht

    def _upsample(self, h: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return upsample(h, size)

    def unsupervised_terms(self) -> list[UnsupervisedTerm]:
        p = self.params
        return [UnsupervisedTerm("unlabeled (DTCT + prototype)", p.consistency_weight,
                                 p.consistency,
                                 ("consistency_rampup",))]

    def training_step(
        self, labeled: Batch, unlabeled: Batch | None, step: int
    ) -> dict[str, torch.Tensor]:
        if unlabeled is None:
            raise ValueError(f"{self.name} needs an unlabeled batch")
        p = self.params
        n = labeled["image"].shape[0]
        y = labeled["label"]
        x = torch.cat([labeled["image"], unlabeled["image"]], dim=0)
        size = x.shape[2:]
        z1, zt1, h1, ht1 = self.dual_forward(self.net1, x, n)
        z2, zt2, h2, ht2 = self.dual_forward(self.net2, x, n)

        sups = []
        for z in (z1, z2):
            sups.append(F.cross_entropy(z[:n], y.long())
                        + alhvr_dice_loss(torch.softmax(z[:n], 1), y, p.dice_factor_two))

        # unlabeled part: clean (targets) and perturbed (regions) predictions
        pc = [torch.softmax(z1[n:], 1), torch.softmax(z2[n:], 1)]
        pp = [torch.softmax(zt1, 1), torch.softmax(zt2, 1)]
        yhat = [class_argmax(q) for q in pc]
        conf_p = [q.max(1).values for q in pp]
        gamma = adaptive_threshold(0.5 * (conf_p[0] + conf_p[1]), p.beta)
        r_u, r_12, r_21 = region_masks(conf_p[0], conf_p[1], gamma)

        # fast: same values, prototypes and dot products at the tapped size (only the perturbed
        # features are upsampled, for their per-pixel norm)
        if FAST_PROTOTYPES:
            protos = [masked_prototypes_lowres(h[n:], yh, self.num_classes)
                      for h, yh in zip((h1, h2), yhat, strict=True)]
            pert_h, lowres = [ht1, ht2], size
        else:  # the plain path: upsample, then masked means and cosine similarities
            clean_h = [self._upsample(h[n:], size) for h in (h1, h2)]
            pert_h, lowres = [self._upsample(h, size) for h in (ht1, ht2)], None
            protos = [masked_prototypes(h, yh, self.num_classes)
                      for h, yh in zip(clean_h, yhat, strict=True)]
        if p.detach_targets:
            protos = [q.detach() for q in protos]
        regions = (r_12, r_21)  # net 1 learns on R_12 from net 2, net 2 on R_21 from net 1
        out: dict[str, torch.Tensor] = {}
        unsup = []
        for k in range(2):
            other = 1 - k
            l_ce, l_cos = cross_prototype_loss(pert_h[k], protos[other], yhat[other], regions[k],
                                               scaler=p.scaler, ce_mode=p.ce_mode,
                                               cos_mode=p.cos_mode, size=lowres)
            mse, ent = dtct_loss(pp[k], pc[k], pc[0], pc[1], r_u, temperature=p.temperature,
                                 renormalize=p.renormalize_sharpen,
                                 detach_teacher=p.detach_targets,
                                 entropy_over_region=p.entropy_over_region)
            unsup.append(l_ce + l_cos + mse + ent)
            i = k + 1
            out.update({f"loss_sup{i}": sups[k].detach(), f"loss_pro_ce{i}": l_ce.detach(),
                        f"loss_pro_cos{i}": l_cos.detach(), f"loss_mse{i}": mse.detach(),
                        f"loss_ent{i}": ent.detach()})
        weight = p.consistency_weight(step)
        loss = sups[0] + sups[1] + weight * (unsup[0] + unsup[1])
        n_pix = r_u.numel()
        return {"loss": loss, **out, "gamma": gamma.detach(),
                "frac_unreliable_stable": r_u.sum().detach() / n_pix,
                "frac_reliable_unstable": (r_12.sum() + r_21.sum()).detach() / n_pix,
                "consistency_weight": torch.tensor(weight)}
