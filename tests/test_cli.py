"""The command line: listing, errors as one line with exit status 2, no partial run folders."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from ssmis.cli import main
from tests.conftest import tiny_config


def _config(tmp_path: Path, root: Path, **train) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tiny_config(root, tmp_path / "runs", **train)))
    return path


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "Traceback" not in err
    return err


def test_methods_lists_supervised(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods"]) == 0
    assert "supervised" in capsys.readouterr().out


def test_unknown_method_lists_valid_names(
    phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", str(_config(tmp_path, phantom_root)), "method.name=nope"])
    assert code == 2
    from ssmis.methods import METHODS

    line = _error_line(capsys)
    assert f"unknown method 'nope'; expected one of: {', '.join(sorted(METHODS))}" in line
    assert line.startswith(f"ssmis: error: {tmp_path}")  # names the config file
    assert not (tmp_path / "runs").exists()


def test_missing_config_and_unknown_key(
    phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", str(tmp_path / "none.yaml")]) == 2
    assert "config file not found" in _error_line(capsys)
    assert main(["train", str(_config(tmp_path, phantom_root)), "model.nme=x"]) == 2
    assert "model.nme: unknown key (did you mean 'model.name'?)" in _error_line(capsys)
    config = _config(tmp_path, phantom_root)
    assert main(["train", str(config), "method.params.foo=1"]) == 2
    assert f"{config}: method.params.foo: unknown key" in _error_line(capsys)


def _copy_dataset(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _first_slice(root: Path) -> Path:
    first = (root / "train_slices.list").read_text().split()[0]
    return root / "data" / "slices" / f"{first}.h5"


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        ("missing", "not found"),
        ("no_image", "no 'image'"),
        ("shape", "shape"),
        ("label_value", "9"),
        ("nan", "NaN"),
        ("empty_test", "test"),
    ],
)
def test_bad_data_stops_with_one_line_and_writes_nothing(
    phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], breakage: str,
    expected: str,
) -> None:
    root = _copy_dataset(phantom_root, tmp_path / "data")
    target = _first_slice(root)
    if breakage == "missing":
        target.unlink()
    elif breakage == "empty_test":
        (root / "test.list").write_text("")
    else:
        with h5py.File(target, "r+") as f:
            image, label = f["image"][()], f["label"][()]
            if breakage == "no_image":
                del f["image"]
            elif breakage == "shape":
                del f["label"]
                f["label"] = np.zeros((label.shape[0] + 1, label.shape[1]), np.uint8)
            elif breakage == "label_value":
                label[0, 0] = 9
                f["label"][()] = label
            elif breakage == "nan":
                image[0, 0] = np.nan
                f["image"][()] = image
    code = main(["train", str(_config(tmp_path, root)), "--quiet", "--no-eval"])
    assert code == 2
    line = _error_line(capsys)
    assert expected in line
    if breakage not in ("empty_test",):
        assert target.name in line or breakage == "missing" and target.stem in line
    assert not (tmp_path / "runs").exists()  # detected before the run folder exists


def test_failed_start_does_not_touch_an_existing_run(
    phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "existing"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    code = main(["train", str(_config(tmp_path, phantom_root)), "--run-dir", str(run)])
    assert code == 2
    assert "exists and is not empty" in _error_line(capsys)
    assert (run / "metrics.json").read_text() == "{}"


def test_train_then_evaluate_from_the_command_line(
    phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "cli_run"
    code = main(["train", str(_config(tmp_path, phantom_root)), "train.iterations=2",
                 "--run-dir", str(run), "--quiet"])
    assert code == 0
    assert main(["evaluate", str(run), "--split", "test"]) == 0
    out = capsys.readouterr()
    assert "Dice" in out.err + out.out
    assert (run / "metrics.json").is_file()
