"""Training throughput of the backbones (iterations/s of forward + loss + backward + SGD step).

Published batch/patch by default: 2D U-Net at 12+12 slices of 256x256 (the SSL batch of
SSL4MIS/BCP/CVBM on ACDC, all 24 slices through the network) and the 3D V-Net at batch 4 of
112x112x80 (UA-MT on LA). Random tensors: this measures compute, not data loading.

    python benchmarks/throughput.py                 # both, published sizes
    python benchmarks/throughput.py --only unet2d --batch 8 --size 128 128
"""

from __future__ import annotations

import argparse
import time

import torch

from ssmis.losses import cross_entropy, dice_loss
from ssmis.models import build_model, count_parameters

DEFAULTS = {
    "unet2d": {"batch": 24, "size": (256, 256), "classes": 4, "options": {}},
    "vnet3d": {"batch": 4, "size": (112, 112, 80), "classes": 2,
               "options": {"normalization": "batchnorm"}},
}


def measure(name: str, batch: int, size: tuple[int, ...], classes: int, options: dict,
            steps: int, warmup: int, device: torch.device) -> dict[str, float]:
    net = build_model(name, 1, classes, **options).to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 1, *size, device=device)
    y = torch.randint(0, classes, (batch, *size), device=device)

    def step() -> None:
        logits = net(x)
        loss = 0.5 * cross_entropy(logits, y) + 0.5 * dice_loss(torch.softmax(logits, 1), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    return {"it_s": steps / elapsed, "s_per_it": elapsed / steps,
            "params": count_parameters(net)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(DEFAULTS))
    parser.add_argument("--batch", type=int)
    parser.add_argument("--size", type=int, nargs="+")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    for name, spec in DEFAULTS.items():
        if args.only and name != args.only:
            continue
        batch = args.batch or spec["batch"]
        size = tuple(args.size) if args.size else spec["size"]
        r = measure(name, batch, size, spec["classes"], spec["options"], args.steps,
                    args.warmup, device)
        shape = "x".join(map(str, size))
        print(f"{name:7s} batch {batch:3d} @ {shape:12s} params {r['params']:>10,d}  "
              f"{r['it_s']:.3f} it/s  ({r['s_per_it']:.2f} s/it)")


if __name__ == "__main__":
    main()
