"""No lost runs and no silent wrong numbers: checkpoints as consistent, verified units; signals;
divergence; run-folder locks; model selection over the whole run; config checks before anything
is written; result files per (split, checkpoint)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from ssmis.cli import main
from ssmis.config import validate_config
from ssmis.engine import checkpoint as ckpt
from ssmis.engine import runfolder
from ssmis.engine import selection as selection_mod
from ssmis.engine import step as step_mod
from ssmis.engine import trainer as trainer_mod
from ssmis.engine.evaluate import ValidationScore
from ssmis.engine.run import evaluate_run, resume_run, train_run
from ssmis.errors import SSMISError
from ssmis.experiment import load_config
from tests.conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(root: Path, out: Path, name: str, **train) -> Path:
    cfg = validate_config(tiny_config(root, out, **train))
    return train_run(cfg, out / name, evaluate=False, verbose=False)


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def reference(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 6-iteration run (validation at 2, 4, 6), with one torch thread like the
    tests that compare with it (another thread count sums in another order)."""
    out = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(phantom_root, out, "full", iterations=6, val_every=2)
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- 1. consistent checkpoints


def test_a_torn_checkpoint_falls_back_to_the_previous_consistent_one(
    phantom_root: Path, tmp_path: Path, reference: Path
) -> None:
    run = _train(phantom_root, tmp_path, "part", iterations=4, val_every=2)
    ck = run / "checkpoints"
    # a kill between the weights and the state of iteration 4: the state is the old one
    shutil.copyfile(ck / "last-00000002_state.pt", ck / "last-00000004_state.pt")
    (ck / ".last-00000004.safetensors.abc.tmp").write_bytes(b"half")
    resume_run(run, ["train.iterations=6"], evaluate=False, verbose=False)
    assert "last-00000004_state.pt: damaged (checksum differs from last-00000004.json); " \
           "resuming from the previous consistent checkpoint (iteration 2)" in \
           (run / "train.log").read_text()
    assert not list(ck.glob(".*.tmp"))
    _same_weights(reference / "checkpoints/last.safetensors", ck / "last.safetensors")


def test_a_kill_during_the_state_write_resumes_like_an_uninterrupted_run(
    phantom_root: Path, tmp_path: Path, reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ckpt.save_state

    def killed_at_4(path: Path, state: dict) -> None:
        if state["step"] == 4:
            raise KeyboardInterrupt  # the process dies after the weights, before the state
        real(path, state)

    monkeypatch.setattr(ckpt, "save_state", killed_at_4)
    with pytest.raises(KeyboardInterrupt):
        _train(phantom_root, tmp_path, "run", iterations=6, val_every=2)
    monkeypatch.setattr(ckpt, "save_state", real)
    run = tmp_path / "run"
    assert (run / "checkpoints/last-00000004.safetensors").is_file()
    assert not (run / "checkpoints/last-00000004.json").exists()
    resume_run(run, evaluate=False, verbose=False)
    _same_weights(reference / "checkpoints/last.safetensors", run / "checkpoints/last.safetensors")
    # the orphan of the killed write was replaced by the resumed run's own generation
    assert json.loads((run / "checkpoints/last-00000006.json").read_text())["step"] == 6


def test_a_write_cut_before_its_manifest_is_named_on_resume(phantom_root: Path,
                                                            tmp_path: Path) -> None:
    run = _train(phantom_root, tmp_path, "run", iterations=4, val_every=2)
    (run / "checkpoints/last-00000004.json").unlink()
    resume_run(run, ["train.iterations=6"], evaluate=False, verbose=False)
    assert (f"{run}/checkpoints/last-00000004.*: incomplete checkpoint of iteration 4 (no "
            "manifest: its write was interrupted); resuming from the previous consistent "
            "checkpoint (iteration 2)") in (run / "train.log").read_text()


def test_a_full_disk_during_the_state_write_keeps_the_previous_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ssmis.engine.seed import capture_rng_state

    def state(step: int) -> dict:
        return {"step": step, "optimizer": {}, "best": {}, "best_iter": {},
                "rng": capture_rng_state()}

    ckpt.save_resumable(tmp_path, 2, {"w": torch.ones(2)}, {"step": "2"}, state(2))

    def full(self: Path, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(SSMISError, match=r"last-00000004_state.pt: cannot write \(No space left "
                                         r"on device\); no partial file is left"):
        ckpt.save_resumable(tmp_path, 4, {"w": torch.zeros(2)}, {"step": "4"}, state(4))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last-00000002.json", "last-00000002.safetensors", "last-00000002_state.pt",
        "last.safetensors"]
    assert ckpt.find_resumable(tmp_path, total=6).step == 2


# ---------------------------------------------------------------- 2. damaged or wrong files


def _flip_a_data_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # the tensor data sit after the header: the header stays parseable
    path.write_bytes(bytes(data))


def test_flipped_bytes_are_refused_by_evaluate_predict_and_resume(
    phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _train(phantom_root, tmp_path, "run", iterations=2, val_every=2)
    best = run / "checkpoints/best.safetensors"
    _flip_a_data_byte(best)
    assert main(["evaluate", str(run)]) == 2
    assert _error_line(capsys) == (f"ssmis: error: {best}: damaged checkpoint: the tensors do not"
                                   " match the checksum written with them (flipped or truncated "
                                   "bytes)")
    image = tmp_path / "scan.png"
    from PIL import Image

    Image.new("L", (32, 32), 128).save(image)
    assert main(["predict", str(run), str(image), "--out", str(tmp_path / "p")]) == 2
    assert "damaged" in _error_line(capsys)
    last = run / "checkpoints/last-00000002.safetensors"
    _flip_a_data_byte(last)
    assert main(["train", "--resume", str(run), "train.iterations=4", "--quiet"]) == 2
    assert "no consistent checkpoint to resume from" in _error_line(capsys)
    assert not (run / "metrics.json").exists()


def test_wrong_but_parseable_checkpoints_are_one_line(phantom_root: Path, tmp_path: Path) -> None:
    run = _train(phantom_root, tmp_path, "run", iterations=2, val_every=2)
    best = run / "checkpoints/best.safetensors"
    good = load_file(str(best))
    meta = ckpt.read_metadata(best)

    def rewrite(tensors: dict, **extra: str) -> None:
        save_file(tensors, str(best), metadata={**meta, **extra,
                                                "tensors_sha256": ckpt.tensors_digest(tensors)})

    key = sorted(good)[0]
    cases = [
        ({k: v for k, v in good.items() if k != key}, {}, f"missing tensor '{key}'"),
        ({**good, "extra.weight": torch.zeros(1)}, {}, "unexpected tensor 'extra.weight'"),
        ({**good, key: torch.zeros(3, 3)}, {}, f"tensor '{key}' has shape [3, 3]"),
        (good, {"method": "bcp"}, "weights of method 'bcp' / model 'unet2d'; this run is "
                                  "'supervised' / 'unet2d'"),
    ]
    for tensors, extra, expected in cases:
        rewrite(tensors, **extra)
        with pytest.raises(SSMISError) as err:
            evaluate_run(run, verbose=False)
        assert str(err.value).startswith(f"{best}: ")
        assert expected in str(err.value)


def test_loading_refuses_non_finite_weights_and_names_unverifiable_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "w.safetensors"
    bad = {"w": torch.tensor([1.0, float("nan")])}
    save_file(bad, str(path), metadata={"tensors_sha256": ckpt.tensors_digest(bad)})
    with pytest.raises(SSMISError, match=r"w.safetensors: tensor 'w' holds NaN/inf"):
        ckpt.load_weights(path)
    save_file({"w": torch.ones(2)}, str(path))  # no ssmis metadata at all
    logger = logging.getLogger("ssmis")
    logger.addHandler(caplog.handler)
    try:
        assert torch.equal(ckpt.load_weights(path)["w"], torch.ones(2))
    finally:
        logger.removeHandler(caplog.handler)
    assert f"{path} carries no checksum (not written by this ssmis)" in caplog.text


@pytest.mark.parametrize("change, expected", [
    ({"rng": None}, "training state has no 'rng'"),
    ({"rng": {"torch": torch.zeros(1)}}, "incomplete random states"),
    ({"step": 2.5}, "step 2.5 is not an integer"),
    ({"step": True}, "step True is not an integer"),
    ({"step": -1}, "step -1 is negative"),
    ({"step": 9}, "step 9 is past the end of the run (train.iterations = 6; resume with "
                  "train.iterations >= 9)"),
    ({"rng": dict.fromkeys(ckpt.RNG_KEYS, "abc")}, "random state 'torch' is not what ssmis saves"),
    ({"best": "x"}, "'best' is not a mapping of checkpoint names to numbers"),
    ({"optimizer": []}, "optimizer state is not a mapping"),
])
def test_training_states_are_checked(tmp_path: Path, change: dict, expected: str) -> None:
    from ssmis.engine.seed import capture_rng_state

    state = {"step": 2, "optimizer": {}, "best": {}, "best_iter": {}, "rng": capture_rng_state()}
    assert ckpt.check_state(dict(state), tmp_path / "s.pt", total=6)["step"] == 2
    state.update(change)
    if change.get("rng", 1) is None:
        del state["rng"]
    with pytest.raises(SSMISError, match="^" + str(tmp_path).replace(".", r"\.")) as err:
        ckpt.check_state(state, tmp_path / "s.pt", total=6)
    assert expected in str(err.value)


def test_a_pickle_is_refused_without_suggesting_to_run_it(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    torch.save({"step": 1, "evil": Path("x")}, path)
    with pytest.raises(SSMISError) as err:
        ckpt.load_state(path)
    message = str(err.value)
    assert message == (f"{path}: refused: it holds objects other than tensors and plain "
                       "containers, and loading those would execute code")
    assert "weights_only" not in message


# ---------------------------------------------------------------- 3. signals and time


def _signal_at(monkeypatch: pytest.MonkeyPatch, step: int, signum: int) -> None:
    real = trainer_mod.optimization_step

    def step_then_signal(method, optimizer, labeled, unlabeled, at, amp):
        out = real(method, optimizer, labeled, unlabeled, at, amp)
        if at + 1 == step:
            os.kill(os.getpid(), signum)
        return out

    monkeypatch.setattr(trainer_mod, "optimization_step", step_then_signal)


def test_sigterm_before_the_first_validation_saves_a_resumable_checkpoint(
    phantom_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    straight = _train(phantom_root, tmp_path, "full", iterations=5, val_every=5)
    _signal_at(monkeypatch, 2, signal.SIGTERM)
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(tiny_config(phantom_root, tmp_path, iterations=5,
                                                 val_every=5)))
    run = tmp_path / "stopped"
    before = signal.getsignal(signal.SIGTERM)
    assert main(["train", str(config), "--run-dir", str(run), "--quiet"]) == 143
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"ssmis: SIGTERM: stopped at iteration 2/5; checkpoint saved, continue with "
                   f"`ssmis train --resume {run}`")
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--quiet", "--no-eval"]) == 0
    _same_weights(straight / "checkpoints/last.safetensors", run / "checkpoints/last.safetensors")


def test_checkpoints_are_also_written_on_a_time_interval(phantom_root: Path,
                                                         tmp_path: Path) -> None:
    run = _train(phantom_root, tmp_path, "run", iterations=5, val_every=5,
                 checkpoint_minutes=1e-9)
    manifests = sorted(p.name for p in (run / "checkpoints").glob("last-*.json"))
    assert manifests == ["last-00000004.json", "last-00000005.json"]


# ---------------------------------------------------------------- 4. divergence


def test_a_diverged_run_writes_no_non_finite_tensor(phantom_root: Path, tmp_path: Path) -> None:
    """lr=50: the loss stays finite while BatchNorm's running variance overflows; the state
    check before each checkpoint stops the run and keeps the finite checkpoints of iteration 5."""
    cfg = validate_config(tiny_config(phantom_root, tmp_path, lr=50, iterations=12, val_every=5))
    with pytest.raises(SSMISError, match=r"training diverged: '.*running_var' holds NaN/inf at "
                                         r"iteration 10; no checkpoint was written after it"):
        train_run(cfg, tmp_path / "run", evaluate=False, verbose=False)
    files = sorted(p.name for p in (tmp_path / "run/checkpoints").glob("*.safetensors"))
    assert files == ["best.safetensors", "last-00000005.safetensors", "last.safetensors"]
    for name in files:
        path = tmp_path / "run/checkpoints" / name
        assert ckpt.non_finite_tensor(load_file(str(path))) is None, path


def test_a_non_finite_tensor_is_never_written(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    ckpt.save_weights(path, {"bn.running_var": torch.ones(3)}, {"step": "1"})
    with pytest.raises(SSMISError, match=r"tensor 'bn.running_var' holds NaN/inf at iteration 2; "
                                         r"w.safetensors was not written"):
        ckpt.save_weights(path, {"bn.running_var": torch.tensor([1.0, float("inf"), 1.0])},
                          {"step": "2"})
    assert torch.equal(ckpt.load_weights(path)["bn.running_var"], torch.ones(3))


# ---------------------------------------------------------------- 5. locks, names, disk


def test_a_run_folder_in_use_is_refused(phantom_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
         "f.write('ssmis pid 4242\\n'); f.flush(); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('locked', flush=True); time.sleep(60)", str(run / ".lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        cfg = validate_config(tiny_config(phantom_root, tmp_path))
        with pytest.raises(SSMISError, match=f"^{run}: run folder in use by ssmis pid 4242"):
            train_run(cfg, run, evaluate=False, verbose=False)
        assert [p.name for p in run.iterdir()] == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    train_run(cfg, run, evaluate=False, verbose=False)  # released by the holder's death
    assert (run / "checkpoints/last.safetensors").is_file()


def test_two_runs_of_one_name_in_the_same_second_get_two_folders(tmp_path: Path) -> None:
    cfg = validate_config(tiny_config(tmp_path, tmp_path / "runs"))
    first = runfolder.new_run_dir(cfg, None)
    second = runfolder.new_run_dir(cfg, None)
    assert first != second and first.is_dir() and second.is_dir()


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/../../b", " ", "."])
def test_names_that_leave_output_dir_are_refused(tmp_path: Path, name: str) -> None:
    raw = tiny_config(tmp_path, tmp_path)
    raw["name"] = name
    with pytest.raises(SSMISError, match="name: .* must be a relative folder name inside "
                                         "output_dir"):
        validate_config(raw)


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "best.safetensors"
    ckpt.save_weights(path, {"w": torch.ones(2)}, {"step": "1"})

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(SSMISError, match=r"best.safetensors: cannot write \(No space left on "
                                         r"device\); the previous file is kept"):
        ckpt.save_weights(path, {"w": torch.zeros(2)}, {"step": "2"})
    assert torch.equal(ckpt.load_weights(path)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["best.safetensors"]


def test_an_unwritable_output_folder_is_one_line(
    phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(tiny_config(phantom_root, blocker / "runs")))
    assert main(["train", str(config), "--quiet"]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"ssmis: error: {blocker}/runs/tiny") and "Not a directory" in line


# ---------------------------------------------------------------- 6. model selection


def _scripted_scores(monkeypatch: pytest.MonkeyPatch, scores: list[ValidationScore]) -> None:
    queue = list(scores)
    monkeypatch.setattr(selection_mod, "validation_score", lambda *a, **k: queue.pop(0))


def _two_phase_config(root: Path, out: Path, selection: str) -> dict:
    raw = tiny_config(root, out, iterations=4, val_every=1, unlabeled_batch_size=2)
    raw["method"] = {"name": "bcp", "params": {"pretrain_iterations": 2}}
    raw["eval"]["selection"] = selection
    return raw


@pytest.mark.parametrize("selection, chosen, phase", [("best_overall", 2, "pretrain"),
                                                      ("last_phase", 4, "self_train")])
def test_selection_over_the_whole_run_or_the_authors_last_phase(
    phantom_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, selection: str,
    chosen: int, phase: str
) -> None:
    # self-training collapses after a good pre-training (the polyp case of the issue)
    _scripted_scores(monkeypatch, [ValidationScore(d, 2, 0) for d in (0.2, 0.5, 0.0, 0.1)])
    cfg = validate_config(_two_phase_config(phantom_root, tmp_path, selection))
    run = train_run(cfg, tmp_path / "run", evaluate=False, verbose=False)
    summary = json.loads((run / "train_summary.json").read_text())
    assert (summary["selection"], summary["best_iteration"], summary["best_phase"]) == \
        (selection, chosen, phase)
    assert ckpt.read_metadata(run / "checkpoints/best.safetensors")["step"] == str(chosen)
    assert ckpt.read_metadata(run / "checkpoints/best_pretrain.safetensors")["step"] == "2"
    result = evaluate_run(run, verbose=False)
    assert result["iteration"] == chosen and result["selection"] == selection


def test_ties_and_collapsed_models_are_reported(
    phantom_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _scripted_scores(monkeypatch, [ValidationScore(0.0, 2, 2)] * 4)
    cfg = validate_config(_two_phase_config(phantom_root, tmp_path, "best_overall"))
    run = train_run(cfg, tmp_path / "run", evaluate=False, verbose=False)
    log = (run / "train.log").read_text()
    assert "warning: no foreground predicted on any of the 2 validation cases" in log
    assert ("warning: validation Dice 0.0000 was reached at iterations 1, 2, 3, 4: the earliest "
            "(1) is kept as 'best' (every validation considered for selection scored the "
            "same") in log
    assert json.loads((run / "train_summary.json").read_text())["val_ties"] == [1, 2, 3, 4]


# ---------------------------------------------------------------- 7, 11. config checks


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("stride", [[40, 8, 8], [0, 8, 8]])
def test_sliding_window_stride_must_lie_between_1_and_the_patch(tmp_path: Path,
                                                                stride: list[int]) -> None:
    raw = tiny_config(tmp_path, tmp_path)
    raw["data"].update(layout="la_h5", patch_size=[32, 32, 16], labeled_count=1, val_count=1,
                       num_classes=2, class_names=None)
    raw["model"] = {"name": "vnet3d"}
    raw["eval"]["stride"] = stride
    with pytest.raises(SSMISError, match=r"eval.stride: \[.*\] must be between 1 and the patch "
                                         r"\[32, 32, 16\] on every axis"):
        validate_config(raw)


@pytest.mark.parametrize("change, expected", [
    ({"data.patch_size": [40, 40]}, "data.patch_size [40, 40]: every axis must be divisible "
                                    "by 16"),
    ({"model": {"name": "vnet3d"}, "data.patch_size": [16, 16, 16], "train.batch_size": 1,
      "data.layout": "la_h5", "data.labeled_count": 1, "data.val_count": 1,
      "data.num_classes": 2, "data.class_names": None},
     "data.patch_size [16, 16, 16]: the bottleneck is one voxel per channel and the smallest "
     "training forward batch is 1"),
    ({"method": {"name": "bcp"}, "train.unlabeled_batch_size": 4},
     "train.unlabeled_batch_size: bcp pastes unlabeled halves into labeled ones pairwise; "
     "expected it equal to train.batch_size (2), got 4"),
    ({"method": {"name": "cvbm"}, "train.batch_size": 3, "train.unlabeled_batch_size": 3},
     "train.batch_size: cvbm splits each batch into two equal halves; expected an even number "
     ">= 2, got 3"),
])
def test_patch_and_batch_rules_are_checked_before_anything_is_written(
    phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict,
    expected: str
) -> None:
    raw = tiny_config(phantom_root, tmp_path / "runs", unlabeled_batch_size=2)
    for key, value in change.items():
        if "." in key:
            section, field = key.split(".")
            raw[section][field] = value
        else:
            raw[key] = value
    path = _write(tmp_path, raw)
    with pytest.raises(SSMISError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: {expected}")
    assert main(["train", str(path), "--quiet"]) == 2
    assert expected in _error_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_phase_lengths_are_checked_before_a_run_folder_exists(
    phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pre-training as long as the run is one line, and no run folder (not even its lock)."""
    raw = tiny_config(phantom_root, tmp_path / "runs", iterations=2, unlabeled_batch_size=2)
    raw["method"] = {"name": "bcp", "params": {"pretrain_iterations": 2}}
    path = _write(tmp_path, raw)
    assert main(["train", str(path), "--quiet"]) == 2
    assert "method.params.pretrain_iterations: 2 leaves no self-training within " \
           "train.iterations = 2" in _error_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_bcp_and_cml_train_with_their_batch_rules(phantom_root: Path, tmp_path: Path) -> None:
    """CML allows different labeled and unlabeled batch sizes (each split in halves)."""
    raw = tiny_config(phantom_root, tmp_path, iterations=2, val_every=2, batch_size=2,
                      unlabeled_batch_size=4)
    raw["method"] = {"name": "cml", "params": {"pretrain_iterations": 1}}
    run = train_run(validate_config(raw), tmp_path / "cml", evaluate=False, verbose=False)
    assert json.loads((run / "train_summary.json").read_text())["iterations"] == 2


# ---------------------------------------------------------------- 8, 9, 10. numbers and files


def test_absent_classes_are_reported_apart_and_tables_show_counts(
    phantom_root: Path, tmp_path: Path
) -> None:
    raw = tiny_config(phantom_root, tmp_path, iterations=2, val_every=2)
    raw["data"]["num_classes"] = 5  # the phantoms hold classes 0..3 only
    raw["data"]["class_names"] = {1: "RV", 2: "Myo", 3: "LV", 4: "ghost"}
    run = train_run(validate_config(raw), tmp_path / "run", verbose=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["absent_classes"] == ["ghost"]
    per_case = [e["metrics"] for e in metrics["per_case"]]
    case_means = [sum(m[k]["dice"] for k in ("1", "2", "3")) / 3 for m in per_case]
    assert metrics["mean"]["dice"]["mean"] == pytest.approx(sum(case_means) / len(case_means))
    log = (run / "train.log").read_text()
    assert "class 'ghost' never occurs in any test reference" in log
    assert "warning: ghost never occur(s) in any validation reference: left out of the " \
           "validation Dice" in log
    # the selection score is the mean over the 3 present classes
    val = json.loads((run / "val.jsonl").read_text().splitlines()[-1])["val_dice"]
    check = evaluate_run(run, split="val", verbose=False)
    assert val == pytest.approx(check["mean"]["dice"]["mean"])
    table = (run / "metrics.md").read_text()
    assert "| ghost (absent) |" in table
    assert "HD95 (voxel, monai) | ASD (voxel) | n | HD95/ASD undefined |" in table
    assert "HD95: monai" in table and "not in the mean: ghost" in table


def test_a_model_that_predicts_nothing_shows_its_undefined_distances() -> None:
    import numpy as np

    from ssmis.eval.metrics import case_metrics, summarize
    from ssmis.eval.report import metrics_table_text

    label = np.zeros((8, 8), np.uint8)
    label[2:5, 2:5] = 1
    per_case = [{"case": f"c{i}", "domain": None,
                 "metrics": {str(k): v for k, v in case_metrics(np.zeros_like(label), label,
                                                                [1, 2]).items()}}
                for i in range(3)]
    result = {"unit": "voxel", "hd95_mode": "medpy", "classes": {"1": "A", "2": "B"},
              **summarize(per_case, {1: "A", 2: "B"}, absent=["2"])}
    lines = metrics_table_text(result).splitlines()
    assert lines[0].split() == ["Class", "Dice", "(%)", "Jaccard", "(%)", "HD95", "(voxel,",
                                "medpy)", "ASD", "(voxel)", "n", "HD95/ASD", "undefined"]
    row_a = lines[2].split()
    assert row_a[0] == "A" and row_a[-2:] == ["3", "3/3"]  # 3 cases, 3 undefined distances
    assert lines[3].split()[:2] == ["B", "(absent)"]
    assert lines[4].split()[-2:] == ["3", "3/3"]  # the mean: over A only


def test_evaluating_another_checkpoint_keeps_the_runs_result_and_compare_says_which(
    phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write(tmp_path, tiny_config(phantom_root, tmp_path / "runs", iterations=4,
                                          val_every=2))
    run = tmp_path / "runs/done"
    assert main(["train", str(config), "seed=3", "--run-dir", str(run), "--quiet"]) == 0
    before = (run / "metrics.json").read_text()
    assert main(["evaluate", str(run), "--checkpoint", "last"]) == 0
    assert (run / "metrics.json").read_text() == before
    last = json.loads((run / "metrics_test_last.json").read_text())
    assert (last["checkpoint"], last["iteration"]) == ("last", 4)
    unfinished = tmp_path / "runs/unfinished"
    assert main(["train", str(config), "--run-dir", str(unfinished), "--quiet",
                 "--no-eval"]) == 0
    capsys.readouterr()
    assert main(["compare", str(run), str(unfinished)]) == 0
    out = capsys.readouterr().out
    best_iter = json.loads(before)["iteration"]
    assert f"best ({best_iter})" in out and "Checkpoint (iterations)" in out
    result = json.loads(before)
    undefined = sum(c["hd95"]["undefined"] for c in result["per_class"].values())
    values = undefined + sum(c["hd95"]["n"] for c in result["per_class"].values())
    # 2 test cases, and the undefined distance values
    assert re.search(rf"\s2\s+{undefined}/{values}\s+best \(", out), out
    assert f"skipped 1 run(s) without metrics.json (unfinished?): {unfinished}" in out
    assert main(["compare", str(run), "--checkpoint", "last"]) == 0
    assert "last (4)" in capsys.readouterr().out


# ---------------------------------------------------------------- 12. flags after overrides


def test_flags_may_follow_the_overrides(phantom_root: Path, tmp_path: Path) -> None:
    config = _write(tmp_path, tiny_config(phantom_root, tmp_path / "runs"))
    run = tmp_path / "r"
    assert main(["train", str(config), "train.iterations=2", "--no-eval", "train.val_every=1",
                 "--run-dir", str(run), "--quiet"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["train"]["iterations"], saved["train"]["val_every"]) == (2, 1)
    assert not (run / "metrics.json").exists()


def test_a_second_signal_is_not_swallowed() -> None:
    """After the first SIGINT the previous handler is back, so a second Ctrl-C stops at once;
    a signal the caller ignores (nohup) stays ignored."""
    original = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        request = step_mod.StopRequest()
        handler = signal.getsignal(signal.SIGINT)
        assert callable(handler) and handler is not signal.default_int_handler
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert request.signum == signal.SIGINT
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        request.restore()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        ignored = step_mod.StopRequest()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        ignored.restore()
    finally:
        signal.signal(signal.SIGINT, original)
