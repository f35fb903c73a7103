"""Process bodies for the DDP tests (tests/test_distributed.py): spawned by
``torch.multiprocessing`` with the environment torchrun would set, on the gloo backend.

Kept in their own module so that spawned children import only this (not pytest's test module).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch

from ssmis.methods import METHODS, register
from ssmis.methods.supervised import Supervised


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun_env(rank: int, world: int, port: int) -> None:
    """What torchrun exports to each process."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(1)


class FrozenBNSupervised(Supervised):
    """Supervised with every BatchNorm in eval mode while training: no batch statistics in
    the loss, so 2 processes x B/2 must equal 1 process x B (the equivalence test)."""

    name = "test_frozen_bn"

    def training_step(self, labeled, unlabeled, step):  # type: ignore[override]
        for m in self.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        return super().training_step(labeled, unlabeled, step)


class DyingSupervised(Supervised):
    """Supervised whose rank-1 process sends itself ``signum`` (SIGKILL: the kill test;
    SIGTERM: the stop test) in step ``die_at``."""

    name = "test_dies"
    die_at: int | None = None
    signum: int = 9

    def training_step(self, labeled, unlabeled, step):  # type: ignore[override]
        from ssmis.engine import distributed as dist

        if DyingSupervised.die_at is not None and step == DyingSupervised.die_at \
                and dist.rank() == 1:
            os.kill(os.getpid(), DyingSupervised.signum)
        return super().training_step(labeled, unlabeled, step)


def register_test_methods() -> None:
    for cls in (FrozenBNSupervised, DyingSupervised):
        if cls.name not in METHODS:
            register(cls)


# -- every method, a few DDP steps --------------------------------------------------------------
def methods_worker(rank: int, world: int, port: int, out: str, cases: list[tuple[str, str]],
                   steps: int) -> None:
    """Each (method, 2d|3d) for ``steps`` steps under DDP with different data per process;
    after every step all processes compare every tensor of ``method.state_dict()``."""
    torchrun_env(rank, world, port)
    from ssmis.engine import distributed as dist
    from ssmis.engine.seed import seed_everything
    from ssmis.engine.step import optimization_step
    from tests.test_methods_contract import _batches, _config, _phase_at

    dist.setup("cpu")
    report: dict[str, Any] = {}
    try:
        for name, kind in cases:
            t0 = time.perf_counter()
            cfg = _config(kind, name, Path("."))
            seed_everything(0)
            method = METHODS[name](cfg)
            seed_everything(dist.rank_seed(0, rank))
            initial = {k: v.clone() for k, v in method.state_dict().items()}
            stepper = dist.wrap(method, torch.device("cpu"))

            def make_opt(m: Any = method) -> torch.optim.Optimizer:
                return torch.optim.SGD(list(m.trainable_parameters()), lr=0.01, momentum=0.9,
                                       weight_decay=1e-4)

            opt = make_opt()
            # each process its own data: identical weights afterwards need the all-reduce
            batches = _batches(kind, steps * world)[rank::world]
            method.train()
            phases = method.phases()
            identical: list[bool] = []
            for step in range(steps):
                phase, local = _phase_at(phases, step)
                if local == 0 and step > 0:
                    method.on_phase_start(phase)
                    if phase.reset_optimizer:
                        opt = make_opt()
                labeled, unlabeled = batches[step]
                optimization_step(stepper, opt, labeled,
                                  unlabeled if method.uses_unlabeled else None, step, False)
                state = method.state_dict()
                digest = {k: v.detach().clone() for k, v in state.items()}
                gathered = dist.all_gather(digest)
                identical.append(all(torch.equal(g[k], digest[k]) for g in gathered
                                     for k in digest))
            changed = [k for k, v in method.state_dict().items()
                       if v.is_floating_point() and not torch.equal(v, initial[k])]
            teacher_changed = [k for k in changed if "teacher" in k]
            report[f"{name}/{kind}"] = {
                "identical": identical, "changed": len(changed),
                "teacher_changed": len(teacher_changed),
                "networks": stepper.networks,
                "find_unused": bool(method.ddp_find_unused_parameters),
                "seconds": round(time.perf_counter() - t0, 2),
            }
    finally:
        if rank == 0:
            Path(out).write_text(json.dumps(report, indent=1))
        dist.teardown()


# -- engine runs --------------------------------------------------------------------------------
def train_worker(rank: int, world: int, port: int, raw_cfg: dict[str, Any], run_dir: str,
                 resume: bool, overrides: list[str], die_at: int | None,
                 evaluate: bool, signum: int = 9) -> None:
    """``train_run`` (or ``resume_run``) as one process of a ``world``-process DDP run."""
    torchrun_env(rank, world, port)
    register_test_methods()
    DyingSupervised.die_at, DyingSupervised.signum = die_at, signum
    from ssmis.config import validate_config
    from ssmis.engine import distributed as dist
    from ssmis.engine.run import resume_run, train_run

    try:
        if resume:
            resume_run(Path(run_dir), overrides, evaluate=evaluate, verbose=False)
        else:
            train_run(validate_config(raw_cfg), Path(run_dir), evaluate=evaluate, verbose=False)
    except BaseException as err:  # the line the CLI would print, for the test to read
        line = dist.failure_message(err) if isinstance(err, Exception) else None
        Path(f"{run_dir}-error-rank{rank}.txt").write_text(line or f"{type(err).__name__}: {err}")
        raise
    finally:
        dist.teardown()


def init_failure_worker(rank: int, world: int, port: int, out: str) -> None:
    """Join a group whose rendezvous port is taken: the one line :func:`setup` raises."""
    torchrun_env(rank, world, port)
    from ssmis.engine import distributed as dist
    from ssmis.errors import SSMISError

    try:
        dist.setup("cpu")
        message = "no error"
    except SSMISError as err:
        message = str(err)
    Path(out).write_text(message)
