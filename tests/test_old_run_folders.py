"""A run folder written by an older ssmis (commit 541e60d, before normalisation records,
resume segments and the run-folder module) still loads: evaluation gives its recorded test
Dice, ``ssmis predict`` its recorded masks (same normalisation), and it resumes.

The fixture (``tests/fixtures/run_541e60d``) is a mean teacher run of 40 iterations on the
``images`` layout example (``ssmis data example images``), trained with that commit's code:
``ssmis train`` of the config in the fixture, then ``ssmis predict`` of img2/img3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from ssmis.data.layouts import get_layout

FIXTURE = Path(__file__).parent / "fixtures" / "run_541e60d"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    get_layout("images").write_example(tmp_path / "data")
    run = tmp_path / "old_mt"
    shutil.copytree(FIXTURE, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert "resolved_normalization" not in cfg["data"]  # the older format
    assert cfg["method"]["params"]["ema_buffers"] == "own"
    cfg["data"]["root"] = str(tmp_path / "data")
    cfg["output_dir"] = str(tmp_path / "runs")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return run


def test_an_older_run_evaluates_to_its_recorded_dice(old_run: Path) -> None:
    from ssmis.engine.run import evaluate_run

    recorded = json.loads((FIXTURE / "metrics.json").read_text())["mean"]["dice"]["mean"]
    result = evaluate_run(old_run, split="test", checkpoint="best", verbose=False)
    assert result["mean"]["dice"]["mean"] == pytest.approx(recorded, abs=1e-9)


def test_an_older_run_predicts_its_recorded_masks(old_run: Path, tmp_path: Path) -> None:
    from PIL import Image

    from ssmis.predict import predict_files

    images = [tmp_path / "data" / "site_a" / "images" / "img2.png",
              tmp_path / "data" / "site_b" / "images" / "img3.png"]
    written = predict_files(old_run, images, tmp_path / "out", progress=False)
    assert [p.name for p in written] == ["img2.png", "img3.png"]
    for path in written:
        now = np.asarray(Image.open(path))
        then = np.asarray(Image.open(FIXTURE / "predictions" / path.name))
        assert then.sum() > 0 and np.array_equal(now, then), path.name


def test_an_older_run_resumes(old_run: Path) -> None:
    from ssmis.engine.run import resume_run

    resume_run(old_run, ["train.iterations=42"], evaluate=False, verbose=False)
    summary = json.loads((old_run / "train_summary.json").read_text())
    assert summary["iterations"] == 42
    segments = json.loads((old_run / "segments.json").read_text())["segments"]
    assert [s["start"] for s in segments] == [0, 40]
    assert segments[0]["reached"] == 40 and "reached" not in segments[1]
