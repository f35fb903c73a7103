"""Splits as the literature builds them: ACDC first patients/slices, LA first ids + carved val."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ssmis.data.layouts.acdc_h5 import acdc_split
from ssmis.data.layouts.la_h5 import la_split
from ssmis.data.splits import Split, patient_of_slice
from ssmis.errors import SSMISError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ACDC = SHARED / "acdc"
LA = SHARED / "la_sample"


def _acdc(root: Path, train: list[str], val: list[str], test: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, ids in (("train_slices", train), ("val", val), ("test", test)):
        (root / f"{name}.list").write_text("".join(f"{i}\n" for i in ids))
    return root


def _la(root: Path, train: list[str], test: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.list").write_text("\n".join(train) + "\n")
    (root / "test.list").write_text("\n".join(test) + "\n")
    return root


SLICES = [f"patient{p:03d}_frame0{f}_slice_{k}" for p in (9, 3, 5) for f in (1, 2) for k in (2, 1)]


def test_patient_of_slice() -> None:
    assert patient_of_slice("patient099_frame01_slice_15") == "patient099"
    assert patient_of_slice("patient099_frame02") == "patient099"


def test_acdc_split_by_patients_and_slices(tmp_path: Path) -> None:
    root = _acdc(tmp_path, SLICES, ["patient007_frame01"], ["patient008_frame01"])
    split = acdc_split(root, labeled_patients=2)
    assert split.labeled == SLICES[:8] and split.unlabeled == SLICES[8:]
    assert split.val == ["patient007_frame01"] and split.test == ["patient008_frame01"]
    split = acdc_split(root, labeled_slices=3)
    assert split.labeled == SLICES[:3] and split.unlabeled == SLICES[3:]


def test_acdc_patients_not_contiguous_take_all_their_slices(tmp_path: Path) -> None:
    ids = ["patient001_frame01_slice_1", "patient002_frame01_slice_1",
           "patient001_frame02_slice_1"]
    root = _acdc(tmp_path, ids, ["patient007_frame01"], ["patient008_frame01"])
    split = acdc_split(root, labeled_patients=1)
    assert split.labeled == [ids[0], ids[2]] and split.unlabeled == [ids[1]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labeled_patients": 0}, "data.labeled_patients: 0 is out of range, expected 1..3"),
        ({"labeled_patients": 4}, "data.labeled_patients: 4 is out of range"),
        ({"labeled_slices": 13}, "data.labeled_slices: 13 is out of range, expected 1..12"),
        ({}, "set exactly one"),
        ({"labeled_patients": 1, "labeled_slices": 2}, "set exactly one"),
    ],
)
def test_acdc_bad_counts(tmp_path: Path, kwargs: dict[str, int], match: str) -> None:
    root = _acdc(tmp_path, SLICES, ["patient007_frame01"], ["patient008_frame01"])
    with pytest.raises(SSMISError, match=match):
        acdc_split(root, **kwargs)


def test_empty_or_missing_lists_and_leaks(tmp_path: Path) -> None:
    root = _acdc(tmp_path / "a", SLICES, ["patient007_frame01"], [])
    with pytest.raises(SSMISError, match=r"test.list: split 'test' is empty"):
        acdc_split(root, labeled_patients=1)
    (root / "val.list").unlink()
    with pytest.raises(SSMISError, match="val.list: list file not found"):
        acdc_split(root, labeled_patients=1)
    root = _acdc(tmp_path / "b", SLICES, ["patient007_frame01"], ["patient003_frame01"])
    with pytest.raises(SSMISError, match=r"test.list: patient\(s\) \['patient003'\] also in"):
        acdc_split(root, labeled_patients=1)
    with pytest.raises(SSMISError, match="data.root: folder .* not found"):
        acdc_split(tmp_path / "nowhere", labeled_patients=1)


def test_la_split(tmp_path: Path) -> None:
    train = [f"case{i:02d}" for i in range(10)]
    root = _la(tmp_path, train, ["t1", "t2"])
    split = la_split(root, labeled_count=3, val_count=2)
    assert split.labeled == train[:3]
    assert split.unlabeled == train[3:8]
    assert split.val == train[8:]  # carved from the end of train.list, never from test.list
    assert split.test == ["t1", "t2"]
    all_ids = split.labeled + split.unlabeled + split.val + split.test
    assert len(all_ids) == len(set(all_ids)) == 12
    assert la_split(root, labeled_count=8, val_count=2).unlabeled == []


@pytest.mark.parametrize(
    ("labeled", "val", "match"),
    [
        (9, 2, r"data.labeled_count \+ data.val_count: 9 \+ 2 exceed the 10 ids"),
        (3, 0, "data.val_count: 0 is out of range"),
        (0, 2, "data.labeled_count: 0 is out of range"),
    ],
)
def test_la_bad_counts(tmp_path: Path, labeled: int, val: int, match: str) -> None:
    root = _la(tmp_path, [f"case{i:02d}" for i in range(10)], ["t1"])
    with pytest.raises(SSMISError, match=match):
        la_split(root, labeled_count=labeled, val_count=val)


def test_la_test_ids_never_in_training(tmp_path: Path) -> None:
    root = _la(tmp_path, ["a", "b", "c", "d"], ["x", "c"])
    with pytest.raises(SSMISError, match=r"test.list: id\(s\) \['c'\] also in train.list"):
        la_split(root, labeled_count=1, val_count=1)
    root = _la(tmp_path / "dup", ["a", "b", "a", "d"], ["x"])
    with pytest.raises(SSMISError, match="listed more than once"):
        la_split(root, labeled_count=1, val_count=1)


def test_disjointness_check() -> None:
    Split(["a"], ["b"], ["c"], ["d"]).check_disjoint()
    with pytest.raises(SSMISError, match="case 'a' is listed in 'labeled' and 'test'"):
        Split(["a"], ["b"], ["c"], ["a"]).check_disjoint()


def test_split_json_round_trip(tmp_path: Path) -> None:
    split = Split(["a", "b"], ["c"], ["d"], ["e"])
    split.save(tmp_path / "splits.json")
    assert Split.load(tmp_path / "splits.json") == split
    assert Split.from_dict(split.to_dict()) == split
    (tmp_path / "bad.json").write_text('{"labeled": ["a"]}')
    with pytest.raises(SSMISError, match="bad.json: missing key 'unlabeled'"):
        Split.load(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SSMISError, match="not a valid split JSON"):
        Split.load(tmp_path / "bad.json")


@pytest.mark.skipif(not ACDC.is_dir(), reason="real ACDC data not available")
def test_real_acdc_published_labeled_sets() -> None:
    train = (ACDC / "train_slices.list").read_text().split()
    three = acdc_split(ACDC, labeled_patients=3)
    assert three.labeled == train[:68]
    assert sorted({patient_of_slice(i) for i in three.labeled}) == [
        "patient038", "patient050", "patient099"]
    seven = acdc_split(ACDC, labeled_patients=7)
    assert seven.labeled == train[:136] and len(seven.unlabeled) == 1312 - 136
    assert {patient_of_slice(i) for i in seven.labeled} == {
        "patient099", "patient038", "patient050", "patient100", "patient058", "patient021",
        "patient049"}
    assert acdc_split(ACDC, labeled_slices=136).labeled == seven.labeled
    assert len(seven.val) == 20 and len(seven.test) == 40
    assert acdc_split(ACDC, labeled_patients=14).labeled == train[:256]


@pytest.mark.skipif(not LA.is_dir(), reason="real LA sample not available")
def test_real_la_sample_split() -> None:
    train = (LA / "train.list").read_text().split()
    split = la_split(LA, labeled_count=4, val_count=2)
    assert split.labeled == train[:4] and split.val == train[-2:]
    assert split.unlabeled == train[4:6] and len(split.test) == 4


def test_mixed_domain_validation_comes_from_the_labeled_domain() -> None:
    """With a labeled domain, no label of another domain is used, validation included."""
    from ssmis.data.splits import ssl_split

    pool = [f"{d}/c{i}" for d in ("A", "B", "C") for i in range(6)]
    domains = {c: c.split("/")[0] for c in pool}
    split = ssl_split(pool, [], ["A/t0"], domains, labeled_count=2, labeled_domain="A",
                      val_count=3, seed=0)
    assert {domains[c] for c in split.labeled} == {"A"} and {domains[c] for c in split.val} == {"A"}
    assert {domains[c] for c in split.unlabeled} == {"A", "B", "C"}
    everywhere = ssl_split(pool, [], ["A/t0"], domains, labeled_count=2, labeled_domain="A",
                           val_count=3, seed=0, val_domain="all")
    assert {domains[c] for c in everywhere.val} == {"A", "B", "C"}
    with pytest.raises(SSMISError, match="7 validation cases requested from domain 'A', which "
                                         "has 6 .* data.val_domain: all"):
        ssl_split(pool, [], ["A/t0"], domains, labeled_count=2, labeled_domain="A",
                  val_count=7, seed=0)


def test_labeled_pick_first_takes_the_authors_first_files() -> None:
    """SynFoC/MiDSS: lb_idxs = range(lb_num) over the sorted files of the labeled domain, chosen
    before any validation case; the pool's order (the catalog's file order) is kept."""
    from ssmis.data.splits import ssl_split

    pool = [f"{d}/{i:02d}_1" for d in ("Domain1", "Domain2") for i in range(50)]
    domains = {c: c.split("/")[0] for c in pool}
    split = ssl_split(pool, [], ["Domain1/test/x"], domains, labeled_count=20,
                      labeled_domain="Domain1", labeled_pick="first", val_count=20, seed=3)
    assert split.labeled == [f"Domain1/{i:02d}_1" for i in range(20)]
    assert len(split.val) == 20 and not set(split.val) & set(split.labeled)
    # held_out: the 20 validation images leave training: Domain1 keeps 10 unlabeled
    assert sum(domains[c] == "Domain1" for c in split.unlabeled) == 10
    # file order, not sorted ids: the pool's order decides which cases are "first"
    reordered = ssl_split(pool[::-1], [], ["Domain1/test/x"], domains, labeled_count=2,
                          labeled_domain="Domain1", labeled_pick="first", val_count=1)
    assert reordered.labeled == ["Domain1/49_1", "Domain1/48_1"]


def test_val_pool_unlabeled_keeps_a_small_domain_whole() -> None:
    """val_pool unlabeled: validation cases stay unlabeled training cases, so the training
    stream is the authors' (20 labeled + all 30 other Domain1 images + other domains)."""
    from ssmis.data.splits import ssl_split

    pool = [f"{d}/{i:02d}" for d in ("Domain1", "Domain2") for i in range(50)]
    domains = {c: c.split("/")[0] for c in pool}
    split = ssl_split(pool, ["Domain2/u0"], ["Domain1/test/x"], domains, labeled_count=20,
                      labeled_domain="Domain1", labeled_pick="first", val_count=20,
                      val_pool="unlabeled", seed=0)
    assert split.labeled == [f"Domain1/{i:02d}" for i in range(20)]
    assert sum(domains.get(c) == "Domain1" for c in split.unlabeled) == 30
    assert len(split.unlabeled) == 30 + 50 + 1
    assert len(split.val) == 20 and set(split.val) <= set(split.unlabeled)
    assert {domains[c] for c in split.val} == {"Domain1"}
    with pytest.raises(SSMISError, match="listed in 'unlabeled' and 'val'"):
        split.check_disjoint()
    split.check_disjoint(val_in_unlabeled=True)
    with pytest.raises(SSMISError, match="listed in 'labeled' and 'val'"):
        Split(["a"], ["b"], ["a"], ["d"]).check_disjoint(val_in_unlabeled=True)
    # random draw kept as an option: labeled drawn by the seed, then validation
    drawn = ssl_split(pool, [], ["Domain1/test/x"], domains, labeled_count=20,
                      labeled_domain="Domain1", val_count=20, val_pool="unlabeled", seed=0)
    assert drawn.labeled != split.labeled and len(drawn.labeled) == 20
    with pytest.raises(SSMISError, match="31 validation cases requested from domain 'Domain1', "
                                         "which has 30 unlabeled"):
        ssl_split(pool, [], ["Domain1/test/x"], domains, labeled_count=20,
                  labeled_domain="Domain1", labeled_pick="first", val_count=31,
                  val_pool="unlabeled")


def test_random_held_out_split_is_unchanged() -> None:
    """The default (random draw, held-out validation) gives the same split as before the
    labeled_pick / val_pool options (validation drawn first, then the labeled cases)."""
    from ssmis.data.splits import _stratified, ssl_split

    pool = [f"{d}/c{i}" for d in ("A", "B") for i in range(8)]
    domains = {c: c.split("/")[0] for c in pool}
    split = ssl_split(pool, [], ["A/t"], domains, labeled_count=3, labeled_domain="A",
                      val_count=2, seed=5)
    rng = np.random.default_rng(5)
    val = sorted(_stratified([c for c in pool if c.startswith("A")], domains, rng)[:2])
    rest = [c for c in sorted(pool) if c.startswith("A") and c not in val]
    assert split.val == val
    assert split.labeled == sorted(rest[j] for j in rng.permutation(len(rest))[:3])
