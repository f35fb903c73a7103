"""The NIH Pancreas-CT layout of MC-Net / CVBM (``Pancreas_h5/<id>_norm.h5`` + ``train.list`` /
``test.list``) on a synthetic copy: the 62 / 20 split with 6 and 12 labeled, float32 labels,
detection, config rules and the shipped configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import yaml

from ssmis.config import read_yaml, validate_config
from ssmis.data.h5 import load_h5_case
from ssmis.data.layouts import detect_layout, get_layout
from ssmis.data.layouts.pancreas_h5 import (
    PancreasH5,
    pancreas_volume_path,
    write_pancreas_h5,
)
from ssmis.errors import SSMISError
from tests.conftest import REPO

# the order of MC-Net's data/Pancreas/train.list starts like this (ycwu1997/MC-Net @ fee453c)
FIRST_IDS = ["image0057", "image0018", "image0062", "image0031", "image0020", "image0017"]


def make_lists(root: Path, n_train: int = 62, n_test: int = 20) -> tuple[list[str], list[str]]:
    """MC-Net-style lists (ids only; the split never opens a volume)."""
    rest = [f"image{i:04d}" for i in range(1, 83) if f"image{i:04d}" not in FIRST_IDS]
    train = (FIRST_IDS + rest)[:n_train]
    test = rest[n_train - len(FIRST_IDS):n_train - len(FIRST_IDS) + n_test]
    (root / "Pancreas_h5").mkdir(parents=True)
    (root / "train.list").write_text("\n".join(train) + "\n")
    (root / "test.list").write_text("\n".join(test) + "\n")
    return train, test


def data_section(root: Path, **fields: object) -> dict:
    return {"layout": "pancreas_h5", "root": str(root), "num_classes": 2,
            "patch_size": [96, 96, 96], **fields}


def _cfg(data: dict) -> Any:
    return validate_config({"name": "p", "data": data, "model": {"name": "vnet3d"},
                            "train": {"iterations": 1, "batch_size": 1}})


@pytest.mark.parametrize(("labeled", "unlabeled"), [(6, 50), (12, 44)])
def test_split_of_the_62_20_lists(tmp_path: Path, labeled: int, unlabeled: int) -> None:
    train, test = make_lists(tmp_path)
    split = PancreasH5(_cfg(data_section(tmp_path, labeled_count=labeled, val_count=6)).data
                       ).split()
    assert split.labeled == train[:labeled]
    assert split.labeled[:6] == FIRST_IDS
    assert split.val == train[-6:]
    assert len(split.unlabeled) == unlabeled == 62 - labeled - 6
    assert split.test == test and len(test) == 20


def test_split_errors_name_the_field_or_file(tmp_path: Path) -> None:
    make_lists(tmp_path, n_train=10, n_test=3)
    cfg = _cfg(data_section(tmp_path, labeled_count=6, val_count=6)).data
    with pytest.raises(SSMISError, match=r"labeled_count \+ data.val_count: 6 \+ 6 exceed the "
                                         r"10 ids"):
        PancreasH5(cfg).split()
    (tmp_path / "test.list").write_text("image0057\n")
    cfg = _cfg(data_section(tmp_path, labeled_count=2, val_count=1)).data
    with pytest.raises(SSMISError, match=r"test.list: id\(s\) \['image0057'\] also in"):
        PancreasH5(cfg).split()


def test_files_float32_labels_and_paths(tmp_path: Path) -> None:
    path = pancreas_volume_path(tmp_path, "image0001")
    assert path == tmp_path / "Pancreas_h5" / "image0001_norm.h5"
    label = np.zeros((6, 5, 4), dtype=np.uint8)
    label[2:4, 1:3, 1:3] = 1
    write_pancreas_h5(path, np.random.default_rng(0).normal(size=label.shape), label)
    with h5py.File(path) as f:
        assert f["image"].dtype == np.float32 and f["label"].dtype == np.float32
        assert f["label"].compression == "gzip"
    image, read = load_h5_case(path, num_classes=2)
    assert image.dtype == np.float32 and read is not None and read.dtype == np.int64
    assert int(read.sum()) == 8
    with h5py.File(path, "r+") as f:
        f["label"][0, 0, 0] = 0.5
    with pytest.raises(SSMISError, match="image0001_norm.h5: label has non-integer values"):
        load_h5_case(path, num_classes=2)


def test_detection_does_not_take_the_other_3d_layouts(tmp_path: Path) -> None:
    for name in ("pancreas_h5", "la_h5", "brats_h5"):
        get_layout(name).write_example(tmp_path / name)
        assert detect_layout(tmp_path / name) == name
    make_lists(tmp_path / "lists_only")
    assert detect_layout(tmp_path / "lists_only") == "pancreas_h5"
    (tmp_path / "no_folder").mkdir()
    (tmp_path / "no_folder" / "train.list").write_text("image0001\n")
    assert detect_layout(tmp_path / "no_folder") is None


def test_config_rules_are_one_line_naming_the_field(tmp_path: Path) -> None:
    for fields, expected in [({"val_count": 6}, "data.labeled_count: required for pancreas_h5"),
                             ({"labeled_count": 6}, "data.val_count: required for pancreas_h5"),
                             ({"labeled_count": 6, "val_count": 6, "patch_size": [96, 96]},
                              "data.patch_size: expected 3 values")]:
        with pytest.raises(SSMISError) as err:
            _cfg(data_section(tmp_path, **fields))
        assert expected in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SSMISError, match="augmentation: crop is the 3D random crop"):
        validate_config({"name": "p", "model": {"name": "unet2d"},
                         "train": {"iterations": 1, "batch_size": 1},
                         "data": {"layout": "acdc_h5", "root": str(tmp_path), "num_classes": 4,
                                  "labeled_patients": 3, "patch_size": [64, 64],
                                  "augmentation": "crop"}})


def test_crop_augmentation_only_crops() -> None:
    from ssmis.data.augment import build_augmentation

    image = np.arange(40 * 36 * 34, dtype=np.float32).reshape(40, 36, 34)
    label = (image % 2).astype(np.int64)
    out, lab = build_augmentation("crop", [32, 32, 32])(image, label,
                                                         np.random.default_rng(0))
    assert out.shape == (32, 32, 32) and lab is not None
    # a crop keeps the axis order and strides of the volume: no rotation, no flip
    assert np.all(np.diff(out, axis=0) == 36 * 34) and np.all(np.diff(out, axis=2) == 1)


def load_config(path: Path) -> Any:
    """A shipped config, validated without its data folder."""
    return validate_config(read_yaml(path), source=str(path))


def test_shipped_configs_name_the_table_and_its_protocol() -> None:
    folder = REPO / "configs" / "pancreas"
    for method in ("supervised", "bcp", "cvbm"):
        text = (folder / f"{method}.yaml").read_text()
        assert "Table II" in text.splitlines()[0] + text.splitlines()[1]
        cfg = load_config(folder / f"{method}.yaml")
        d = cfg.data
        assert (d.layout, d.labeled_count, d.val_count) == ("pancreas_h5", 6, 6)
        assert d.patch_size == [96, 96, 96] and d.augmentation == "crop"
        assert cfg.eval.stride == [16, 16, 16] and cfg.eval.lcc and cfg.eval.unit == "voxel"
        assert load_config(folder / f"{method}_cpu.yaml").data.layout == "pancreas_h5"
    cvbm = load_config(folder / "cvbm.yaml")
    assert cvbm.method.params["mask_origin_extent"] == [112, 112, 80]
    assert cvbm.method.params["pretrain_iterations"] == 3000
    assert cvbm.train.iterations == 18000


def test_data_example_and_inspect_through_the_cli(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from ssmis.cli import main

    out = tmp_path / "pancreas"
    assert main(["data", "example", "pancreas_h5", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "\ndata:\n  layout: pancreas_h5\n" in printed and "labeled_count: 2" in printed
    config = yaml.safe_load(printed)  # a complete config, checked as `ssmis train` checks it
    assert validate_config(config).method.name == "supervised"
    assert sorted(p.name for p in (out / "Pancreas_h5").iterdir())[0] == "image0001_norm.h5"
    assert main(["data", "example", "pancreas_h5", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "inspect", str(out)]) == 0
    report = capsys.readouterr().out
    assert "layout  pancreas_h5" in report and "cases   7: test 2, train 5" in report
    (out / "Pancreas_h5" / "image0006_norm.h5").unlink()
    assert main(["data", "inspect", str(out)]) == 1
    assert "image0006_norm.h5: file not found" in capsys.readouterr().out
