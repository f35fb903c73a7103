"""Seconds per iteration of the real ``ssmis train`` loop, per method (CPU or GPU).

Runs ``ssmis.engine.run.train_run`` (data loading, augmentation, the method's step, backward,
optimizer, EMA, logging: the real loop) on a method's CPU-scale ACDC config (8 labeled + 8
unlabeled slices at 128x128 by default), with a short pre-training phase so the timed
iterations are self-training ones. The time of each iteration is the interval between two
consecutive calls of ``optimization_step`` (so it includes the data loader); the median over
the timed iterations is reported (the machine is shared: medians, not means), in process CPU
seconds by default (one torch thread: robust to other processes on the machine; ``--metric
s_it`` for wall seconds). Validation runs once, on one volume, and its interval is dropped by
the median.

The script only uses what ``main`` has too, so the same file times two checkouts back to back:

    python benchmarks/train_step_speed.py --repeat 3                    # this checkout
    python benchmarks/train_step_speed.py --compare ../main/src --repeat 3   # A/B, interleaved

``--compare SRC`` runs every (method, repeat) once with ``PYTHONPATH=SRC`` and once with this
checkout's ``src`` in alternation (subprocesses), and prints the median s/it of both and their
ratio. ``--set key=value`` adds config overrides (e.g. ``train.compile=true``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ["supervised", "mean_teacher", "uamt", "cps", "bcp", "cvbm", "cml", "alhvr"]
TWO_PHASE = {"bcp", "cvbm", "cml"}


def time_one(method: str, steps: int, overrides: list[str], dataset: str = "acdc",
             threads: int = 1) -> dict:
    """Train ``method`` for a few warm-up + ``steps`` iterations in this process; returns the
    median seconds per iteration of the timed (self-training) iterations."""
    import torch

    from ssmis.engine import trainer as trainer_mod
    from ssmis.engine.run import train_run
    from ssmis.experiment import load_config

    warm = 3
    pre = 2 if method in TWO_PHASE else 0
    total = pre + warm + steps
    sets = [f"train.iterations={total}", "train.val_every=100000", f"train.log_every={total}",
            "eval.val_max_cases=1", "train.checkpoint_minutes=0", f"train.threads={threads}"]
    if pre:
        sets.append(f"method.params.pretrain_iterations={pre}")
    config = REPO / "configs" / dataset / f"{method}_cpu.yaml"
    stamps: list[float] = []
    cpu: list[float] = []
    original = trainer_mod.optimization_step

    def timed(*args, **kwargs):
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())
        return original(*args, **kwargs)

    trainer_mod.optimization_step = timed
    try:
        with tempfile.TemporaryDirectory() as out:
            cfg = load_config(config, [f"output_dir={out}", *sets, *overrides])
            t0 = time.perf_counter()
            train_run(cfg, evaluate=False, verbose=False)
            wall = time.perf_counter() - t0
    finally:
        trainer_mod.optimization_step = original
    # intervals between consecutive steps; the last step's end is not stamped, drop it
    first = pre + warm - 1

    def per_step(ts: list[float]) -> float:
        return statistics.median([b - a for a, b in zip(ts, ts[1:], strict=False)][first:])

    return {"method": method, "s_it": per_step(stamps), "cpu_s_it": per_step(cpu),
            "steps": len(stamps) - 1 - first, "wall_s": wall, "threads": torch.get_num_threads()}


def _child(src: Path, method: str, steps: int, overrides: list[str], dataset: str,
           threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, __file__, "--child", method, "--steps", str(steps),
           "--dataset", dataset, "--threads", str(threads),
           *sum((["--set", o] for o in overrides), [])]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, check=False)
    if out.returncode:
        raise SystemExit(f"{method} with {src} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--steps", type=int, default=8, help="timed iterations per run")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--dataset", default="acdc")
    parser.add_argument("--threads", type=int, default=1,
                        help="train.threads of every run (1: the machine is shared)")
    parser.add_argument("--compare", type=Path, default=None,
                        help="another checkout's src folder (e.g. ../main/src): A/B interleaved")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        help="config override for this checkout's runs (repeatable)")
    parser.add_argument("--base-set", action="append", default=[], dest="base_overrides",
                        help="config override for the --compare checkout's runs")
    parser.add_argument("--metric", choices=["cpu_s_it", "s_it"], default="cpu_s_it",
                        help="cpu_s_it: process CPU seconds per iteration (with one thread, "
                        "robust on a shared machine); s_it: wall seconds")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(time_one(args.child, args.steps, args.overrides, args.dataset,
                                    args.threads)))
        return
    here = REPO / "src"
    print(f"real `ssmis train` loop, configs/{args.dataset}/<method>_cpu.yaml, "
          f"{args.steps} timed iterations x {args.repeat} repeats, median s/it, "
          f"{args.threads} thread(s), {args.metric}")
    if args.compare is None:
        print("| method | s/it (median) | runs |")
        print("|---|---|---|")
        for m in args.methods:
            runs = [_child(here, m, args.steps, args.overrides, args.dataset,
                           args.threads)[args.metric] for _ in range(args.repeat)]
            print(f"| {m} | {statistics.median(runs):.3f} | "
                  f"{', '.join(f'{r:.3f}' for r in runs)} |", flush=True)
        return
    print(f"A = {args.compare}, B = {here}")
    print("| method | A s/it | B s/it | speed-up A/B | A runs | B runs |")
    print("|---|---|---|---|---|---|")
    for m in args.methods:
        a, b = [], []
        for _ in range(args.repeat):  # interleaved: A, B, A, B, ...
            a.append(_child(args.compare, m, args.steps, args.base_overrides, args.dataset,
                            args.threads)[args.metric])
            b.append(_child(here, m, args.steps, args.overrides, args.dataset,
                            args.threads)[args.metric])
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"| {m} | {ma:.3f} | {mb:.3f} | {ma / mb:.2f}x | "
              f"{', '.join(f'{r:.3f}' for r in a)} | {', '.join(f'{r:.3f}' for r in b)} |",
              flush=True)


if __name__ == "__main__":
    main()
