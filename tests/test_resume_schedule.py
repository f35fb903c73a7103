"""``ssmis train --resume RUN key=value``: what each override does to the run (README, Resume):
the poly schedule continues from the lr it reached, shares of the run keep their value, fields
that would make another run are refused, and the run folder keeps every session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ssmis.config import validate_config
from ssmis.engine.run import resume_run, train_run
from ssmis.engine.schedule import Restart, phase_lr
from ssmis.errors import SSMISError
from tests.conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

POLY = {"kind": "poly", "power": 0.9}


def _stopped_at_2(root: Path, tmp_path: Path, **train) -> Path:
    """A 4-iteration run whose newest checkpoint is iteration 2 (as if stopped there)."""
    cfg = validate_config(tiny_config(root, tmp_path, iterations=4, val_every=2, **train))
    run = train_run(cfg, tmp_path / "run", evaluate=False, verbose=False)
    for path in (run / "checkpoints").glob("last-00000004*"):
        path.unlink()
    return run


def _lrs(run: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run / "scalars.jsonl").read_text().splitlines()]
    return {r["iter"]: r["lr"] for r in rows}


def test_poly_phase_lr_continues_from_a_restart() -> None:
    from ssmis.config import ScheduleConfig

    poly = ScheduleConfig(kind="poly")
    assert phase_lr(0.01, 3, 0, 8, poly) == pytest.approx(0.01 * (5 / 8) ** 0.9)
    r = Restart(step=2, lr=0.004, end=8)
    assert phase_lr(0.01, 2, 0, 8, poly, [r]) == pytest.approx(0.004)
    assert phase_lr(0.01, 5, 0, 8, poly, [r]) == pytest.approx(0.004 * 0.5 ** 0.9)
    assert phase_lr(0.01, 1, 0, 8, poly, [r]) == pytest.approx(0.01 * (7 / 8) ** 0.9)
    assert phase_lr(0.01, 5, 4, 4, poly, [r]) == pytest.approx(0.01 * 0.75 ** 0.9)  # other phase
    later = Restart(step=2, lr=0.002, end=8)  # the same step resumed again: the last counts
    assert phase_lr(0.01, 2, 0, 8, poly, [r, later]) == pytest.approx(0.002)


def test_extending_a_poly_run_keeps_the_lr_continuous_and_the_history(
        phantom_root: Path, tmp_path: Path) -> None:
    run = _stopped_at_2(phantom_root, tmp_path, schedule=POLY)
    resume_run(run, ["train.iterations=8"], evaluate=False, verbose=False)
    reached = 0.01 * (1 - 2 / 4) ** 0.9  # the lr of iteration 3 (step 2) in the 4-iteration run
    lrs = _lrs(run)
    assert lrs[2] == pytest.approx(0.01 * (1 - 1 / 4) ** 0.9)  # before the resume: unchanged
    assert lrs[3] == pytest.approx(reached)  # not 0.01 * (1 - 2/8) ** 0.9 (the jump)
    for it in range(3, 9):
        assert lrs[it] == pytest.approx(reached * (1 - (it - 3) / 6) ** 0.9)
    segments = json.loads((run / "segments.json").read_text())["segments"]
    assert [(s["start"], s["end"], s["overrides"]) for s in segments] == [
        (0, 4, []), (2, 8, ["train.iterations=8"])]
    assert segments[1]["changes"] == {"train.iterations": [4, 8]}
    assert segments[1]["lr_restart"] == {"step": 2, "lr": pytest.approx(reached), "end": 8}
    assert segments[1]["lr_before"] == pytest.approx(reached) == segments[1]["lr_after"]
    text = (run / "config.yaml").read_text()
    assert text.startswith("# resumed with overrides at iteration(s) 2: trained in segments")
    assert yaml.safe_load(text)["train"]["iterations"] == 8
    log = (run / "train.log").read_text()
    assert (f"warning: resumed at iteration 2 with train.iterations 4 -> 8: lr {reached:.6g} -> "
            f"{reached:.6g} at the resume point (poly continued from") in log
    # a second resume without overrides keeps the restart (finished: nothing to do)
    resume_run(run, [], evaluate=False, verbose=False)
    assert len(json.loads((run / "segments.json").read_text())["segments"]) == 3


def test_a_new_lr_at_resume_scales_the_reached_lr_with_a_warning(
        phantom_root: Path, tmp_path: Path) -> None:
    run = _stopped_at_2(phantom_root, tmp_path, schedule=POLY)
    resume_run(run, ["train.lr=0.02"], evaluate=False, verbose=False)
    reached = 0.01 * 0.5 ** 0.9
    lrs = _lrs(run)
    assert lrs[3] == pytest.approx(2 * reached) and lrs[4] == pytest.approx(0.02 * 0.25 ** 0.9)
    assert (f"train.lr 0.01 -> 0.02: lr {reached:.6g} -> {2 * reached:.6g}"
            in (run / "train.log").read_text())


def test_extending_a_finished_poly_run_is_refused(phantom_root: Path, tmp_path: Path) -> None:
    cfg = validate_config(tiny_config(phantom_root, tmp_path, iterations=2, val_every=2,
                                      schedule=POLY))
    run = train_run(cfg, tmp_path / "run", evaluate=False, verbose=False)
    before = (run / "config.yaml").read_bytes()
    with pytest.raises(SSMISError, match=r"^train.iterations: the poly schedule of .* reached "
                                         r"lr 0 at iteration 2"):
        resume_run(run, ["train.iterations=4"], evaluate=False, verbose=False)
    assert (run / "config.yaml").read_bytes() == before


@pytest.mark.parametrize("override, field", [
    ("train.batch_size=4", "train.batch_size"), ("seed=3", "seed"),
    ("method.name=mean_teacher", "method.name"), ("model.options.widths=[4,4,8,8,8]",
                                                  "model.options.widths"),
    ("data.labeled_patients=3", "data.labeled_patients"),
    ("train.schedule.kind=poly", "train.schedule.kind"), ("eval.selection=last_phase",
                                                         "eval.selection")])
def test_overrides_that_make_another_run_are_refused_before_anything_is_written(
        phantom_root: Path, tmp_path: Path, override: str, field: str) -> None:
    cfg = validate_config(tiny_config(phantom_root, tmp_path, iterations=2, val_every=2))
    run = train_run(cfg, tmp_path / "run", evaluate=False, verbose=False)
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(SSMISError, match=rf"^{field}: cannot change when resuming"):
        resume_run(run, ["train.iterations=4", override], evaluate=False, verbose=False)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files


def test_shares_of_the_run_keep_their_value_when_it_is_extended(
        phantom_root: Path, tmp_path: Path) -> None:
    raw = tiny_config(phantom_root, tmp_path, iterations=4, val_every=2, schedule=POLY,
                      unlabeled_batch_size=2)
    raw["method"] = {"name": "bcp", "params": {"pretrain_iterations": "50%"}}
    run = train_run(validate_config(raw), tmp_path / "run", evaluate=False, verbose=False)
    for path in (run / "checkpoints").glob("last-00000004*"):
        path.unlink()
    resume_run(run, ["train.iterations=8"], evaluate=False, verbose=False)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["method"]["params"]["pretrain_iterations"] == 2  # not 50 % of 8 = 4
    rows = [json.loads(x) for x in (run / "scalars.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["pretrain"] * 2 + ["self_train"] * 6
    assert rows[2]["lr"] == pytest.approx(0.01)  # iteration 3 starts self-training: full lr
    assert rows[7]["lr"] == pytest.approx(0.01 * (1 / 6) ** 0.9)  # poly over its 6 iterations
    segments = json.loads((run / "segments.json").read_text())["segments"]
    assert segments[1]["frozen"] == {"method.params.pretrain_iterations": ["50%", 2]}


def test_extending_a_run_keeps_a_published_default_pretraining(tmp_path: Path) -> None:
    """BCP with pretrain_iterations unset (the published share of the run): extending the run
    at --resume keeps the pre-training length it trained with instead of refusing or moving
    the phase boundary."""
    from ssmis.data.layouts import get_layout
    from ssmis.methods import build_method

    data = get_layout("images").write_example(tmp_path / "d")
    cfg = validate_config({
        "name": "b", "output_dir": str(tmp_path / "runs"), "seed": 1, "data": data,
        "model": {"name": "unet2d", "options": {"widths": [4, 4, 8, 8, 8]}},
        "method": {"name": "bcp"},
        "train": {"iterations": 8, "batch_size": 2, "unlabeled_batch_size": 2, "val_every": 4,
                  "device": "cpu", "threads": 1},
        "eval": {"unit": "voxel", "overlay_cases": 0}})
    assert build_method(cfg).phases()[0].iterations == 2
    run = train_run(cfg, run_dir=tmp_path / "run", verbose=False, evaluate=False)
    resume_run(run, ["train.iterations=16"], evaluate=False, verbose=False)
    segments = json.loads((run / "segments.json").read_text())["segments"]
    assert segments[-1]["frozen"] == {"method.params.pretrain_iterations": [None, 2]}
    assert yaml.safe_load((run / "config.yaml").read_text())["method"]["params"][
        "pretrain_iterations"] == 2
