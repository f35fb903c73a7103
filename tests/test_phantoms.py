"""Phantoms: ACDC layout readable by the readers and splits, labels, determinism; datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ssmis.data.datasets import (
    SliceDataset,
    TwoStreamDataset,
    collate_two_stream,
    load_eval_cases,
)
from ssmis.data.h5 import (
    acdc_slice_path,
    acdc_volume_path,
    check_h5_files,
    check_h5_values,
    load_h5_case,
)
from ssmis.data.layouts.acdc_h5 import acdc_split
from ssmis.data.phantoms import make_phantom_dataset
from ssmis.data.sampler import TwoStreamBatchSampler
from ssmis.data.transforms import RandomGenerator2D


def test_layout_and_split(phantom_root: Path) -> None:
    split = acdc_split(phantom_root, labeled_patients=2)
    assert len(split.labeled) == 8 and len(split.unlabeled) == 8
    assert {s[:10] for s in split.labeled} == {"patient001", "patient002"}
    assert split.val == ["patient005_frame01", "patient006_frame01"]
    assert split.test == ["patient007_frame01", "patient008_frame01"]
    slices = [acdc_slice_path(phantom_root, i) for i in split.labeled + split.unlabeled]
    volumes = [acdc_volume_path(phantom_root, i) for i in split.val + split.test]
    check_h5_files(slices, require_label=True, ndim=2)
    check_h5_files(volumes, require_label=True, ndim=3)
    check_h5_values(slices + volumes, num_classes=4, require_label=True)
    image, label = load_h5_case(volumes[0], num_classes=4)
    assert label is not None and image.shape == (4, 48, 48)
    assert image.min() == 0.0 and image.max() == 1.0
    assert set(np.unique(label)) == {0, 1, 2, 3}
    # structures are nested: the LV cavity is surrounded by myocardium, never touching background
    lv = label == 3
    grown = np.zeros_like(lv)
    grown[:, 1:-1, 1:-1] = lv[:, :-2, 1:-1] | lv[:, 2:, 1:-1] | lv[:, 1:-1, :-2] | lv[:, 1:-1, 2:]
    assert not (grown & (label == 0)).any()


def test_deterministic_and_intensities(tmp_path: Path) -> None:
    a = make_phantom_dataset(tmp_path / "a", num_train_volumes=1, num_val=1, num_test=1,
                             slices=3, size=(64, 64), seed=9)
    b = make_phantom_dataset(tmp_path / "b", num_train_volumes=1, num_val=1, num_test=1,
                             slices=3, size=(64, 64), seed=9)
    c = make_phantom_dataset(tmp_path / "c", num_train_volumes=1, num_val=1, num_test=1,
                             slices=3, size=(64, 64), seed=10)
    assert (a / "train_slices.list").read_text() == (b / "train_slices.list").read_text()
    ia, la = load_h5_case(acdc_volume_path(a, "patient003_frame01"), num_classes=4)
    ib, lb = load_h5_case(acdc_volume_path(b, "patient003_frame01"), num_classes=4)
    ic, _ = load_h5_case(acdc_volume_path(c, "patient003_frame01"), num_classes=4)
    assert np.array_equal(ia, ib) and np.array_equal(la, lb) and not np.array_equal(ia, ic)
    assert la is not None
    means = [float(ia[la == k].mean()) for k in range(4)]
    assert means[3] > means[0] > means[2]  # blood pool bright, myocardium dark
    assert abs(means[1] - means[3]) < 0.25  # RV and LV blood similar


def test_fewer_classes(tmp_path: Path) -> None:
    root = make_phantom_dataset(tmp_path, num_train_volumes=1, num_val=1, num_test=1,
                                slices=2, size=(32, 32), num_classes=2)
    _, label = load_h5_case(acdc_volume_path(root, "patient002_frame01"), num_classes=2)
    assert label is not None and set(np.unique(label)) == {0, 1}


def test_datasets_and_collate(phantom_root: Path) -> None:
    split = acdc_split(phantom_root, labeled_patients=2)
    t = RandomGenerator2D((32, 32))
    paths = [acdc_slice_path(phantom_root, i) for i in split.labeled]
    upaths = [acdc_slice_path(phantom_root, i) for i in split.unlabeled]
    labeled = SliceDataset(paths, split.labeled, 4, t, with_label=True, cache=True)
    unlabeled = SliceDataset(upaths, split.unlabeled, 4, t, with_label=False)
    item = labeled[(3, 123)]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
    assert item["label"].shape == (32, 32) and item["label"].dtype == torch.int64
    assert item["case"] == split.labeled[3]
    assert torch.equal(labeled[(3, 123)]["image"], item["image"])  # cached, same augmentation
    item["image"].zero_()  # must not corrupt the cache
    assert torch.equal(labeled[(3, 123)]["label"], item["label"])
    assert labeled[(3, 123)]["image"].abs().sum() > 0
    assert "label" not in unlabeled[0]
    both = TwoStreamDataset(labeled, unlabeled)
    sampler = TwoStreamBatchSampler(len(labeled), len(unlabeled), 2, 3, seed=0)
    lab, unl = collate_two_stream([both[i] for i in next(iter(sampler))])
    assert lab["image"].shape == (2, 1, 32, 32) and lab["label"].shape == (2, 32, 32)
    assert unl is not None and unl["image"].shape == (3, 1, 32, 32) and "label" not in unl
    assert len(unl["case"]) == 3
    lab, unl = collate_two_stream([both[(0, 1)]])
    assert unl is None and lab["case"] == [split.labeled[0]]
    cases = load_eval_cases([acdc_volume_path(phantom_root, i) for i in split.val], split.val,
                            4, None)
    first = next(cases)
    assert first.case == split.val[0] and first.image.shape == first.label.shape == (4, 48, 48)
    assert first.label.dtype == np.int64 and first.spacing is None
