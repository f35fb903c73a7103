"""`ssmis demo`: supervised and a semi-supervised method on the same few-label phantom split."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssmis.cli import main
from ssmis.demo import SSL_METHOD, demo_configs


def test_demo_runs_share_data_split_and_seed(tmp_path: Path) -> None:
    configs = demo_configs(tmp_path, iterations=30)
    sup, ssl = configs["supervised"], configs[SSL_METHOD]
    assert sup["data"] == ssl["data"] and sup["seed"] == ssl["seed"]
    assert sup["train"]["batch_size"] == ssl["train"]["batch_size"]
    assert sup["method"]["name"] == "supervised" and ssl["method"]["name"] == SSL_METHOD
    assert ssl["train"]["unlabeled_batch_size"] > 0


@pytest.mark.parametrize(("iterations", "pretrain"), [(1, 0), (2, 1), (3, 1), (30, 10), (300, 100)])
def test_demo_pretraining_scales_with_iterations(tmp_path: Path, iterations: int,
                                                 pretrain: int) -> None:
    """`ssmis demo --iterations 1` used to fail: pre-training max(n // 3, 1) = the whole run."""
    from ssmis.config import validate_config
    from ssmis.methods import build_method

    cfg = validate_config(demo_configs(tmp_path, iterations)[SSL_METHOD], source="demo")
    phases = build_method(cfg).phases()
    assert sum(p.iterations for p in phases) == iterations
    assert phases[-1].name == "self_train" and phases[-1].iterations == iterations - pretrain


@pytest.mark.slow
def test_demo_prints_both_methods_and_the_gain(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path), "--iterations", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    import json

    runs = sorted(tmp_path.glob("demo_*/*/metrics.json"))
    assert [p.parts[-3] for p in runs] == [f"demo_{SSL_METHOD}", "demo_supervised"]
    dice = {p.parts[-3]: json.loads(p.read_text())["mean"]["dice"]["mean"] for p in runs}
    gain = (dice[f"demo_{SSL_METHOD}"] - dice["demo_supervised"]) * 100
    assert f"gain of {SSL_METHOD} over supervised: {gain:+.2f} Dice points" in out
    assert "supervised" in out and "HD95 (voxel, monai)" in out
