"""Time HD95/ASD on a 200x140x88 volume (LA-sized), the figure issue #2 asks for.

Run: python benchmarks/metrics_speed.py
"""

from __future__ import annotations

import time

import numpy as np
from scipy import ndimage

from ssmis.eval.metrics import binary_metrics


def main() -> None:
    rng = np.random.default_rng(0)
    shape = (200, 140, 88)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=6)
    gt = noise > np.quantile(noise, 0.9)
    pred = ndimage.binary_dilation(gt, iterations=2) ^ (rng.random(shape) > 0.999)
    binary_metrics(pred, gt, (0.625, 0.625, 0.625))  # warm-up
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        m = binary_metrics(pred, gt, (0.625, 0.625, 0.625))
        times.append(time.perf_counter() - t0)
    print(f"volume {shape}, foreground {int(gt.sum())} / {int(pred.sum())} voxels")
    print(f"dice {m['dice']:.4f}  hd95 {m['hd95']:.3f} mm  asd {m['asd']:.3f} mm")
    print(f"all four metrics: median {np.median(times) * 1000:.0f} ms over {len(times)} runs")


if __name__ == "__main__":
    main()
