"""Time the pseudo-label largest-connected-component filter: scipy (host copy, as BCP/CVBM's
authors) against :mod:`ssmis.components` on the tensor's device, and check they agree.

Label batches are smoothed-noise blobs (several components per class), at BCP's shapes:
ACDC 12 x 256 x 256 with 3 foreground classes, LA 2 x 112 x 112 x 80 binary.

    python benchmarks/lcc_speed.py --device cuda
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy import ndimage

from ssmis.components import largest_component_per_class_torch, largest_connected_component

CASES = {"acdc": ((12, 256, 256), 3), "la": ((2, 112, 112, 80), 1)}


def blobs(shape: tuple[int, ...], classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=shape), sigma=4)
    edges = np.quantile(noise, np.linspace(0.6, 1.0, classes + 1))
    return np.digitize(noise, edges[1:-1]).astype(np.int64) * (noise > edges[0])


def scipy_route(labels: torch.Tensor, classes: list[int]) -> torch.Tensor:
    arr = labels.cpu().numpy()
    out = np.stack([largest_connected_component(a, classes) for a in arr])
    return torch.from_numpy(out).to(labels.device)


def timed(fn, labels: torch.Tensor, classes: list[int], repeats: int) -> tuple[float, torch.Tensor]:
    out = fn(labels, classes)  # warm-up
    if labels.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn(labels, classes)
    if labels.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}")
    print("| batch | classes | scipy ms | ssmis.components ms | speed-up | identical |")
    print("|---|---|---|---|---|---|")
    for key, (shape, n_classes) in CASES.items():
        labels = torch.from_numpy(np.stack([blobs(shape[1:], n_classes, s)
                                            for s in range(shape[0])])).to(device)
        classes = list(range(1, n_classes + 1))
        t_scipy, ref = timed(scipy_route, labels, classes, args.repeats)
        t_torch, got = timed(largest_component_per_class_torch, labels, classes, args.repeats)
        print(f"| {key} {'x'.join(map(str, shape))} | {n_classes} | {t_scipy * 1e3:.1f} | "
              f"{t_torch * 1e3:.1f} | {t_scipy / t_torch:.1f}x | {torch.equal(ref, got)} |",
              flush=True)


if __name__ == "__main__":
    main()
