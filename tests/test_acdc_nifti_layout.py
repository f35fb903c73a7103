"""The ``acdc_nifti`` layout on its synthetic copy of the official ACDC release: the SSL4MIS
70/10/20 patient split with both frames of a patient in one list, the slice axis and the
spacing in mm from the headers, SSL4MIS's min-max intensities, and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from ssmis.config import DataConfig
from ssmis.data.layouts import detect_layout
from ssmis.data.layouts.acdc_nifti import (
    SSL4MIS_TEST,
    SSL4MIS_TRAIN,
    SSL4MIS_VAL,
    ACDCNifti,
    patient_of,
    through_plane_axis,
)
from ssmis.errors import SSMISError


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("acdc") / "ACDC"
    ACDCNifti.write_example(root)
    return root


def _layout(root: Path, **data: Any) -> ACDCNifti:
    settings = {"layout": "acdc_nifti", "root": str(root), "num_classes": 4,
                "patch_size": [16, 16], "labeled_patients": 3, **data}
    return ACDCNifti(DataConfig.model_validate(settings))


def test_ssl4mis_lists_cover_the_100_training_patients_once() -> None:
    everyone = SSL4MIS_TRAIN + SSL4MIS_VAL + SSL4MIS_TEST
    assert (len(SSL4MIS_TRAIN), len(SSL4MIS_VAL), len(SSL4MIS_TEST)) == (70, 10, 20)
    assert sorted(everyone) == list(range(1, 101))


def test_shared_lists_name_the_same_patients() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "acdc"
    if not (shared / "train_slices.list").is_file():
        pytest.skip("../shared/data/acdc not present")

    def patients(name: str) -> list[int]:
        ids = (shared / name).read_text().split()
        return [int(p[7:]) for p in dict.fromkeys(patient_of(i.split("_slice")[0]) for i in ids)]

    assert tuple(patients("train_slices.list")) == SSL4MIS_TRAIN
    assert tuple(patients("val.list")) == SSL4MIS_VAL
    assert tuple(patients("test.list")) == SSL4MIS_TEST


def test_patient_split_keeps_both_frames_together(acdc_root: Path) -> None:
    assert detect_layout(acdc_root) == "acdc_nifti"
    split = _layout(acdc_root).split()
    assert sorted({patient_of(c) for c in split.labeled}) == ["patient038", "patient050",
                                                               "patient099"]
    sizes = [len(split.labeled), len(split.unlabeled), len(split.val), len(split.test)]
    assert sizes == [6, 134, 20, 40]
    owner: dict[str, str] = {}
    for name in ("labeled", "unlabeled", "val", "test"):
        for case in getattr(split, name):
            assert owner.setdefault(patient_of(case), name) == name, case
    assert "patient101" not in owner  # testing/ is not part of the SSL4MIS protocol
    assert split.test[:2] == ["patient011_frame01", f"patient011_frame{_es(acdc_root, 11):02d}"]


def _es(root: Path, number: int) -> int:
    text = (root / "training" / f"patient{number:03d}" / "Info.cfg").read_text()
    return int(text.split("ES:")[1].split()[0])


def test_eval_case_in_mm_from_the_header(acdc_root: Path) -> None:
    layout = _layout(acdc_root)
    assert layout.reader.slice_axis == 2
    case = next(iter(layout.eval_cases(["patient099_frame01"])))
    path = acdc_root / "training" / "patient099" / "patient099_frame01"
    gt = np.asarray(nib.load(f"{path}_gt.nii.gz").dataobj)  # (X, Y, Z) = (20, 24, 5)
    assert case.image.shape == case.label.shape == (5, 20, 24)  # (D, H, W): slices first
    assert case.spacing == (10.0, 1.5625, 1.5625)
    np.testing.assert_array_equal(case.label, np.moveaxis(gt, 2, 0))
    raw = np.asarray(nib.load(f"{path}.nii.gz").dataobj).astype(np.float32)
    expected = (raw - raw.min()) / (raw.max() - raw.min())  # SSL4MIS min-max
    np.testing.assert_allclose(case.image, np.moveaxis(expected, 2, 0), atol=1e-5)


def test_slice_axis_follows_the_thick_axis(tmp_path: Path, acdc_root: Path) -> None:
    assert through_plane_axis((1.56, 1.56, 10.0), (216, 256, 9)) == 2
    assert through_plane_axis((6.5, 1.4, 1.4), (8, 232, 256)) == 0
    assert through_plane_axis((1.0, 1.0, 1.0), (64, 64, 12)) == 2
    root = tmp_path / "ACDC"
    shutil.copytree(acdc_root, root)
    frame = root / "training" / "patient099" / "patient099_frame01"
    for suffix in ("", "_gt"):  # slices moved to the first array axis, header to match
        img = nib.load(f"{frame}{suffix}.nii.gz")
        data = np.moveaxis(np.asarray(img.dataobj), 2, 0)
        nib.save(nib.Nifti1Image(data, np.diag([10.0, 1.5625, 1.5625, 1.0])),
                 f"{frame}{suffix}.nii.gz")
    layout = _layout(root)
    with pytest.raises(SSMISError) as err:
        layout.check_files(layout.split(), need_unlabeled=False)
    message = str(err.value)
    assert message.startswith(f"{frame}.nii.gz: slice axis 0") and "axis 2" in message


def test_split_file_splitting_a_patient_is_refused(acdc_root: Path, tmp_path: Path) -> None:
    split = _layout(acdc_root).split()
    moved = split.test.pop(1)  # patient011's ES frame into the labeled list
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({**split.to_dict(), "labeled": split.labeled + [moved]}))
    with pytest.raises(SSMISError) as err:
        _layout(acdc_root, split_file=str(path)).split()
    assert str(err.value) == (f"{path}: patient 'patient011' is in 'labeled' and 'test' "
                              "(a patient's frames stay in one split)")


def test_missing_patient_names_its_folder(acdc_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "ACDC"
    shutil.copytree(acdc_root, root)
    shutil.rmtree(root / "training" / "patient085")  # a validation patient
    with pytest.raises(SSMISError) as err:
        _layout(root).split()
    assert str(err.value).startswith(f"{root / 'training' / 'patient085'}: the ED and ES")


def test_missing_frame_and_info_name_the_file(acdc_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "ACDC"
    shutil.copytree(acdc_root, root)
    es = _es(root, 5)
    (root / "training" / "patient005" / f"patient005_frame{es:02d}.nii.gz").unlink()
    with pytest.raises(SSMISError, match=rf"patient005_frame{es:02d}.nii.gz: not found \(ES"):
        _layout(root).split()
    (root / "training" / "patient007" / "Info.cfg").write_text("Group: NOR\n")
    problems: list[str] = []
    ACDCNifti.scan(root, problems=problems)
    assert any(p.startswith(str(root / "training" / "patient007" / "Info.cfg")) for p in problems)


def test_config_needs_labeled_patients(tmp_path: Path) -> None:
    base = {"layout": "acdc_nifti", "root": str(tmp_path), "num_classes": 4,
            "patch_size": [256, 256]}
    with pytest.raises(ValueError, match="data.labeled_patients: required for acdc_nifti"):
        DataConfig.model_validate(base)
    with pytest.raises(ValueError, match="data.val_count: not used by acdc_nifti"):
        DataConfig.model_validate({**base, "labeled_patients": 3, "val_count": 2})


def test_acdc_release_zooms_label_maps_back_like_the_h5_protocol() -> None:
    """SSL4MIS test_single_volume zooms the predicted label map back (nearest): both ACDC
    layouts resolve eval.zoom_back: auto to labels; other 2D layouts to probabilities."""
    from ssmis.data.layouts import get_layout

    assert get_layout("acdc_nifti").zoom_back == get_layout("acdc_h5").zoom_back == "labels"
    assert get_layout("images").zoom_back == "probabilities"
