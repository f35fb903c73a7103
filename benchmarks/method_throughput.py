"""Training throughput, peak memory and network passes per step of each method.

Builds each method from its published config (``configs/<dataset>/<method>.yaml``), feeds
random tensors of the published batch and patch, and times full training steps (method losses,
backward, the method's optimizer step, EMA hook). Two-phase methods are timed in their
self-training phase. :func:`time_steps` is shared with ``benchmarks/gpu_check.py``. A pass
is one call of a backbone's encoder; decoder calls are counted separately.

    python benchmarks/method_throughput.py --dataset acdc --methods supervised bcp cvbm
    python benchmarks/method_throughput.py --dataset la --amp both        # on a GPU
    python benchmarks/method_throughput.py --methods bcp cvbm --lcc both  # GPU vs scipy LCC
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssmis import components
from ssmis.config import read_yaml, validate_config
from ssmis.engine.fast import apply_speed_settings, batch_to_device
from ssmis.engine.step import optimization_step
from ssmis.methods import METHODS, build_method

REPO = Path(__file__).resolve().parents[1]


def _count_calls(method: nn.Module) -> dict[str, int]:
    counts = {"encoder": 0, "decoder": 0}

    def hook(kind: str):
        def _inc(*_: object) -> None:
            counts[kind] += 1
        return _inc

    for module in method.modules():
        name = type(module).__name__
        if name.endswith("Encoder"):
            module.register_forward_hook(hook("encoder"))
        elif name.endswith("Decoder"):
            module.register_forward_hook(hook("decoder"))
    return counts


def time_steps(cfg: Any, device: torch.device, steps: int, warmup: int,
               speed_settings: bool = False) -> dict[str, Any]:
    """Build ``cfg``'s method (seed 0), put it in its last phase, and time ``steps`` full
    training steps (``optimization_step``, after ``warmup`` untimed ones) on one fixed random
    batch of the config's batch and patch. ``speed_settings``: apply the engine's
    ``train.channels_last`` / ``train.compile`` / foreach settings first, as ``ssmis train``
    does. Returns it/s, peak GiB (NaN off CUDA), warm-up seconds, encoder and decoder passes per
    step, the batch and patch, and whether the last loss was finite."""
    torch.manual_seed(0)
    m = build_method(cfg).to(device).train()
    channels_last = (apply_speed_settings(m, cfg.train, device, cfg.data.spatial_dims)
                     if speed_settings else False)
    opt = m.make_optimizer(cfg.train) or torch.optim.SGD(
        list(m.trainable_parameters()), lr=1e-3, momentum=0.9, foreach=cfg.train.foreach)
    phases = m.phases()
    step = cfg.train.iterations // 2
    if len(phases) > 1:
        m.on_phase_start(phases[-1])
        step = max(step, phases[0].iterations + 1)
    size = tuple(cfg.data.patch_size)
    lb = cfg.train.batch_size
    ub = cfg.train.unlabeled_batch_size if m.uses_unlabeled else 0
    g = torch.Generator().manual_seed(0)

    def batch(n: int) -> dict[str, torch.Tensor]:
        b = {"image": torch.randn(n, cfg.data.in_channels, *size, generator=g),
             "label": torch.randint(0, cfg.data.num_classes, (n, *size), generator=g)}
        return batch_to_device(b, device, channels_last)

    labeled = batch(lb)
    unlabeled = batch(ub) if ub else None
    amp = cfg.train.amp and device.type == "cuda"
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    counts = _count_calls(m)
    t_warm = time.perf_counter()
    for _ in range(warmup):
        optimization_step(m, opt, labeled, unlabeled, step, amp)
    sync()
    t_warm = time.perf_counter() - t_warm
    counts.update(encoder=0, decoder=0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        losses = optimization_step(m, opt, labeled, unlabeled, step, amp)
    sync()
    elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"it_s": steps / elapsed, "peak_gib": peak, "warmup_s": t_warm,
            "encoder": counts["encoder"] / steps, "decoder": counts["decoder"] / steps,
            "batch": f"{lb}+{ub}", "patch": "x".join(map(str, size)),
            "finite": bool(torch.isfinite(losses["loss"]))}


def measure(dataset: str, name: str, device: torch.device, amp: bool, steps: int,
            warmup: int) -> dict[str, Any] | None:
    """:func:`time_steps` of ``configs/<dataset>/<name>.yaml`` with ``train.amp`` = ``amp``."""
    path = REPO / "configs" / dataset / f"{name}.yaml"
    if not path.is_file():
        return None
    raw = read_yaml(path)
    raw.setdefault("train", {})["amp"] = amp
    return time_steps(validate_config(raw, source=str(path)), device, steps, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["acdc", "la"], default="acdc")
    parser.add_argument("--methods", nargs="+", default=sorted(METHODS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=["off", "on", "both"], default="off")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--lcc", choices=["auto", "scipy", "both"], default="auto",
                        help="pseudo-label connected-component filter (BCP, CVBM): on the "
                             "tensor's device (auto) or through scipy on the CPU")
    args = parser.parse_args()
    device = torch.device(args.device)
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.amp]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, dataset {args.dataset}")
    backends = ["scipy", "auto"] if args.lcc == "both" else [args.lcc]
    print("| method | batch | patch | AMP (bf16) | LCC | it/s | peak GiB | encoder passes | "
          "decoder passes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in args.methods:
        for backend in backends:
            components.LCC_BACKEND = backend
            for amp in modes:
                r = measure(args.dataset, m, device, amp, args.steps, args.warmup)
                if r is None:
                    continue
                print(f"| {m} | {r['batch']} | {r['patch']} | {'on' if amp else 'off'} | "
                      f"{backend} | {r['it_s']:.2f} | {r['peak_gib']:.1f} | "
                      f"{r['encoder']:.0f} | {r['decoder']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
