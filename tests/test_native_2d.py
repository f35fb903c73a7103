"""Large 2D images at native resolution (``data.resize: false``): random crops for training, a
2D sliding window for prediction; with resizing, probabilities (not labels) are zoomed back
(issue 15, item 7)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ssmis.cli import main
from ssmis.config import validate_config
from ssmis.data.augment import build_augmentation
from ssmis.data.native import NativeCrop2D
from ssmis.errors import SSMISError
from ssmis.eval.segment import segment
from tests.test_owndata import _write, images_config, make_images


def _threshold_model(batch: torch.Tensor) -> torch.Tensor:
    """A 'network' that segments bright pixels: logits (B, 2, h, w) from the first channel."""
    x = (batch[:, :1] - 0.5) * 20.0
    return torch.cat([-x, x], dim=1)


def _cfg(tmp_path: Path, **data):
    raw = images_config(tmp_path, tmp_path / "runs", patch_size=[64, 64], in_channels=1, **data)
    return validate_config(raw)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def _thin_lines(shape: tuple[int, int]) -> np.ndarray:
    truth = np.zeros(shape, bool)
    truth[:, 101] = True  # a vertical vessel, 1 pixel wide
    rows = np.arange(shape[0])
    truth[rows, (rows * 1.3).astype(int) % shape[1]] = True  # a diagonal one
    return truth


def test_one_pixel_structure_survives_native_sliding_window(tmp_path: Path) -> None:
    truth = _thin_lines((300, 421))
    image = truth.astype(np.float32)
    native = segment(_threshold_model, image, 2, _cfg(tmp_path, resize=False), "cpu")
    assert native.shape == truth.shape
    np.testing.assert_array_equal(native.astype(bool), truth)
    # the resizing route (today's only one) loses most of the line at 64 x 64
    resized = segment(_threshold_model, image, 2, _cfg(tmp_path), "cpu")
    assert _dice(resized.astype(bool), truth) < 0.5
    # an image smaller than the window, and RGB input, also come back at their own size
    small = segment(_threshold_model, image[:40, :50], 2, _cfg(tmp_path, resize=False), "cpu")
    np.testing.assert_array_equal(small.astype(bool), truth[:40, :50])
    rgb = segment(_threshold_model, np.stack([image] * 3), 2, _cfg(tmp_path, resize=False), "cpu")
    np.testing.assert_array_equal(rgb.astype(bool), truth)


def test_resized_prediction_zooms_probabilities_back(tmp_path: Path) -> None:
    """A disc at 8x the patch: bilinear probabilities give a smoother edge than nearest labels
    (measured: 1512 vs 2152 wrong pixels)."""
    yy, xx = np.mgrid[:512, :512]
    truth = (yy - 250.3) ** 2 + (xx - 261.7) ** 2 < 170 ** 2
    smooth = np.clip((170 - np.sqrt((yy - 250.3) ** 2 + (xx - 261.7) ** 2)) / 8 + 0.5, 0, 1)
    image = smooth.astype(np.float32)
    probs = segment(_threshold_model, image, 2, _cfg(tmp_path), "cpu")  # auto: probabilities
    labels = segment(_threshold_model, image, 2,
                     validate_config({**images_config(tmp_path, tmp_path / "r", in_channels=1,
                                                      patch_size=[64, 64]),
                                      "eval": {"zoom_back": "labels"}}), "cpu")
    wrong_probs = int((probs.astype(bool) != truth).sum())
    wrong_labels = int((labels.astype(bool) != truth).sum())
    assert wrong_probs < 0.75 * wrong_labels, (wrong_probs, wrong_labels)


def test_native_crop_keeps_pixels_and_label_aligned() -> None:
    h, w = 90, 130
    image = np.arange(h * w, dtype=np.float32).reshape(h, w)
    label = (np.arange(h * w) % 7 == 0).reshape(h, w).astype(np.uint8)
    crop = NativeCrop2D((32, 48))
    modes = set()
    for seed in range(40):
        img, lab = crop(image, label, np.random.default_rng(seed))
        assert img.shape == (32, 48) and lab is not None and lab.shape == (32, 48)
        again, none = crop(image, None, np.random.default_rng(seed))  # same draws without label
        np.testing.assert_array_equal(again, img)
        assert none is None
        if np.array_equal(img, np.round(img)):  # no rotation: pixels copied, not interpolated
            modes.add("copied")
            np.testing.assert_array_equal(lab, (img.astype(np.int64) % 7 == 0).astype(np.uint8))
            steps = {abs(int(d)) for d in np.diff(img, axis=0).ravel()} | \
                {abs(int(d)) for d in np.diff(img, axis=1).ravel()}
            assert steps == {1, w}  # neighbours in the crop are neighbours in the image
        else:
            modes.add("rotated")
            assert img.min() > 0  # cut from a larger window: no empty corners
    assert modes == {"copied", "rotated"}
    small, small_lab = crop(image[:20, :30], label[:20, :30], np.random.default_rng(0))
    assert small.shape == (32, 48) and small_lab is not None and small_lab.shape == (32, 48)


def test_foreground_crops_find_a_small_structure() -> None:
    image = np.zeros((400, 400), np.float32)
    label = np.zeros((400, 400), np.uint8)
    label[300:303, 50:53] = 1  # 9 pixels in 160 000
    image[label > 0] = 1.0
    seen = {p: sum(bool(NativeCrop2D((32, 32), foreground=p)(
        image, label, np.random.default_rng(s))[1].any()) for s in range(60)) for p in (0.0, 1.0)}
    assert seen[1.0] == 60 and seen[0.0] < 10, seen


def test_resize_false_is_validated_and_builds_the_crop(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, resize=False)
    crop = build_augmentation("ssl4mis", [64, 64], cfg.data)
    assert isinstance(crop, NativeCrop2D) and crop.foreground == 0.33
    assert not isinstance(build_augmentation("ssl4mis", [64, 64], _cfg(tmp_path).data),
                          NativeCrop2D)
    with pytest.raises(SSMISError, match="data.resize: false needs data.augmentation ssl4mis"):
        _cfg(tmp_path, resize=False, augmentation="synfoc")


def test_train_native_crops_and_sliding_window_validation(tmp_path: Path) -> None:
    root = make_images(tmp_path / "data")  # 32 x 32 RGB images, patch 16: crops, not zooms
    cfg = images_config(root, tmp_path / "runs", patch_size=[16, 16], resize=False)
    cfg["train"]["threads"] = 1
    run = tmp_path / "run"
    assert main(["train", str(_write(tmp_path, cfg)), "--run-dir", str(run), "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["per_case"]) == 2
    assert metrics["inference"] == "2D sliding window 16x16 at native resolution"
    assert (run / "config.yaml").read_text().count("resize: false") == 1
