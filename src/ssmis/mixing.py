"""Copy-paste / CutMix masks and mixing of image batches (BCP, CVBM; reusable by CPS/CML/...).

Two mask polarities, named by :func:`mix`'s ``ones``: ``"keep"`` (BCP's ``context_mask`` /
``generate_mask``, :func:`box_mask`): ``M`` is 1 where the *first* image is kept and 0 inside the
pasted box, so ``mix(a, b, M) = M * a + (1 - M) * b`` shows ``b`` inside the box; ``"paste"``
(UniMatch/SynFoC ``obtain_cutmix_box``, :func:`cutmix_box`): ``M`` is 1 inside the box, so
``mix(a, b, M, ones="paste") = a * (1 - M) + b * M``. BCP draws one mask per iteration shared by
the whole half-batch; SynFoC one per sample (``batched=True``).

Random numbers come from ``torch`` (seeded and checkpointed by the engine), so a resumed run draws
the same boxes; the originals use ``np.random.randint`` with the same (exclusive) bounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

#: what a mask's ones mean: ``"keep"`` the first image, ``"paste"`` the second one
Polarity = Literal["keep", "paste"]


def box_size(spatial: Sequence[int], ratio: float) -> tuple[int, ...]:
    """Side of the box along each axis: ``int(dim * ratio)`` (BCP: ratio 2/3)."""
    return tuple(int(s * ratio) for s in spatial)


def box_mask(
    spatial: Sequence[int],
    ratio: float = 2.0 / 3.0,
    *,
    origin_extent: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A float mask of shape ``spatial``: 1 outside one axis-aligned box, 0 inside it.

    The box has sides ``int(dim * ratio)``; its origin along each axis is drawn uniformly from
    ``[0, extent - side)`` (upper bound exclusive, as ``np.random.randint``; 0 when that range is
    empty), with ``extent`` = the patch size. ``origin_extent`` replaces the extent used for the
    origin only: BCP/CVBM's Pancreas script uses the LA constants (112, 112, 80) on 96^3 patches,
    which lets the box run past the border (where it is clipped); pass those to reproduce it.
    """
    spatial = tuple(int(s) for s in spatial)
    sides = box_size(spatial, ratio)
    extents = tuple(int(e) for e in origin_extent) if origin_extent is not None else spatial
    if len(extents) != len(spatial):
        raise ValueError(f"origin_extent {extents} does not match the patch dimensions {spatial}")
    mask = torch.ones(spatial, device=device)
    index = []
    for side, extent in zip(sides, extents, strict=True):
        high = extent - side
        start = int(torch.randint(0, high, (1,), generator=generator).item()) if high > 0 else 0
        index.append(slice(start, start + side))
    mask[tuple(index)] = 0.0
    return mask


def mix(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, *, ones: Polarity = "keep",
        batched: bool = False) -> torch.Tensor:
    """``b`` pasted into ``a`` where ``mask`` says: ``a * M + b * (1 - M)`` with ``ones="keep"``
    (1 = keep ``a``), ``a * (1 - M) + b * M`` with ``ones="paste"`` (1 = paste ``b``).

    Works for images (B x C x spatial) and for integer label maps (B x spatial), for which the
    result keeps the label dtype. ``mask`` is spatial (one box for the whole batch, broadcast
    over the batch and channel axes) or, with ``batched``, B x spatial (one box per sample,
    broadcast over the channel axis).
    """
    m = mask.to(a.dtype) if a.is_floating_point() else mask.to(torch.long)
    while m.dim() < a.dim():
        m = m.unsqueeze(1 if batched else 0)
    if ones == "paste":
        return a * (1 - m) + b * m
    return a * m + b * (1 - m)


def cutmix_box(
    size: int,
    area: Sequence[float] = (0.02, 0.4),
    ratio: Sequence[float] = (0.3, 1 / 0.3),
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """UniMatch/SynFoC ``obtain_cutmix_box`` (p = 1): a ``size x size`` float mask, 1 inside one
    random box of area ``U(area) x size^2`` and aspect ``U(ratio)``, 0 elsewhere (note: 1 marks
    the *pasted* region, the opposite of :func:`box_mask`).

    ``w = int(sqrt(a / r))``, ``h = int(sqrt(a r))``, origin ``x0, y0 ~ randint[0, size)``,
    the area is drawn once, the aspect and origin are redrawn until the box fits.
    """
    mask = torch.zeros(size, size, device=device)
    u = float(torch.rand(1, generator=generator))
    a = (area[0] + (area[1] - area[0]) * u) * size * size
    while True:
        r = ratio[0] + (ratio[1] - ratio[0]) * float(torch.rand(1, generator=generator))
        w, h = int((a / r) ** 0.5), int((a * r) ** 0.5)
        x0, y0 = (int(v) for v in torch.randint(0, size, (2,), generator=generator))
        if x0 + w <= size and y0 + h <= size:
            break
    mask[y0:y0 + h, x0:x0 + w] = 1.0
    return mask
