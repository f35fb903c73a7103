"""Augmentations of the published code, on numpy arrays with an explicit random generator.

Every transform is ``(image, label | None, rng) -> (image, label | None)``. The generator is
passed in (never the global ``np.random``/``random`` state) so that a sample's augmentation
depends only on its seed, not on which DataLoader worker happens to load it. Labels are optional
(unlabeled samples have none) and always get exactly the image's geometry; label resampling is
nearest-neighbour (order 0) so no new class values appear.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

Array = np.ndarray
Transform = Callable[[Array, Array | None, np.random.Generator], tuple[Array, Array | None]]


def _size(output_size: Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    size = tuple(int(s) for s in output_size)
    if len(size) != ndim or min(size) < 1:
        raise ValueError(f"{name}: output_size must be {ndim} positive ints, got {output_size}")
    return size


def _check(image: Array, label: Array | None, ndim: int, name: str) -> None:
    if image.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}D image, got shape {image.shape}")
    if label is not None and label.shape != image.shape:
        raise ValueError(f"{name}: image {image.shape} and label {label.shape} differ")


def _apply_rot_flip(image: Array, label: Array | None, k: int,
                    axis: int) -> tuple[Array, Array | None]:
    image = np.flip(np.rot90(image, k), axis=axis).copy()
    if label is not None:
        label = np.flip(np.rot90(label, k), axis=axis).copy()
    return image, label


def _rot_flip(
    image: Array, label: Array | None, rng: np.random.Generator
) -> tuple[Array, Array | None]:
    """rot90 by k in {0..3} in axes (0, 1), then flip along axis 0 or 1 (SSL4MIS / UA-MT)."""
    k = int(rng.integers(0, 4))
    axis = int(rng.integers(0, 2))
    return _apply_rot_flip(image, label, k, axis)


def _contiguous(image: Array, label: Array | None) -> tuple[Array, Array | None]:
    """C-contiguous outputs, so ``torch.from_numpy`` accepts them (flips give negative strides)."""
    return np.ascontiguousarray(image), (
        np.ascontiguousarray(label) if label is not None else None
    )


def _zoom_to(array: Array, size: tuple[int, ...], order: int) -> Array:
    if array.shape == size:
        return array
    factors = [o / s for o, s in zip(size, array.shape, strict=True)]
    out = ndimage.zoom(array, factors, order=order)
    assert out.shape == size, (out.shape, size)
    return out


class Compose:
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(
        self, image: Array, label: Array | None, rng: np.random.Generator
    ) -> tuple[Array, Array | None]:
        for t in self.transforms:
            image, label = t(image, label, rng)
        return image, label

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


@dataclass(frozen=True)
class Ssl4mis2DParams:
    """The random draw of one ``RandomGenerator2D`` call: ``rot_flip`` (rot90 by ``k`` in 0..3,
    then flip along ``axis`` 0 or 1), else a rotation by ``angle`` degrees (an int in [-20, 20))
    or None (zoom only)."""

    rot_flip: bool
    k: int = 0
    axis: int = 0
    angle: int | None = None


def draw_ssl4mis_2d(rng: np.random.Generator) -> Ssl4mis2DParams:
    """Draw ``RandomGenerator2D``'s parameters from ``rng`` in the order the transform draws them
    (shared by the scipy path and the batched device path, :mod:`ssmis.data.device_aug`)."""
    if rng.random() > 0.5:
        k = int(rng.integers(0, 4))
        axis = int(rng.integers(0, 2))
        return Ssl4mis2DParams(rot_flip=True, k=k, axis=axis)
    if rng.random() > 0.5:
        return Ssl4mis2DParams(rot_flip=False, angle=int(rng.integers(-20, 20)))
    return Ssl4mis2DParams(rot_flip=False)


class RandomGenerator2D:
    """SSL4MIS ``RandomGenerator`` (also BCP, CVBM, CML, ALHVR on ACDC).

    With p=0.5 rot90 + flip; otherwise with p=0.5 a rotation by an integer angle in [-20, 20)
    degrees (nearest neighbour for the image too, no reshape); then zoom to ``output_size`` with
    order 0 for image and label, as in the published code. The same pixels, batched on the
    training device: :mod:`ssmis.data.device_aug` (``data.on_device``).
    """

    def __init__(self, output_size: Sequence[int]) -> None:
        self.output_size = _size(output_size, 2, "RandomGenerator2D")

    def __call__(
        self, image: Array, label: Array | None, rng: np.random.Generator
    ) -> tuple[Array, Array | None]:
        _check(image, label, 2, "RandomGenerator2D")
        params = draw_ssl4mis_2d(rng)
        if params.rot_flip:
            image, label = _apply_rot_flip(image, label, params.k, params.axis)
        elif params.angle is not None:
            image = ndimage.rotate(image, params.angle, order=0, reshape=False)
            if label is not None:
                label = ndimage.rotate(label, params.angle, order=0, reshape=False)
        image = _zoom_to(image, self.output_size, order=0)
        if label is not None:
            label = _zoom_to(label, self.output_size, order=0)
        return _contiguous(image, label)

    def __repr__(self) -> str:
        return f"RandomGenerator2D({self.output_size})"


class Resize2D:
    """Deterministic zoom to ``output_size`` (order 0 by default, matching training)."""

    def __init__(self, output_size: Sequence[int], order: int = 0) -> None:
        self.output_size = _size(output_size, 2, "Resize2D")
        self.order = order

    def __call__(
        self, image: Array, label: Array | None, rng: np.random.Generator | None = None
    ) -> tuple[Array, Array | None]:
        _check(image, label, 2, "Resize2D")
        image = _zoom_to(image, self.output_size, order=self.order)
        if label is not None:
            label = _zoom_to(label, self.output_size, order=0)
        return _contiguous(image, label)

    def __repr__(self) -> str:
        return f"Resize2D({self.output_size}, order={self.order})"


class RandomRotFlip3D:
    """UA-MT ``RandomRotFlip``: rot90 (k in 0..3) in axes (0, 1), then flip along axis 0 or 1."""

    def __call__(
        self, image: Array, label: Array | None, rng: np.random.Generator
    ) -> tuple[Array, Array | None]:
        _check(image, label, 3, "RandomRotFlip3D")
        return _rot_flip(image, label, rng)

    def __repr__(self) -> str:
        return "RandomRotFlip3D()"


def _pad_for_crop(
    image: Array, label: Array | None, size: tuple[int, ...]
) -> tuple[Array, Array | None]:
    """UA-MT's padding: if any axis is not larger than the patch, pad every axis with zeros by
    ``max((out - size) // 2 + 3, 0)`` on each side."""
    if all(s > o for s, o in zip(image.shape, size, strict=True)):
        return image, label
    pad = [(p, p) for p in (max((o - s) // 2 + 3, 0) for s, o in zip(image.shape, size,
                                                                    strict=True))]
    image = np.pad(image, pad, mode="constant", constant_values=0)
    if label is not None:
        label = np.pad(label, pad, mode="constant", constant_values=0)
    return image, label


class RandomCrop3D:
    """UA-MT ``RandomCrop``: pad (see ``_pad_for_crop``) then a random ``output_size`` crop.

    As in UA-MT the start is drawn from ``[0, size - out)`` (the last position is never used).
    """

    def __init__(self, output_size: Sequence[int]) -> None:
        self.output_size = _size(output_size, 3, "RandomCrop3D")

    def __call__(
        self, image: Array, label: Array | None, rng: np.random.Generator
    ) -> tuple[Array, Array | None]:
        _check(image, label, 3, "RandomCrop3D")
        image, label = _pad_for_crop(image, label, self.output_size)
        starts = [int(rng.integers(0, s - o)) for s, o in zip(image.shape, self.output_size,
                                                               strict=True)]
        window = tuple(slice(b, b + o) for b, o in zip(starts, self.output_size, strict=True))
        return image[window].copy(), (label[window].copy() if label is not None else None)

    def __repr__(self) -> str:
        return f"RandomCrop3D({self.output_size})"


class CenterCrop3D:
    """UA-MT ``CenterCrop``: the same padding, then the central ``output_size`` crop."""

    def __init__(self, output_size: Sequence[int]) -> None:
        self.output_size = _size(output_size, 3, "CenterCrop3D")

    def __call__(
        self, image: Array, label: Array | None, rng: np.random.Generator | None = None
    ) -> tuple[Array, Array | None]:
        _check(image, label, 3, "CenterCrop3D")
        image, label = _pad_for_crop(image, label, self.output_size)
        starts = [int(round((s - o) / 2.0)) for s, o in zip(image.shape, self.output_size,
                                                            strict=True)]
        window = tuple(slice(b, b + o) for b, o in zip(starts, self.output_size, strict=True))
        return image[window].copy(), (label[window].copy() if label is not None else None)

    def __repr__(self) -> str:
        return f"CenterCrop3D({self.output_size})"
