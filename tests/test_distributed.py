"""One run on several processes (DDP, torch.distributed) on the CPU with the gloo backend.

The process bodies are in :mod:`tests.ddp_workers`; each multi-process test spawns 2 processes
with the environment torchrun sets (one torch thread each).
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file

from ssmis.config import validate_config
from ssmis.data.sampler import RankShardSampler, TwoStreamBatchSampler
from ssmis.engine import distributed as dist
from ssmis.errors import SSMISError
from ssmis.methods import METHODS
from tests import ddp_workers
from tests.conftest import REPO, tiny_config, tiny_method_config

pytestmark = pytest.mark.usefixtures("one_thread")

WORLD = 2
#: fork: the children start in milliseconds instead of re-importing torch (~7 s each on CI's 2
#: cores); each sets one torch thread first thing (tests.ddp_workers.torchrun_env)
START = "fork" if "fork" in mp.get_all_start_methods() else "spawn"


def _spawn(fn, *args) -> None:
    """Run ``fn(rank, WORLD, port, *args)`` in WORLD fresh processes; fail if one fails."""
    mp.start_processes(fn, args=(WORLD, ddp_workers.free_port(), *args), nprocs=WORLD,
                       join=True, start_method=START)


def _spawn_until_exit(fn, *args, timeout: float = 120) -> list[int | None]:
    """Like :func:`_spawn`, but let every process end on its own; their exit codes."""
    ctx = mp.start_processes(fn, args=(WORLD, ddp_workers.free_port(), *args), nprocs=WORLD,
                             join=False, start_method=START)
    deadline = time.monotonic() + timeout
    for p in ctx.processes:
        p.join(max(deadline - time.monotonic(), 1))
    codes = [p.exitcode for p in ctx.processes]
    for p in ctx.processes:
        if p.is_alive():
            p.kill()
    return codes


@pytest.fixture
def test_methods() -> Iterator[None]:
    """The tests' extra methods, registered in this process only for the test."""
    ddp_workers.register_test_methods()
    yield
    for cls in (ddp_workers.FrozenBNSupervised, ddp_workers.DyingSupervised):
        METHODS.pop(cls.name, None)


def _weights(run: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"{name}.safetensors"))


# -- pieces -----------------------------------------------------------------------------------
def test_rank_shards_are_the_global_batch_with_its_augmentation_seeds() -> None:
    glob = TwoStreamBatchSampler(10, 9, 4, 6, seed=3)
    shards = [RankShardSampler(TwoStreamBatchSampler(10, 9, 4, 6, seed=3), r, 2)
              for r in range(2)]
    for b in (0, 1, 7, 123):
        full = glob.batch(b)
        a, c = shards[0].batch(b), shards[1].batch(b)
        assert len(a) == len(c) == 5
        # labeled part first, then unlabeled, each (index, sample seed) as in the global batch
        assert a[:2] + c[:2] == full[:4] and a[2:] + c[2:] == full[4:]
    # resumed at batch k on 2 processes = the same shards as uninterrupted
    resumed = RankShardSampler(TwoStreamBatchSampler(10, 9, 4, 6, seed=3, start_batch=7), 1, 2)
    assert next(iter(resumed)) == shards[1].batch(7)


def test_a_global_batch_that_does_not_split_is_refused_in_one_line(tmp_path: Path) -> None:
    from ssmis.engine.prepare import check_process_batch
    from ssmis.methods import build_method

    with pytest.raises(SSMISError, match=r"^train.batch_size: 3 is the global batch and does "
                                         r"not split over 2 processes; expected a multiple of 2"):
        RankShardSampler(TwoStreamBatchSampler(10, 9, 3, 4, seed=0), 0, 2)
    cfg = tiny_method_config("bcp", {"pretrain_iterations": 1}, "2d", tmp_path)
    method = build_method(cfg)  # labeled 2, unlabeled 2 (global)
    assert check_process_batch(cfg, method, 1) == (2, 2)
    with pytest.raises(SSMISError, match=r"^train.batch_size: bcp splits each batch into two "
                                         r"equal halves; expected an even number >= 2, got 1 "
                                         r"\(per process: the global batch split over 2 "
                                         r"processes\)$"):
        check_process_batch(cfg, method, 2)
    cfg = tiny_method_config("cps", {}, "2d", tmp_path)
    cfg.train.batch_size = 4
    with pytest.raises(SSMISError, match=r"^train.unlabeled_batch_size: 2 is the global batch"):
        check_process_batch(cfg, build_method(cfg), 4)


def test_methods_declare_their_ddp_networks(tmp_path: Path) -> None:
    from ssmis.methods import build_method

    expected = {"supervised": ["net"], "mean_teacher": ["student"], "uamt": ["student"],
                "bcp": ["student"], "cvbm": ["student"], "cps": ["net1", "net2"],
                "cml": ["net1", "net2"], "alhvr": ["net1", "net2"]}
    for name, nets in expected.items():
        params = {"pretrain_iterations": 1} if name in ("bcp", "cvbm") else {}
        method = build_method(tiny_method_config(name, params, "2d", tmp_path))
        if name == "cml" and method.single:  # the authors' 2D CML: one U-Net run twice
            nets = ["net1"]
        assert method.ddp_networks() == nets, name
        dist.check_wrapped(method, nets)
        if len(nets) == 1 and hasattr(method, "teacher"):  # a forgotten network is refused
            with pytest.raises(SSMISError, match="outside its ddp_networks"):
                dist.check_wrapped(method, [])
    assert METHODS["cvbm"].ddp_find_unused_parameters  # mixing layer idle in pre-training
    assert not METHODS["bcp"].ddp_find_unused_parameters


def test_sync_batchnorm_conversion_keeps_the_checkpoint_keys(tmp_path: Path) -> None:
    from ssmis.methods import build_method

    method = build_method(tiny_method_config("mean_teacher", {}, "3d", tmp_path))
    keys = list(method.state_dict())
    dist.convert_sync_bn(method)
    assert list(method.state_dict()) == keys
    kinds = {type(m) for m in method.modules()}
    assert torch.nn.SyncBatchNorm in kinds and torch.nn.BatchNorm3d not in kinds
    # both student and teacher, parameters still the optimizer's objects
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in method.teacher.modules())
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in method.student.modules())


def test_gpus_beyond_the_machine_is_one_line(phantom_root: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from ssmis.cli import main

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(phantom_root, tmp_path)))
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert main(["train", str(path), "--gpus", str(have + 1)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"ssmis: error: --gpus {have + 1}: this machine has {have} CUDA device(s)"
        + ("" if have else " (train.device=cpu trains on the CPU)")]
    assert not (tmp_path / "tiny").exists()  # nothing written


def test_a_process_group_that_cannot_start_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:  # the rendezvous port is in use: rank 0 cannot serve it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = tmp_path / "error.txt"
        proc = mp.get_context(START).Process(target=ddp_workers.init_failure_worker,
                                             args=(0, 2, port, str(out)))
        proc.start()
        proc.join(60)
    message = out.read_text()
    assert message.startswith(f"torch.distributed: could not start the gloo process group "
                              f"(rank 0 of 2, MASTER_ADDR=127.0.0.1:{port}): ")
    assert "\n" not in message


# -- every method under DDP -------------------------------------------------------------------
def test_every_method_trains_under_ddp_with_identical_weights_after_each_step(
    tmp_path: Path,
) -> None:
    from tests.test_methods_contract import _require_sam

    cases = [(n, k) for n in sorted(METHODS) if not n.startswith("test_")
             for k in ("2d", "3d") if int(k[0]) in METHODS[n].spatial_dims]
    if any(n == "synfoc" for n, _ in cases):
        try:
            _require_sam()
        except pytest.skip.Exception:
            cases = [c for c in cases if c[0] != "synfoc"]
    out = tmp_path / "report.json"
    _spawn(ddp_workers.methods_worker, str(out), cases, 3)
    report = json.loads(out.read_text())
    assert sorted(report) == sorted(f"{n}/{k}" for n, k in cases)
    for key, r in report.items():
        # each process trained on different data: equal weights need DDP's all-reduce
        assert r["identical"] == [True, True, True], key
        assert r["changed"] > 0, key
    for key in ("mean_teacher/2d", "uamt/3d", "bcp/2d", "cvbm/3d"):
        assert report[key]["teacher_changed"] > 0, key  # EMA from the synchronised student
    assert report["cps/2d"]["networks"] == ["net1", "net2"]


# -- the engine: equivalence, kill and resume ------------------------------------------------
def _frozen_bn_config(root: Path, out: Path, **train) -> dict:
    raw = tiny_config(root, out, iterations=6, val_every=3, batch_size=4, device="cpu",
                      lr=0.05, **train)
    raw["method"] = {"name": "test_frozen_bn",
                     "params": {"ce_weight": 1.0, "dice_weight": 0.0}}  # per-pixel mean loss
    raw["model"] = {"name": "unet2d", "options": {"dropout": False}}  # no random stream
    return raw


def test_two_processes_with_half_batches_equal_one_process_with_the_global_batch(
    phantom_root: Path, tmp_path: Path, test_methods: None,
) -> None:
    from ssmis.engine.run import train_run

    raw = _frozen_bn_config(phantom_root, tmp_path)
    one = train_run(validate_config(copy.deepcopy(raw)), tmp_path / "one", verbose=False)
    two = tmp_path / "two"
    _spawn(ddp_workers.train_worker, raw, str(two), False, [], None, True)
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    moved = 0
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
        moved += int(not torch.equal(a[key], _weights(two, "best")[key]))
    assert moved  # training changed the weights after the best checkpoint (iter 3 vs 6)
    s1 = json.loads((one / "train_summary.json").read_text())
    s2 = json.loads((two / "train_summary.json").read_text())
    assert (s1["world_size"], s2["world_size"]) == (1, 2)
    assert s2["batch_per_process"] == {"labeled": 2, "unlabeled": 0}
    assert s2["global_batch"] == {"labeled": 4, "unlabeled": 0}
    assert s2["best_iteration"] == s1["best_iteration"]
    assert s2["best_val_dice"] == pytest.approx(s1["best_val_dice"], abs=1e-6)
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert (m1["processes"], m2["processes"]) == (1, 2)
    assert [c["case"] for c in m2["per_case"]] == [c["case"] for c in m1["per_case"]]
    assert m2["mean"]["dice"] == pytest.approx(m1["mean"]["dice"], abs=1e-6)
    # rank 0 alone wrote: one row per logged iteration, the losses averaged over processes
    rows1 = [json.loads(x) for x in (one / "scalars.jsonl").read_text().splitlines()]
    rows2 = [json.loads(x) for x in (two / "scalars.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows2] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in rows2] == pytest.approx([r["loss"] for r in rows1], rel=1e-5)
    assert (two / "overlays_test.png").is_file()


def test_killed_or_stopped_ddp_runs_resume_to_the_weights_of_an_uninterrupted_one(
    phantom_root: Path, tmp_path: Path, test_methods: None,
) -> None:
    from ssmis.engine.checkpoint import find_resumable
    from ssmis.engine.run import resume_run

    raw = tiny_config(phantom_root, tmp_path, iterations=6, val_every=2, batch_size=4,
                      device="cpu", checkpoint_minutes=0)
    raw["method"] = {"name": "test_dies"}  # supervised; dropout on: per-process random streams
    full, part = tmp_path / "full", tmp_path / "part"
    _spawn(ddp_workers.train_worker, raw, str(full), False, [], None, False)
    # process 1 is SIGKILLed in its 5th iteration; process 0 is left to notice on its own
    codes = _spawn_until_exit(ddp_workers.train_worker, raw, str(part), False, [], 4, False)
    assert codes[1] == -9 and codes[0] not in (0, None), codes
    assert find_resumable(part / "checkpoints", 6).step == 4
    assert not list((part / "checkpoints").glob(".*tmp")), "half-written checkpoint left"
    assert not (part / "train_summary.json").exists()
    assert "another process of this run has probably stopped" in (
        tmp_path / "part-error-rank0.txt").read_text()
    other = tmp_path / "other"
    shutil.copytree(part, other)

    _spawn(ddp_workers.train_worker, {}, str(part), True, [], None, False)
    a, b = _weights(full), _weights(part)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = [json.loads(x)["iter"] for x in (part / "scalars.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3, 4, 5, 6]
    assert json.loads((part / "train_summary.json").read_text())["world_size"] == 2

    # SIGTERM to process 1 alone, in its 2nd iteration: both stop after that iteration with
    # one checkpoint (the processes agree on the stop), and the run resumes exactly
    stopped = tmp_path / "stopped"
    codes = _spawn_until_exit(ddp_workers.train_worker, raw, str(stopped), False, [], 1, False,
                              15)
    assert codes == [1, 1], codes  # both raised RunInterrupted (the CLI exits with 143)
    for rank in (0, 1):
        assert (tmp_path / f"stopped-error-rank{rank}.txt").read_text().startswith(
            "RunInterrupted: SIGTERM: stopped at iteration 2/6; checkpoint saved")
    assert find_resumable(stopped / "checkpoints", 6).step == 2
    _spawn(ddp_workers.train_worker, {}, str(stopped), True, [], None, False)
    b = _weights(stopped)
    for key in a:
        assert torch.equal(a[key], b[key]), key

    # ... and on another number of processes (here 1): the same global batches, new streams
    resume_run(other, [], evaluate=False, verbose=False)
    summary = json.loads((other / "train_summary.json").read_text())
    assert summary["iterations"] == 6 and summary["world_size"] == 1
    assert "re-seeded" not in (other / "train.log").read_text()  # 1 process: rank 0's state


@pytest.mark.slow
def test_torchrun_launches_ssmis_train(phantom_root: Path, tmp_path: Path) -> None:
    """``ssmis train --gpus 2``'s relaunch through torch.distributed.run (here with gloo CPU
    processes), and ``python -m torch.distributed.run ... -m ssmis train`` by hand."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(phantom_root, tmp_path, batch_size=4,
                                               device="cpu", threads=1)))
    run = tmp_path / "run"
    code = ("import sys; from ssmis.engine.distributed import relaunch; "
            f"sys.exit(relaunch(['train', {str(path)!r}, '--run-dir', {str(run)!r}, "
            "'--quiet'], 2, cpu=True))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((run / "metrics.json").read_text())["processes"] == 2
    assert json.loads((run / "train_summary.json").read_text())["world_size"] == 2
    assert (run / "train.log").read_text().count("DDP: 2 processes (gloo)") == 1
    # bad input: the batch does not split over 2 processes -> one line, nothing written
    bad = tmp_path / "bad"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "ssmis", "train", str(path), "train.batch_size=3", "--run-dir", str(bad)],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode != 0
    lines = [x for x in proc.stderr.splitlines() if x.startswith("ssmis: error:")]
    assert lines == ["ssmis: error: train.batch_size: 3 is the global batch and does not "
                     "split over 2 processes; expected a multiple of 2 (each process gets "
                     "batch_size / 2)"]
    assert not bad.exists()
