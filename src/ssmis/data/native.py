"""Training on 2D images at their native resolution (``data.resize: false``).

Resizing a whole 584 x 565 retina photograph to the patch size erases 1-pixel vessels and
staircases every edge. With ``data.resize: false`` a 2D model trains instead on random
``data.patch_size`` crops of the image as stored (:class:`NativeCrop2D`: no zoom, so no pixel
is interpolated except under a rotation) and is evaluated with a 2D sliding window over the
whole image (:func:`ssmis.eval.inference.predict_windows_2d`).

The augmentation is SSL4MIS's ``RandomGenerator`` without its zoom: with probability 1/2 a
rot90 + flip, else with probability 1/2 a rotation by -20..20 degrees, else none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

Array = np.ndarray


def _window(array: Array, top: int, left: int, height: int, width: int) -> Array:
    """``array[top:top+height, left:left+width]`` with zeros where the window leaves the array."""
    out = np.zeros((height, width), dtype=array.dtype)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + height, array.shape[0]), min(left + width, array.shape[1])
    if y1 > y0 and x1 > x0:
        out[y0 - top:y1 - top, x0 - left:x1 - left] = array[y0:y1, x0:x1]
    return out


class NativeCrop2D:
    """Random ``patch`` crop of a 2D image at native resolution, with SSL4MIS's rot90/flip or
    small rotation; images smaller than the patch are zero-padded (label 0).

    ``(image (H, W) float, label (H, W) int | None, rng) -> (image (h, w), label (h, w) | None)``
    with ``(h, w) = patch`` in pixels. The random draws depend only on ``rng`` and the image
    shape, so every channel of a case (transformed separately with identically seeded
    generators) gets the same crop. Rotations interpolate the image linearly and the label with
    nearest neighbour; a rotated crop is cut from the middle of a larger window that lies inside
    the image (when the image is larger than the patch's diagonal), so it has no empty corners.

    ``foreground``: the probability that a labeled crop is centred on a random foreground pixel
    (label > 0) rather than placed uniformly (nnU-Net oversamples foreground in a third of its
    patches), so that a small structure in a large image is seen; unlabeled images and images
    without foreground are always cropped uniformly.

    Raises:
        ValueError: ``patch`` is not two positive sizes, ``foreground`` is outside [0, 1], or
            image and label shapes differ.
    """

    def __init__(self, patch: Sequence[int], max_angle: float = 20.0,
                 foreground: float = 0.0) -> None:
        size = tuple(int(p) for p in patch)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"NativeCrop2D: patch must be 2 positive ints, got {list(patch)}")
        if not 0.0 <= foreground <= 1.0:
            raise ValueError(f"NativeCrop2D: foreground must be in [0, 1], got {foreground}")
        self.patch = size
        self.max_angle = float(max_angle)
        self.foreground = float(foreground)

    def __call__(self, image: Array, label: Array | None, rng: np.random.Generator
                 ) -> tuple[Array, Array | None]:
        if image.ndim != 2:
            raise ValueError(f"NativeCrop2D: expected a 2D image, got shape {image.shape}")
        if label is not None and label.shape != image.shape:
            raise ValueError(f"NativeCrop2D: image {image.shape} and label {label.shape} differ")
        ph, pw = self.patch
        centre = None
        if rng.random() < self.foreground and label is not None:
            where = np.flatnonzero(label)
            if where.size:
                y, x = np.unravel_index(int(where[rng.integers(0, where.size)]), label.shape)
                centre = (int(y), int(x))
        mode = "rot_flip" if rng.random() > 0.5 else ("rotate" if rng.random() > 0.5 else "none")
        if mode == "rot_flip":
            k, axis = int(rng.integers(0, 4)), int(rng.integers(0, 2))
            h, w = (pw, ph) if k % 2 else (ph, pw)  # rot90 swaps the crop's sides
            top, left = self._corner(image.shape, h, w, rng, centre)
            out = [np.flip(np.rot90(_window(a, top, left, h, w), k), axis=axis)
                   if a is not None else None for a in (image, label)]
        elif mode == "rotate":
            angle = float(rng.uniform(-self.max_angle, self.max_angle))
            side = int(math.ceil(math.hypot(ph, pw))) + 2
            wtop, wleft = self._corner(image.shape, side, side, rng, centre)
            out = []
            for a, order in ((image, 1), (label, 0)):
                if a is None:
                    out.append(None)
                    continue
                turned = ndimage.rotate(_window(a, wtop, wleft, side, side), angle,
                                        order=order, reshape=False, mode="constant", cval=0)
                y, x = (side - ph) // 2, (side - pw) // 2
                out.append(turned[y:y + ph, x:x + pw])
        else:
            top, left = self._corner(image.shape, ph, pw, rng, centre)
            out = [_window(a, top, left, ph, pw) if a is not None else None
                   for a in (image, label)]
        img, lab = out
        return np.ascontiguousarray(img), (np.ascontiguousarray(lab) if lab is not None else None)

    @staticmethod
    def _corner(shape: tuple[int, ...], h: int, w: int, rng: np.random.Generator,
                centre: tuple[int, int] | None = None) -> tuple[int, int]:
        """Top-left corner of an ``h`` x ``w`` crop inside ``shape`` (centred when larger):
        uniform, or around ``centre`` (kept inside the image)."""
        corner = []
        for n, size, c in zip(shape[:2], (h, w), centre or (None, None), strict=True):
            if n < size:
                corner.append(-((size - n) // 2))
            elif c is not None:
                corner.append(min(max(c - size // 2, 0), n - size))
            else:
                corner.append(int(rng.integers(0, n - size + 1)))
        return corner[0], corner[1]

    def __repr__(self) -> str:
        return (f"NativeCrop2D(patch={list(self.patch)}, max_angle={self.max_angle}, "
                f"foreground={self.foreground})")
