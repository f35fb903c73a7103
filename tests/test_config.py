from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ssmis.config import apply_overrides, parse_override, to_yaml, validate_config
from ssmis.errors import SSMISError
from ssmis.experiment import load_config
from tests.conftest import REPO, tiny_config


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_override_values_are_parsed_as_yaml() -> None:
    assert parse_override("train.lr=0.02") == (["train", "lr"], 0.02)
    assert parse_override("data.patch_size=[64, 64]") == (["data", "patch_size"], [64, 64])
    assert parse_override("eval.lcc=true") == (["eval", "lcc"], True)
    raw = apply_overrides({"train": {"lr": 0.1}}, ["train.lr=0.5", "train.schedule.kind=poly"])
    assert raw == {"train": {"lr": 0.5, "schedule": {"kind": "poly"}}}


def test_config_loads_with_overrides(phantom_root: Path, tmp_path: Path) -> None:
    path = _write(tmp_path, tiny_config(phantom_root, tmp_path))
    cfg = load_config(path, ["train.iterations=9", "train.schedule.kind=poly"])
    assert cfg.train.iterations == 9 and cfg.train.schedule.kind == "poly"
    again = validate_config(yaml.safe_load(to_yaml(cfg)))
    assert again == cfg


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.lrr=0.1", "train.lrr: unknown key (did you mean 'train.lr'?)"),
        ("train.lr=abc", "train.lr: Input should be a valid number"),
        ("train.iterations=0", "train.iterations: Input should be greater than or equal to 1"),
        ("eval.unit=inch", "eval.unit: Input should be 'mm' or 'voxel'"),
        ("data.root=/no/such/folder", "data.root: folder not found: /no/such/folder"),
        ("bogus=1", "bogus: unknown key"),
        ("data.labeled_slices=5", "give exactly one of labeled_patients / labeled_slices"),
        ("train", "expected key.sub=value"),
    ],
)
def test_config_errors_are_one_line_naming_the_field(
    phantom_root: Path, tmp_path: Path, override: str, expected: str
) -> None:
    path = _write(tmp_path, tiny_config(phantom_root, tmp_path))
    with pytest.raises(SSMISError) as info:
        load_config(path, [override])
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_missing_config_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(SSMISError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(SSMISError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=str)
def test_shipped_configs_validate(path: Path) -> None:
    from ssmis.config import read_yaml
    from ssmis.methods import get_method
    from ssmis.models import MODEL_NAMES

    cfg = validate_config(read_yaml(path), source=str(path))
    assert cfg.model.name in MODEL_NAMES
    get_method(cfg.method.name).parse_params(cfg.method.params)
