"""The ``hrf`` layout on its synthetic copy of the HRF release: the 27/18 protocol and its
labeled images, the vessel and FOV readings, detection ahead of the loose ``images`` layout,
and one-line errors naming the file or field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ssmis.config import DataConfig
from ssmis.data.layouts import detect_layout
from ssmis.data.layouts.hrf import HRFLayout, hrf_protocol
from ssmis.errors import SSMISError


@pytest.fixture(scope="module")
def hrf_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hrf") / "HRF"
    HRFLayout.write_example(root)
    return root


def _layout(root: Path, **data: Any) -> HRFLayout:
    settings = {"layout": "hrf", "root": str(root), "num_classes": 2, "in_channels": 3,
                "patch_size": [32, 48], "labeled_count": 1, **data}
    return HRFLayout(DataConfig.model_validate(settings))


def test_example_has_the_release_names(hrf_root: Path) -> None:
    assert (hrf_root / "images" / "01_dr.JPG").is_file()
    assert (hrf_root / "images" / "15_h.jpg").is_file()
    assert (hrf_root / "manual1" / "07_g.tif").is_file()
    assert (hrf_root / "mask" / "07_g_mask.tif").is_file()
    assert len(list((hrf_root / "images").iterdir())) == 45
    assert detect_layout(hrf_root) == "hrf"  # not the loose `images` layout


@pytest.mark.parametrize("labeled, expected", [(1, ["01_dr"]), (3, ["01_dr", "01_g", "01_h"])])
def test_protocol_27_train_18_test(hrf_root: Path, labeled: int, expected: list[str]) -> None:
    split = _layout(hrf_root, labeled_count=labeled, val_count=3, val_pool="unlabeled").split()
    assert split.labeled == expected
    assert len(split.test) == 18 and all(int(c[:2]) >= 10 for c in split.test)
    assert split.val == ["09_dr", "09_g", "09_h"]
    # val_pool unlabeled (the configs): training sees all 27 training images
    assert len(split.labeled) + len(split.unlabeled) == 27
    assert set(split.val) <= set(split.unlabeled)
    held = _layout(hrf_root, labeled_count=labeled).split()  # val_pool held_out, val_count 3
    assert held.val == split.val and held.test == split.test
    assert len(held.unlabeled) == 27 - labeled - 3 and not set(held.val) & set(held.unlabeled)
    assert held == hrf_protocol(labeled, 3, "held_out")


def test_vessels_and_fov_read_as_written(hrf_root: Path) -> None:
    layout = _layout(hrf_root, val_count=1)
    case = next(iter(layout.eval_cases(["12_g"])))
    vessels = np.asarray(Image.open(hrf_root / "manual1" / "12_g.tif")) > 127
    fov = np.asarray(Image.open(hrf_root / "mask" / "12_g_mask.tif"))[..., 0] > 127
    assert case.image.shape == (3, 36, 54) and case.image.dtype == np.float32
    assert case.image.min() >= 0.0 and case.image.max() <= 1.0  # 'auto' = / 255
    np.testing.assert_array_equal(case.label, vessels.astype(np.int64))
    np.testing.assert_array_equal(case.roi, fov)  # the FOV is the scored region
    assert case.spacing is None and case.label.sum() > 0 and not (case.label & ~case.roi).any()


def test_manual1_is_thresholded_at_127(tmp_path: Path) -> None:
    root = tmp_path / "HRF"
    HRFLayout.write_example(root)
    values = np.zeros((36, 54), np.uint8)
    values[0, :4] = [100, 127, 128, 200]
    Image.fromarray(values, "L").save(root / "manual1" / "01_h.tif")
    label = _layout(root, val_count=1).reader.load("01_h", with_label=True).label
    assert label[0, :4].tolist() == [0, 0, 1, 1] and int(label.sum()) == 2


def test_missing_fov_mask_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "HRF"
    HRFLayout.write_example(root)
    (root / "mask" / "05_g_mask.tif").unlink()
    with pytest.raises(SSMISError) as err:
        _layout(root).split()
    assert str(err.value).startswith(str(root / "mask" / "05_g_mask.tif"))
    assert "\n" not in str(err.value)


def test_fov_of_another_size_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "HRF"
    HRFLayout.write_example(root)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8), "RGB").save(root / "mask" / "15_h_mask.tif")
    layout = _layout(root, val_count=1)
    with pytest.raises(SSMISError, match=r"15_h_mask.tif: ROI size 10x10 differs from image "
                                         r"15_h.jpg 54x36"):
        layout.check_files(layout.split(), need_unlabeled=False)


@pytest.mark.parametrize("extra, field", [({"labeled_count": None}, "data.labeled_count"),
                                          ({"mask_values": {0: 0, 255: 1}}, "data.mask_values"),
                                          ({"num_classes": 3}, "data.num_classes")])
def test_config_problems_name_the_field(tmp_path: Path, extra: dict[str, Any],
                                        field: str) -> None:
    settings = {"layout": "hrf", "root": str(tmp_path), "num_classes": 2,
                "patch_size": [32, 48], "labeled_count": 1, **extra}
    with pytest.raises(ValueError, match=field):
        DataConfig.model_validate(settings)


def test_labeled_count_out_of_range(hrf_root: Path) -> None:
    with pytest.raises(SSMISError, match=r"data.labeled_count: 27 is out of range, expected 1..26"):
        _layout(hrf_root, labeled_count=27).split()


def test_inspect_reads_vessels_as_classes(hrf_root: Path) -> None:
    from ssmis.datatools import inspect_dataset

    lines: list[str] = []
    assert inspect_dataset(hrf_root, out=lines.append) == 0
    assert "layout  hrf" in lines and "cases   45: test 18, train 27" in lines
    classes = next(line for line in lines if line.startswith("classes"))
    assert classes.startswith("classes 0: ") and ", 1: " in classes and "255" not in classes


def test_scores_count_only_the_fov(hrf_root: Path) -> None:
    from ssmis.eval.segment import within_roi

    case = next(iter(_layout(hrf_root, val_count=1).eval_cases(["10_dr"])))
    pred, label = within_roi(np.ones_like(case.label), case)  # vessel everywhere
    np.testing.assert_array_equal(pred, case.roi.astype(pred.dtype))
    np.testing.assert_array_equal(label, case.label)  # no vessel outside the FOV anyway
    assert 0 < case.roi.mean() < 1


def test_prepare_keeps_hrf_vessels_as_classes(hrf_root: Path, tmp_path: Path) -> None:
    """`ssmis data prepare` reads with the layout's reader: vessels 0/1, not manual1's 0/255."""
    from ssmis.data.layouts.prepared import scan_prepared
    from ssmis.datatools import prepare

    out = prepare(hrf_root, tmp_path / "prepared", [])
    catalog = scan_prepared(out)
    assert len(catalog.cases) == 45
    with np.load(next(iter(catalog.cases.values())).images[0]) as z:
        values = set(np.unique(z["label"]).tolist())
    assert values <= {0, 1} and 1 in values
