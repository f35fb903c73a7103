"""End-to-end engine behaviour on tiny phantoms: run folder, checkpoints, resume, evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ssmis.config import validate_config
from ssmis.engine.checkpoint import load_state
from ssmis.engine.run import evaluate_run, resume_run, train_run
from ssmis.errors import SSMISError
from tests.conftest import tiny_config

PNG = b"\x89PNG\r\n\x1a\n"


def test_training_run_leaves_a_complete_run_folder(phantom_root: Path, tmp_path: Path) -> None:
    cfg = validate_config(tiny_config(phantom_root, tmp_path))
    run = train_run(cfg, tmp_path / "run", verbose=False)
    for name in ("config.yaml", "splits.json", "train.log", "scalars.jsonl", "val.jsonl",
                 "metrics.json", "metrics.md", "metrics_per_case.csv", "train_summary.json",
                 "checkpoints/best.safetensors", "checkpoints/last.safetensors",
                 "checkpoints/last-00000004.safetensors", "checkpoints/last-00000004_state.pt",
                 "checkpoints/last-00000004.json"):
        assert (run / name).is_file(), name
    for name in ("learning_curve.png", "overlays_test.png"):
        assert (run / name).read_bytes().startswith(PNG), name
    rows = [json.loads(line) for line in (run / "scalars.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [1, 2, 3, 4]
    assert {"loss", "loss_ce", "loss_dice", "lr", "it_s"} <= set(rows[0])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["seed"] == 7
    assert metrics["unit"] == "voxel" and metrics["empty_rule"] == "nan"
    assert set(metrics["definitions"]) >= {"dice", "jaccard", "hd95", "asd"}
    assert len(metrics["per_case"]) == 2 and metrics["commit"]
    splits = json.loads((run / "splits.json").read_text())
    assert not set(splits["test"]) & set(splits["val"])
    # checkpoints load without executing code
    assert load_file(str(run / "checkpoints/best.safetensors"))
    assert load_state(run / "checkpoints/last-00000004_state.pt")["step"] == 4
    # two generations are kept (validation at 2 and 4), older ones pruned
    assert sorted(p.name for p in (run / "checkpoints").glob("last-*.json")) == [
        "last-00000002.json", "last-00000004.json"]
    timing = json.loads((run / "train_summary.json").read_text())["timing"]
    assert timing["wall_s"] > 0 and timing["s_per_iteration"] > 0
    assert "peak_gpu_memory_gib" not in timing  # CPU run


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(
    phantom_root: Path, tmp_path: Path
) -> None:
    straight = validate_config(tiny_config(phantom_root, tmp_path, iterations=6, val_every=3))
    full = train_run(straight, tmp_path / "full", evaluate=False, verbose=False)
    stopped = validate_config(tiny_config(phantom_root, tmp_path, iterations=3, val_every=3))
    part = train_run(stopped, tmp_path / "part", evaluate=False, verbose=False)
    resume_run(part, ["train.iterations=6"], evaluate=False, verbose=False)
    a = load_file(str(full / "checkpoints/last.safetensors"))
    b = load_file(str(part / "checkpoints/last.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = [json.loads(x)["iter"] for x in (part / "scalars.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3, 4, 5, 6]


def test_evaluate_on_val_split_with_last_checkpoint(phantom_root: Path, tmp_path: Path) -> None:
    cfg = validate_config(tiny_config(phantom_root, tmp_path))
    run = train_run(cfg, tmp_path / "run", evaluate=False, verbose=False)
    result = evaluate_run(run, split="val", checkpoint="last", verbose=False)
    assert result["split"] == "val" and result["checkpoint"] == "last"
    assert (run / "metrics_val_last.json").is_file()
    assert not (run / "metrics.json").exists()


def test_divergence_stops_with_one_clear_error(phantom_root: Path, tmp_path: Path) -> None:
    import pytest

    from ssmis.errors import SSMISError

    cfg = validate_config(tiny_config(phantom_root, tmp_path, lr=1e12, iterations=6,
                                      val_every=6, log_every=3))
    with pytest.raises(SSMISError, match=r"training diverged: loss is nan at iteration [1-3]; no "
                                         "checkpoint was written after it"):
        train_run(cfg, tmp_path / "run", evaluate=False, verbose=False)


def test_eval_regions_are_scored_and_validated(phantom_root: Path, tmp_path: Path) -> None:
    raw = tiny_config(phantom_root, tmp_path)
    raw["eval"]["regions"] = {"heart": [1, 2, 3], "LV": [3]}
    run = train_run(validate_config(raw), tmp_path / "run", verbose=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["regions"] == {"heart": [1, 2, 3], "LV": [3]}
    assert list(metrics["per_class"]) == ["heart", "LV"]
    assert set(metrics["per_case"][0]["metrics"]) == {"heart", "LV"}
    assert "| heart |" in (run / "metrics.md").read_text()
    raw["eval"]["regions"] = {"bad": [4]}
    with pytest.raises(SSMISError, match=r"eval.regions.bad: expected foreground class ids in "
                                         r"1..3"):
        validate_config(raw)
