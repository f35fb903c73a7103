"""Seconds per validation pass during training: the cases read from disk (every validation
before the trainer kept them) and from memory (what ``Trainer`` does after the first one).

A validation pass is ``ssmis.engine.evaluate.validation_score`` over the run's validation split:
each case predicted slice by slice (2D) or by sliding window (3D), then its Dice. The network is
the config's, untrained. Median of ``--repeat`` passes, wall seconds.

    python benchmarks/validation_speed.py configs/acdc/bcp.yaml --set data.root=../shared/data/acdc
    PYTHONPATH=/tmp/old/src python benchmarks/validation_speed.py ...   # another checkout

The script uses only what older checkouts have, so the same file times both.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from ssmis.config import apply_overrides, read_yaml, validate_config
from ssmis.engine.data import build_layout, eval_cases
from ssmis.engine.evaluate import validation_score
from ssmis.methods import build_method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = validate_config(apply_overrides(read_yaml(args.config), args.set))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    layout = build_layout(cfg)
    ids = layout.split().val
    if cfg.eval.val_max_cases:
        ids = ids[: cfg.eval.val_max_cases]
    torch.manual_seed(0)
    method = build_method(cfg).to(device)
    kept = list(eval_cases(cfg, ids, layout))
    times: dict[str, list[float]] = {"disk": [], "memory": []}
    for _ in range(args.repeat):
        for source in times:
            cases = eval_cases(cfg, ids, layout) if source == "disk" else iter(kept)
            t0 = time.perf_counter()
            score = validation_score(method, cases, cfg, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[source].append(time.perf_counter() - t0)
    print(f"{args.config} on {device}, {len(ids)} validation cases, {args.threads} thread(s), "
          f"val Dice {score.dice:.4f}")
    for source, values in times.items():
        print(f"  cases from {source}: {statistics.median(values):.2f} s per validation "
              f"(runs {', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
