"""h5 readers: the SSL4MIS/UA-MT layouts, and one-line errors naming the file for bad data."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from ssmis.data.h5 import (
    acdc_slice_path,
    acdc_volume_path,
    check_h5_files,
    check_h5_values,
    la_volume_path,
    load_h5_case,
    read_list,
)
from ssmis.errors import SSMISError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ACDC = SHARED / "acdc"
LA = SHARED / "la_sample"


def _write(path: Path, image: np.ndarray | None, label: np.ndarray | None) -> Path:
    with h5py.File(path, "w") as f:
        if image is not None:
            f["image"] = image
        if label is not None:
            f["label"] = label
    return path


@pytest.fixture
def good(tmp_path: Path) -> Path:
    label = np.zeros((6, 5), np.uint8)
    label[1:3, 1:4] = 3
    return _write(tmp_path / "good.h5", np.random.default_rng(0).random((6, 5), np.float32),
                  label)


def test_read_list_strips_and_skips_blanks(tmp_path: Path) -> None:
    path = tmp_path / "x.list"
    path.write_text("a\r\n  b \n\n\nc")
    assert read_list(path) == ["a", "b", "c"]
    with pytest.raises(SSMISError, match="missing.list: list file not found"):
        read_list(tmp_path / "missing.list")


def test_layout_paths() -> None:
    root = Path("/r")
    assert acdc_slice_path(root, "p_slice_1") == Path("/r/data/slices/p_slice_1.h5")
    assert acdc_volume_path(root, "p") == Path("/r/data/p.h5")
    assert la_volume_path(root, "X") == Path("/r/2018LA_Seg_Training Set/X/mri_norm2.h5")


def test_load_returns_float32_and_int64(good: Path) -> None:
    image, label = load_h5_case(good, num_classes=4)
    assert image.dtype == np.float32 and label is not None and label.dtype == np.int64
    assert image.shape == label.shape == (6, 5)
    image2, none = load_h5_case(good, num_classes=4, require_label=False)
    assert none is None and np.array_equal(image, image2)


def test_unlabeled_load_does_not_need_a_label(tmp_path: Path) -> None:
    path = _write(tmp_path / "u.h5", np.zeros((4, 4), np.float32), None)
    assert load_h5_case(path, num_classes=4, require_label=False)[1] is None
    check_h5_files([path], require_label=False)
    with pytest.raises(SSMISError, match="no 'label' dataset"):
        check_h5_files([path], require_label=True)


def _one_line(exc: pytest.ExceptionInfo[SSMISError], path: Path) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg
    return msg


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "file not found"),
        ("not_h5", "not a readable HDF5 file"),
        ("no_image", "no 'image' dataset"),
        ("no_label", "no 'label' dataset"),
        ("shape", "image shape (6, 5) and label shape (6, 6) differ"),
        ("nan", "image contains 1 NaN and 0 inf values"),
        ("inf", "0 NaN and 1 inf"),
        ("label_value", "label has values [0 3 5 9]"),
        ("float_label", "non-integer"),
    ],
)
def test_bad_files_raise_one_line_naming_the_file(tmp_path: Path, case: str, expected: str
                                                  ) -> None:
    path = tmp_path / f"{case}.h5"
    image = np.zeros((6, 5), np.float32)
    label = np.zeros((6, 5), np.uint8)
    if case == "not_h5":
        path.write_text("hello")
    elif case == "no_image":
        _write(path, None, label)
    elif case == "no_label":
        _write(path, image, None)
    elif case == "shape":
        _write(path, image, np.zeros((6, 6), np.uint8))
    elif case in ("nan", "inf"):
        image[2, 2] = np.nan if case == "nan" else np.inf
        _write(path, image, label)
    elif case == "label_value":
        label[0, :3] = [3, 5, 9]
        _write(path, image, label)
    elif case == "float_label":
        _write(path, image, np.full((6, 5), 0.5, np.float32))
    with pytest.raises(SSMISError) as exc:
        load_h5_case(path, num_classes=4)
    msg = _one_line(exc, path)
    assert expected in msg
    if case == "label_value":
        assert "(outside: 5 9), expected 0..3 (data.num_classes = 4)" in msg
    if case in ("missing", "not_h5", "no_image", "no_label", "shape"):
        with pytest.raises(SSMISError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            check_h5_files([path], require_label=True)
    if case in ("nan", "label_value"):
        check_h5_files([path], require_label=True)  # metadata is fine
        with pytest.raises(SSMISError):
            check_h5_values([path], num_classes=4, require_label=True)


def test_ndim_is_checked(good: Path) -> None:
    with pytest.raises(SSMISError, match="expected 3 dimensions"):
        load_h5_case(good, num_classes=4, ndim=3)
    with pytest.raises(SSMISError, match="expected 3 dimensions"):
        check_h5_files([good], require_label=True, ndim=3)


@pytest.mark.skipif(not ACDC.is_dir(), reason="real ACDC data not available")
def test_real_acdc_metadata_check_passes() -> None:
    slices = [acdc_slice_path(ACDC, i) for i in read_list(ACDC / "train_slices.list")]
    volumes = [acdc_volume_path(ACDC, i)
               for name in ("val.list", "test.list") for i in read_list(ACDC / name)]
    assert len(slices) == 1312 and len(volumes) == 60
    # every file of the real set passes the header check (~1 s on 2 idle cores; a speed
    # figure, not asserted here: timed asserts fail on a busy machine)
    check_h5_files(slices, require_label=True, ndim=2)
    check_h5_files(volumes, require_label=True, ndim=3)
    image, label = load_h5_case(slices[0], num_classes=4, ndim=2)
    assert label is not None and image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert set(np.unique(label)) <= {0, 1, 2, 3}
    image, label = load_h5_case(volumes[0], num_classes=4, ndim=3)
    assert label is not None and image.shape == label.shape and image.shape[0] < image.shape[1]


@pytest.mark.skipif(not LA.is_dir(), reason="real LA sample not available")
def test_real_la_sample_loads() -> None:
    ids = read_list(LA / "train.list")
    assert len(ids) == 8 and len(read_list(LA / "test.list")) == 4
    check_h5_files([la_volume_path(LA, i) for i in ids], require_label=True, ndim=3)
    image, label = load_h5_case(la_volume_path(LA, ids[0]), num_classes=2, ndim=3)
    assert label is not None and image.shape == label.shape and image.shape[2] == 88
    assert set(np.unique(label)) == {0, 1}
    with pytest.raises(SSMISError, match=r"expected 0..0 \(data.num_classes = 1\)"):
        load_h5_case(la_volume_path(LA, ids[0]), num_classes=1)


@pytest.mark.skipif(not LA.is_dir(), reason="real LA sample not available")
def test_real_la_patches_and_two_streams() -> None:
    import torch

    from ssmis.data.datasets import TwoStreamDataset, VolumePatchDataset, collate_two_stream
    from ssmis.data.transforms import Compose, RandomCrop3D, RandomRotFlip3D

    ids = read_list(LA / "train.list")[:2]
    paths = [la_volume_path(LA, i) for i in ids]
    t = Compose([RandomRotFlip3D(), RandomCrop3D((112, 112, 80))])
    labeled = VolumePatchDataset(paths, ids, 2, t, with_label=True)
    # even a dataset that could read labels must not pass them on as unlabeled items
    leaky = VolumePatchDataset(paths, ids, 2, t, with_label=True)
    item = labeled[(0, 5)]
    assert item["image"].shape == (1, 112, 112, 80) and item["label"].shape == (112, 112, 80)
    assert item["label"].dtype == torch.int64 and item["case"] == ids[0]
    assert torch.equal(labeled[(0, 5)]["image"], item["image"])
    both = TwoStreamDataset(labeled, leaky)
    lab, unl = collate_two_stream([both[(0, 1)], both[(3, 2)]])
    assert lab["label"].shape == (1, 112, 112, 80) and lab["case"] == [ids[0]]
    assert unl is not None and "label" not in unl and unl["case"] == [ids[1]]


@pytest.mark.skipif(not ACDC.is_dir(), reason="real ACDC data not available")
def test_real_acdc_slices_through_the_2d_pipeline() -> None:
    from ssmis.data.datasets import SliceDataset, load_eval_cases
    from ssmis.data.transforms import RandomGenerator2D

    ids = read_list(ACDC / "train_slices.list")[:4]
    ds = SliceDataset([acdc_slice_path(ACDC, i) for i in ids], ids, 4,
                      RandomGenerator2D((256, 256)), with_label=True, cache=True)
    for k in range(4):
        item = ds[(k, k)]
        assert item["image"].shape == (1, 256, 256) and item["label"].shape == (256, 256)
        assert int(item["label"].max()) <= 3
    vid = read_list(ACDC / "val.list")[:1]
    case = next(load_eval_cases([acdc_volume_path(ACDC, vid[0])], vid, 4, (1.5, 1.5)))
    assert case.case == vid[0] and case.spacing == (1.5, 1.5) and case.image.ndim == 3
