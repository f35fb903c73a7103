"""``ssmis compare``: several runs -> one row per experiment, mean ± sample std over seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ssmis.cli import main
from ssmis.errors import SSMISError
from ssmis.eval.compare import compare_runs, comparison_rows, load_run_result


def _stat(mean: float | None) -> dict:
    return {"mean": mean, "std": 0.0, "n": 1, "undefined": 0}


def _run(root: Path, name: str, method: str, seed: int, domains: dict[str, float] | None,
         dice: float = 0.5, folder: str = "") -> Path:
    run = root / (folder or f"{name}-{seed}")
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"name": name, "seed": seed}))
    metrics = {"split": "test", "unit": "voxel", "hd95_mode": "monai", "dataset": "images",
               "method": method, "seed": seed, "checkpoint": "best", "iteration": 100 + seed,
               "per_class": {"lesion": {"dice": _stat(dice)}},
               "mean": {m: _stat(dice if m in ("dice", "jaccard") else 10.0)
                        for m in ("dice", "jaccard", "hd95", "asd")}}
    if domains is not None:
        metrics["per_domain"] = {d: {"dice": _stat(v), "jaccard": _stat(v / 2),
                                     "hd95": _stat(20.0 * v), "asd": _stat(None)}
                                 for d, v in domains.items()}
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_seeds_are_grouped_and_domains_averaged_unweighted(tmp_path: Path) -> None:
    runs = [_run(tmp_path, "busi_sup", "supervised", s, {"benign": b, "malignant": m})
            for s, (b, m) in enumerate([(0.6, 0.2), (0.8, 0.4)])]
    runs.append(_run(tmp_path, "busi_bcp", "bcp", 0, {"benign": 0.5, "malignant": 0.5}))
    header, rows = comparison_rows([load_run_result(r)
                                    for r in runs])
    assert header == ["Method", "Runs", "benign Dice (%)", "malignant Dice (%)", "mean Dice (%)",
                      "mean Jaccard (%)", "mean HD95 (voxel, monai)", "mean ASD (voxel)",
                      "n", "HD95/ASD undefined", "Checkpoint (iterations)"]
    # supervised: benign 70 ± 14.14 (sample std of 60, 80); mean Dice per run = 40 and 60
    assert rows[0] == ["supervised", "2", "70.00 ± 14.14", "30.00 ± 14.14", "50.00 ± 14.14",
                       "25.00 ± 7.07", "10.00 ± 2.83", "n/a", "-", "-", "best (100, 101)"]
    assert rows[1][:3] == ["bcp", "1", "50.00"]


def test_same_method_two_configs_and_cli(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    a = _run(tmp_path, "acdc_bcp", "bcp", 1, None, dice=0.7)
    b = _run(tmp_path, "acdc_bcp_long", "bcp", 1, None, dice=0.8)
    c = _run(tmp_path, "acdc_bcp_long", "bcp", 1, None, dice=0.9, folder="again")
    out = tmp_path / "table.md"
    assert main(["compare", str(a), str(b), str(c), "--markdown", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| bcp (acdc_bcp) | 1 | 70.00 |" in text
    assert "| bcp (acdc_bcp_long) | 2 | 85.00 ± 7.07 |" in text
    assert "same seed appears twice in acdc_bcp_long" in text
    assert out.read_text() == text


def test_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["compare", str(empty)]) == 2
    assert "compare: none of the 1 run folder(s) has metrics.json (unfinished runs? `ssmis " \
        "evaluate RUN_DIR` writes it)" in capsys.readouterr().err
    a = _run(tmp_path, "x", "supervised", 1, {"A": 0.5})
    b = _run(tmp_path, "y", "supervised", 1, None)
    with pytest.raises(SSMISError, match="some runs have per-domain results") as err:
        compare_runs([a, b])
    # `ssmis compare runs/*/*` with mixed settings: the line names a run of each kind
    assert f"({b} has none, {a} has)" in str(err.value) and "\n" not in str(err.value)
    c = _run(tmp_path, "z", "supervised", 2, None)
    meta = json.loads((c / "metrics.json").read_text())
    meta["unit"] = "mm"
    (c / "metrics.json").write_text(json.dumps(meta))
    with pytest.raises(SSMISError, match="unit 'mm' differs"):
        compare_runs([b, c])
    meta["unit"], meta["hd95_mode"] = "voxel", "medpy"
    (c / "metrics.json").write_text(json.dumps(meta))
    with pytest.raises(SSMISError, match="hd95_mode 'medpy' differs from 'monai'"):
        compare_runs([b, c])


def test_a_checkpoint_from_the_pretraining_phase_is_named_so() -> None:
    """A two-phase result selected in pre-training reads 'best (200 pretrain)' in compare and
    '(pretrain phase)' in metrics.md, not a plain 'best (200)'."""
    from ssmis.engine.run import phase_of
    from ssmis.eval.compare import RunResult, _checkpoints
    from ssmis.eval.report import metrics_table_markdown
    from ssmis.methods.base import Phase

    phases = [Phase("pretrain", 200), Phase("self_train", 800)]
    assert [phase_of(phases, i) for i in (1, 200, 201, 1000)] == [
        "pretrain", "pretrain", "self_train", "self_train"]
    assert phase_of([Phase("train", 1000)], 200) is None
    runs = [RunResult(Path("a"), "bcp", "bcp", 1, {"checkpoint": "best", "iteration": 200,
                                                   "phase": "pretrain"}),
            RunResult(Path("b"), "bcp", "bcp", 2, {"checkpoint": "best", "iteration": 900,
                                                   "phase": "self_train"})]
    assert _checkpoints(runs) == "best (200 pretrain, 900 self_train)"
    table = metrics_table_markdown({"checkpoint": "best", "iteration": 200, "phase": "pretrain",
                                    "per_class": {}, "mean": {}})
    assert "iteration: 200 (pretrain phase)" in table
