"""``ssmis demo``: the embedded default run, needing no files.

It generates synthetic cardiac-like phantoms in the ACDC h5 layout (so the demo goes through the
same readers, splits, engine and metrics as a real run), then trains two methods on the *same*
few-label split: a supervised 2D U-Net on the labeled phantom slices only, and a
semi-supervised method (:data:`SSL_METHOD`) that also learns from the unlabeled slices. Each
selects its checkpoint on the validation split and is evaluated on the test split; the two
results are printed side by side with the gain. One seed each: the gain of a single run, not a
mean over seeds (``ssmis sweep`` / ``ssmis reproduce`` give that).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ssmis.config import validate_config
from ssmis.data.phantoms import make_phantom_dataset
from ssmis.engine.runfolder import METRICS_FILE

PHANTOM_VERSION = "v2"
PHANTOM_SIZE = (64, 64)
#: The semi-supervised method the demo sets beside the supervised baseline.
SSL_METHOD = "bcp"
DEFAULT_ITERATIONS = 300

DEMO_CONFIG: dict[str, Any] = {
    "name": "demo",
    "seed": 1337,
    "data": {
        "layout": "acdc_h5",
        "root": "",  # filled in with the generated folder
        "num_classes": 4,
        "class_names": {1: "RV", 2: "Myo", 3: "LV"},
        "labeled_slices": 2,  # a quarter of a phantom patient: few labels, 126 unlabeled
        "patch_size": list(PHANTOM_SIZE),
        "cache": True,
    },
    "model": {"name": "unet2d"},
    "method": {"name": "supervised"},
    "train": {
        "iterations": DEFAULT_ITERATIONS,
        "batch_size": 4,
        "lr": 0.03,
        "schedule": {"kind": "poly"},
        "val_every": 50,
        "log_every": 10,
    },
    "eval": {"unit": "voxel", "overlay_cases": 4},
}

#: What changes for the semi-supervised run (same data, split, seed, batch of labeled slices).
SSL_CHANGES: dict[str, Any] = {
    # a third of the run (any --iterations: 1 leaves self-training only)
    "method": {"name": SSL_METHOD, "params": {"pretrain_iterations": "33.3%"}},
    "train": {"unlabeled_batch_size": 4},
}


def phantom_root(out: Path) -> Path:
    """Generate the phantom dataset once; later demos reuse it (it is deterministic)."""
    root = out / "demo" / f"phantom-data-{PHANTOM_VERSION}"
    marker = root / ".complete"
    if not marker.is_file():
        make_phantom_dataset(root, seed=0, size=PHANTOM_SIZE)
        marker.write_text("ok\n")
    return root


def demo_configs(out: Path, iterations: int | None = None) -> dict[str, dict[str, Any]]:
    """The raw configs of the two demo runs, ``{"supervised": ..., SSL_METHOD: ...}``."""
    n = iterations or DEFAULT_ITERATIONS
    base = {**DEMO_CONFIG, "output_dir": str(out),
            "data": {**DEMO_CONFIG["data"], "root": str(phantom_root(out))},
            "train": {**DEMO_CONFIG["train"], "iterations": n, "val_every": max(n // 6, 1)}}
    ssl = {**base, "name": f"demo_{SSL_METHOD}", "method": dict(SSL_CHANGES["method"]),
           "train": {**base["train"], **SSL_CHANGES["train"]}}
    return {"supervised": {**base, "name": "demo_supervised"}, SSL_METHOD: ssl}


def _summary(run: Path) -> dict[str, Any]:
    return json.loads((run / METRICS_FILE).read_text())


def comparison_text(results: dict[str, dict[str, Any]], runs: dict[str, Path]) -> str:
    """The printed comparison: per method Dice per class and mean, HD95, then the gain."""
    from ssmis.eval.report import text_table

    classes = list(next(iter(results.values()))["per_class"])
    header = ["method", *[f"{c} Dice (%)" for c in classes], "mean Dice (%)",
              f"mean HD95 ({next(iter(results.values()))['unit']}, "
              f"{next(iter(results.values()))['hd95_mode']})"]
    rows = []

    def pct(stat: dict[str, Any]) -> str:
        return "n/a" if stat.get("mean") is None else f"{stat['mean'] * 100:.2f}"

    for name, r in results.items():
        hd = r["mean"]["hd95"]["mean"]
        rows.append([name, *[pct(r["per_class"][c]["dice"]) for c in classes],
                     pct(r["mean"]["dice"]), "n/a" if hd is None else f"{hd:.2f}"])
    sup, ssl = results["supervised"]["mean"]["dice"]["mean"], results[SSL_METHOD]["mean"][
        "dice"]["mean"]
    first = results["supervised"]
    lines = ["", "ssmis demo: the same few-label phantom split, supervised vs semi-supervised "
             f"(test split, {first['num_cases']} volumes, checkpoint chosen on validation)",
             *text_table(header, rows)]
    if sup is not None and ssl is not None:
        lines.append(f"gain of {SSL_METHOD} over supervised: {(ssl - sup) * 100:+.2f} Dice "
                     "points (one seed each)")
    lines += [f"run folders: {runs['supervised']}  {runs[SSL_METHOD]}"]
    return "\n".join(lines)


def run_demo(out: Path, iterations: int | None = None, verbose: bool = True) -> dict[str, Path]:
    """Train and evaluate both demo runs; print the comparison; return their run folders."""
    from ssmis.engine.run import train_run

    runs: dict[str, Path] = {}
    for name, raw in demo_configs(out, iterations).items():
        cfg = validate_config(raw, source="demo")
        if verbose:
            print(f"--- {name} ({cfg.train.iterations} iterations)")
        runs[name] = train_run(cfg, verbose=verbose)
    print(comparison_text({n: _summary(p) for n, p in runs.items()}, runs))
    return runs
