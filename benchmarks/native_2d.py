"""Thin structures in large 2D images: resize to the patch vs native-resolution crops.

Writes a synthetic vessel set (``images`` layout: grey ``size`` x ``size`` fundus-like images
with 1-3 pixel wide curved vessels, illumination gradient and noise; masks 0/255), then trains
the same supervised 2D U-Net twice with ``ssmis train``: ``data.resize: true`` (every image
zoomed to the patch, prediction zoomed back) and ``data.resize: false`` (random patch crops at
native resolution, 2D sliding-window prediction), and prints the test Dice of each. Not a test.

    python benchmarks/native_2d.py [--size 384] [--patch 96] [--iterations 400] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from scipy import ndimage

from ssmis.cli import main


def vessel_image(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(grey uint8 image, bool vessel mask) of one synthetic fundus-like picture."""
    mask = np.zeros((size, size), bool)
    for _ in range(rng.integers(6, 10)):  # random walks with momentum from near the centre
        pos = np.array([size / 2, size / 2]) + rng.normal(0, size / 10, 2)
        angle = rng.uniform(0, 2 * np.pi)
        width = int(rng.integers(1, 4))
        for _ in range(int(size * 1.5)):
            angle += rng.normal(0, 0.08)
            pos += (np.cos(angle), np.sin(angle))
            y, x = int(pos[0]), int(pos[1])
            if not (0 <= y < size and 0 <= x < size):
                break
            mask[y:y + width, x:x + width] = True
            if rng.random() < 0.004:  # a branch: continue from here in another direction
                angle += rng.choice([-0.7, 0.7])
                width = max(1, width - 1)
    yy, xx = np.mgrid[:size, :size] / size
    background = 120 + 60 * (xx - yy) + ndimage.gaussian_filter(rng.normal(0, 25, mask.shape), 6)
    image = background - 35 * ndimage.gaussian_filter(mask.astype(float), 0.6) / 0.6
    image = image + rng.normal(0, 6, mask.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def make_dataset(root: Path, size: int, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, mask = vessel_image(size, rng)
        Image.fromarray(image).save(root / "images" / f"{i:02d}_eye.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{i:02d}_eye.png")


def run(root: Path, out: Path, resize: bool, args: argparse.Namespace) -> float:
    cfg = {
        "name": f"resize_{resize}", "seed": 1, "output_dir": str(out),
        "data": {"layout": "images", "root": str(root), "num_classes": 2, "in_channels": 1,
                 "mask_values": {0: 0, 255: 1}, "labeled_count": args.labeled, "val_count": 2,
                 "test_count": args.test, "patch_size": [args.patch, args.patch],
                 "resize": resize, "cache": True},
        "model": {"name": "unet2d"},
        "train": {"iterations": args.iterations, "batch_size": 4, "lr": 0.01,
                  "schedule": {"kind": "poly", "power": 0.9},
                  "val_every": max(args.iterations // 4, 1), "threads": args.threads},
        "eval": {"unit": "voxel", "overlay_cases": 0},
    }
    path = out / f"resize_{resize}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_dir = out / f"run_{resize}"
    assert main(["train", str(path), "--run-dir", str(run_dir), "--quiet"]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return float(metrics["mean"]["dice"]["mean"])


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--labeled", type=int, default=10)
    parser.add_argument("--test", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "vessels"
        make_dataset(root, args.size, args.labeled + 2 + args.test)
        results = {resize: run(root, Path(tmp), resize, args) for resize in (True, False)}
    print(f"{args.size}x{args.size} images, patch {args.patch}, {args.iterations} iterations")
    for resize, dice in results.items():
        how = "resized to the patch" if resize else "native crops + sliding window"
        print(f"data.resize: {str(resize).lower():<5}  ({how}): test Dice {dice:.4f}")


if __name__ == "__main__":
    main_()
