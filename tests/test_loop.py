"""A loop that behaves on a shared machine: thread choice, schedules that switch on, the run's
config.yaml with every method default."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ssmis.config import validate_config
from ssmis.data.datasets import EvalCase
from ssmis.engine import runlog, threads
from ssmis.engine.checkpoint import save_weights
from ssmis.engine.evaluate import evaluate_split
from ssmis.engine.run import _pictures, resume_run, train_run
from ssmis.errors import SSMISError
from ssmis.eval.report import class_color
from ssmis.methods import build_method
from ssmis.predict import predict_files
from tests.conftest import tiny_config, tiny_method_config

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- 8. threads


def test_cgroup_quota_v2_takes_the_smallest_limit_on_the_path(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "job" / "step").mkdir(parents=True)
    (tmp_path / "job" / "cpu.max").write_text("400000 100000\n")
    (tmp_path / "job" / "step" / "cpu.max").write_text("250000 100000\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("0::/job/step\n")
    assert threads.cgroup_cpu_limit(tmp_path, proc) == pytest.approx(2.5)
    proc.write_text("0::/\n")
    assert threads.cgroup_cpu_limit(tmp_path, proc) is None  # "max": no quota


def test_cgroup_quota_v1(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_limit(tmp_path, tmp_path / "none") == pytest.approx(1.5)
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_cpu_limit(tmp_path, tmp_path / "none") is None


def _stat_lines(busy: dict[int, tuple[int, int]]) -> str:
    """A /proc/stat text: per CPU (busy ticks, idle ticks) split into its columns, and the
    aggregate ``cpu`` line."""
    def line(name: str, b: int, i: int) -> str:
        # user nice system idle iowait irq softirq steal guest guest_nice
        return f"{name} {b - b // 4} 0 {b // 4} {i - i // 10} {i // 10} 0 0 0 0 0"
    rows = [line("cpu", sum(b for b, _ in busy.values()), sum(i for _, i in busy.values()))]
    rows += [line(f"cpu{c}", b, i) for c, (b, i) in sorted(busy.items())]
    return "\n".join(rows + ["intr 1 2 3", "ctxt 99"]) + "\n"


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """An 8-CPU machine whose affinity, cgroup quota, busy CPUs now and torch default are set by
    the test (no cgroup quota, idle, torch default 64 threads). ``state["busy"]`` maps a CPU to
    its busy share during the /proc/stat sample; ``state["load"]`` is a 1-minute load average
    that must not matter."""
    state = {"affinity": set(range(8)), "busy": {}, "load": 0.0, "quota": None}
    stat = tmp_path / "proc_stat"
    ticks = {c: (1000 * c, 5000) for c in range(8)}  # since boot: anything

    def sleep(seconds: float) -> None:  # 100 ticks per CPU pass during the sample
        assert seconds == threads.SAMPLE_S
        for c, (b, i) in ticks.items():
            share = state["busy"].get(c, 0.0)
            ticks[c] = (b + round(100 * share), i + round(100 * (1 - share)))
        stat.write_text(_stat_lines(ticks))

    def set_quota(cpus: float | None) -> None:
        text = "max 100000" if cpus is None else f"{int(cpus * 100000)} 100000"
        (tmp_path / "cpu.max").write_text(text + "\n")

    stat.write_text(_stat_lines(ticks))
    monkeypatch.setattr(threads, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(threads, "PROC_CGROUP", tmp_path / "no_such_file")
    monkeypatch.setattr(threads, "PROC_STAT", stat)
    monkeypatch.setattr(threads.time, "sleep", sleep)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: state["affinity"],
                        raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (state["load"], 0.0, 0.0))
    monkeypatch.setattr(threads.torch, "get_num_threads", lambda: 64)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    set_quota(None)
    state["set_quota"] = set_quota
    state["stat"] = stat
    return state


def test_threads_follow_affinity_quota_ranks_and_busy_cpus(machine, monkeypatch) -> None:
    assert threads.pick_threads().threads == 8
    machine["affinity"] = {0, 1, 2, 3}  # taskset / SLURM --cpus-per-task 4
    assert threads.pick_threads().threads == 4
    machine["set_quota"](2.5)  # docker --cpus 2.5: 3 CPUs at most, partly
    choice = threads.pick_threads()
    assert choice.threads == 3 and "3 usable CPUs" in choice.reason
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")  # torchrun: 3 processes share them
    assert threads.pick_threads().threads == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    machine["set_quota"](None)
    machine["affinity"] = set(range(8))
    machine["busy"] = {c: 0.95 for c in range(8)}  # the 8-CPU machine is busy: 0.4 idle
    choice = threads.pick_threads()
    assert choice.threads == 1 and "0.4 idle now (/proc/stat over 0.2 s)" in choice.reason
    machine["busy"] = {0: 1.0, 1: 1.0, 2: 0.5}  # 2.5 CPUs busy: 5.5 idle -> 6 (rounded)
    choice = threads.pick_threads()
    assert choice.threads == 6 and "5.5 idle now" in choice.reason


def test_threads_ignore_a_lagging_load_average(machine) -> None:
    """Right after a job ended, the 1-minute load still reads ~1 on an idle 2-core machine:
    the pick used it and took 1 thread (half speed). The CPUs idle now give 2."""
    machine["affinity"] = {0, 1}
    machine["load"] = 7.0  # 8 CPUs, load 7: the former rule left 1 thread
    choice = threads.pick_threads()
    assert choice.threads == 2 and "2.0 idle now" in choice.reason


def test_idle_cpus_count_the_affinity_mask_only(machine) -> None:
    machine["busy"] = {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}  # CPUs 0-3 busy, 4-7 idle
    assert threads.idle_cpus({0, 1, 2, 3}) == pytest.approx(0.0)
    assert threads.idle_cpus({4, 5}) == pytest.approx(2.0)
    assert threads.idle_cpus(None) == pytest.approx(4.0)  # the whole machine (cpu line)
    assert threads.idle_cpus({42}) == pytest.approx(4.0)  # a CPU the file lacks: the machine
    machine["affinity"] = {0, 1, 2, 3}
    assert threads.pick_threads().threads == 1


def test_no_proc_stat_leaves_the_count_to_the_usable_cpus(machine, tmp_path) -> None:
    machine["stat"].unlink()
    machine["load"] = 7.9
    choice = threads.pick_threads()
    assert choice.threads == 8 and "idle CPUs not measured" in choice.reason
    machine["stat"].write_text("cpu 1 2\n")  # malformed
    assert threads.idle_cpus(stat=machine["stat"], wait=lambda s: None) is None


def test_threads_never_raise_a_count_set_before(machine, monkeypatch) -> None:
    monkeypatch.setattr(threads.torch, "get_num_threads", lambda: 2)  # OMP_NUM_THREADS=2
    assert threads.pick_threads().threads == 2


def test_explicit_threads_win() -> None:
    choice = threads.apply_threads(1)
    assert choice.threads == 1 and torch.get_num_threads() == 1


# --------------------------------------------------------- 9. schedules as shares of the run


def test_shares_of_the_run_resolve_for_train_iterations() -> None:
    cfg = tiny_method_config("mean_teacher", {"consistency_rampup": "40%",
                                              "consistency_start": "5%"}, iterations=600)
    method = build_method(cfg)
    p = method.params
    assert p.consistency_rampup == pytest.approx(240.0) and p.rampup_iters_per_epoch == 1
    assert p.consistency_start == 30
    assert method.consistency_weight(240) == pytest.approx(0.1)
    assert method.consistency_weight(120) == pytest.approx(0.1 * 0.28650479686)  # e^{-1.25}
    assert method.declared_params.consistency_rampup == "40%"  # kept for config.yaml
    assert method.schedule_warnings() == []
    bcp = build_method(tiny_method_config("bcp", {"pretrain_iterations": "25%"},
                                          iterations=600))
    assert [ph.iterations for ph in bcp.phases()] == [150, 450]


def test_a_share_above_100_percent_is_a_one_line_error() -> None:
    with pytest.raises(SSMISError, match=r"method.params.pretrain_iterations: expected a "
                                         r"percentage .* \(got '120%'\)"):
        from ssmis.experiment import check_method

        check_method(tiny_method_config("bcp", {"pretrain_iterations": "120%"}), "x.yaml")


def test_a_ramp_that_never_switches_on_is_reported() -> None:
    # SSL4MIS's recipe (off for 1,000 iterations, ramp over 200 x 150) in a 600-iteration run
    cfg = tiny_method_config("mean_teacher", {"consistency_start": 1000}, iterations=600)
    (line,) = build_method(cfg).schedule_warnings()
    assert "mean_teacher's consistency weight stays at most 0 " in line
    assert "method.params.consistency_rampup / method.params.consistency_start" in line
    # the default ramp alone: on from the start, but 30,000 iterations long
    cfg = tiny_method_config("mean_teacher", {}, iterations=600)
    (line,) = build_method(cfg).schedule_warnings()
    assert "(0.8% of its maximum 0.1)" in line
    # CVBM: the ramp counts from self-training's start
    cvbm = tiny_method_config("cvbm", {"pretrain_iterations": 500, "consistency_rampup": 40},
                              iterations=600)
    assert len(build_method(cvbm).schedule_warnings()) == 1
    cvbm = tiny_method_config("cvbm", {"pretrain_iterations": "25%",
                                       "consistency_rampup": "50%"}, iterations=600)
    assert build_method(cvbm).schedule_warnings() == []


# ------------------------------------------------------------ one run: log and config.yaml


@pytest.fixture(scope="module")
def mt_run(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("loop")
    raw = tiny_config(phantom_root, out, iterations=4, val_every=4, unlabeled_batch_size=2)
    raw["method"] = {"name": "mean_teacher", "params": {"consistency_start": 1000,
                                                        "consistency_rampup": "50%"}}
    saved = torch.get_num_threads()
    try:
        return train_run(validate_config(raw), out / "run", evaluate=False, verbose=False)
    finally:
        torch.set_num_threads(saved)


def test_run_log_names_the_threads_and_the_schedule(mt_run: Path) -> None:
    log = (mt_run / "train.log").read_text()
    assert "torch threads: " in log and "usable CPU" in log
    assert "consistency_rampup 50% = 2 iterations" in log
    assert "INFO phases: train 0..3 (4 it, 100% of 4)\n" in log  # among the first lines
    assert "WARNING warning: mean_teacher's consistency weight stays at most 0 " in log
    summary = json.loads((mt_run / "train_summary.json").read_text())
    assert summary["threads"] >= 1


def test_config_yaml_holds_every_method_default(mt_run: Path) -> None:
    params = yaml.safe_load((mt_run / "config.yaml").read_text())["method"]["params"]
    assert params["consistency_start"] == 1000 and params["consistency_rampup"] == "50%"
    assert params["ema_decay"] == 0.99 and params["noise_std"] == 0.1
    assert params["rampup_iters_per_epoch"] == 150 and params["dice_include_background"] is True


# ------------------------------------------------------------------------------ 10. progress


def test_training_progress_lines_carry_an_eta(caplog: pytest.LogCaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(float(t) for t in range(0, 200, 2))  # two seconds per call
    monkeypatch.setattr(runlog.time, "perf_counter", lambda: next(clock))
    progress = runlog.Progress(total=40, initial=0, desc="t")
    with caplog.at_level(logging.INFO, logger=runlog.LOGGER_NAME):
        for step in range(1, 11):
            progress.update(step, loss=0.5, lr=0.1, fresh=True)
    progress.close()
    # 2 iterations in 4 s: 0.5 it/s, 38 iterations to go: 76 s
    assert caplog.records[0].getMessage().endswith("0.50 it/s  ETA 0:01:16")
    assert runlog.format_duration(90061) == "1 day 1:01:01"


def test_progress_lines_reach_the_log_file_under_a_terminal_bar(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    runlog.setup_logger(tmp_path / "train.log", verbose=True)
    progress = runlog.Progress(total=2, initial=0, desc="t")
    for step in (1, 2):
        progress.update(step, loss=0.5, lr=0.1, fresh=True)
    progress.close()
    runlog.setup_logger(None, verbose=False)
    assert "iter 2/2  loss 0.5000" in (tmp_path / "train.log").read_text()
    assert "iter 2/2  loss" not in capsys.readouterr().err  # the bar shows it there


def _cases(domains: list[str], size: int = 32) -> list[EvalCase]:
    rng = np.random.default_rng(0)
    out = []
    for i, domain in enumerate(domains):
        label = np.zeros((size, size), np.int64)
        label[8:20, 8:20] = 1 + i % 3
        out.append(EvalCase(f"{domain}/img{i}", rng.normal(size=(size, size)).astype(np.float32),
                            label, None, domain))
    return out


def test_test_evaluation_reports_progress_and_keeps_cases_of_every_domain(
        caplog: pytest.LogCaptureFixture) -> None:
    cfg = tiny_method_config("supervised", {})
    method = build_method(cfg)
    cases = _cases(["A", "A", "A", "A", "B", "B"])
    with caplog.at_level(logging.INFO, logger=runlog.LOGGER_NAME):
        result, kept = evaluate_split(method, iter(cases), cfg, torch.device("cpu"),
                                      split="test", checkpoint="best", iteration=4,
                                      keep_predictions=3, total=len(cases))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "test evaluation: 6 cases"
    assert lines[-1].startswith("test evaluation: 6/6 cases  ") and "ETA 0:00:00" in lines[-1]
    assert len(lines) == 7  # the start, then each case (6 cases: every ~10 % is each one)
    # 3 pictures from 2 domains: A, B, then A again (not the first three, all from A)
    assert [c.case for c, _ in kept] == ["A/img0", "B/img4", "A/img1"]
    assert result["num_cases"] == 6


def test_overlays_show_rgb_images_in_colour(tmp_path: Path) -> None:
    cfg = tiny_method_config("supervised", {})
    rgb = np.zeros((3, 32, 32), np.float32)
    rgb[0, :, :16] = 1.0  # left half red, right half green
    rgb[1, :, 16:] = 1.0
    label = np.zeros((32, 32), np.int64)
    case = EvalCase("siteA/img0", rgb, label, None, "siteA")
    _pictures(tmp_path, cfg, [(case, label)], "test")
    png = np.asarray(Image.open(tmp_path / "overlays_test.png").convert("RGB")).astype(int)
    first_panel = png[:, : png.shape[1] // 4]
    red = (first_panel[..., 0] > 200) & (first_panel[..., 1] < 60) & (first_panel[..., 2] < 60)
    green = (first_panel[..., 1] > 200) & (first_panel[..., 0] < 60)
    assert red.sum() > 1000 and green.sum() > 1000


def test_predict_overlay_on_nifti_writes_slice_pngs(tmp_path: Path) -> None:
    from tests.test_owndata import make_nifti, nifti_config

    root = make_nifti(tmp_path / "nifti")
    raw = nifti_config(root, tmp_path / "runs", patch_size=[16, 16], slice_axis=2)
    raw["model"] = {"name": "unet2d", "options": {"widths": [4, 4, 8, 8, 8]}}
    raw["eval"].pop("stride")
    cfg = validate_config(raw)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    method = build_method(cfg)
    with torch.no_grad():  # a model that calls everything above the mean foreground
        last = [m for m in method.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 1.0]))
    save_weights(run / "checkpoints" / "best.safetensors", method.state_dict(),
                 {"step": "2", "method": "supervised", "model": "unet2d"})
    src = root / "imagesTs" / "test00_0000.nii.gz"
    out = tmp_path / "pred"
    written = predict_files(run, [src], out, overlay=True, progress=False, threads=1)
    pngs = sorted(p.name for p in written if p.suffix == ".png")
    # 12 slices along axis 2, all foreground: slices at 1/4, 2/4, 3/4 of them
    assert pngs == ["test00_overlay_slice3.png", "test00_overlay_slice6.png",
                    "test00_overlay_slice9.png"]
    picture = np.asarray(Image.open(out / pngs[0]))
    assert picture.shape == (20, 24, 3)  # rotated: the first array axis runs left to right
    grey_half = picture.astype(float) - 0.5 * np.asarray(class_color(1)) * 255
    assert np.ptp(grey_half, axis=-1).max() <= 2  # 50 % grey image + 50 % class-1 blue
    assert (picture[..., 2] > picture[..., 0] + 50).all()
    assert torch.get_num_threads() == 1
    (out / "test00.nii.gz").unlink()  # the slice PNGs alone are also never overwritten
    with pytest.raises(SSMISError, match=r"test00_overlay_slice3.png: exists \(use --overwrite"):
        predict_files(run, [src], tmp_path / "pred", overlay=True, progress=False)


def test_a_resumed_run_keeps_the_thread_count_it_was_saved_with(
        phantom_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    picks = iter([threads.ThreadChoice(1, "first start"), threads.ThreadChoice(2, "resume")])
    monkeypatch.setattr(threads, "pick_threads", lambda: next(picks))
    saved = torch.get_num_threads()
    try:
        cfg = validate_config(tiny_config(phantom_root, tmp_path, iterations=2, val_every=2))
        run = train_run(cfg, tmp_path / "run", evaluate=False, verbose=False)
        resume_run(run, ["train.iterations=4"], evaluate=False, verbose=False)
    finally:
        torch.set_num_threads(saved)
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["iterations"] == 4 and summary["threads"] == 1
    assert "torch threads: 1 (the count the run was saved with" in (run / "train.log").read_text()
