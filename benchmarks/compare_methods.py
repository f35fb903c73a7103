"""Train several methods under one budget and print their test metrics side by side.

Each config is trained with the same overrides (data root, device, workers...), evaluated on the
test split with the best-by-validation checkpoint, and summarised in one Markdown table:

    python benchmarks/compare_methods.py configs/acdc/supervised_cpu.yaml \\
        configs/acdc/{mean_teacher,uamt,bcp,cvbm}_cpu.yaml --out runs/compare \\
        --set data.root=../shared/data/acdc

The table and a JSON copy go to ``<out>/comparison.md`` and ``<out>/comparison.json``. With
``--seeds 1337 1 2 3`` every config is trained at each seed, and the table of ``ssmis compare``
(mean ± sample std over seeds; per-domain columns for mixed-domain runs) is added:

    python benchmarks/compare_methods.py configs/busi/{supervised,bcp,synfoc}_cpu.yaml \
        --seeds 1337 1 2 3 --out runs/busi_compare
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ssmis.engine.run import train_run
from ssmis.eval.compare import compare_runs
from ssmis.experiment import load_config

METRICS = ("dice", "jaccard", "hd95", "asd")


def _cell(stat: dict[str, Any] | None, percent: bool) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    scale = 100.0 if percent else 1.0
    return f"{stat['mean'] * scale:.2f} ± {stat['std'] * scale:.2f}"


def run_one(config: Path, overrides: list[str], out: Path) -> dict[str, Any]:
    cfg = load_config(config, [f"output_dir={out}", *overrides])
    t0 = time.perf_counter()
    run = train_run(cfg, verbose=False)
    wall = time.perf_counter() - t0
    metrics = json.loads((run / "metrics.json").read_text())
    summary = json.loads((run / "train_summary.json").read_text())
    return {"config": str(config), "method": cfg.method.name, "run": str(run), "wall_s": wall,
            "iterations": summary["iterations"], "best_iteration": summary["best_iteration"],
            "best_val_dice": summary["best_val_dice"], "unit": metrics["unit"],
            "mean": metrics["mean"], "per_class": metrics["per_class"]}


def table(rows: list[dict[str, Any]]) -> str:
    unit = rows[0]["unit"] if rows else "voxel"
    head = ["method", "Dice (%)", "Jaccard (%)", f"HD95 ({unit})", f"ASD ({unit})",
            "best val Dice", "best iter", "wall (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"]] + [_cell(r["mean"].get(m), m in ("dice", "jaccard"))
                                 for m in METRICS]
        cells += [f"{r['best_val_dice']:.4f}", str(r["best_iteration"]), f"{r['wall_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override applied to every config")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="train every config at each of these seeds (default: its own)")
    args = parser.parse_args()
    rows = []
    for config in args.configs:
        for seed in args.seeds or [None]:
            extra = [] if seed is None else [f"seed={seed}"]
            rows.append(run_one(config, [*args.overrides, *extra], args.out))
            print(f"{rows[-1]['method']}: test Dice {rows[-1]['mean']['dice']['mean']:.4f} "
                  f"({rows[-1]['wall_s']:.0f} s)", flush=True)
    md = table(rows)
    if args.seeds:
        md += "\n\n" + compare_runs([Path(r["run"]) for r in rows], markdown=True)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "comparison.md").write_text(md + "\n")
    (args.out / "comparison.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
