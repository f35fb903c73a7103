"""What the CPU can still take from a step's network passes: the SSL4MIS U-Net forward +
backward at one BCP student pass (4 x 1 x 128 x 128) under each execution option, and one merged
8-slice pass against two 4-slice passes (what merging two passes of a method would buy).

    python benchmarks/unet_passes.py --threads 2            # eager, channels-last, no mkldnn, merge
    python benchmarks/unet_passes.py --threads 2 --compile  # adds torch.compile (inductor; ~1 min)

Median wall seconds of ``--repeat`` timed passes after two warm-up passes; run it on a quiet
machine (other processes inflate wall time).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from ssmis.models.unet2d import UNet2D


def _median(fn: Callable[[], None], repeat: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _train_pass(net: torch.nn.Module, x: torch.Tensor) -> None:
    out = net(x)
    (out[0] if isinstance(out, tuple | list) else out).sum().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=6)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = UNet2D(1, 4).train()
    x4, x8 = torch.randn(4, 1, 128, 128), torch.randn(8, 1, 128, 128)
    rows: list[tuple[str, float]] = []
    rows.append(("eager, 4 slices, forward + backward", _median(lambda: _train_pass(net, x4),
                                                                  args.repeat)))
    cl_net = UNet2D(1, 4).train().to(memory_format=torch.channels_last)
    cl_x = x4.contiguous(memory_format=torch.channels_last)
    rows.append(("channels-last", _median(lambda: _train_pass(cl_net, cl_x), args.repeat)))
    with torch.backends.mkldnn.flags(enabled=False):
        rows.append(("mkldnn disabled", _median(lambda: _train_pass(net, x4), args.repeat)))
    if args.compile:
        compiled = torch.compile(UNet2D(1, 4).train())
        t0 = time.perf_counter()
        _train_pass(compiled, x4)
        print(f"torch.compile: first pass {time.perf_counter() - t0:.0f} s (compilation)")
        rows.append(("torch.compile (inductor)", _median(lambda: _train_pass(compiled, x4),
                                                         args.repeat)))
    rows.append(("two 4-slice passes", _median(
        lambda: [_train_pass(net, h) for h in (x8[:4], x8[4:])], args.repeat)))
    rows.append(("one 8-slice pass", _median(lambda: _train_pass(net, x8), args.repeat)))
    with torch.no_grad():
        rows.append(("two 4-slice passes, no gradient", _median(
            lambda: [net(h) for h in (x8[:4], x8[4:])], args.repeat)))
        rows.append(("one 8-slice pass, no gradient", _median(lambda: net(x8), args.repeat)))
    print(f"SSL4MIS U-Net at 128 x 128, {args.threads} thread(s), median of {args.repeat}")
    print("| pass | s |\n|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
