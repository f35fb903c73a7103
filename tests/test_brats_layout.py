"""The SSL4MIS BraTS2019 h5 layout (``data/<id>.h5`` + ``train/val/test.txt``) on a tiny
synthetic copy: split rules, layout detection, and a few iterations end to end."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from ssmis.config import validate_config
from ssmis.data.h5 import brats_volume_path
from ssmis.data.layouts import detect_layout
from ssmis.data.layouts.brats_h5 import brats_split
from ssmis.errors import SSMISError

SHAPE = (20, 22, 18)  # a little larger than the 16^3 patch


def make_brats(root: Path, n_train: int = 5, n_val: int = 2, n_test: int = 2,
               data_folder: bool = True) -> Path:
    rng = np.random.default_rng(0)
    folder = root / "data" if data_folder else root
    folder.mkdir(parents=True, exist_ok=True)
    names = {"train": [f"BraTS19_TCIA_{i:03d}_1" for i in range(n_train)],
             "val": [f"BraTS19_CBICA_{i:03d}_1" for i in range(n_val)],
             "test": [f"BraTS19_2013_{i}_1" for i in range(n_test)]}
    for split, ids in names.items():
        (root / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for case in ids:
            label = np.zeros(SHAPE, dtype=np.uint8)
            c = rng.integers(5, 12, size=3)
            label[c[0] - 3:c[0] + 3, c[1] - 3:c[1] + 4, c[2] - 2:c[2] + 3] = 1
            image = (label * 2.0 + rng.normal(0, 0.3, SHAPE)).astype(np.float32)
            with h5py.File(folder / f"{case}.h5", "w") as f:
                f.create_dataset("image", data=image)
                f.create_dataset("label", data=label)
    return root


def test_brats_split_and_paths(tmp_path: Path) -> None:
    root = make_brats(tmp_path / "brats")
    split = brats_split(root, labeled_count=2)
    assert split.labeled == ["BraTS19_TCIA_000_1", "BraTS19_TCIA_001_1"]
    assert len(split.unlabeled) == 3 and len(split.val) == 2 and len(split.test) == 2
    assert brats_volume_path(root, "x") == root / "data" / "x.h5"
    assert detect_layout(root) == "brats_h5"
    with pytest.raises(SSMISError, match="labeled_count"):
        brats_split(root, labeled_count=5)
    flat = make_brats(tmp_path / "flat", data_folder=False)
    assert brats_volume_path(flat, "x") == flat / "x.h5"


def test_brats_config_needs_labeled_count_and_3d_patch(tmp_path: Path) -> None:
    base = {"layout": "brats_h5", "root": str(tmp_path), "num_classes": 2,
            "patch_size": [16, 16, 16]}
    train = {"iterations": 1, "batch_size": 1}
    with pytest.raises(SSMISError, match="labeled_count"):
        validate_config({"data": base, "train": train})
    with pytest.raises(SSMISError, match="patch_size"):
        validate_config({"data": {**base, "labeled_count": 2, "patch_size": [16, 16]},
                         "train": train})


def test_brats_train_run_end_to_end(tmp_path: Path) -> None:
    from ssmis.engine.run import train_run

    root = make_brats(tmp_path / "brats")
    raw = {"name": "brats_tiny", "seed": 1, "output_dir": str(tmp_path / "runs"),
           "data": {"layout": "brats_h5", "root": str(root), "num_classes": 2,
                    "class_names": {1: "WT"}, "labeled_count": 2, "patch_size": [16, 16, 16]},
           "model": {"name": "vnet3d", "options": {"n_filters": 2}},
           "method": {"name": "supervised"},
           "train": {"iterations": 2, "batch_size": 2, "val_every": 2, "device": "cpu",
                     "threads": 1},
           "eval": {"unit": "voxel", "stride": [8, 8, 8], "overlay_cases": 1}}
    run = train_run(validate_config(raw), run_dir=tmp_path / "run", verbose=False)
    splits = json.loads((run / "splits.json").read_text())
    assert splits["labeled"] == ["BraTS19_TCIA_000_1", "BraTS19_TCIA_001_1"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "test" and len(metrics["per_case"]) == 2
