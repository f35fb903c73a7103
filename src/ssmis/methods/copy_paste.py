"""BCP's bidirectional copy-paste pieces, in the two flavours of the authors' scripts.

* ``acdc`` (2D): region Dice = SSL4MIS ``DiceLoss`` (squared denominators, whole batch,
  smooth 1e-10, class-0 mask bug unless ``mask_background``), CE averaged over the region; the
  function returns the (Dice, CE) pair, the caller sums/halves as the script does.
* ``la`` (3D): region Dice = ``mask_DiceLoss`` (linear denominator, per sample, softmax once),
  ``RW = 1/2 [w_out (Dice_out + CE_out) + w_in (Dice_in + CE_in)]``.

Pseudo-labels: ``softmax >= 0.5`` on channel 1 for two classes (BCP ``get_cut_mask``), argmax for
more (``get_ACDC_masks``), then the largest connected component of each foreground class.
"""

from __future__ import annotations

import torch

from ssmis.components import largest_component_per_class
from ssmis.losses import (
    class_argmax,
    cross_entropy,
    dice_loss,
    linear_dice_loss,
    region_weighted_loss,
)

SMOOTH_2D = 1e-10  # BCP/CVBM 2D DiceLoss smoothing


def batch_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The spatial box mask repeated over the batch of ``like`` (BCP's ``loss_mask``)."""
    return mask.to(like.device).expand(like.shape[0], *mask.shape)


def region_loss_2d(
    logits: torch.Tensor,
    target_out: torch.Tensor,
    target_in: torch.Tensor,
    mask: torch.Tensor,
    weight_out: float,
    weight_in: float,
    *,
    mask_background: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BCP ACDC ``mix_loss``: (w_out Dice_out + w_in Dice_in, w_out CE_out + w_in CE_in)."""
    probs = torch.softmax(logits, dim=1)
    m = batch_mask(mask, target_out)

    def dice(target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        return dice_loss(probs, target, mask=region, smooth=SMOOTH_2D,
                         mask_background=mask_background)

    def ce(target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, target, mask=region)

    return (region_weighted_loss(dice, target_out, target_in, m, weight_out, weight_in),
            region_weighted_loss(ce, target_out, target_in, m, weight_out, weight_in))


def region_loss_3d(
    logits: torch.Tensor,
    target_out: torch.Tensor,
    target_in: torch.Tensor,
    mask: torch.Tensor,
    weight_out: float,
    weight_in: float,
) -> torch.Tensor:
    """BCP LA ``mix_loss``: 1/2 [w_out (Dice_out + CE_out) + w_in (Dice_in + CE_in)]."""
    probs = torch.softmax(logits, dim=1)
    m = batch_mask(mask, target_out)

    def term(target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        return linear_dice_loss(probs, target, mask=region) + cross_entropy(logits, target, region)

    return 0.5 * region_weighted_loss(term, target_out, target_in, m, weight_out, weight_in)


@torch.no_grad()
def pseudo_labels(logits: torch.Tensor, lcc: bool = True) -> torch.Tensor:
    """Hard pseudo-labels B x spatial from teacher logits, with the per-class LCC filter."""
    probs = torch.softmax(logits.float(), dim=1)
    num_classes = probs.shape[1]
    labels = (probs[:, 1] >= 0.5).long() if num_classes == 2 else class_argmax(probs)
    if lcc:
        labels = largest_component_per_class(labels, range(1, num_classes))
    return labels
