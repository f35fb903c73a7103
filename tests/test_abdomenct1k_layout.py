"""The AbdomenCT-1K release layout (``AbdomenCT-1K-ImagePart*/Case_XXXXX_0000.nii.gz`` +
``Mask/Case_XXXXX.nii.gz``) on synthetic copies: scanning, the organ labels and their mapping,
header spacing and voxel order, CT windowing, the fraction split, problems and config rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ssmis.config import read_yaml, validate_config
from ssmis.data.layouts import detect_layout, get_layout
from ssmis.data.layouts.abdomenct1k import AbdomenCT1K, scan_abdomenct1k
from ssmis.data.layouts.nifti import write_nifti
from ssmis.errors import SSMISError
from tests.conftest import REPO

SPACING = (0.8, 0.8, 2.5)


def _cfg(root: Path, **fields: Any) -> Any:
    data = {"layout": "abdomenct1k", "root": str(root), "num_classes": 5,
            "labeled_fraction": 0.05, "val_fraction": 0.05, "test_fraction": 0.2,
            "patch_size": [16, 16, 16], "normalization": "ct",
            "intensity_window": [-125.0, 275.0], **fields}
    return validate_config({"name": "a", "data": data, "model": {"name": "vnet3d"},
                            "train": {"iterations": 1, "batch_size": 1}}).data


def write_case(root: Path, k: int, with_mask: bool = True) -> None:
    shape = (6, 5, 7)  # a last axis of 3 or 4 is taken for a colour mask (pictures.map_mask)
    image = np.full(shape, -1000, dtype=np.int16)
    image[1, :, :] = 75
    label = np.zeros(shape, dtype=np.uint8)
    label[1, 1, 1], label[2, 2, 2], label[3, 3, 3], label[4, 4, 3] = 1, 2, 3, 4
    part = 1 if k <= 400 else 2 if k <= 800 else 3
    write_nifti(root / f"AbdomenCT-1K-ImagePart{part}" / f"Case_{k:05d}_0000.nii.gz", image,
                SPACING)
    if with_mask:
        write_nifti(root / "Mask" / f"Case_{k:05d}.nii.gz", label, SPACING)


def test_scan_labels_parts_and_unlabeled_cases(tmp_path: Path) -> None:
    for k in (401, 2, 1):
        write_case(tmp_path, k)
    write_case(tmp_path, 900, with_mask=False)
    catalog = scan_abdomenct1k(tmp_path)
    assert list(catalog.cases) == ["Case_00001", "Case_00002", "Case_00401", "Case_00900"]
    assert catalog.kind == "nifti" and catalog.channel_names == ["CT"]
    assert catalog.label_names == {0: "background", 1: "liver", 2: "kidney", 3: "spleen",
                                   4: "pancreas"}
    assert catalog.cases["Case_00401"].images[0].parent.name == "AbdomenCT-1K-ImagePart2"
    assert catalog.cases["Case_00900"].label is None
    assert catalog.ids("unlabeled") == ["Case_00900"]
    assert detect_layout(tmp_path) == "abdomenct1k"


def test_reader_keeps_voxel_order_spacing_labels_and_windows_ct(tmp_path: Path) -> None:
    for k in range(1, 4):
        write_case(tmp_path, k)
    layout = AbdomenCT1K(_cfg(tmp_path, labeled_fraction=None, labeled_count=1,
                              val_fraction=None, val_count=1, test_fraction=None,
                              test_count=1))
    arrays = layout.reader.load("Case_00001", with_label=True)
    assert arrays.image.shape == (1, 6, 5, 7) and arrays.spacing == pytest.approx(SPACING)
    assert arrays.label is not None and arrays.label.dtype == np.int64
    assert (arrays.label[1, 1, 1], arrays.label[4, 4, 3]) == (1, 4)  # liver, pancreas
    assert sorted(np.unique(arrays.label)) == [0, 1, 2, 3, 4]
    assert float(arrays.image[0, 1, 0, 0]) == pytest.approx(0.5)  # 75 HU mid-window
    assert float(arrays.image[0, 0, 0, 0]) == 0.0                 # air clipped
    case = next(iter(layout.eval_cases(["Case_00002"])))
    assert case.image.shape == case.label.shape == (6, 5, 7)
    assert case.spacing == pytest.approx(SPACING)


def test_mask_values_merge_organs(tmp_path: Path) -> None:
    for k in range(1, 4):
        write_case(tmp_path, k)
    pancreas_only = {0: 0, 1: 0, 2: 0, 3: 0, 4: 1}
    layout = AbdomenCT1K(_cfg(tmp_path, num_classes=2, mask_values=pancreas_only,
                              labeled_fraction=None, labeled_count=1, val_fraction=None,
                              val_count=1, test_fraction=None, test_count=1))
    label = layout.reader.load("Case_00003", with_label=True).label
    assert label is not None and int(label.sum()) == 1 and label[4, 4, 3] == 1


def test_fraction_split_counts(tmp_path: Path) -> None:
    for k in range(1, 41):
        write_case(tmp_path, k)
    for k in (801, 802):
        write_case(tmp_path, k, with_mask=False)
    split = AbdomenCT1K(_cfg(tmp_path)).split()
    assert len(split.test) == 8                   # 20 % of 40
    assert len(split.val) == 2                    # 5 % of the 32 left
    assert len(split.labeled) == 2                # 5 % of the 30 left (1.5 -> 2)
    assert len(split.unlabeled) == 28 + 2         # the rest + the two images without a mask
    assert {"Case_00801", "Case_00802"} <= set(split.unlabeled)
    again = AbdomenCT1K(_cfg(tmp_path)).split()
    assert again.labeled == split.labeled         # split_seed fixes the draw
    ten = AbdomenCT1K(_cfg(tmp_path, labeled_fraction=0.1)).split()
    assert len(ten.labeled) == 3 and ten.test == split.test


def test_problems_name_the_file(tmp_path: Path) -> None:
    write_case(tmp_path, 1)
    (tmp_path / "Mask" / "Case_00007.nii.gz").write_bytes(b"")
    with pytest.raises(SSMISError, match=r"Mask/Case_00007.nii.gz: mask without an image"):
        scan_abdomenct1k(tmp_path)
    (tmp_path / "Mask" / "Case_00007.nii.gz").unlink()
    (tmp_path / "AbdomenCT-1K-ImagePart1" / "case1.nii.gz").write_bytes(b"")
    problems: list[str] = []
    scan_abdomenct1k(tmp_path, problems)
    assert problems == [f"{tmp_path / 'AbdomenCT-1K-ImagePart1' / 'case1.nii.gz'}: expected an "
                        "image named Case_XXXXX_0000.nii.gz"]
    write_case(tmp_path / "dup", 1)
    (tmp_path / "dup" / "AbdomenCT-1K-ImagePart3").mkdir()
    (tmp_path / "dup" / "AbdomenCT-1K-ImagePart3" / "Case_00001_0000.nii.gz").write_bytes(b"")
    with pytest.raises(SSMISError, match="case 'Case_00001' also in AbdomenCT-1K-ImagePart1/"):
        scan_abdomenct1k(tmp_path / "dup")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SSMISError, match=r"no AbdomenCT-1K-ImagePart\* folder"):
        scan_abdomenct1k(tmp_path / "empty")


def test_config_rules_are_one_line_naming_the_field(tmp_path: Path) -> None:
    for fields, expected in [({"num_classes": 2}, "data.num_classes: 2, but AbdomenCT-1K masks"),
                             ({"test_fraction": None}, "data.test_fraction: give test_count or "
                                                       "test_fraction for abdomenct1k")]:
        with pytest.raises(SSMISError) as err:
            _cfg(tmp_path, **fields)
        assert expected in str(err.value) and "\n" not in str(err.value)


def test_shipped_configs(tmp_path: Path) -> None:
    folder = REPO / "configs" / "abdomenct1k"
    for name in ("alhvr", "supervised"):
        text = (folder / f"{name}.yaml").read_text()
        assert text.startswith("# Reproduces: ") and "ALHVR" in text.splitlines()[0]
        cfg = validate_config(read_yaml(folder / f"{name}.yaml"))
        d = cfg.data
        assert (d.layout, d.num_classes, d.labeled_fraction, d.test_fraction) == \
            ("abdomenct1k", 5, 0.05, 0.2)
        assert d.patch_size == [96, 96, 96] and d.normalization == "ct"
        cpu = validate_config(read_yaml(folder / f"{name}_cpu.yaml"))
        assert cpu.data.layout == "abdomenct1k" and cpu.method.name == cfg.method.name
    data = get_layout("abdomenct1k").write_example(tmp_path / "ex")
    assert data["num_classes"] == 5
