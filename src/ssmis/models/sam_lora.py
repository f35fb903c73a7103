"""SAM / MedSAM with LoRA on the image encoder, prompt-free multi-class head (SAMed / SynFoC).

``model.name: sam_lora`` (as ``MQinghe/SynFoC`` @ ``3f3c06a`` builds it:
``code/sam_lora_image_encoder.py``, ``code/segment_anything/build_sam.py``):

* SAM's ViT image encoder built at ``image_size`` (512 in SynFoC; ViT-B by default) from the
  ``segment-anything`` package's modeling classes (an optional dependency: ``pip install
  'ssmis[sam]'``; imported lazily, so ``import ssmis`` never needs it);
* frozen encoder, LoRA of rank ``lora_rank`` on the **q and v slices** of every block's fused
  ``qkv`` Linear: ``qkv(x)[..., :d] += B_q A_q x`` and ``qkv(x)[..., -d:] += B_v A_v x``, A
  Kaiming-uniform (a = sqrt 5), B zeros (so the adapted model equals the original at init), no
  scaling, no dropout (SAMed ``LoRA_Sam``);
* mask decoder with ``num_multimask_outputs = num_classes - 1`` (so ``num_classes`` mask tokens,
  token 0 = background) and all tokens returned as a K-channel logit map; prompt encoder and
  decoder trainable; prompt-free forward (no points, boxes or masks: the learned
  ``no_mask_embed`` is the dense prompt);
* input: grey images are replicated to 3 channels, then ``(x - pixel_mean) / pixel_std``
  (SynFoC: mean 0, std 1 on [0, 1] images; the original SAM expects ImageNet statistics on
  0..255, i.e. ``pixel_mean: [123.675, 116.28, 103.53]``, ``pixel_std: [58.395, 57.12, 57.375]``
  for such inputs) and resized (bilinear) to ``image_size`` when needed;
* ``forward(x)`` returns logits at the input resolution (the 4 x 1/16 low-res masks upsampled
  bilinearly), so the model plugs into the engine like the U-Net; :meth:`SamLoRA.low_res_logits`
  gives the low-res map that SynFoC's losses use.

Checkpoints: ``checkpoint`` = an original-format state dict (``sam_vit_b_01ec64.pth``,
``medsam_vit_b.pth``: ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``), loaded with
``torch.load(weights_only=True)`` and adapted to ``image_size`` (:func:`adapt_sam_state_dict`:
absolute position embedding and the relative-position tables that do not match, bilinear);
SynFoC's ``load_from`` also drops the decoder's mask tokens, hypernetwork MLPs and IoU head
(``keep_decoder_heads: false``, faithful) even when their shapes match. What was loaded,
resized or freshly initialised is logged and kept in ``model.load_report``.

Small checkpoints: with a ``checkpoint`` file the frozen weights can be rebuilt from it, so the
model's ``state_dict`` holds only the trainable part (LoRA, prompt encoder, mask decoder; the
frozen keys are also accepted as missing by ``load_state_dict``). Without one (random init)
everything is saved. ``save_frozen`` overrides the choice. :func:`trainable_state_dict` /
:func:`load_trainable_state_dict` do the same explicitly.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ssmis.errors import SSMISError

LOGGER = logging.getLogger("ssmis")

MISSING_EXTRA = "model.name: sam_lora needs the SAM extra: pip install 'ssmis[sam]'"
#: decoder keys SynFoC's ``load_from`` always re-initialises
DECODER_HEAD_KEYS = ("mask_tokens", "output_hypernetworks_mlps", "iou_prediction_head")
#: name fragments of the trainable part (everything else is the frozen encoder + pixel stats)
TRAINABLE_PREFIXES = ("sam.prompt_encoder.", "sam.mask_decoder.")
LORA_TAG = ".lora_"
SAM_MEAN = (123.675, 116.28, 103.53)
SAM_STD = (58.395, 57.12, 57.375)


def import_sam_modeling() -> ModuleType:
    """``segment_anything.modeling``, or :class:`SSMISError` when the package is missing.

    ``segment_anything/__init__.py`` also imports the predictor, which needs torchvision (not a
    declared dependency of the package, and unused here). When that import fails, the
    ``modeling`` subpackage (torch only) is loaded without running the package ``__init__``.
    """
    if "segment_anything.modeling" in sys.modules:
        return sys.modules["segment_anything.modeling"]
    spec = importlib.util.find_spec("segment_anything")
    if spec is None or not spec.submodule_search_locations:
        raise SSMISError(MISSING_EXTRA)
    try:
        return importlib.import_module("segment_anything.modeling")
    except ImportError as err:
        if "torchvision" not in str(err):
            raise SSMISError(f"{MISSING_EXTRA} ({err})") from None
    # package __init__ failed on torchvision: register a bare parent package and import modeling
    sys.modules.pop("segment_anything", None)
    parent = importlib.util.module_from_spec(
        importlib.util.spec_from_loader("segment_anything", loader=None, is_package=True))
    parent.__path__ = list(spec.submodule_search_locations)
    sys.modules["segment_anything"] = parent
    try:
        return importlib.import_module("segment_anything.modeling")
    except ImportError as err:
        raise SSMISError(f"{MISSING_EXTRA} ({err})") from None


# ---------------------------------------------------------------------------------- LoRA


class LoRAqv(nn.Module):
    """A frozen fused ``qkv`` Linear (d -> 3d) plus low-rank updates of its q and v slices."""

    def __init__(self, base: nn.Linear, rank: int) -> None:
        super().__init__()
        self.base = base
        d = base.in_features
        if base.out_features != 3 * d:
            raise ValueError(f"expected a fused qkv Linear({d}, {3 * d}), got {base}")
        self.dim = d
        self.lora_a_q = nn.Linear(d, rank, bias=False)
        self.lora_b_q = nn.Linear(rank, d, bias=False)
        self.lora_a_v = nn.Linear(d, rank, bias=False)
        self.lora_b_v = nn.Linear(rank, d, bias=False)
        for a in (self.lora_a_q, self.lora_a_v):
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
        for b in (self.lora_b_q, self.lora_b_v):
            nn.init.zeros_(b.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.base(x)
        dq = self.lora_b_q(self.lora_a_q(x))
        dv = self.lora_b_v(self.lora_a_v(x))
        return qkv + torch.cat([dq, torch.zeros_like(dq), dv], dim=-1)


# ------------------------------------------------------------------------- checkpoint adapt


@dataclass
class LoadReport:
    """What :func:`adapt_sam_state_dict` did with a checkpoint (keys in SAM's own names)."""

    source: str = ""
    loaded: list[str] = field(default_factory=list)
    resized: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    initialised: list[str] = field(default_factory=list)  # model keys left at random init
    dropped: list[str] = field(default_factory=list)  # checkpoint keys not used

    def summary(self) -> str:
        return (f"{self.source}: {len(self.loaded)} tensors loaded, {len(self.resized)} resized"
                f", {len(self.initialised)} freshly initialised, {len(self.dropped)} ignored")


def _resize_pos_embed(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """1 x H x W x C absolute position embedding -> 1 x h x w x C (bilinear)."""
    x = t.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).to(t.dtype)


def _resize_rel_pos(t: torch.Tensor, length: int) -> torch.Tensor:
    """L x C relative-position table -> length x C (bilinear along L, as SAMed)."""
    x = t[None, None].float()
    x = F.interpolate(x, size=(length, t.shape[1]), mode="bilinear", align_corners=False)
    return x[0, 0].to(t.dtype)


def adapt_sam_state_dict(
    checkpoint: dict[str, torch.Tensor], target: dict[str, torch.Tensor], *,
    keep_decoder_heads: bool = False, source: str = "checkpoint",
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Fit an original SAM state dict to a model's ``target`` state dict (same key names).

    ``image_encoder.pos_embed`` and the ``rel_pos_h/w`` tables whose length differs (the global
    attention blocks when ``image_size`` changes) are resized bilinearly; other shape
    mismatches are errors. Decoder heads are re-initialised unless ``keep_decoder_heads``.
    Returns the state dict to load (a subset of ``target``'s keys) and the report.
    """
    report = LoadReport(source=source)
    out: dict[str, torch.Tensor] = {}
    for key, value in checkpoint.items():
        if key not in target:
            report.dropped.append(key)
            continue
        if key.startswith("mask_decoder.") and not keep_decoder_heads and any(
                h in key for h in DECODER_HEAD_KEYS):
            report.dropped.append(key)
            continue
        want = tuple(target[key].shape)
        have = tuple(value.shape)
        if have == want:
            out[key] = value
            report.loaded.append(key)
        elif key.endswith("pos_embed") and len(want) == 4 and have[3] == want[3]:
            out[key] = _resize_pos_embed(value, (want[1], want[2]))
            report.resized[key] = (have, want)
        elif (key.endswith("rel_pos_h") or key.endswith("rel_pos_w")) and len(want) == 2 \
                and have[1] == want[1]:
            out[key] = _resize_rel_pos(value, want[0])
            report.resized[key] = (have, want)
        elif key.startswith("mask_decoder.") and keep_decoder_heads and any(
                h in key for h in DECODER_HEAD_KEYS):
            report.dropped.append(key)  # e.g. another number of mask tokens
        else:
            raise SSMISError(f"model.options.checkpoint: {source}: {key} has shape {have}, the "
                             f"model expects {want} (another SAM geometry? check embed_dim, "
                             "depth, num_heads, window_size)")
    report.initialised = sorted(k for k in target if k not in out)
    return out, report


def read_sam_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """An original-format SAM state dict from ``path`` (``torch.load(weights_only=True)``)."""
    if not path.is_file():
        raise SSMISError(f"model.options.checkpoint: file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SSMISError(f"model.options.checkpoint: {path}: not a loadable SAM state dict "
                         f"({err})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not any(str(k).startswith("image_encoder.")
                                              for k in state):
        raise SSMISError(f"model.options.checkpoint: {path}: expected a SAM state dict with "
                         "image_encoder.* / prompt_encoder.* / mask_decoder.* keys")
    return {str(k): v for k, v in state.items() if torch.is_tensor(v)}


# ------------------------------------------------------------------------------- the model


def build_sam(
    num_classes: int, *, image_size: int = 1024, patch_size: int = 16, embed_dim: int = 768,
    depth: int = 12, num_heads: int = 12, global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
    window_size: int = 14, prompt_embed_dim: int = 256, decoder_mlp_dim: int = 2048,
    decoder_heads: int = 8, pixel_mean: Sequence[float] = SAM_MEAN,
    pixel_std: Sequence[float] = SAM_STD,
) -> nn.Module:
    """A plain ``segment_anything.modeling.Sam`` as ``build_sam_vit_b`` makes it (defaults =
    ViT-B at 1024 px), with ``num_classes - 1`` multimask outputs (``num_classes`` tokens);
    its state dict has the original key names."""
    m = import_sam_modeling()
    grid = image_size // patch_size
    encoder = m.ImageEncoderViT(
        img_size=image_size, patch_size=patch_size, in_chans=3, embed_dim=embed_dim,
        depth=depth, num_heads=num_heads, mlp_ratio=4, out_chans=prompt_embed_dim,
        qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), use_abs_pos=True,
        use_rel_pos=True, rel_pos_zero_init=True, window_size=window_size,
        global_attn_indexes=tuple(int(i) for i in global_attn_indexes))
    prompt = m.PromptEncoder(embed_dim=prompt_embed_dim, image_embedding_size=(grid, grid),
                             input_image_size=(image_size, image_size), mask_in_chans=16)
    decoder = m.MaskDecoder(
        num_multimask_outputs=num_classes - 1,
        transformer=m.TwoWayTransformer(depth=2, embedding_dim=prompt_embed_dim,
                                        mlp_dim=decoder_mlp_dim, num_heads=decoder_heads),
        transformer_dim=prompt_embed_dim, iou_head_depth=3, iou_head_hidden_dim=256)
    return m.Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder,
                 pixel_mean=list(pixel_mean), pixel_std=list(pixel_std))


class SamLoRA(nn.Module):
    """SAM (ViT-B by default) + LoRA(q, v), prompt-free, ``num_classes`` mask tokens."""

    spatial_dims = 2

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        image_size: int = 512,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
        window_size: int = 14,
        prompt_embed_dim: int = 256,
        decoder_mlp_dim: int = 2048,
        decoder_heads: int = 8,
        lora_rank: int = 4,
        checkpoint: str | Path | None = None,
        keep_decoder_heads: bool = False,
        pixel_mean: Sequence[float] = (0.0, 0.0, 0.0),
        pixel_std: Sequence[float] = (1.0, 1.0, 1.0),
        save_frozen: bool | None = None,
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise SSMISError(f"model.options: sam_lora takes 1 or 3 input channels, got "
                             f"{in_channels} (data.in_channels)")
        if image_size % patch_size:
            raise SSMISError(f"model.options.image_size: {image_size} is not a multiple of "
                             f"patch_size {patch_size}")
        if lora_rank < 1:
            raise SSMISError("model.options.lora_rank: expected >= 1")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.image_size = int(image_size)
        self.sam = build_sam(num_classes, image_size=self.image_size, patch_size=patch_size,
                             embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                             global_attn_indexes=global_attn_indexes, window_size=window_size,
                             prompt_embed_dim=prompt_embed_dim, decoder_mlp_dim=decoder_mlp_dim,
                             decoder_heads=decoder_heads, pixel_mean=pixel_mean,
                             pixel_std=pixel_std)
        self.load_report: LoadReport | None = None
        self.checkpoint = str(checkpoint) if checkpoint is not None else None
        if checkpoint is not None:
            self.load_report = self.load_sam_checkpoint(Path(checkpoint), keep_decoder_heads)
        else:
            LOGGER.warning("sam_lora: no model.options.checkpoint given, the SAM encoder is "
                           "randomly initialised (frozen random features)")
        for p in self.sam.image_encoder.parameters():
            p.requires_grad_(False)
        for block in self.sam.image_encoder.blocks:
            block.attn.qkv = LoRAqv(block.attn.qkv, lora_rank)
        self.save_frozen = checkpoint is None if save_frozen is None else bool(save_frozen)
        self._frozen_names = frozenset(frozen_keys(self))
        self.register_load_state_dict_post_hook(_accept_missing_frozen)

    def load_sam_checkpoint(self, path: Path, keep_decoder_heads: bool = False) -> LoadReport:
        """Load an original-format SAM state dict (before the LoRA wrappers are added)."""
        raw = read_sam_checkpoint(path)
        target = self.sam.state_dict()
        state, report = adapt_sam_state_dict(raw, target, keep_decoder_heads=keep_decoder_heads,
                                             source=str(path))
        self.sam.load_state_dict(state, strict=False)
        LOGGER.info(f"sam_lora: {report.summary()}")
        for key, (have, want) in report.resized.items():
            LOGGER.info(f"sam_lora: resized {key} {have} -> {want}")
        if report.initialised:
            LOGGER.info("sam_lora: freshly initialised: " + ", ".join(report.initialised))
        return report

    # -- forward ----------------------------------------------------------------------------
    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False)
        return (x - self.sam.pixel_mean) / self.sam.pixel_std

    def low_res_logits(self, x: torch.Tensor) -> torch.Tensor:
        """B x K x (image_size / 4)^2 logits of all mask tokens, prompt-free."""
        emb = self.sam.image_encoder(self.preprocess(x))
        sparse, dense = self.sam.prompt_encoder(points=None, boxes=None, masks=None)
        # batch 1 prompts broadcast over the B image embeddings (SAMed's forward)
        masks, _ = self.sam.mask_decoder.predict_masks(
            image_embeddings=emb, image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)
        return masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.low_res_logits(x)
        return F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)

    # -- small checkpoints ------------------------------------------------------------------
    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "",
                   keep_vars: bool = False) -> Any:
        out = super().state_dict(*args, destination=destination, prefix=prefix,
                                 keep_vars=keep_vars)
        if not self.save_frozen:
            for name in self._frozen_names:
                out.pop(prefix + name, None)
        return out


def is_trainable_key(name: str) -> bool:
    """LoRA, prompt-encoder and mask-decoder entries of a :class:`SamLoRA` state dict."""
    return LORA_TAG in name or name.startswith(TRAINABLE_PREFIXES)


def frozen_keys(model: SamLoRA) -> list[str]:
    names = list(nn.Module.state_dict(model).keys())
    return [n for n in names if not is_trainable_key(n)]


def _accept_missing_frozen(module: nn.Module, incompatible: Any) -> None:
    """``load_state_dict`` post-hook: frozen keys may be absent from a small checkpoint."""
    if getattr(module, "save_frozen", True):
        return
    names = module._frozen_names  # type: ignore[attr-defined]
    keep = [k for k in incompatible.missing_keys
            if not any(k == n or k.endswith("." + n) for n in names)]
    incompatible.missing_keys[:] = keep


def trainable_state_dict(model: SamLoRA) -> dict[str, torch.Tensor]:
    """Only the trainable part (LoRA A/B, prompt encoder, mask decoder), detached copies."""
    full = nn.Module.state_dict(model)
    return {k: v.detach().clone() for k, v in full.items() if is_trainable_key(k)}


def load_trainable_state_dict(model: SamLoRA, state: dict[str, torch.Tensor]) -> None:
    """Load a :func:`trainable_state_dict` (all of its keys must be trainable keys of
    ``model``, and every trainable key must be present)."""
    expected = set(trainable_state_dict(model))
    given = set(state)
    if given != expected:
        missing, extra = sorted(expected - given), sorted(given - expected)
        raise SSMISError(f"sam_lora trainable state: missing {missing[:5]}, unexpected "
                         f"{extra[:5]}")
    nn.Module.load_state_dict(model, state, strict=False)
