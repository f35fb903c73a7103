"""Where one training iteration's time goes, per method: data (loader + augmentation), the
method's ``training_step`` (forwards, teacher passes, pseudo-labels and their filtering, losses),
backward, optimizer, ``on_step_end`` (EMA), and the heaviest operators inside them.

Builds the run exactly as ``ssmis train`` does (:func:`ssmis.engine.prepare.prepare`, the engine's
data stream), skips ahead into self-training, and times ``--steps`` iterations phase by phase
(process CPU seconds, ``time.process_time``, on the CPU: with one torch thread this is robust
to other processes on a shared machine; wall seconds with a synchronize after each phase on
CUDA, which itself costs). With
``--ops`` one more iteration runs under ``torch.profiler`` and the top operators by self CPU time
are printed, with the count of host syncs (``aten::item``, ``aten::_local_scalar_dense``, host
copies) seen in that iteration.

    python benchmarks/profile_step.py --methods bcp alhvr --ops
    python benchmarks/profile_step.py --methods cvbm --set train.device=cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ssmis.engine.data import train_batches
from ssmis.engine.prepare import prepare
from ssmis.engine.step import to_device
from ssmis.engine.trainer import Trainer
from ssmis.experiment import load_config

REPO = Path(__file__).resolve().parents[1]
PHASES = ("data", "training_step", "backward", "optimizer", "on_step_end")
SYNC_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero")


def profile(method: str, steps: int, overrides: list[str], dataset: str, ops: bool,
            top: int) -> dict[str, float]:
    config = REPO / "configs" / dataset / f"{method}_cpu.yaml"
    cfg = load_config(config, ["train.iterations=100000", *overrides])
    prepared = prepare(cfg)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(prepared, Path(out))
    m, opt, dev = trainer.method, trainer.optimizer, trainer.device
    phases = m.phases()
    step = 0
    if len(phases) > 1:  # time the self-training phase
        m.on_phase_start(phases[-1])
        step = phases[0].iterations + 10
    m.train()
    batches = train_batches(cfg, trainer.split, trainer.unlabeled_bs, start_batch=0,
                            layout=trainer.layout, device=dev)  # the route `ssmis train` takes
    amp = cfg.train.amp and dev.type == "cuda"
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    clock = time.perf_counter if dev.type == "cuda" else time.process_time
    times: dict[str, list[float]] = {p: [] for p in PHASES}

    def one(record: bool) -> None:
        t = [clock()]
        labeled, unlabeled = next(batches)
        labeled = to_device(labeled, dev)
        unlabeled = to_device(unlabeled, dev) if unlabeled else None
        sync()
        t.append(clock())
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            losses = m.training_step(labeled, unlabeled, step)
        sync()
        t.append(clock())
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        sync()
        t.append(clock())
        opt.step()
        sync()
        t.append(clock())
        m.on_step_end(step)
        sync()
        t.append(clock())
        if record:
            for i, p in enumerate(PHASES):
                times[p].append(t[i + 1] - t[i])

    for _ in range(2):
        one(False)
    for _ in range(steps):
        one(True)
    med = {p: statistics.median(v) for p, v in times.items()}
    total = sum(med.values())
    unit = "s" if dev.type == "cuda" else "CPU s"
    print(f"\n## {method}: {total:.3f} {unit}/it (median of {steps}; "
          f"{torch.get_num_threads()} threads, {dev})")
    print("| phase | s | share |")
    print("|---|---|---|")
    for p in PHASES:
        print(f"| {p} | {med[p]:.3f} | {100 * med[p] / total:.0f} % |")
    if ops:
        acts = [torch.profiler.ProfilerActivity.CPU]
        if dev.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=acts) as prof:
            one(False)
        avg = prof.key_averages()
        print(avg.table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40))
        syncs = {e.key: e.count for e in avg if e.key in SYNC_OPS}
        print(f"host-sync operators in one iteration: {syncs or 'none'}")
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+",
                        default=["supervised", "mean_teacher", "uamt", "cps", "bcp", "cvbm",
                                 "cml", "alhvr"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--dataset", default="acdc")
    parser.add_argument("--ops", action="store_true", help="operator table of one iteration")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    for m in args.methods:
        profile(m, args.steps, args.overrides, args.dataset, args.ops, args.top)


if __name__ == "__main__":
    main()
