"""Augmentations: output shapes, identical geometry for image and label, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from ssmis.data.transforms import (
    CenterCrop3D,
    Compose,
    RandomCrop3D,
    RandomGenerator2D,
    RandomRotFlip3D,
    Resize2D,
)


def _label(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Blocky labels 0..3, so nearest-neighbour resampling keeps large regions."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 4, size=tuple(-(-s // 4) for s in shape))
    out = coarse
    for axis in range(len(shape)):
        out = np.repeat(out, 4, axis=axis)
    return out[tuple(slice(0, s) for s in shape)].astype(np.uint8)


TRANSFORMS_2D = [RandomGenerator2D((32, 40)), Resize2D((32, 40))]
TRANSFORMS_3D = [
    RandomRotFlip3D(),
    RandomCrop3D((12, 12, 8)),
    CenterCrop3D((12, 12, 8)),
    Compose([RandomRotFlip3D(), RandomCrop3D((24, 24, 12))]),  # needs padding
]


@pytest.mark.parametrize("t", TRANSFORMS_2D + TRANSFORMS_3D, ids=repr)
def test_same_geometry_shapes_and_determinism(t) -> None:
    ndim = 2 if t in TRANSFORMS_2D else 3
    shape = (44, 36) if ndim == 2 else (20, 16, 10)
    for seed in range(12):
        label = _label(shape, seed)
        image, out_label = t(label.astype(np.float32), label, np.random.default_rng(seed))
        assert out_label is not None
        assert np.array_equal(image, out_label.astype(np.float32))
        assert set(np.unique(out_label)) <= set(np.unique(label)) | {0}
        assert image.flags.c_contiguous and out_label.flags.c_contiguous
        again, _ = t(label.astype(np.float32), label, np.random.default_rng(seed))
        assert np.array_equal(image, again)
        alone, none = t(label.astype(np.float32), None, np.random.default_rng(seed))
        assert none is None and np.array_equal(alone, image)
    expected = {
        "RandomGenerator2D": (32, 40), "Resize2D": (32, 40), "RandomRotFlip3D": None,
        "RandomCrop3D": (12, 12, 8), "CenterCrop3D": (12, 12, 8), "Compose": (24, 24, 12),
    }[type(t).__name__]
    if expected is not None:
        assert image.shape == expected
    else:
        assert sorted(image.shape[:2]) == sorted(shape[:2]) and image.shape[2] == shape[2]


def test_random_generator_uses_all_branches() -> None:
    t = RandomGenerator2D((44, 36))
    label = _label((44, 36))
    outcomes = set()
    for seed in range(60):
        _, out = t(label.astype(np.float32), label, np.random.default_rng(seed))
        assert out is not None
        if np.array_equal(out, label):
            outcomes.add("none")
        elif any(np.array_equal(out, np.flip(np.rot90(label, k), a))
                 for k in range(4) for a in range(2)):
            outcomes.add("rotflip")
        else:
            outcomes.add("rotate")
    assert outcomes == {"none", "rotflip", "rotate"}


def test_crop_pads_like_ua_mt() -> None:
    image = np.ones((10, 30, 30), np.float32)
    out, _ = CenterCrop3D((16, 16, 16))(image, None)
    assert out.shape == (16, 16, 16)
    # axis 0 padded by (16 - 10) // 2 + 3 = 6 on each side: zeros at the borders of the crop
    assert out[0].max() == 0.0 and out[8].min() == 1.0
