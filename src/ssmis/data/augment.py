"""Training augmentations by name (``data.augmentation``), so a method's published pipeline is a
config choice rather than a branch in the engine.

* ``ssl4mis`` (default): SSL4MIS ``RandomGenerator`` for 2D (rot90/flip or a small rotation,
  order-0 zoom to the patch), UA-MT ``RandomRotFlip`` + ``RandomCrop`` for 3D
  (:mod:`ssmis.data.transforms`). BCP, CVBM, CML, ALHVR, UA-MT and SSL4MIS use it. With
  ``data.resize: false`` the 2D zoom is replaced by a random crop at native resolution
  (:class:`ssmis.data.native.NativeCrop2D`).
* ``crop``: 3D random crop only, no rotation or flip: the Pancreas-CT pipeline of CVBM
  (``caoluyang0830/CVBM`` @ ``2ca4aad``, ``Pancreas_train.py``: ``RandomCrop`` + ``ToTensor``),
  BCP (``DeepMed-Lab-ECNU/BCP`` @ ``7879f98``, ``code/pancreas/dataloaders.py``) and MC-Net.
* ``synfoc``: SynFoC's resize to the patch size (``data.resize_filter``: LANCZOS, or BILINEAR for
  M&Ms) and weak augmentation (scale-crop, rotate, flip, elastic;
  :class:`ssmis.data.synfoc_aug.SynFoCWeak2D`), 2D square patches only.

A new pipeline is one builder function and one entry in :data:`AUGMENTATIONS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ssmis.data.native import NativeCrop2D
from ssmis.data.options import layout_option
from ssmis.data.synfoc_aug import SynFoCWeak2D
from ssmis.data.transforms import (
    Compose,
    RandomCrop3D,
    RandomGenerator2D,
    RandomRotFlip3D,
    Transform,
)


def _ssl4mis(patch_size: Sequence[int], data: Any) -> Transform:
    patch = tuple(int(p) for p in patch_size)
    if len(patch) == 2 and getattr(data, "resize", True) is False:
        # data.resize: false: random crops at native resolution
        return NativeCrop2D(patch, foreground=getattr(data, "crop_foreground", 0.0))
    if len(patch) == 2:
        return RandomGenerator2D(patch)
    return Compose([RandomRotFlip3D(), RandomCrop3D(patch)])


def _crop(patch_size: Sequence[int], data: Any) -> Transform:
    return RandomCrop3D(tuple(int(p) for p in patch_size))


def _synfoc(patch_size: Sequence[int], data: Any) -> Transform:
    return SynFoCWeak2D(patch_size, image_filter=layout_option(data, "resize_filter", "lanczos"))


AUGMENTATIONS: dict[str, Callable[[Sequence[int], Any], Transform]] = {
    "ssl4mis": _ssl4mis,
    "crop": _crop,
    "synfoc": _synfoc,
}


def check_augmentation(name: str, patch_size: Sequence[int]) -> str | None:
    """The problem with ``data.augmentation`` for this patch size, or None (used by the config
    validation, so the message names the field)."""
    if name not in AUGMENTATIONS:
        return (f"data.augmentation: unknown augmentation '{name}', expected one of "
                f"{', '.join(AUGMENTATIONS)}")
    if name == "crop" and len(patch_size) != 3:
        return (f"data.augmentation: crop is the 3D random crop of the Pancreas-CT code and "
                f"needs a 3D data.patch_size, got {list(patch_size)}")
    if name == "synfoc" and (len(patch_size) != 2 or patch_size[0] != patch_size[1]):
        return (f"data.augmentation: synfoc needs a square 2D data.patch_size [S, S] (the "
                f"authors' 512), got {list(patch_size)}")
    return None


def build_augmentation(name: str, patch_size: Sequence[int], data: Any = None) -> Transform:
    """The training transform ``(image, label | None, rng) -> (image, label | None)`` named
    ``name`` for ``patch_size``; ``data`` (a DataConfig) supplies its options. Raises ValueError
    for an unknown name or a patch size the augmentation cannot make."""
    problem = check_augmentation(name, patch_size)
    if problem is not None:
        raise ValueError(problem)
    return AUGMENTATIONS[name](patch_size, data)
