"""SynFoC (Mutual Aid of Foundation and Conventional Models, CVPR 2025), as the authors' code
runs it: ``MQinghe/SynFoC`` @ ``3f3c06a`` (``code/train.py`` lines 477-641 for one iteration,
``code/utils/losses.py``, ``code/sam_lora_image_encoder.py``); the faithful defaults and fixes
are listed in ``docs/methods.md``.

Two students, each with an EMA teacher: F = SAM/MedSAM + LoRA (``model.name: sam_lora`` built
from ``method.params.sam``; encoder frozen) and G = the configured backbone (``model``, the
U-Net). Resolutions: the engine's batch is at ``data.patch_size``; F sees it resized (bilinear)
to ``sam.image_size`` S (512) and is trained at its low-res output r = S / 4; G sees it at
``unet_size`` s (null = the patch size; otherwise the order-0 resize of the authors' loader).
For the paper's geometry use ``patch_size: [512, 512]`` and ``unet_size: 256`` (BUSI, fundus).

One iteration (``code/train.py``):

1. teachers on the weak unlabeled view: ``P_F'`` (r), ``P_G'`` (s); the student U-Net's hard
   prediction ``y_G`` on the same view (train mode, as the code: its BN statistics move);
2. self-mutual confidence per sample (:func:`smc_alpha`): ``alpha = Dice*(y_G, y_G') x
   Dice*(NN_r(y_G'), y_F')``, averaged over the evaluation ``parts`` (fundus: cup = {1}, disc =
   {1, 2}), with ``Dice* = (2|a & b| + 1) / (|a| + |b| + 1.001)`` and 1 when both are empty;
3. fused pseudo-label (:func:`fuse_pseudo_labels`): ``P_s = (1 - alpha) up(P_F') + alpha P_G'``
   and its bilinear down-sampling to r, argmax, confidence masks ``max P > threshold`` (0.95);
4. copy-paste (:func:`ssmis.mixing.mix`, ``ones='paste'``): one random box per sample
   (:func:`ssmis.mixing.cutmix_box`, area U(0.02, 0.4), aspect U(0.3, 1/0.3), drawn at s)
   pastes the *weak labeled* image
   (sample ``i mod B_l``) into the *strong* unlabeled image (brightness, contrast, Gaussian blur:
   :func:`strong_augment`); inside the box the target is the ground truth, always supervised;
5. losses: ``L = L_sup^F + L_sup^G + lambda(t) (L_unsup^F + L_unsup^G + L_cons + L_div)`` with
   CE + Dice (masked by the confidence on the mixed images), the entropy minimisation where the
   two students' argmax agree and the MSE of their probabilities where they disagree
   (:func:`consensus_divergence`), ``lambda = consistency x sigmoid_rampup(floor(t / (T / 200)),
   200)`` over the whole run T;
6. after the optimizer step: EMA of both teachers, ``a = min(1 - 1/(t + 1), 0.99)`` (parameters
   only; for SAM the trainable part, the frozen encoder weights are shared with the student).

Optimisation (:meth:`SynFoC.make_optimizer`): AdamW for SAM (``sam_lr`` 1.2e-4 constant, betas
0.9/0.999, weight decay 0.1), the engine's SGD settings (``train.lr`` 0.03, momentum 0.9, wd 1e-4)
for the U-Net; ``sam_optimizer: engine`` puts everything on the engine's SGD instead. A schedule in
``train.schedule`` scales both (the SAM group carries ``lr_scale = sam_lr / train.lr``).

Inference: ``predict_mode`` 'sam', 'unet' or 'best' (default: the engine scores both students
at every validation and keeps the better one with the checkpoint). The authors evaluate both
students separately and select on the *test* set; here selection uses the validation split.

Faithful vs fixed (defaults = the code; each fix is a named param):

* ``dice_mask_background`` (false): the masked Dice ignores the confidence mask for the
  background class (SSL4MIS ``DiceLoss`` quirk); true = every class respects the mask.
* ``ce_masked_mean`` (false): the masked CE is averaged over *all* pixels; true = over the
  confident ones.
* ``teacher_train_mode`` (true): the EMA U-Net runs in train mode (BN batch statistics;
  false = eval mode, its BN statistics then follow the student's by EMA).
* ``student_pl_train_mode`` (true): the student U-Net's forward for the self-confidence runs in
  train mode and updates its BN running statistics (the code also keeps it in the autograd
  graph; here it runs under no_grad, which gives the same numbers); false = eval mode.
* ``independent_teacher_init`` (true): the EMA teachers start from their own random init (the
  first EMA update copies the students anyway); false = copies of the students.
* ``unet_resize`` ('nearest'): how images are resized to ``unet_size`` (the code's order-0 zoom);
  'bilinear' is the fix.
* ``sam.keep_decoder_heads`` (false): SynFoC re-initialises the pretrained mask tokens,
  hypernetwork MLPs and IoU head even when their shapes match; true keeps them where they fit.
* ``sam.pixel_mean`` / ``pixel_std`` ([0,0,0] / [1,1,1]): the code feeds [0, 1] images unnormalised
  to SAM (also for the original SAM checkpoint, which expects ImageNet statistics on 0..255).
* Not reproduced: the crash of the committed ``train.py`` (``args.eval``), AMP fp16 + GradScaler
  (the engine's bf16 autocast is used), float64 fused maps, the numpy/CPU SMC (computed on the
  device, same values), test-set model selection. Not implemented: the paper's box prompts from
  U-Net pseudo-labels (absent from every commit of the code: SAM is prompt-free).

Data (set by ``configs/*/synfoc.yaml``): the authors' resize filters and weak view are
``data.augmentation: synfoc`` (:mod:`ssmis.data.synfoc_aug`), their labeled cases
``data.labeled_pick: first``; see ``docs/methods.md`` for the validation rule
(``data.val_pool: unlabeled``).

Forward passes per iteration: teachers 2 (F', G'), student U-Net on the weak view 1 (no_grad),
students 4 (F and G on the labeled and on the mixed images, separate calls as the code).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ssmis.errors import SSMISError
from ssmis.losses import dice_loss
from ssmis.methods.base import (
    Batch,
    ChoosablePredictor,
    Method,
    MethodParams,
    UnsupervisedTerm,
)
from ssmis.methods.teacher import (
    buffer_policy,
    ema_update,
    freeze,
    make_teacher,
    teacher_mode,
)
from ssmis.mixing import cutmix_box, mix
from ssmis.models import build_model
from ssmis.optim import CombinedOptimizer
from ssmis.ramps import ShareOrPositiveInt, run_share, sigmoid_rampup

if TYPE_CHECKING:
    from ssmis.config import TrainConfig

DICE_SMOOTH = 1e-10


class SynFoCParams(MethodParams):
    sam: dict[str, Any] = Field(
        default_factory=dict,
        description="options of the sam_lora model (image_size 512, checkpoint, lora_rank 4, "
        "embed_dim, depth, num_heads, global_attn_indexes, ...); default: ViT-B at 512, random "
        "init")
    unet_size: int | None = Field(default=None, ge=8, description="U-Net input size s; null = "
                                  "data.patch_size")
    unet_resize: Literal["nearest", "bilinear"] = "nearest"
    predict_mode: Literal["sam", "unet", "best"] = Field(
        default="best", description="student used at inference; best = the one with the higher "
        "validation Dice (chosen by the engine, saved with the checkpoint)")
    threshold: float = Field(default=0.95, ge=0, le=1, description="pseudo-label confidence")
    consistency: float = Field(default=1.0, ge=0)
    consistency_rampup: float = Field(default=200.0, ge=0)
    rampup_iterations: ShareOrPositiveInt | None = Field(
        default=None, description="T of the ramp (null = train.iterations, the code), or a "
        "share of train.iterations ('50%')", json_schema_extra=run_share("iterations"))
    ema_decay: float = Field(default=0.99, ge=0, le=1)
    parts: list[list[int]] | None = Field(
        default=None, description="class groups scored by the SMC Dice (null = each "
        "foreground class; fundus: [[1], [1, 2]])")
    brightness: list[float] = Field(default=[0.1, 2.0], min_length=2, max_length=2,
                                    description="strong view brightness factor range "
                                    "(fundus [0.5, 1.5])")
    contrast: list[float] = Field(default=[0.1, 2.0], min_length=2, max_length=2)
    blur_sigma: list[float] = Field(default=[0.1, 2.0], min_length=2, max_length=2)
    blur_kernel_fraction: float = Field(default=0.1, gt=0, lt=1,
                                        description="blur kernel = 2 floor(f H / 2) + 1")
    clamp_range: list[float] | None = Field(
        default=[0.0, 1.0], description="strong view clipped to this range (PIL clips to "
        "0..255 = [0, 1]); null = no clipping (z-scored data)")
    box_area: list[float] = Field(default=[0.02, 0.4], min_length=2, max_length=2)
    box_ratio: list[float] = Field(default=[0.3, 1 / 0.3], min_length=2, max_length=2)
    sam_optimizer: Literal["adamw", "engine"] = "adamw"
    sam_lr: float = Field(default=1.2e-4, gt=0, description="AdamW lr (0.03 / 250 warmup)")
    sam_weight_decay: float = Field(default=0.1, ge=0)
    sam_betas: list[float] = Field(default=[0.9, 0.999], min_length=2, max_length=2)
    dice_mask_background: bool = Field(default=False, description="fix: background Dice "
                                       "respects the confidence mask")
    ce_masked_mean: bool = Field(default=False, description="fix: masked CE averaged over the "
                                 "confident pixels instead of all pixels")
    teacher_train_mode: bool = True
    student_pl_train_mode: bool = True
    independent_teacher_init: bool = True


# -- pure pieces (pinned in tests/test_synfoc.py) ---------------------------------------------


def resize_images(x: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    if tuple(x.shape[-2:]) == (size, size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def resize_labels(y: torch.Tensor, size: int) -> torch.Tensor:
    """Nearest resize of a B x H x W integer (or 0/1) map."""
    if tuple(y.shape[-2:]) == (size, size):
        return y
    out = F.interpolate(y[:, None].float(), size=(size, size), mode="nearest")[:, 0]
    return out.to(y.dtype)


def dice_star(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample smoothed hard Dice ``(2|a&b| + 1) / (|a| + |b| + 1.001)``, 1 if both empty."""
    dims = tuple(range(1, a.ndim))
    inter = (a & b).sum(dims).double()
    total = a.sum(dims).double() + b.sum(dims).double()
    d = (2 * inter + 1) / (total + 1.001)
    return torch.where(total == 0, torch.ones_like(d), d).float()


def _in_part(labels: torch.Tensor, part: Sequence[int]) -> torch.Tensor:
    out = torch.zeros_like(labels, dtype=torch.bool)
    for k in part:
        out |= labels == k
    return out


def smc_alpha(student_pl: torch.Tensor, teacher_pl: torch.Tensor, sam_pl: torch.Tensor,
              parts: Sequence[Sequence[int]]) -> torch.Tensor:
    """alpha_i = self_i x mutual_i (B values): self = Dice*(y_G, y_G') at s, mutual =
    Dice*(NN_r(y_G'), y_F') at r, each averaged over ``parts``."""
    t_r = resize_labels(teacher_pl, sam_pl.shape[-1])
    self_c = torch.stack([dice_star(_in_part(student_pl, k), _in_part(teacher_pl, k))
                          for k in parts]).mean(0)
    mutual = torch.stack([dice_star(_in_part(t_r, k), _in_part(sam_pl, k))
                          for k in parts]).mean(0)
    return self_c * mutual


def fuse_pseudo_labels(p_sam: torch.Tensor, p_unet: torch.Tensor, alpha: torch.Tensor,
                       threshold: float) -> dict[str, torch.Tensor]:
    """``P_s = (1 - alpha) up(P_F') + alpha P_G'`` at s, ``P_r = down(P_s)`` at r; hard labels
    and confidence masks (``max P > threshold``) at both sizes."""
    s, r = p_unet.shape[-1], p_sam.shape[-1]
    a = alpha.view(-1, 1, 1, 1).to(p_unet.dtype)
    p_s = (1 - a) * resize_images(p_sam, s) + a * p_unet
    p_r = resize_images(p_s, r)
    conf_s, y_s = p_s.max(1)
    conf_r, y_r = p_r.max(1)
    return {"y_s": y_s, "m_s": (conf_s > threshold).float(), "y_r": y_r,
            "m_r": (conf_r > threshold).float()}


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Separable Gaussian blur, one sigma per sample, reflection padding."""
    b, c, h, w = x.shape
    kernel = min(kernel, 2 * ((min(h, w) - 1) // 2) + 1)
    half = kernel // 2
    t = torch.arange(kernel, device=x.device, dtype=x.dtype) - half
    g = torch.exp(-0.5 * (t[None] / sigma.to(x.dtype)[:, None]) ** 2)
    g = g / g.sum(1, keepdim=True)  # B x k
    weight = g.repeat_interleave(c, 0)  # (B C) x k
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (half, half, 0, 0), mode="reflect"), weight[:, None, None, :],
                 groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, half, half), mode="reflect"), weight[:, None, :, None],
                 groups=b * c)
    return y.reshape(b, c, h, w)


def _uniform(n: int, bounds: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    lo, hi = float(bounds[0]), float(bounds[1])
    return (lo + (hi - lo) * torch.rand(n)).to(like.device, like.dtype)


def strong_augment(x: torch.Tensor, brightness: Sequence[float], contrast: Sequence[float],
                   sigma: Sequence[float], kernel_fraction: float = 0.1,
                   clamp: Sequence[float] | None = (0.0, 1.0)) -> torch.Tensor:
    """SynFoC's strong view on a B x C x H x W batch, per sample: PIL-style brightness
    ``x f``, contrast ``m + f (x - m)`` (m = the mean grey level), Gaussian blur with sigma ~
    U(sigma), kernel ``2 floor(kernel_fraction H / 2) + 1``; clipped to ``clamp``."""
    b, c = x.shape[:2]
    x = x * _uniform(b, brightness, x).view(b, 1, 1, 1)
    if clamp is not None:
        x = x.clamp(clamp[0], clamp[1])
    if c == 3:
        grey = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
        mean = grey.mean((1, 2)).view(b, 1, 1, 1)
    else:
        mean = x.mean((1, 2, 3), keepdim=True)
    x = mean + _uniform(b, contrast, x).view(b, 1, 1, 1) * (x - mean)
    if clamp is not None:
        x = x.clamp(clamp[0], clamp[1])
    kernel = 2 * int(kernel_fraction * x.shape[-2] / 2) + 1
    return gaussian_blur(x, _uniform(b, sigma, x), kernel)


def consensus_divergence(z_sam: torch.Tensor, z_unet: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_cons, L_div) between the students on the mixed image: entropy where their argmax
    agree (averaged over B x K x pixels, each model at its own size), MSE of the probabilities
    (SAM's nearest-upsampled to the U-Net size) where they disagree. Nothing is detached."""
    p_f = torch.softmax(z_sam.float(), 1)
    q_g = torch.softmax(z_unet.float(), 1).clamp(1e-10, 1.0)
    q_f = p_f.clamp(1e-10, 1.0)
    s, r = z_unet.shape[-1], z_sam.shape[-1]
    p_f_up = F.interpolate(p_f, size=(s, s), mode="nearest")
    agree = (p_f_up.argmax(1) == q_g.argmax(1)).float()
    agree_r = resize_labels(agree, r)
    ent_f = (-q_f * torch.log(q_f) * agree_r[:, None]).mean()
    ent_g = (-q_g * torch.log(q_g) * agree[:, None]).mean()
    div = ((p_f_up - q_g) ** 2 * (1 - agree)[:, None]).mean()
    return 0.5 * (ent_f + ent_g), div


def ramp_weight(step: int, consistency: float, rampup: float, total: int) -> float:
    """``consistency x sigmoid_rampup(floor(t / (T / rampup)), rampup)`` (SynFoC's λ)."""
    if rampup == 0:
        return consistency
    epoch = math.floor(step / (total / rampup))
    return consistency * sigmoid_rampup(epoch, rampup)


# -- the method ------------------------------------------------------------------------------


def _tie_frozen(teacher: nn.Module, student: nn.Module) -> None:
    """Make the teacher SAM use the student's frozen encoder tensors (identical anyway)."""
    from ssmis.models.sam_lora import is_trainable_key

    modules = dict(student.named_modules())
    for name, mod in teacher.named_modules():
        for pname, param in list(mod._parameters.items()):
            full = f"{name}.{pname}" if name else pname
            if param is not None and not is_trainable_key(full):
                mod._parameters[pname] = modules[name]._parameters[pname]
    teacher.save_frozen = False  # type: ignore[assignment]


class SynFoC(ChoosablePredictor, Method[SynFoCParams]):
    name = "synfoc"
    predictors = ("sam", "unet")
    summary = ("SynFoC: SAM/MedSAM + LoRA co-trained with a U-Net, self-mutual confidence "
               "fused pseudo-labels, consensus-divergence (Qinghe et al. 2025)")
    Params = SynFoCParams
    spatial_dims = (2,)
    #: SAM's prompt encoder and IoU head are trainable but unused by the prompt-free head
    ddp_find_unused_parameters = True

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        p = self.params
        d = cfg.data
        self.sam = self._build_sam()
        self.unet = self.build_network()
        if p.independent_teacher_init:
            self.sam_teacher = freeze(self._build_sam())
            with torch.no_grad():  # non-learned buffers (pixel stats, prompt PE) as the student
                for bt, bs in zip(self.sam_teacher.buffers(), self.sam.buffers(), strict=True):
                    bt.copy_(bs)
            self.unet_teacher = freeze(self.build_network())
        else:
            self.sam_teacher = make_teacher(self.sam)
            self.unet_teacher = make_teacher(self.unet)
        _tie_frozen(self.sam_teacher, self.sam)
        self.parts = p.parts or [[k] for k in range(1, d.num_classes)]
        for part in self.parts:
            if not part or any(not 0 < k < d.num_classes for k in part):
                raise SSMISError(f"method.params.parts: {part} is not a group of foreground "
                                 f"classes 1..{d.num_classes - 1}")
        self._init_choice()
        self._trainable_sam = [n for n, t in self.sam.named_parameters() if t.requires_grad]

    @classmethod
    def run_params(cls, cfg: Any, declared: Any) -> Any:
        """Shares resolved, and an unset ``rampup_iterations`` the run's length (the code's
        T), so a resume that extends the run keeps the ramp it trained with."""
        p = super().run_params(cfg, declared)
        if p.rampup_iterations is None:
            p = p.model_copy(update={"rampup_iterations": cfg.train.iterations})
        return p

    def _build_sam(self) -> nn.Module:
        p = self.params
        try:
            return build_model("sam_lora", self.cfg.data.in_channels, self.cfg.data.num_classes,
                               **p.sam)
        except SSMISError as err:
            raise SSMISError(str(err).replace("model.options.", "method.params.sam.")) from None

    # -- sizes ------------------------------------------------------------------------------
    def _unet_size(self, x: torch.Tensor) -> int:
        p = self.params
        return p.unet_size or int(x.shape[-1])

    def _to_unet(self, x: torch.Tensor) -> torch.Tensor:
        p = self.params
        return resize_images(x, self._unet_size(x), p.unet_resize)

    # -- optimisation -------------------------------------------------------------------------
    def make_optimizer(self, train: TrainConfig) -> Any:
        p = self.params
        if p.sam_optimizer == "engine":
            return None
        sam_params = [t for t in self.sam.parameters() if t.requires_grad]
        unet_params = [t for t in self.unet.parameters() if t.requires_grad]
        adamw = torch.optim.AdamW([{"params": sam_params, "lr_scale": p.sam_lr / train.lr}],
                                  lr=p.sam_lr, betas=tuple(p.sam_betas),
                                  weight_decay=p.sam_weight_decay)
        sgd = torch.optim.SGD(unet_params, lr=train.lr, momentum=train.momentum,
                              weight_decay=train.weight_decay, nesterov=train.nesterov)
        return CombinedOptimizer([adamw, sgd])

    # -- training -----------------------------------------------------------------------------
    def _masked_ce(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
                   ) -> torch.Tensor:
        p = self.params
        ce = F.cross_entropy(logits, target.long(), reduction="none") * mask
        if p.ce_masked_mean:
            return ce.sum() / mask.sum().clamp_min(1e-8)
        return ce.mean()

    def _seg_loss(self, logits: torch.Tensor, target: torch.Tensor,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
        p = self.params
        logits = logits.float()
        probs = torch.softmax(logits, 1)
        if mask is None:
            ce = F.cross_entropy(logits, target.long())
        else:
            ce = self._masked_ce(logits, target, mask)
        dice = dice_loss(probs, target, mask=mask, smooth=DICE_SMOOTH,
                         mask_background=p.dice_mask_background)
        return ce + dice

    def training_step(
        self, labeled: Batch, unlabeled: Batch | None, step: int
    ) -> dict[str, torch.Tensor]:
        p = self.params
        if unlabeled is None:
            raise SSMISError("synfoc needs unlabeled batches (train.unlabeled_batch_size >= 1)")
        x_l, y_l = labeled["image"], labeled["label"]
        x_u = unlabeled["image"]
        big = self.sam.image_size
        r = big // 4
        s = self._unet_size(x_l)
        x_l_big, x_l_s = resize_images(x_l, big), self._to_unet(x_l)
        y_l_r, y_l_s = resize_labels(y_l, r), resize_labels(y_l, s)
        x_u_strong = strong_augment(x_u, p.brightness, p.contrast, p.blur_sigma,
                                    p.blur_kernel_fraction, p.clamp_range)
        x_uw_big, x_uw_s = resize_images(x_u, big), self._to_unet(x_u)

        with torch.no_grad():
            p_sam = torch.softmax(self.sam_teacher.low_res_logits(x_uw_big).float(), 1)
            with teacher_mode(self.unet_teacher, p.teacher_train_mode):
                p_unet = torch.softmax(self.unet_teacher(x_uw_s).float(), 1)
            with teacher_mode(self.unet, p.student_pl_train_mode):
                y_student = self.unet(x_uw_s).argmax(1)
            alpha = smc_alpha(y_student, p_unet.argmax(1), p_sam.argmax(1), self.parts)
            fused = fuse_pseudo_labels(p_sam, p_unet, alpha, p.threshold)
            b_u = x_u.shape[0]
            box_s = torch.stack([cutmix_box(s, p.box_area, p.box_ratio, device=x_u.device)
                                 for _ in range(b_u)])
            box_big, box_r = resize_labels(box_s, big), resize_labels(box_s, r)
            idx = torch.arange(b_u, device=x_u.device) % x_l.shape[0]
            y_mix_r = mix(fused["y_r"], y_l_r[idx].long(), box_r, ones="paste", batched=True)
            y_mix_s = mix(fused["y_s"], y_l_s[idx].long(), box_s, ones="paste", batched=True)
            m_r = torch.maximum(fused["m_r"], box_r)
            m_s = torch.maximum(fused["m_s"], box_s)
        x_mix_big = mix(resize_images(x_u_strong, big), x_l_big[idx], box_big, ones="paste",
                        batched=True)
        x_mix_s = mix(self._to_unet(x_u_strong), x_l_s[idx], box_s, ones="paste", batched=True)

        z_f_l = self.sam.low_res_logits(x_l_big)
        z_f_u = self.sam.low_res_logits(x_mix_big)
        z_g_l = self.unet(x_l_s)
        z_g_u = self.unet(x_mix_s)

        sup_f = self._seg_loss(z_f_l, y_l_r)
        sup_g = self._seg_loss(z_g_l, y_l_s)
        unsup_f = self._seg_loss(z_f_u, y_mix_r, m_r)
        unsup_g = self._seg_loss(z_g_u, y_mix_s, m_s)
        cons, div = consensus_divergence(z_f_u, z_g_u)
        total = p.rampup_iterations or self.cfg.train.iterations
        lam = ramp_weight(step, p.consistency, p.consistency_rampup, total)
        loss = sup_f + sup_g + lam * (unsup_f + unsup_g + cons + div)
        return {"loss": loss, "loss_sup_sam": sup_f.detach(), "loss_sup_unet": sup_g.detach(),
                "loss_unsup_sam": unsup_f.detach(), "loss_unsup_unet": unsup_g.detach(),
                "loss_cons": cons.detach(), "loss_div": div.detach(),
                "alpha": alpha.mean().detach(), "mask_ratio": fused["m_s"].mean().detach(),
                "lambda": torch.tensor(lam)}

    @torch.no_grad()
    def unsupervised_terms(self) -> list[UnsupervisedTerm]:
        p = self.params
        total = p.rampup_iterations or self.cfg.train.iterations
        return [UnsupervisedTerm(
            "unlabeled (lambda)", lambda s: ramp_weight(s, p.consistency, p.consistency_rampup,
                                                        total),
            p.consistency, ("rampup_iterations",))]

    def on_step_end(self, step: int) -> None:
        p = self.params
        ema_update(self.unet_teacher, self.unet, p.ema_decay, step=step,
                   buffers=buffer_policy(None, p.teacher_train_mode))
        # the LoRA weights alone: teacher and student share the frozen SAM tensors
        ema_update(self.sam_teacher, self.sam, p.ema_decay, step=step, names=self._trainable_sam)

    # -- inference ----------------------------------------------------------------------------
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        if self.inference_mode == "sam":
            return self.sam(images)
        z = self.unet(self._to_unet(images))
        if z.shape[-2:] != images.shape[-2:]:
            z = F.interpolate(z, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return z
