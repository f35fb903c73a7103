"""SynFoC's weak augmentation and resize filters (``data.augmentation: synfoc``).

Source: ``MQinghe/SynFoC`` @ ``3f3c06a``, ``code/dataloaders/dataloader.py`` (``__getitem__`` of
``FundusSegmentation``, ``ProstateSegmentation``, ``MNMSSegmentation``, ``BUSISegmentation``) and
``code/dataloaders/custom_transforms.py`` (``RandomScaleCrop``, ``RandomCrop``,
``RandomScaleRotate``, ``RandomHorizontalFlip``, ``elastic_transform``), composed in
``code/train.py`` lines 381-385. The authors work on 8-bit PIL images; so does this module (the
image is quantised to uint8 on the way in and divided by 255 on the way out, as their
``Normalize_tf(dataRange=[0, 1])``), with the same PIL filters, so that every step gives the
authors' pixels for the same random draws:

1. resize to ``size`` (512, SAM's input): image ``LANCZOS`` (fundus, prostate, BUSI) or
   ``BILINEAR`` (M&Ms), label ``NEAREST``;
2. ``RandomScaleCrop`` (p 0.5): width and height scaled by independent ``U(1, 1.5)`` factors
   (``int()`` of the product; image BILINEAR, label NEAREST), then a random ``size`` crop whose
   corner is ``randint(0, w - size)`` inclusive (no crop when the size is unchanged);
3. ``RandomScaleRotate`` (p 0.5): ``randint(-20, 20)`` degrees counter-clockwise (PIL), image
   BILINEAR with fill 0, label NEAREST with the background as fill (the authors' raw-mask
   background: 255 for fundus/prostate, 0 for M&Ms/BUSI; here labels are class ids, so 0);
4. ``RandomHorizontalFlip`` (p 0.5);
5. ``elastic_transform`` (p 0.5): displacement fields ``gaussian_filter(U(-1, 1), sigma = 0.08
   H, mode='constant') * 2 H`` (H = 512: sigma 40.96, alpha 1024); image ``map_coordinates``
   order 1 (fill 0, rounded to uint8), label order 0 with ``mode='nearest'``.

Differences from the authors, all in the random source only: draws come from the generator
passed in (the authors use the global ``random``/``np.random`` state, and an unseeded
``np.random.RandomState(None)`` for the elastic field, so their runs are not reproducible);
distributions and pixel operations are the same. The strong view (brightness, contrast, blur)
is made by the method (``ssmis.methods.synfoc.strong_augment``) and the U-Net-size / low-res
resizes too (``unet_size``), so this transform outputs ``size`` x ``size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, map_coordinates

Array = np.ndarray
ImageFilter = Literal["lanczos", "bilinear", "nearest"]
_FILTERS = {"lanczos": Image.Resampling.LANCZOS, "bilinear": Image.Resampling.BILINEAR,
            "nearest": Image.Resampling.NEAREST}


def to_uint8(image: Array, name: str = "synfoc augmentation") -> Array:
    """[0, 1] float image -> uint8 (``rint(255 x)``); the inverse of the loader's ``/255``.

    Raises ValueError for values outside [0, 1] (the SynFoC pipeline needs
    ``data.normalization: scale`` on 8-bit images).
    """
    if image.size and (float(image.min()) < -1e-3 or float(image.max()) > 1 + 1e-3):
        raise ValueError(f"{name}: expects images in [0, 1] (data.normalization: scale on 8-bit "
                         f"images), got values in [{float(image.min()):.3g}, "
                         f"{float(image.max()):.3g}]")
    return np.clip(np.rint(image.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def _pil(array: Array) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), mode="L")


def random_scale_crop(image: Image.Image, label: Image.Image | None, size: int,
                      rng: np.random.Generator) -> tuple[Image.Image, Image.Image | None]:
    """``RandomScaleCrop(size)`` of the authors (PIL images in and out)."""
    if rng.random() > 0.5:
        w = int(rng.uniform(1, 1.5) * image.size[0])
        h = int(rng.uniform(1, 1.5) * image.size[1])
        image = image.resize((w, h), Image.Resampling.BILINEAR)
        if label is not None:
            label = label.resize((w, h), Image.Resampling.NEAREST)
    w, h = image.size
    if w == size and h == size:
        return image, label
    if w < size or h < size:  # the authors pad first; unreachable after the resize to size
        raise ValueError(f"random_scale_crop: image {w}x{h} smaller than the crop {size}")
    x1 = int(rng.integers(0, w - size + 1))  # random.randint: both ends included
    y1 = int(rng.integers(0, h - size + 1))
    box = (x1, y1, x1 + size, y1 + size)
    return image.crop(box), (label.crop(box) if label is not None else None)


def random_scale_rotate(image: Image.Image, label: Image.Image | None, rng: np.random.Generator,
                        degrees: tuple[int, int] = (-20, 20), label_fill: int = 0
                        ) -> tuple[Image.Image, Image.Image | None]:
    """``RandomScaleRotate`` of the authors: p 0.5, integer degrees in ``degrees`` inclusive."""
    if rng.random() > 0.5:
        angle = int(rng.integers(degrees[0], degrees[1] + 1))
        image = image.rotate(angle, Image.Resampling.BILINEAR)
        if label is not None:
            label = label.rotate(angle, Image.Resampling.NEAREST, fillcolor=label_fill)
    return image, label


def random_horizontal_flip(image: Image.Image, label: Image.Image | None,
                           rng: np.random.Generator) -> tuple[Image.Image, Image.Image | None]:
    """``RandomHorizontalFlip`` of the authors (p 0.5, left-right)."""
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if label is not None:
            label = label.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image, label


def elastic_fields(shape: tuple[int, int], rng: np.random.Generator,
                   sigma_fraction: float = 0.08, alpha_factor: float = 2.0
                   ) -> tuple[Array, Array]:
    """The two displacement fields (rows, cols) in pixels, each ``gaussian_filter(U(-1, 1),
    sigma_fraction H, mode='constant') * alpha_factor H`` (H = ``shape[0]``)."""
    height = shape[0]
    sigma, alpha = height * sigma_fraction, height * alpha_factor
    dx = gaussian_filter(rng.random(shape) * 2 - 1, sigma, mode="constant", cval=0) * alpha
    dy = gaussian_filter(rng.random(shape) * 2 - 1, sigma, mode="constant", cval=0) * alpha
    return dx, dy


def elastic_transform(image: Array, label: Array | None, rng: np.random.Generator
                      ) -> tuple[Array, Array | None]:
    """``elastic_transform`` of the authors on uint8 arrays (H, W): p 0.5."""
    if rng.random() > 0.5:
        dx, dy = elastic_fields(image.shape[:2], rng)
        x, y = np.meshgrid(np.arange(image.shape[0]), np.arange(image.shape[1]), indexing="ij")
        indices = np.reshape(x + dx, (-1, 1)), np.reshape(y + dy, (-1, 1))
        image = map_coordinates(image, indices, order=1).reshape(image.shape)
        if label is not None:
            label = map_coordinates(label, indices, order=0, mode="nearest",
                                    prefilter=False).reshape(label.shape)
    return image, label


class SynFoCWeak2D:
    """SynFoC's weak view: resize to ``size`` (``image_filter``), scale-crop, rotate, flip,
    elastic (see the module docstring for the authors' file and lines).

    ``(image (H, W) float in [0, 1], label (H, W) class ids | None, rng)`` -> ``(image (size,
    size) float32 in [0, 1], label (size, size) int64 | None)``. Multi-channel images are run
    channel by channel with identically seeded generators (``CaseDataset``), which gives every
    channel the same geometry, as PIL does for an RGB image. Raises ValueError for a non-2D
    image, an image/label shape mismatch or intensities outside [0, 1].
    """

    def __init__(self, output_size: Sequence[int], image_filter: ImageFilter = "lanczos",
                 label_fill: int = 0) -> None:
        size = [int(s) for s in output_size]
        if len(size) != 2 or size[0] != size[1] or size[0] < 1:
            raise ValueError(f"SynFoCWeak2D: output_size must be square [S, S], got "
                             f"{list(output_size)}")
        if image_filter not in _FILTERS:
            raise ValueError(f"SynFoCWeak2D: image_filter must be one of {sorted(_FILTERS)}")
        self.size = size[0]
        self.image_filter = image_filter
        self.label_fill = int(label_fill)

    def __call__(self, image: Array, label: Array | None, rng: np.random.Generator
                 ) -> tuple[Array, Array | None]:
        if image.ndim != 2:
            raise ValueError(f"SynFoCWeak2D: expected a 2D image, got shape {image.shape}")
        if label is not None and label.shape != image.shape:
            raise ValueError(f"SynFoCWeak2D: image {image.shape} and label {label.shape} differ")
        s = self.size
        img = _pil(to_uint8(image, "SynFoCWeak2D")).resize((s, s), _FILTERS[self.image_filter])
        lab = None
        if label is not None:
            if label.size and (int(label.min()) < 0 or int(label.max()) > 255):
                raise ValueError("SynFoCWeak2D: label values must be in 0..255")
            lab = _pil(label).resize((s, s), Image.Resampling.NEAREST)
        img, lab = random_scale_crop(img, lab, s, rng)
        img, lab = random_scale_rotate(img, lab, rng, label_fill=self.label_fill)
        img, lab = random_horizontal_flip(img, lab, rng)
        lab_arr = np.asarray(lab) if lab is not None else None
        arr, lab_arr = elastic_transform(np.asarray(img), lab_arr, rng)
        out = arr.astype(np.float32) / 255.0
        return np.ascontiguousarray(out), (
            np.ascontiguousarray(lab_arr, dtype=np.int64) if lab_arr is not None else None)

    def __repr__(self) -> str:
        return f"SynFoCWeak2D({self.size}, image_filter={self.image_filter!r})"
