"""SynFoC's weak augmentation (``data.augmentation: synfoc``) against the authors' code.

``_authors_weak`` below is the authors' ``RandomScaleCrop`` / ``RandomCrop`` /
``RandomScaleRotate`` / ``RandomHorizontalFlip`` / ``elastic_transform``
(``MQinghe/SynFoC`` @ ``3f3c06a``, ``code/dataloaders/custom_transforms.py``), transcribed
with their draws from ``random`` and ``np.random.RandomState``; ``_Replay`` feeds the same
draws to ssmis' transform, so the two must give identical pixels.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter, map_coordinates

from ssmis.config import validate_config
from ssmis.data.augment import build_augmentation
from ssmis.data.synfoc_aug import SynFoCWeak2D
from ssmis.data.transforms import RandomGenerator2D
from ssmis.engine.data import _train_transform
from ssmis.errors import SSMISError


class _Replay:
    """The np.random.Generator calls SynFoCWeak2D makes, answered by the authors' sources."""

    def __init__(self, seed: int) -> None:
        self.py = random.Random(seed)
        self.np = np.random.RandomState(seed)

    def random(self, shape=None):
        return self.py.random() if shape is None else self.np.rand(*shape)

    def uniform(self, low: float, high: float) -> float:
        return self.py.uniform(low, high)

    def integers(self, low: int, high: int) -> int:
        return self.py.randint(low, high - 1)  # randint includes its upper end


def _authors_weak(img: Image.Image, mask: Image.Image, seed: int, size: int = 512,
                  fill: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rnd, rs = random.Random(seed), np.random.RandomState(seed)
    # RandomScaleCrop
    if rnd.random() > 0.5:
        w = int(rnd.uniform(1, 1.5) * img.size[0])
        h = int(rnd.uniform(1, 1.5) * img.size[1])
        img, mask = img.resize((w, h), Image.BILINEAR), mask.resize((w, h), Image.NEAREST)
    w, h = img.size
    if not (w == size and h == size):
        x1, y1 = rnd.randint(0, w - size), rnd.randint(0, h - size)
        img = img.crop((x1, y1, x1 + size, y1 + size))
        mask = mask.crop((x1, y1, x1 + size, y1 + size))
    # RandomScaleRotate
    if rnd.random() > 0.5:
        deg = rnd.randint(-20, 20)
        img = img.rotate(deg, Image.BILINEAR)
        mask = mask.rotate(deg, Image.NEAREST, fillcolor=fill)
    # RandomHorizontalFlip
    if rnd.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
        mask = mask.transpose(Image.FLIP_LEFT_RIGHT)
    # elastic_transform
    if rnd.random() > 0.5:
        alpha, sigma, shape = img.size[1] * 2, img.size[1] * 0.08, img.size[0:2]
        dx = gaussian_filter((rs.rand(*shape) * 2 - 1), sigma, mode="constant", cval=0) * alpha
        dy = gaussian_filter((rs.rand(*shape) * 2 - 1), sigma, mode="constant", cval=0) * alpha
        x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
        indices = np.reshape(x + dx, (-1, 1)), np.reshape(y + dy, (-1, 1))
        arr = np.array(img)
        if arr.ndim == 3:  # RGB (fundus): channel by channel, as the authors
            out = np.zeros([img.size[0], img.size[1], 3])
            for i in range(3):
                out[:, :, i] = map_coordinates(arr[:, :, i], indices, order=1).reshape(shape)
        else:
            out = np.zeros([img.size[0], img.size[1]])
            out[:, :] = map_coordinates(arr, indices, order=1).reshape(shape)
        lab = np.zeros([mask.size[0], mask.size[1]])
        lab[:, :] = map_coordinates(np.array(mask), indices, order=0, mode="nearest",
                                    prefilter=False).reshape(shape)
        return out.astype(np.uint8), lab.astype(np.uint8)
    return np.asarray(img), np.asarray(mask)


def _case(shape=(96, 80), seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = gaussian_filter(rng.random(shape), 3)
    image = np.rint((image - image.min()) / np.ptp(image) * 255).astype(np.uint8)
    label = np.zeros(shape, np.uint8)
    label[20:60, 15:50] = 1
    label[30:45, 25:40] = 2
    return image, label


@pytest.mark.parametrize("seed", range(8))
def test_pixels_equal_the_authors_for_the_same_draws(seed: int) -> None:
    image, label = _case(seed=seed)
    size = 128  # the authors' 512 scaled down for speed; every step is size-generic
    t = SynFoCWeak2D([size, size], image_filter="lanczos")
    got_img, got_lab = t(image.astype(np.float32) / 255.0, label, _Replay(seed))
    # the authors' loader: LANCZOS image / NEAREST label to img_size, then the weak transform
    ref_img, ref_lab = _authors_weak(
        Image.fromarray(image).resize((size, size), Image.LANCZOS),
        Image.fromarray(label).resize((size, size), Image.NEAREST), seed, size)
    assert got_img.shape == (size, size) and got_img.dtype == np.float32
    assert got_lab is not None and got_lab.dtype == np.int64
    np.testing.assert_array_equal(np.rint(got_img * 255).astype(np.uint8), ref_img)
    np.testing.assert_array_equal(got_lab, ref_lab)


@pytest.mark.parametrize("seed", range(4))
def test_rgb_per_channel_equals_the_authors_rgb_pipeline(seed: int) -> None:
    """Fundus is RGB: ssmis runs the transform per channel with identically seeded generators
    (CaseDataset); PIL filters an RGB image band by band, so the result is the authors'."""
    rng = np.random.default_rng(seed)
    rgb = np.rint(gaussian_filter(rng.random((60, 72, 3)), (2, 2, 0)) * 255).astype(np.uint8)
    _, label = _case((60, 72), seed)
    size = 96
    t = SynFoCWeak2D([size, size])
    channels = []
    for c in range(3):
        img, lab = t(rgb[..., c] / 255.0, label, _Replay(seed))
        channels.append(np.rint(img * 255).astype(np.uint8))
    ref_img, ref_lab = _authors_weak(
        Image.fromarray(rgb, "RGB").resize((size, size), Image.LANCZOS),
        Image.fromarray(label).resize((size, size), Image.NEAREST), seed, size)
    np.testing.assert_array_equal(np.stack(channels, -1), ref_img)
    np.testing.assert_array_equal(lab, ref_lab)


def test_no_augmentation_branch_is_the_resize_filter() -> None:
    """random() == 0.5 skips all four steps (> 0.5 / < 0.5 tests): only the resize is left."""

    class Half:
        def random(self, shape=None):
            return 0.5

    image, label = _case((70, 90))
    for name, flt in (("lanczos", Image.LANCZOS), ("bilinear", Image.BILINEAR)):
        got, lab = SynFoCWeak2D([64, 64], image_filter=name)(image / 255.0, label, Half())
        ref = np.asarray(Image.fromarray(image).resize((64, 64), flt)) / 255.0
        np.testing.assert_allclose(got, ref, atol=1e-7)
        ref_lab = np.asarray(Image.fromarray(label).resize((64, 64), Image.NEAREST))
        np.testing.assert_array_equal(lab, ref_lab)


def test_branch_probabilities_and_label_values() -> None:
    """Each step fires half of the time; labels keep their classes; output size fixed."""
    image, label = _case((40, 40))
    t = SynFoCWeak2D([48, 48])
    plain = np.asarray(Image.fromarray(image).resize((48, 48), Image.LANCZOS))
    changed = 0
    for seed in range(200):
        img, lab = t(image / 255.0, label, np.random.default_rng(seed))
        assert img.shape == (48, 48) and lab is not None and lab.shape == (48, 48)
        assert set(np.unique(lab).tolist()) <= {0, 1, 2}
        assert img.min() >= 0.0 and img.max() <= 1.0
        changed += int(not np.array_equal(np.rint(img * 255).astype(np.uint8), plain))
    # P(no step fires) = 1/16: ~188 of 200 samples differ from the plain resize
    assert 175 <= changed <= 198
    img, lab = t(image / 255.0, None, np.random.default_rng(0))
    assert lab is None and img.shape == (48, 48)


def test_rejects_out_of_range_and_bad_shapes() -> None:
    image, label = _case((16, 16))
    t = SynFoCWeak2D([16, 16])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        t(image.astype(np.float32), label, np.random.default_rng(0))  # 0..255, not scaled
    with pytest.raises(ValueError, match="differ"):
        t(image / 255.0, label[:8], np.random.default_rng(0))
    with pytest.raises(ValueError, match="square"):
        SynFoCWeak2D([16, 12])


def _config(**data):
    base = {"layout": "acdc_h5", "root": ".", "num_classes": 4, "labeled_patients": 3,
            "patch_size": [64, 64]}
    return validate_config({"data": {**base, **data},
                            "train": {"iterations": 1, "batch_size": 1}}, source="x.yaml")


def test_config_chooses_the_augmentation() -> None:
    assert isinstance(_train_transform(_config()), RandomGenerator2D)
    t = _train_transform(_config(augmentation="synfoc", resize_filter="bilinear"))
    assert isinstance(t, SynFoCWeak2D) and t.image_filter == "bilinear" and t.size == 64
    with pytest.raises(SSMISError, match=r"^x.yaml: data.augmentation: unknown augmentation "
                                         r"'synfok', expected one of ssl4mis, crop, synfoc$"):
        _config(augmentation="synfok")
    with pytest.raises(SSMISError, match="synfoc needs a square 2D data.patch_size"):
        _config(augmentation="synfoc", patch_size=[64, 48])
    with pytest.raises(SSMISError, match="synfoc works on 8-bit images .*normalization: scale"):
        _config(augmentation="synfoc", layout="nifti", labeled_patients=None, labeled_count=1,
                val_count=1)
    with pytest.raises(ValueError, match="unknown augmentation"):
        build_augmentation("nope", [8, 8])
