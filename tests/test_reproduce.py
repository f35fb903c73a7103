"""Published-results registry, sweeps and `ssmis reproduce` (end to end on phantoms)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ssmis.cli import main
from ssmis.errors import SSMISError
from ssmis.reproduce.published import METRIC_KEYS, find_table, load_registry, load_table
from tests.conftest import REPO

SHARED_PUBLISHED = REPO.parent / "shared" / "published"


# ------------------------------------------------------------------------------ registry

def test_registry_files_validate_and_runnable_tables_have_configs() -> None:
    tables = load_registry()
    ids = [t.id for t in tables]
    assert {"cvbm-acdc", "cvbm-la", "cvbm-pancreas", "synfoc-prostate", "alhvr-acdc"} <= set(ids)
    for t in tables:
        assert len(t.source) > 20 and t.paper
        if t.runnable:
            folder = REPO / "configs" / str(t.config_dir)
            assert folder.is_dir(), t.id
            # at least one of the table's ssmis methods has its published config there
            assert any((folder / f"{m}.yaml").is_file() for m in t.ssmis_methods()), t.id
        else:
            assert t.not_runnable_reason
    pancreas = find_table("cvbm-pancreas")
    assert pancreas.runnable and (pancreas.layout, pancreas.config_dir) == ("pancreas_h5",
                                                                            "pancreas")
    assert pancreas.ssmis_methods() == ["supervised", "uamt", "bcp", "cvbm"]
    abdomen = find_table("alhvr-abdomenct1k")
    assert abdomen.runnable and abdomen.labeled_key == "data.labeled_fraction"
    assert abdomen.setting("0.05").rows[0].dice == 84.75
    acdc = find_table("cvbm-acdc")
    assert acdc.hd95_mode == "medpy" and acdc.metrics["hd95"].unit == "voxel"
    cvbm3 = next(r for r in acdc.setting(3).rows if r.ssmis == "cvbm")
    assert (cvbm3.dice, cvbm3.jaccard, cvbm3.hd95, cvbm3.asd) == (87.85, 79.03, 1.82, 0.58)


@pytest.mark.skipif(not SHARED_PUBLISHED.is_dir(), reason="shared/published not present")
def test_registry_numbers_equal_the_transcribed_csv() -> None:
    """Every number of the shared transcriptions is in the registry, unchanged."""
    def rows(name: str) -> list[dict[str, str]]:
        lines = (SHARED_PUBLISHED / name).read_text().splitlines()
        return list(csv.DictReader(ln for ln in lines if not ln.startswith("#")))

    slug = {"I": "cvbm-la", "II": "cvbm-pancreas", "III": "cvbm-acdc"}
    source = rows("cvbm_tip2025.csv")
    for r in source:
        row = next(x for x in find_table(slug[r["table"]]).setting(r["labeled"]).rows
                   if x.method == r["method"])
        assert [row.value(k) for k in METRIC_KEYS] == [float(r[k]) for k in METRIC_KEYS]
        assert row.unlabeled == int(r["unlabeled"])
    assert sum(len(s.rows) for k in slug.values() for s in find_table(k).settings) == len(source)
    prostate = find_table("synfoc-prostate").setting(20)
    synfoc = rows("synfoc_cvpr2025.csv")
    assert len(prostate.rows) == len(synfoc)
    for r, row in zip(synfoc, prostate.rows, strict=True):
        assert row.method == r["method"]
        assert [row.dice, row.jaccard, row.hd95, row.asd] == [
            float(r[f"{k}_avg"]) for k in METRIC_KEYS]
        assert row.per_domain_dice == {d: float(r[d]) for d in row.per_domain_dice or {}}


def test_bad_table_file_is_one_line_naming_file_and_field(tmp_path: Path) -> None:
    good = yaml.safe_load(_table_yaml())
    for change, expected in [
        ({"source": None}, "source"),
        ({"runnable": False}, "not_runnable_reason: required when runnable is false"),
        ({"schema": "other"}, "schema: expected 'ssmis-published-1'"),
    ]:
        path = tmp_path / "t.yaml"
        path.write_text(yaml.safe_dump({**good, **change}))
        with pytest.raises(SSMISError) as err:
            load_table(path)
        assert str(err.value).startswith(f"{path}: ") and expected in str(err.value)
    bad = dict(good)
    bad["settings"] = [{"labeled": 1, "rows": [{"method": "x", "dice": 140.0}]}]
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(SSMISError, match=r"settings\.0\.rows\.0\.dice"):
        load_table(path)


def test_reproduce_list_and_unrunnable_table(capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    assert "cvbm-acdc" in out and "not transcribed" in out
    assert "runnable (pancreas_h5, configs/pancreas)" in out
    assert "runnable (abdomenct1k, configs/abdomenct1k)" in out
    table = yaml.safe_load(_table_yaml())
    table.update(runnable=False, config_dir=None, labeled_key=None,
                 not_runnable_reason="no layout for this dataset")
    path = tmp_path / "unrunnable.yaml"
    path.write_text(yaml.safe_dump(table))
    assert main(["reproduce", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("ssmis: error: TABLE phantom-test: not runnable: no layout for this "
                   "dataset")
    assert main(["reproduce", "nope"]) == 2
    assert "not in the registry" in capsys.readouterr().err


# ------------------------------------------------------------------------------ budgets

def test_budget_scales_iterations_and_iteration_counted_parameters() -> None:
    from ssmis.reproduce.runner import budget_for

    acdc = REPO / "configs" / "acdc"
    short = budget_for(acdc, "cvbm", "short")
    assert short.config.name == "cvbm.yaml" and short.iterations == 4000
    assert "method.params.pretrain_iterations=1000" in short.overrides
    assert "method.params.rampup_iters_per_epoch=15" in short.overrides
    assert "train.val_every=80" in short.overrides  # at most 50 validations per run
    cpu = budget_for(acdc, "cvbm", "cpu")
    assert cpu.config.name == "cvbm_cpu.yaml" and cpu.overrides == []
    assert (cpu.paper_iterations, cpu.paper_patch) == (40000, [256, 256])
    tiny = budget_for(acdc, "cvbm", "cpu", iterations=50)
    assert "train.iterations=50" in tiny.overrides
    # the CPU config gives its pre-training as a share ("20%"): it scales with the run (10 of
    # 50) without an override
    assert not any(o.startswith("method.params.pretrain_iterations") for o in tiny.overrides)
    from ssmis.config import apply_overrides, read_yaml, validate_config
    from ssmis.methods import get_method

    raw = apply_overrides(read_yaml(tiny.config), tiny.overrides)
    cfg = validate_config(raw)
    params = get_method("cvbm").parse_params(cfg.method.params)
    from ssmis.ramps import resolve_run_shares

    assert resolve_run_shares(params, cfg.train.iterations).pretrain_iterations == 10
    with pytest.raises(SSMISError, match="no config for method 'synfoc'"):
        budget_for(acdc, "synfoc", "cpu")
    # SSL4MIS's Mean Teacher keeps its consistency off for 1,000 of 30,000 iterations: scaled
    # with the run (a 600-iteration run would otherwise never switch it on)
    mt = budget_for(acdc, "mean_teacher", "short", iterations=600)
    assert "method.params.consistency_start=20" in mt.overrides


def test_protocol_overrides_are_one_list_and_guard_selection() -> None:
    from ssmis.config import EvalConfig
    from ssmis.reproduce.protocols import PROTOCOLS, protocol_overrides

    assert PROTOCOLS["paper"].overrides == ("eval.unit=voxel", "eval.hd95_mode=medpy",
                                            "eval.empty_rule=medpy", "eval.selection=last_phase")
    paper = protocol_overrides("paper")
    assert ("eval.selection=last_phase" in paper) == ("selection" in EvalConfig.model_fields)
    assert paper[:3] == ["eval.unit=voxel", "eval.hd95_mode=medpy", "eval.empty_rule=medpy"]


def test_checkpoint_selection_rules(tmp_path: Path) -> None:
    from ssmis.reproduce.protocols import choose_checkpoint

    (tmp_path / "checkpoints").mkdir()
    for stem in ("best_pretrain", "best_self_train", "last"):
        (tmp_path / "checkpoints" / f"{stem}.safetensors").write_bytes(b"")
    rows = [{"iter": 2, "phase": "pretrain", "val_dice": 0.8},
            {"iter": 4, "phase": "self_train", "val_dice": 0.6},
            {"iter": 6, "phase": "self_train", "val_dice": 0.7}]
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"it')
    assert choose_checkpoint(tmp_path, "best_overall").stem == "best_pretrain"
    assert choose_checkpoint(tmp_path, "last_phase").stem == "best_self_train"


# ------------------------------------------------------------------------------ sweep

def _write_configs(folder: Path, root: Path, iterations: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    common = {"seed": 5, "data": {"layout": "acdc_h5", "root": str(root), "num_classes": 4,
                                  "class_names": {1: "RV", 2: "Myo", 3: "LV"},
                                  "labeled_patients": 1, "patch_size": [32, 32],
                                  "cache": True},
              "model": {"name": "unet2d", "options": {"widths": [4, 8, 16, 32, 64]}},
              "eval": {"unit": "voxel", "overlay_cases": 0}}
    train = {"iterations": iterations, "batch_size": 2, "lr": 0.01, "val_every": 2,
             "log_every": 1, "threads": 1}
    (folder / "supervised_cpu.yaml").write_text(yaml.safe_dump(
        {"name": "ph_sup", **common, "method": {"name": "supervised"}, "train": train}))
    (folder / "mean_teacher_cpu.yaml").write_text(yaml.safe_dump(
        {"name": "ph_mt", **common,
         "method": {"name": "mean_teacher", "params": {"consistency_rampup": 10,
                                                       "rampup_iters_per_epoch": 1}},
         "train": {**train, "unlabeled_batch_size": 2}}))
    return folder


def test_sweep_dry_run_and_slurm_script(phantom_root: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    configs = _write_configs(tmp_path / "configs" / "ph", phantom_root, 4)
    out = tmp_path / "sw"
    args = ["sweep", str(configs / "supervised_cpu.yaml"), "train.lr=0.02", "--methods",
            "supervised", "mean_teacher", "--seeds", "2", "--labeled", "1", "2", "--out",
            str(out)]
    assert main([*args, "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8 and all(ln.startswith("fresh") for ln in lines)
    assert any("ph_mt-l2/mean_teacher/seed6" in ln for ln in lines)
    assert not out.exists()  # a dry run writes nothing
    assert main([*args, "--emit", "slurm"]) == 0
    script = (out / "sweep.slurm").read_text()
    assert "#SBATCH --array=0-7" in script and "run-job" in script
    spec = json.loads((out / "sweep_jobs.json").read_text())
    assert all("train.lr=0.02" in j["overrides"] for j in spec["jobs"])
    assert main(["sweep", str(configs / "supervised_cpu.yaml"), "--methods", "cvbm",
                 "--out", str(out)]) == 2
    assert "no config for it beside" in capsys.readouterr().err


def _table_yaml(config_dir: str = "ph") -> str:
    return f"""schema: ssmis-published-1
id: phantom-test
paper: "Test fixture (not a publication)"
table: "T1"
source: "written for the ssmis tests; these numbers are not published anywhere"
dataset: phantoms
layout: acdc_h5
runnable: true
config_dir: {config_dir}
labeled_key: data.labeled_patients
labeled_unit: patients
metrics:
  dice: {{unit: "%", definition: "test"}}
  jaccard: {{unit: "%", definition: "test"}}
  hd95: {{unit: voxel, hd95_mode: medpy, definition: "test"}}
  asd: {{unit: voxel, definition: "test"}}
empty_rule: medpy
selection: "test"
settings:
  - labeled: 1
    unlabeled: 3
    rows:
      - {{method: "supervised (lower bound)", ssmis: supervised, dice: 50.0, jaccard: 40.0,
         hd95: 10.0, asd: 3.0}}
      - {{method: "MT", ssmis: mean_teacher, dice: 60.0, jaccard: 50.0, hd95: 8.0, asd: 2.0}}
      - {{method: "Other", ssmis: null, dice: 70.0, jaccard: 60.0, hd95: 6.0, asd: 1.0}}
"""


@pytest.mark.slow
def test_reproduce_end_to_end_kill_resume_rerun(phantom_root: Path, tmp_path: Path) -> None:
    """2 methods x 2 seeds through `ssmis reproduce --budget cpu`: a sweep killed after the
    first checkpoint resumes, then every run finishes, a rerun does nothing, and the report
    holds every row with mean ± std and the paper column."""
    _write_configs(tmp_path / "configs" / "ph", phantom_root, 12)
    table = tmp_path / "table.yaml"
    table.write_text(_table_yaml())
    out = tmp_path / "rep"
    cmd = [sys.executable, "-m", "ssmis", "reproduce", str(table), "--budget", "cpu",
           "--seeds", "2", "--configs", str(tmp_path / "configs"), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    first = out / "runs" / "labeled-1" / "supervised" / "seed5"
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not list((first / "checkpoints").glob("last-*.json")):
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.time() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its run die mid-training
    proc.wait()
    assert not (first / "protocol_honest.json").exists()

    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "labeled-1/supervised/seed5: Dice" in done.stdout and "(resumed)" in done.stdout
    assert "ETA" in done.stdout
    log = (first / "train.log").read_text()
    assert "(from 0)" in log and any(f"(from {k})" in log for k in range(2, 12, 2))
    runs = sorted(out.glob("runs/labeled-1/*/seed*"))
    assert [p.relative_to(out).as_posix() for p in runs] == [
        "runs/labeled-1/mean_teacher/seed5", "runs/labeled-1/mean_teacher/seed6",
        "runs/labeled-1/supervised/seed5", "runs/labeled-1/supervised/seed6"]
    stamps = {p: (p / "protocol_paper.json").stat().st_mtime_ns for p in runs}

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and "4 of 4 runs already finished" in again.stdout
    assert {p: (p / "protocol_paper.json").stat().st_mtime_ns for p in runs} == stamps

    report = (out / "report.md").read_text()
    assert "budget 'cpu'" in report.splitlines()[0]
    data = json.loads((out / "report.json").read_text())
    rows = {r["label"]: r for r in data["settings"][0]["rows"]}
    assert set(rows) == {"supervised (lower bound)", "MT", "Other"}
    assert rows["Other"]["status"] == "not in ssmis"
    for label, method in [("supervised (lower bound)", "supervised"), ("MT", "mean_teacher")]:
        row = rows[label]
        assert row["status"] == "ok" and row["seeds"] == 2
        seeds = [json.loads((out / f"runs/labeled-1/{method}/seed{s}/protocol_{p}.json")
                            .read_text()) for s in (5, 6) for p in ("honest",)]
        dice = [r["mean"]["dice"]["mean"] * 100 for r in seeds]
        import numpy as np

        assert row["ours"]["honest"]["dice"]["mean"] == pytest.approx(np.mean(dice))
        assert row["ours"]["honest"]["dice"]["std"] == pytest.approx(np.std(dice, ddof=1))
        paper_dice = f"{row['paper']['dice']:.2f}"
        line = next(ln for ln in report.splitlines() if ln.startswith(f"| {label} |"))
        assert f"{np.mean(dice):.2f} ± {np.std(dice, ddof=1):.2f}" in line
        assert paper_dice in line
    assert "| Other | — | not in ssmis |" in report
    assert "HD95 ours (voxel, medpy)" in report and "HD95 ours (voxel, monai)" in report
    html_text = (out / "report.html").read_text()
    assert html_text.count("data:image/png;base64,") == 3 and "src='report_files" not in html_text
    for r in runs:  # both protocols scored the same predictions where the checkpoint is shared
        honest, paper = (json.loads((r / f"protocol_{p}.json").read_text())
                         for p in ("honest", "paper"))
        assert (honest["hd95_mode"], paper["hd95_mode"]) == ("monai", "medpy")
        if honest["checkpoint"] == paper["checkpoint"]:
            assert honest["mean"]["dice"]["mean"] == paper["mean"]["dice"]["mean"] or \
                honest["mean"]["dice"]["undefined"] or paper["mean"]["dice"]["undefined"]


def test_slots_pack_runs_per_gpu_or_split_cpu_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    from ssmis.reproduce import sweep

    monkeypatch.setattr(sweep, "visible_gpus", lambda: ["2", "5"])
    slots = sweep.make_slots("auto", per_gpu=2)
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["2", "2", "5", "5"]
    cpu = sweep.make_slots("cpu", workers=2)
    assert len(cpu) == 2 and all(s.env["CUDA_VISIBLE_DEVICES"] == "" for s in cpu)
    assert cpu[0].env["OMP_NUM_THREADS"] == str(max((os.cpu_count() or 1) // 2, 1))
    monkeypatch.setattr(sweep, "visible_gpus", lambda: [])
    with pytest.raises(SSMISError, match="no CUDA device"):
        sweep.make_slots("cuda")


def test_reproduce_reuses_a_run_only_when_its_recorded_config_is_the_grids(
    phantom_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    """A finished run of 2 iterations is refused by a grid of 3 (and by another train.lr),
    reused by the same grid; the default folder names budget and length; the report states
    the runs' recorded iterations; the run folder is one `compare` and `evaluate` read."""
    from ssmis.reproduce.report import write_report
    from ssmis.reproduce.runner import plan_reproduction
    from ssmis.reproduce.sweep import run_job

    configs = tmp_path / "configs"
    _write_configs(configs / "ph", phantom_root, 4)
    table_file = tmp_path / "table.yaml"
    table_file.write_text(_table_yaml())
    monkeypatch.chdir(tmp_path)
    plan = plan_reproduction(load_table(table_file), None, configs, methods=["supervised"],
                             seeds="1", budget="cpu", iterations=2)
    assert plan.out == Path("reproduce/phantom-test-cpu-2it")
    run = Path(plan.jobs[0].run_dir)
    assert run_job(plan.jobs[0]) == 0
    for name in ("metrics.json", "metrics.md", "protocol_honest.json", "protocol_paper.json",
                 "learning_curve.png"):
        assert (run / name).is_file(), name
    honest = json.loads((run / "protocol_honest.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["mean"]["dice"] == honest["mean"]["dice"]
    assert main(["compare", str(run)]) == 0
    table_out = capsys.readouterr().out
    assert "supervised" in table_out and f"{metrics['mean']['dice']['mean'] * 100:.2f}" in \
        table_out

    base = ["reproduce", str(table_file), "--methods", "supervised", "--seeds", "1",
            "--budget", "cpu", "--configs", str(configs), "--out", str(plan.out), "--dry-run"]
    for extra, field in [(["--iterations", "3"], "train.iterations: run has 2, the sweep "
                                                  "asks 3"),
                         (["--iterations", "2", "--set", "train.lr=0.02"],
                          "train.lr: run has 0.01, the sweep asks 0.02")]:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(run) in err and field in err, err
    assert main([*base, "--iterations", "2"]) == 0
    assert capsys.readouterr().out.startswith("done ")

    report = json.loads(write_report(plan)["json"].read_text())
    assert report["budget_text"] == "supervised 2 it, patch 32x32"
    assert report["settings"][0]["rows"][0]["iterations"] == [2]
    assert not report["paper_length"]
    recorded = yaml.safe_load((run / "config.yaml").read_text())  # the report reads the run's
    recorded["train"]["iterations"] = 5  # own record, not the plan
    (run / "config.yaml").write_text(yaml.safe_dump(recorded))
    report = json.loads(write_report(plan)["json"].read_text())
    assert report["budget_text"].startswith("supervised 5 it (this budget asks 2)")
    assert "supervised 5 it (this budget asks 2)" in (plan.out / "report.md").read_text()
