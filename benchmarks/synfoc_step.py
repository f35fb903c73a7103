"""Time per SynFoC training step with the real SAM ViT-B geometry (random weights).

Builds the ``synfoc`` method (SAM ViT-B + LoRA rank 4 at ``--sam-size``, default 512, and the
U-Net at ``--unet-size``), runs ``--warmup`` + ``--steps`` full training steps (forward of the
teachers and students, backward, AdamW + SGD step, EMA updates) on random tensors and prints the
parameter counts (total, trainable; SAM, U-Net), the mean time per step and, on CUDA, the peak
memory. Needs ``pip install 'ssmis[sam]'``.

    python benchmarks/synfoc_step.py                     # CPU, batch 1 (+1 unlabeled)
    python benchmarks/synfoc_step.py --device cuda --batch 4 --amp
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ssmis.config import validate_config
from ssmis.engine.step import optimization_step
from ssmis.methods import build_method
from ssmis.models import count_parameters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=1, help="labeled = unlabeled batch size")
    ap.add_argument("--sam-size", type=int, default=512)
    ap.add_argument("--unet-size", type=int, default=256)
    ap.add_argument("--num-classes", type=int, default=2, help="incl. background")
    ap.add_argument("--unet-widths", type=int, nargs=5, default=[64, 128, 256, 512, 1024],
                    help="U-Net widths (SynFoC's milesial U-Net: 64..1024, 31 M parameters)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = args.unet_size
    cfg = validate_config({
        "data": {"layout": "images", "root": str(Path.cwd()), "num_classes": args.num_classes,
                 "labeled_count": 1, "val_count": 1, "patch_size": [size, size]},
        "model": {"name": "unet2d", "options": {"widths": args.unet_widths, "dropout": False,
                                                "up_types": "transpose"}},
        "method": {"name": "synfoc", "params": {"sam": {"image_size": args.sam_size}}},
        "train": {"iterations": 30000, "batch_size": args.batch,
                  "unlabeled_batch_size": args.batch, "lr": 0.03},
    })
    method = build_method(cfg).to(device)
    optimizer = method.make_optimizer(cfg.train)
    print(f"device {device}, batch {args.batch}+{args.batch}, SAM {args.sam_size} px, "
          f"U-Net {size} px, {args.num_classes} classes")
    for name, module in (("SAM-LoRA student", method.sam), ("U-Net student", method.unet),
                         ("whole method", method)):
        total = count_parameters(module)
        trainable = count_parameters(module, trainable_only=True)
        print(f"  {name:17s} total {total / 1e6:8.2f} M   trainable {trainable / 1e6:7.2f} M")

    def batch() -> dict[str, torch.Tensor]:
        label = torch.randint(0, args.num_classes, (args.batch, size, size), device=device)
        return {"image": torch.rand(args.batch, 1, size, size, device=device), "label": label}

    method.train()
    amp = args.amp and device.type == "cuda"
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(args.warmup + args.steps):
        lab, unl = batch(), batch()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        losses = optimization_step(method, optimizer, lab, unl, step, amp)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        if step >= args.warmup:
            times.append(dt)
        print(f"  step {step}: {dt:.3f} s, loss {float(losses['loss'].detach()):.4f}"
              f"{' (warm-up)' if step < args.warmup else ''}")
    mean = sum(times) / max(len(times), 1)
    print(f"time per step: {mean:.3f} s (mean of {len(times)})")
    if device.type == "cuda":
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
