"""Layouts own their options (``Layout.Params``) while the ``data`` section stays flat: the
config module keeps the generic fields and names no layout; every option of a layout is
validated, refused for another layout, dumped and overridden as ``data.<option>``."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import yaml

import ssmis.config as config_module
from ssmis.config import (
    DATA_ORDER,
    DataConfig,
    apply_overrides,
    layout_option_defaults,
    read_yaml,
    to_yaml,
    validate_config,
)
from ssmis.data.layouts import LAYOUTS
from ssmis.data.layouts.params import LayoutParams, SplitRules
from ssmis.errors import SSMISError

REPO = Path(__file__).resolve().parent.parent


def _data(**fields) -> dict:
    base = {"layout": "images", "root": "/tmp", "num_classes": 2, "patch_size": [32, 32],
            "labeled_count": 2, "val_count": 1}
    return {**base, **fields}


def _experiment(**data) -> dict:
    return {"data": _data(**data), "train": {"iterations": 1, "batch_size": 1}}


def _error(raw: dict) -> str:
    with pytest.raises(SSMISError) as info:
        validate_config(raw)
    return str(info.value)


def test_config_module_names_no_registered_layout() -> None:
    """No string constant of config.py's code is a layout name (descriptions, which are
    longer prose, may mention layouts): a layout-specific rule in config.py would have to
    compare ``data.layout`` with such a constant, and belongs in the layout instead."""
    tree = ast.parse(Path(config_module.__file__).read_text())
    constants = {node.value for node in ast.walk(tree)
                 if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert not constants & set(LAYOUTS), sorted(constants & set(LAYOUTS))


def test_data_config_keeps_only_generic_fields() -> None:
    assert len(DataConfig.model_fields) < 20
    options = layout_option_defaults()
    assert not set(options) & set(DataConfig.model_fields)
    for cls in LAYOUTS.values():
        assert issubclass(cls.Params, LayoutParams), cls.name


def test_every_option_keeps_one_default() -> None:
    """An option several layouts take has one default (a layout that does not take it reads
    and writes that default)."""
    for cls in LAYOUTS.values():
        for name, info in cls.Params.model_fields.items():
            assert info.get_default(call_default_factory=True) == layout_option_defaults()[name]


def test_params_hold_the_layout_options() -> None:
    data = DataConfig.model_validate(_data(mask_values="0:0,255:1", images_dir="img"))
    assert isinstance(data.params, SplitRules)
    assert data.params.mask_values == {0: 0, 255: 1}
    assert data.params.images_dir == "img" and data.params.labeled_count == 2
    assert data.mask_values == {0: 0, 255: 1}  # the documented read-only fallback
    acdc = DataConfig.model_validate({"layout": "acdc_h5", "root": "/tmp", "num_classes": 4,
                                      "patch_size": [32, 32], "labeled_patients": 3})
    assert set(type(acdc.params).model_fields) == {"labeled_patients", "labeled_slices",
                                                  "resize_filter"}
    assert acdc.mask_values is None and acdc.val_pool == "held_out"  # not taken: default
    with pytest.raises(AttributeError):
        _ = acdc.no_such_option


def test_option_of_another_layout_is_refused_in_one_line() -> None:
    message = _error({"data": {"layout": "acdc_h5", "root": "/tmp", "num_classes": 4,
                               "patch_size": [32, 32], "labeled_patients": 3,
                               "mask_values": {0: 0, 255: 1}},
                      "train": {"iterations": 1, "batch_size": 1}})
    assert "data.mask_values: not used by acdc_h5" in message and "\n" not in message
    # at its default (a run folder of an older ssmis writes every option) it is accepted
    raw = _experiment()
    raw["data"] |= {"layout": "la_h5", "patch_size": [16, 16, 16], "mask_values": None,
                    "images_dir": "images", "val_pool": "held_out"}
    assert validate_config(raw).data.params.val_count == 1
    # another layout's labeled count is stale once this layout's own count is given
    raw["data"]["labeled_patients"] = 2
    assert not hasattr(validate_config(raw).data.params, "labeled_patients")
    del raw["data"]["labeled_count"]
    assert "data.labeled_patients: not used by la_h5" in _error(raw)


def test_unknown_and_invalid_options_name_the_field() -> None:
    assert _error(_experiment(labeled_cont=3)) == \
        "config: data.labeled_cont: unknown key (did you mean 'data.labeled_count'?)"
    assert _error(_experiment(labeled_count=0)).startswith(
        "config: data.labeled_count: Input should be greater than or equal to 1")
    assert _error(_experiment(mask_pattern="manual")).startswith(
        "config: data.mask_pattern: 'manual' must contain '{id}'")
    assert _error(_experiment(mask_values={0: 0, 255: 5})).startswith(
        "config: data.mask_values: class(es) [5] outside 0..1")
    assert _error(_experiment(group_by="(")).startswith("config: data.group_by: '(' is not")


def test_dump_is_flat_and_overrides_set_options() -> None:
    raw = _experiment()
    cfg = validate_config(apply_overrides(copy.deepcopy(raw), ["data.mask_values=0:0,255:1",
                                                               "data.val_pool=unlabeled"]))
    dumped = cfg.model_dump(mode="json")["data"]
    assert list(dumped) == [k for k in DATA_ORDER if k in dumped]
    assert set(DATA_ORDER) <= set(dumped)
    assert dumped["mask_values"] == {"0": 0, "255": 1} and dumped["val_pool"] == "unlabeled"
    again = validate_config(yaml.safe_load(to_yaml(cfg)))
    assert again == cfg and again.data.params == cfg.data.params
    copied = cfg.data.model_copy(update={"normalization": "zscore"})
    assert copied.params == cfg.data.params


def test_every_shipped_config_still_validates_and_dumps_every_option() -> None:
    files = sorted((REPO / "configs").glob("*/*.yaml"))
    assert files
    for path in files:
        cfg = validate_config(read_yaml(path), source=str(path))
        assert set(DATA_ORDER) <= set(cfg.model_dump(mode="json")["data"]), path
