"""Own-data splits by group (patient), not by image: slices and frames of one patient stay in one
split; the test split is stratified in proportion to the domains (issue 15, item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssmis.cli import main
from ssmis.data.splits import Split, case_groups, grouping_note, ssl_split
from ssmis.errors import SSMISError


def _sides(split: Split) -> dict[str, str]:
    side = {"labeled": "train", "unlabeled": "train", "val": "val", "test": "test"}
    return {c: side[name] for name in side for c in getattr(split, name)}


def _make_slices(root: Path, patients: int = 5, slices: int = 4) -> Path:
    """``<patient>_slice_<k>.png`` images + masks, all labeled."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for p in range(patients):
        for k in range(slices):
            name = f"pat{p}_slice_{k}.png"
            mask = np.zeros((16, 16), np.uint8)
            mask[4:10, 4:10] = 255
            image = (rng.integers(0, 60, (16, 16)) + mask // 2).astype(np.uint8)
            Image.fromarray(image).save(root / "images" / name)
            Image.fromarray(mask).save(root / "masks" / name)
    return root


def test_slices_of_one_patient_never_cross_splits(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    root = _make_slices(tmp_path / "slices")
    assert main(["data", "inspect", str(root), "--mask-values", "0:0,255:1"]) == 0
    out = capsys.readouterr().out
    assert "warning: 20 case ids look like several cases per patient (5 groups" in out
    for seed in range(4):
        path = tmp_path / f"split{seed}.json"
        assert main(["data", "split", str(root), "--labeled", "2", "--val", "1", "--test", "1",
                     "--seed", str(seed), "--out", str(path)]) == 0
        saved = json.loads(path.read_text())
        split = Split.from_dict(saved)
        where = _sides(split)
        for p in range(5):  # every patient: all 4 slices on one side
            assert len({where[f"pat{p}_slice_{k}"] for k in range(4)}) == 1
        # counts are patients: 2 labeled, 1 val, 1 test, 1 unlabeled (4 slices each)
        assert [len(split.labeled), len(split.val), len(split.test), len(split.unlabeled)] == \
            [8, 4, 4, 4]
        assert saved["group_by"] == "auto"
        assert saved["groups"]["pat3"] == [f"pat3_slice_{k}" for k in range(4)]


def test_case_groups_conventions_and_patterns() -> None:
    ids = ["patient001_frame01_slice_3", "patient001_frame12", "siteA/case07_2", "siteA/case07_3",
           "img_001", "img_002", "la_001", "BraTS19_2013_10_1"]
    assert case_groups(ids) == {
        "patient001_frame01_slice_3": "patient001", "patient001_frame12": "patient001",
        "siteA/case07_2": "siteA/case07", "siteA/case07_3": "siteA/case07",
        "img_001": "img_001", "img_002": "img_002", "la_001": "la_001",
        "BraTS19_2013_10_1": "BraTS19_2013_10_1"}
    assert case_groups(ids, "none") == {c: c for c in ids}
    brats = [f"BraTS2021_{i:05d}" for i in range(5)]  # one 'BraTS2021' group is no patient
    assert case_groups(brats) == {c: c for c in brats}
    assert case_groups(["s1-a.png", "s1-b", "s2-a"], r"^(s\d)-") == {
        "s1-a.png": "s1", "s1-b": "s1", "s2-a": "s2"}
    with pytest.raises(SSMISError, match=r"data.group_by: '\^x\(' is not a regular expression"):
        case_groups(ids, "^x(")
    with pytest.raises(SSMISError, match="data.group_by: 'zzz' matches none of the 8 case ids"):
        case_groups(ids, "zzz")
    assert grouping_note(["img_001", "img_002"]) is None
    slices = [f"p{p}_slice_{k}" for p in range(3) for k in range(2)]
    assert "but data.group_by: none splits by case" in str(grouping_note(slices, "none"))


def test_test_split_is_proportional_to_the_domains() -> None:
    """40 cases in domain A, 10 in B: a 10-case test split takes 8 from A and 2 from B."""
    pool = [f"A/x{i:02d}" for i in range(40)] + [f"B/y{i:02d}" for i in range(10)]
    domains = {c: c.split("/")[0] for c in pool}
    for seed in range(3):
        split = ssl_split(pool, [], [], domains, labeled_count=5, val_count=5, test_count=10,
                          seed=seed)
        assert sum(c.startswith("A/") for c in split.test) == 8
        assert sum(c.startswith("A/") for c in split.val) == 4


def test_grouped_split_details() -> None:
    """Explicit labeled slices keep their patient out of val/test; unlabeled slices of a test
    patient are left out of training; a patient in both imagesTr and imagesTs is refused."""
    pool = [f"p{p}_slice_{k}" for p in range(6) for k in range(3)]
    unlabeled = [f"p{p}_slice_9" for p in range(6)]
    groups = case_groups(pool + unlabeled)
    split = ssl_split(pool, unlabeled, [], {}, groups=groups, group_by="auto",
                      labeled_cases=["p0_slice_0"], val_count=1, test_count=2, seed=1)
    assert split.labeled == ["p0_slice_0"]
    assert {"p0_slice_1", "p0_slice_2", "p0_slice_9"} <= set(split.unlabeled)
    tested = {c.split("_")[0] for c in split.test} | {c.split("_")[0] for c in split.val}
    assert len(tested) == 3 and "p0" not in tested
    assert not {c for c in split.unlabeled if c.split("_")[0] in tested}
    with pytest.raises(SSMISError, match="training case 'p1_slice_0' is in group 'p1', which "
                                         "also has test cases"):
        ssl_split(pool, [], ["p1_slice_7"], {}, groups=case_groups(pool + ["p1_slice_7"]),
                  group_by="auto", labeled_count=1, val_count=1)


def test_split_file_with_a_group_across_splits_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({
        "labeled": ["p1_slice_0"], "unlabeled": [], "val": ["p2_slice_0"],
        "test": ["p1_slice_1"], "group_by": "auto",
        "groups": {"p1": ["p1_slice_0", "p1_slice_1"]}}))
    with pytest.raises(SSMISError, match="group 'p1': case 'p1_slice_0' is in 'labeled' and "
                                         "case 'p1_slice_1' of the same group in 'test'"):
        Split.load(path).check_disjoint()


def test_a_patients_files_in_subset_folders_form_one_group() -> None:
    """A ``val/`` folder prefix (joined to the training pool) is not part of the patient: a
    patient whose slices sit in training/ and val/ is one group; a shipped test/ folder and a
    domain prefix are kept (a test folder's numbering may restart)."""
    ids = ["p1_slice_0", "val/p1_slice_3", "test/p1_slice_9", "siteA/val/p2_slice_1",
           "siteA/p2_slice_2", "p3_slice_1"]
    assert case_groups(ids) == {"p1_slice_0": "p1", "val/p1_slice_3": "p1",
                                "test/p1_slice_9": "test/p1", "siteA/val/p2_slice_1": "siteA/p2",
                                "siteA/p2_slice_2": "siteA/p2", "p3_slice_1": "p3"}
    pool = [f"p{p}_slice_{k}" for p in range(6) for k in range(2)]
    pool += [f"val/p{p}_slice_{k}" for p in range(6) for k in range(2, 4)]
    for seed in range(5):
        split = ssl_split(pool, [], [], {}, groups=case_groups(pool), labeled_count=2,
                          val_count=2, test_count=2, seed=seed)
        where = _sides(split)
        for p in range(6):
            sides = {where[c] for c in pool if c.rsplit("/", 1)[-1].startswith(f"p{p}_")
                     and c in where}
            assert len(sides) == 1, (seed, p, sides)


def test_hand_written_split_file_is_checked_by_group(tmp_path: Path) -> None:
    """A splits.json without recorded groups is checked with data.group_by's groups."""
    from ssmis.config import DataConfig
    from ssmis.data.layouts import get_layout

    root = _make_slices(tmp_path / "slices")
    path = tmp_path / "hand.json"
    path.write_text(json.dumps({"labeled": ["pat0_slice_0"], "unlabeled": ["pat1_slice_0"],
                                "val": ["pat2_slice_0"], "test": ["pat0_slice_1"]}))
    data = DataConfig.model_validate({"layout": "images", "root": str(root), "num_classes": 2,
                                      "mask_values": {0: 0, 255: 1}, "split_file": str(path),
                                      "patch_size": [16, 16]})
    with pytest.raises(SSMISError, match=r"hand\.json: group 'pat0': case 'pat0_slice_0' is in "
                                         r"'labeled' and case 'pat0_slice_1'"):
        get_layout("images")(data).split()


def test_two_patients_are_not_grouped_by_auto_but_inspect_says_so() -> None:
    ids = [f"p{p}_slice_{k}" for p in (1, 2) for k in range(3)]
    assert case_groups(ids) == {i: i for i in ids}
    note = grouping_note(ids)
    assert note is not None and "name only 2 group(s)" in note and "data.group_by" in note
    assert grouping_note(["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"]) is None
