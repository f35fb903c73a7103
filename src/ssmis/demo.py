"""``ssmis demo``: the embedded default run, needing no files.

It generates synthetic cardiac-like phantoms in the ACDC h5 layout (so the demo goes through the
same readers, splits, engine and metrics as a real run), trains a supervised 2D U-Net on two
labeled phantom "patients", selects the checkpoint on the validation split and evaluates it on
the test split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssmis.config import validate_config
from ssmis.data.phantoms import make_phantom_dataset

PHANTOM_VERSION = "v2"
PHANTOM_SIZE = (64, 64)

DEMO_CONFIG: dict[str, Any] = {
    "name": "demo",
    "seed": 1337,
    "data": {
        "layout": "acdc_h5",
        "root": "",  # filled in with the generated folder
        "num_classes": 4,
        "class_names": {1: "RV", 2: "Myo", 3: "LV"},
        "labeled_patients": 4,
        "patch_size": list(PHANTOM_SIZE),
        "cache": True,
    },
    "model": {"name": "unet2d"},
    "method": {"name": "supervised"},
    "train": {
        "iterations": 400,
        "batch_size": 8,
        "lr": 0.03,
        "schedule": {"kind": "poly"},
        "val_every": 100,
        "log_every": 10,
    },
    "eval": {"unit": "voxel", "overlay_cases": 4},
}


def phantom_root(out: Path) -> Path:
    """Generate the phantom dataset once; later demos reuse it (it is deterministic)."""
    root = out / "demo" / f"phantom-data-{PHANTOM_VERSION}"
    marker = root / ".complete"
    if not marker.is_file():
        make_phantom_dataset(root, seed=0, size=PHANTOM_SIZE)
        marker.write_text("ok\n")
    return root


def run_demo(out: Path, iterations: int | None = None, verbose: bool = True) -> Path:
    from ssmis.engine.run import train_run

    raw = {**DEMO_CONFIG, "output_dir": str(out)}
    raw["data"] = {**DEMO_CONFIG["data"], "root": str(phantom_root(out))}
    if iterations is not None:
        raw["train"] = {**DEMO_CONFIG["train"], "iterations": iterations,
                        "val_every": max(iterations // 4, 1)}
    cfg = validate_config(raw, source="demo")
    return train_run(cfg, verbose=verbose)
