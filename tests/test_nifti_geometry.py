"""A NIfTI label stored on another grid than its image (flipped axis, shifted origin, other
spacing) is a problem in inspect and a one-line stop in train, or is resampled onto the image
grid with ``data.label_geometry: resample`` (issue 15, item 6)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ssmis.cli import main
from ssmis.config import validate_config
from ssmis.data.layouts.nifti import scan_nifti
from ssmis.data.nifti_io import grid_difference
from ssmis.data.reader import CaseReader
from tests.test_owndata import _error_line, _write, make_nifti, nifti_config


def _restore(root: Path, case: str, how: str) -> np.ndarray:
    """Rewrite ``case``'s label as the same physical mask on another grid; returns the mask."""
    path = root / "labelsTr" / f"{case}.nii.gz"
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).astype(np.uint8)
    affine = img.affine.copy()
    if how == "flipped":  # voxel i -> n-1-i along x: LAS instead of RAS
        flip = np.eye(4)
        flip[0, 0], flip[0, 3] = -1.0, data.shape[0] - 1
        stored, affine = data[::-1].copy(), affine @ flip
    elif how == "shifted":  # two voxels cropped at the start of y: the origin moves by 2.5 mm
        stored = np.zeros_like(data)
        stored[:, :-2] = data[:, 2:]
        affine[:3, 3] += affine[:3, 1] * 2
    else:  # half the resolution along z (spacing 6 mm), the same physical extent
        stored = data[:, :, ::2].copy()
        affine[:3, 2] *= 2
    nib.save(nib.Nifti1Image(stored, affine), str(path))
    return data


@pytest.mark.parametrize("how", ["flipped", "shifted"])
def test_misaligned_label_is_reported_stops_training_or_is_resampled(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str) -> None:
    root = make_nifti(tmp_path / "data")
    truth = _restore(root, "case01", how)
    expected = {"flipped": "orientation LAS vs RAS",
                "shifted": "origin (-10, 7.5, 2) vs (-10, 5, 2) mm"}[how]
    # inspect: a problem naming the label file, exit 1
    assert main(["data", "inspect", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"case01.nii.gz: label grid differs from image case01_0000.nii.gz: {expected}" in out
    # train: one line naming the file and the option, before a run folder exists
    cfg = nifti_config(root, tmp_path / "runs", labeled_cases=["case01"], labeled_count=None)
    assert main(["train", str(_write(tmp_path, cfg)), "--quiet"]) == 2
    line = _error_line(capsys)
    assert "case01.nii.gz: label grid differs" in line and expected in line
    assert "data.label_geometry: resample" in line
    assert not (tmp_path / "runs").exists()
    # resample: the label lands on the image grid exactly where it was
    cfg["data"]["label_geometry"] = "resample"
    reader = CaseReader(scan_nifti(root), validate_config(cfg).data)
    assert reader.spatial_shape("case01", with_label=True) == truth.shape
    loaded = reader.load_raw("case01", with_label=True).label
    assert loaded is not None
    if how == "shifted":  # the two cropped rows are outside the stored label: background
        truth = truth.copy()
        truth[:, -2:] = 0
    np.testing.assert_array_equal(loaded, truth)


def test_label_on_a_coarser_grid_is_resampled_to_the_image_shape(tmp_path: Path) -> None:
    root = make_nifti(tmp_path / "data")
    truth = _restore(root, "case02", "coarse")
    image = nib.load(str(root / "imagesTr" / "case02_0000.nii.gz"))
    label = nib.load(str(root / "labelsTr" / "case02.nii.gz"))
    assert grid_difference(image, label) == "spacing (1, 1.25, 6) vs (1, 1.25, 3) mm"
    assert grid_difference(image, image) is None
    cfg = nifti_config(root, tmp_path / "runs", label_geometry="resample")
    reader = CaseReader(scan_nifti(root), validate_config(cfg).data)
    loaded = reader.load_raw("case02", with_label=True).label
    assert loaded is not None and loaded.shape == truth.shape
    # nearest neighbour from 6 mm to 3 mm: every even slice is exact, odd ones copy a neighbour
    np.testing.assert_array_equal(loaded[:, :, ::2], truth[:, :, ::2])
    dice = 2 * (loaded & truth).sum() / (loaded.sum() + truth.sum())
    assert dice > 0.9


def test_thin_volume_label_is_not_taken_for_a_colour_mask(tmp_path: Path) -> None:
    """A 3D label whose last axis has 3 slices is a volume: read as classes, not refused as
    an RGB picture."""
    from ssmis.data.layouts import get_layout
    from ssmis.data.layouts.nifti import write_nifti

    root = tmp_path / "thin"
    label = np.zeros((8, 8, 3), np.uint8)
    label[2:5, 2:5, 1] = 1
    write_nifti(root / "imagesTr" / "a_0000.nii.gz", label.astype(np.float32), (1, 1, 3))
    write_nifti(root / "labelsTr" / "a.nii.gz", label, (1, 1, 3))
    data = {"layout": "nifti", "root": str(root), "num_classes": 2, "labeled_count": 1,
            "val_count": 1, "patch_size": [8, 8, 3]}
    from ssmis.config import DataConfig

    layout = get_layout("nifti")(DataConfig.model_validate(data))
    arrays = layout.reader.load("a", with_label=True)
    assert arrays.label is not None and arrays.label.shape == (8, 8, 3)
    assert int(arrays.label.sum()) == 9


def test_resampled_labels_are_named_for_the_run_log(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from ssmis.engine.data import build_split, check_data

    root = make_nifti(tmp_path / "data")
    _restore(root, "case01", "shifted")
    raw = nifti_config(root, tmp_path / "runs", labeled_cases=["case01"], labeled_count=None,
                       label_geometry="resample")
    cfg = validate_config(raw)
    notes = check_data(cfg, build_split(cfg), need_unlabeled=False)
    assert len(notes) == 1
    assert "1 label(s) resampled onto their image grid" in notes[0]
    assert "case01 (origin (-10, 7.5, 2) vs (-10, 5, 2) mm)" in notes[0]
    assert main(["data", "inspect", "--config", str(_write(tmp_path, raw))]) == 0
    assert "1 label(s) resampled onto their image grid" in capsys.readouterr().out
