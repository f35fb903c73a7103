"""Loss building blocks shared by every method.

The Dice loss is the SSL4MIS/UA-MT form (squared denominators, smooth = 1e-5, averaged over the
classes it is asked for), because the published numbers were trained with it. ``mask`` weights
pixels, so region-restricted losses (copy-paste regions, confidence masks) reuse the same code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DICE_SMOOTH = 1e-5


def dice_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    include_background: bool = True,
    mask: torch.Tensor | None = None,
    smooth: float = DICE_SMOOTH,
) -> torch.Tensor:
    """SSL4MIS Dice loss over classes: 1 - (2 sum(p*t) + s) / (sum(p^2) + sum(t^2) + s).

    ``probs``: B x C x ... probabilities; ``target``: B x ... integer labels; ``mask``: B x ...
    weights (1 = counted). The loss is averaged over the classes (1..C-1 when
    ``include_background`` is false).
    """
    num_classes = probs.shape[1]
    onehot = F.one_hot(target.long(), num_classes).movedim(-1, 1).to(probs.dtype)
    if mask is not None:
        weight = mask.unsqueeze(1).to(probs.dtype)
        probs_w, onehot_w = probs * weight, onehot * weight
    else:
        probs_w, onehot_w = probs, onehot
    dims = [0] + list(range(2, probs.ndim))
    intersect = (probs_w * onehot).sum(dims)
    denominator = (probs_w * probs).sum(dims) + (onehot_w * onehot).sum(dims)
    per_class = 1.0 - (2.0 * intersect + smooth) / (denominator + smooth)
    if not include_background:
        per_class = per_class[1:]
    return per_class.mean()


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Pixel-wise cross-entropy, averaged over all pixels (or weighted by ``mask``)."""
    if mask is None:
        return F.cross_entropy(logits, target.long())
    per_pixel = F.cross_entropy(logits, target.long(), reduction="none")
    weight = mask.to(per_pixel.dtype)
    return (per_pixel * weight).sum() / weight.sum().clamp_min(1e-8)
