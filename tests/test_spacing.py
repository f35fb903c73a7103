"""data.spacing is in array-axis order; the check against the array's shape (ssmis.data.spacing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssmis.config import validate_config
from ssmis.data.spacing import spacing_order_problem
from ssmis.engine.data import build_split, check_data
from ssmis.errors import SSMISError
from tests.conftest import tiny_config


def test_rule_on_the_layouts() -> None:
    acdc = (10, 256, 216)  # ACDC h5 volume: (Z, H, W)
    assert spacing_order_problem([10, 1.5, 1.5], acdc) is None
    problem = spacing_order_problem([1.5, 1.5, 10], acdc)
    assert problem is not None and "largest spacing 10 mm is on array axis 2" in problem
    assert "stack along axis 0" in problem and "[10.0, 1.5, 1.5]" in problem
    assert spacing_order_problem([0.625] * 3, (112, 112, 80)) is None  # LA: isotropic
    assert spacing_order_problem([1.0, 1.0, 1.0], (160, 160, 128)) is None  # BraTS
    assert spacing_order_problem([0.8, 0.8, 1.0], (512, 512, 90)) is None  # thin-slice CT
    # NIfTI voxel order (X, Y, Z) with thick Z: right as given, wrong when Z is moved first
    assert spacing_order_problem([0.7, 0.7, 5.0], (512, 512, 40)) is None
    assert spacing_order_problem([5.0, 0.7, 0.7], (512, 512, 40)) is not None
    # whole-body CT: the slice axis is as long as the in-plane ones, the shape says nothing
    assert spacing_order_problem([0.8, 0.8, 5.0], (400, 512, 512)) is None
    assert spacing_order_problem([3.0, 1.0], (20, 300)) is None  # 2D: no slice axis


def test_check_data_stops_on_a_swapped_acdc_spacing(phantom_root: Path, tmp_path: Path) -> None:
    """The phantoms are ACDC h5 volumes (4 slices of 48 x 48)."""
    raw = tiny_config(phantom_root, tmp_path)
    raw["data"]["spacing"] = [10.0, 1.5, 1.5]
    cfg = validate_config(raw)
    check_data(cfg, build_split(cfg), need_unlabeled=False)
    raw["data"]["spacing"] = [1.5, 1.5, 10.0]
    cfg = validate_config(raw)
    with pytest.raises(SSMISError, match=r"^data.spacing: \[1.5, 1.5, 10.0\] does not fit .*"
                                         r"patient\d+_frame01.h5: .* array \(4, 48, 48\) is a "
                                         r"stack along axis 0.*\[10.0, 1.5, 1.5\]"):
        check_data(cfg, build_split(cfg), need_unlabeled=False)
    raw["data"]["spacing_check"] = False
    cfg = validate_config(raw)
    check_data(cfg, build_split(cfg), need_unlabeled=False)
    raw["data"]["spacing"] = [0.0, 1.5, 1.5]
    with pytest.raises(SSMISError, match="data.spacing: expected positive values"):
        validate_config(raw)
