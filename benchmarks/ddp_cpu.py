"""1 process vs 2 DDP processes (gloo, CPU) on the demo data: it/s and final test Dice.

Trains a supervised 2D U-Net on the ``ssmis demo`` phantoms (4 labeled phantom patients,
global batch 8, lr 0.03 poly, seed 1337; pinned here, independent of the demo's own settings)
three ways with the same seed and global batch:

* ``1 proc x 1 thread`` and ``1 proc x 2 threads``: ``ssmis train`` in one process;
* ``2 procs x 1 thread``: ``python -m torch.distributed.run --standalone --nproc-per-node 2 -m
  ssmis train ...`` (gloo; each process gets 4 of the 8 samples).

Usage: ``python benchmarks/ddp_cpu.py [--iterations 400] [--out runs/ddp_cpu]``; prints a
Markdown table (the one in docs/benchmarks.md). The wall time includes start-up, the 4
validations and checkpoints, but not the final test evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ssmis.demo import DEMO_CONFIG, phantom_root


def run(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of all the processes it started)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return time.perf_counter() - t0, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("runs/ddp_cpu"))
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    raw = {**DEMO_CONFIG, "output_dir": str(out), "method": {"name": "supervised"}}
    # pinned here (the demo's own settings may change): 4 labeled phantom patients, batch 8
    data = {k: v for k, v in DEMO_CONFIG["data"].items() if k != "labeled_slices"}
    raw["data"] = {**data, "labeled_patients": 4, "root": str(phantom_root(out))}
    raw["train"] = {**DEMO_CONFIG["train"], "batch_size": 8, "iterations": args.iterations,
                    "val_every": max(args.iterations // 4, 1), "device": "cpu"}
    config = out / "demo.yaml"
    config.write_text(yaml.safe_dump(raw))
    ssmis = [sys.executable, "-m", "ssmis", "train", str(config)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node=2", "-m", "ssmis", "train", str(config)]
    setups = [("1 proc x 1 thread", ssmis, 1), ("1 proc x 2 threads", ssmis, 2),
              ("2 procs x 1 thread (DDP, gloo)", torchrun, 1)]
    rows = []
    for label, cmd, threads in setups:
        run_dir = out / label.split(" (")[0].replace(" ", "_")
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        load = os.getloadavg()[0]
        total, cpu = run([*cmd, f"train.threads={threads}", "--run-dir", str(run_dir),
                          "--quiet"], cwd=out)
        summary = json.loads((run_dir / "train_summary.json").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text())
        wall = summary["timing"]["wall_s"]
        rows.append((label, summary["world_size"], summary["batch_per_process"]["labeled"],
                     args.iterations / wall, wall, total, cpu, metrics["mean"]["dice"]["mean"],
                     summary["best_iteration"], metrics["processes"], load,
                     os.getloadavg()[0]))
    print("| setup | processes | batch per process | it/s (training loop) | loop wall s | "
          "command wall s | command CPU s | test Dice (mean of classes) | best iteration | "
          "evaluated by | load avg before / after |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, world, per, its, wall, total, cpu, dice, best, procs, l0, l1 in rows:
        print(f"| {label} | {world} | {per} | {its:.2f} | {wall:.1f} | {total:.1f} | "
              f"{cpu:.0f} | {100 * dice:.2f} % | {best} | {procs} | {l0:.1f} / {l1:.1f} |")


if __name__ == "__main__":
    main()
