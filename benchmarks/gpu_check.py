"""The prepared GPU check (``benchmarks/gpu_check.sh`` calls this): it/s and peak memory of every
method at the published ACDC and LA batch, then the whole ``ssmis train`` loop for a given number
of minutes with its it/s and the test Dice it reached.

1. Step throughput: each method built from ``configs/<acdc|la>/<method>.yaml`` (published
   batch and patch), random tensors on the device, full training steps as the engine runs them
   (``optimization_step``: losses, backward, optimizer, EMA), two-phase methods in self-training.
   ``--variants plain fast`` times each method twice in the same process: ``plain`` = the paths
   before issue 11 (one EMA/SGD update per tensor, no channels-last, ALHVR prototypes from
   upsampled features), ``fast`` = the engine's defaults (foreach, channels-last on CUDA, ALHVR
   low-resolution prototypes); ``nondet`` = fast with ``train.deterministic=false`` (cuDNN
   autotuning: the cost of the default), ``compile`` adds ``train.compile``, ``bf16``
   ``train.amp``.
2. Batch route: batches per second of the ACDC training stream at the published 12+12 @
   256x256 from the packed data, by the DataLoader (``--workers`` processes, scipy
   augmentation, copied to the device) and held and augmented on the device
   (``data.on_device``, the default on CUDA); the same batches either way.
3. The whole loop: ``python -m ssmis train configs/acdc/<loop-method>.yaml`` on the packed data
   (``benchmarks/pack_gpu_data.py``) with ``train.iterations`` chosen from the step throughput so
   the run fits ``--minutes`` (pre-training a quarter of it, as the published 10k of 40k),
   validation 4 times on 2 volumes, then the test evaluation; prints the loop's it/s (from the
   run's ``train_summary.json``) and the test Dice (``metrics.json``).

``--quick``: the CPU mode CI runs (``tests/test_speed.py``): 32x32 / 32x32x16 patches, batch
2+2, narrow networks, one timed step, a 6-iteration loop on phantom data; seconds.

    python benchmarks/gpu_check.py --minutes 2.5               # on the GPU machine
    python benchmarks/gpu_check.py --quick                     # CPU, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

# the sibling script (python puts benchmarks/ on sys.path when this file runs)
from method_throughput import time_steps

from ssmis.config import apply_overrides, read_yaml, validate_config
from ssmis.engine.fast import batch_to_device
from ssmis.methods import alhvr, teacher

REPO = Path(__file__).resolve().parents[1]
METHODS = ["supervised", "mean_teacher", "uamt", "cps", "bcp", "cvbm", "cml", "alhvr"]
QUICK = {"acdc": {"data.patch_size": [32, 32], "model.options": {"widths": [4, 4, 8, 8, 8]}},
         "la": {"data.patch_size": [32, 32, 16], "model.options": {"n_filters": 2}}}


@contextmanager
def variant(name: str):
    """Module switches of the plain paths (restored after)."""
    saved = (teacher.EMA_FOREACH, alhvr.FAST_PROTOTYPES, torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    teacher.EMA_FOREACH = name != "plain"
    alhvr.FAST_PROTOTYPES = name != "plain"
    # train.deterministic (the default) = cudnn.deterministic, no cudnn.benchmark
    torch.backends.cudnn.deterministic = name != "nondet"
    torch.backends.cudnn.benchmark = name == "nondet"
    try:
        yield
    finally:
        (teacher.EMA_FOREACH, alhvr.FAST_PROTOTYPES, torch.backends.cudnn.deterministic,
         torch.backends.cudnn.benchmark) = saved


def _config(dataset: str, method: str, quick: bool, var: str, device: str) -> Any:
    raw = read_yaml(REPO / "configs" / dataset / f"{method}.yaml")
    sets = [f"train.device={device}"]
    if quick:
        q = QUICK[dataset]
        sets += [f"data.patch_size={json.dumps(q['data.patch_size'])}",
                 "train.batch_size=2", "train.unlabeled_batch_size=2"]
        raw.setdefault("model", {}).setdefault("options", {}).update(q["model.options"])
    plain = var == "plain"
    sets += [f"train.foreach={str(not plain).lower()}",
             f"train.channels_last={'false' if plain else 'auto'}",
             f"train.compile={str(var == 'compile').lower()}",
             f"train.amp={str(var == 'bf16').lower()}"]
    return validate_config(apply_overrides(raw, sets), source=f"configs/{dataset}/{method}.yaml")


def step_throughput(dataset: str, method: str, var: str, device: torch.device, steps: int,
                    warmup: int, quick: bool) -> dict[str, Any] | None:
    """it/s and peak memory of ``steps`` training steps (after ``warmup``)."""
    if not (REPO / "configs" / dataset / f"{method}.yaml").is_file():
        return None
    cfg = _config(dataset, method, quick, var, device.type)
    with variant(var):
        return time_steps(cfg, device, steps, warmup, speed_settings=True)


def whole_loop(method: str, data: Path, iterations: int, out: Path, device: str,
               quick: bool, extra: list[str]) -> dict[str, Any]:
    """``python -m ssmis train`` for ``iterations`` on the packed data; its it/s and test Dice."""
    run_dir = out / f"loop_{method}"
    pre = max(iterations // 4, 1)
    sets = [f"data.root={data}", f"train.iterations={iterations}", f"train.device={device}",
            f"method.params.pretrain_iterations={pre}",
            f"train.val_every={max(iterations // 4, 1)}", "eval.val_max_cases=2",
            "eval.overlay_cases=0", "train.checkpoint_minutes=0", f"output_dir={out}", *extra]
    if quick:  # narrow network, 32x32, one thread, validation at the two phase ends only
        sets += ["data.patch_size=[32,32]", "train.batch_size=2", "train.unlabeled_batch_size=2",
                 "data.num_workers=0", "data.labeled_patients=2", "train.threads=1",
                 "model.options.widths=[4,4,8,8,8]", f"train.val_every={iterations}",
                 "eval.val_max_cases=1"]
    config = REPO / "configs" / "acdc" / f"{method}.yaml"
    cmd = [sys.executable, "-m", "ssmis", "train", str(config), *sets, "--run-dir", str(run_dir),
           "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"the whole-loop run failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
    summary = json.loads((run_dir / "train_summary.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    s_it = summary["timing"]["s_per_iteration"]
    return {"iterations": summary["iterations"], "it_s": 1.0 / s_it if s_it else float("nan"),
            "train_wall_s": summary["timing"]["wall_s"], "wall_s": wall,
            "peak_gib": summary["timing"].get("peak_gpu_memory_gib"),
            "test_dice": metrics["mean"]["dice"]["mean"], "best_val_dice":
                summary.get("best_val_dice"), "command": " ".join(cmd)}


def batch_route(data: Path, device: torch.device, on_device: bool, workers: int, batches: int,
                quick: bool) -> float:
    """Training batches per second of ``configs/acdc/bcp.yaml``'s stream on ``data``, on the
    device, by the DataLoader route or the on-device route (after 3 warm-up batches)."""
    from ssmis.engine.data import build_layout, train_batches

    raw = read_yaml(REPO / "configs" / "acdc" / "bcp.yaml")
    sets = [f"data.root={data}", f"data.on_device={str(on_device).lower()}",
            f"data.num_workers={0 if quick else workers}"]
    if quick:
        sets += ["data.patch_size=[32,32]", "train.batch_size=2", "train.unlabeled_batch_size=2",
                 "data.labeled_patients=2"]
    cfg = validate_config(apply_overrides(raw, sets))
    layout = build_layout(cfg)
    stream = train_batches(cfg, layout.split(), cfg.train.unlabeled_batch_size, 0,
                           layout=layout, device=device)
    for i in range(3 + batches):
        if i == 3:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
        labeled, unlabeled = next(stream)
        labeled = batch_to_device(labeled, device)
        unlabeled = batch_to_device(unlabeled, device) if unlabeled else None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batches / (time.perf_counter() - t0)


def _phantom_acdc(root: Path) -> Path:
    from ssmis.data.phantoms import make_phantom_dataset

    make_phantom_dataset(root, num_train_volumes=4, num_val=2, num_test=2, slices=4,
                         size=(48, 48), seed=3)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU mode for CI: tiny, seconds")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--methods", nargs="*", default=METHODS,
                        help="methods of the step table (none: skip it)")
    parser.add_argument("--datasets", nargs="+", default=["acdc", "la"])
    parser.add_argument("--variants", nargs="+", default=["plain", "fast", "nondet"],
                        choices=["plain", "fast", "nondet", "compile", "bf16"])
    parser.add_argument("--steps", type=int, default=None, help="timed steps (GPU 10, quick 1)")
    parser.add_argument("--warmup", type=int, default=None, help="GPU 3, quick 1")
    parser.add_argument("--workers", type=int, default=8,
                        help="data.num_workers of the DataLoader route and of the whole-loop "
                             "run, which on CUDA takes the device route (GPU machine: 16 cores)")
    parser.add_argument("--minutes", type=float, default=2.5,
                        help="wall time for the whole-loop run (0: skip it)")
    parser.add_argument("--loop-method", default="bcp")
    parser.add_argument("--loop-variant", default="fast", choices=["fast", "compile", "bf16"])
    parser.add_argument("--data", type=Path, default=REPO / "benchmarks" / "data" / "acdc",
                        help="packed ACDC copy (benchmarks/pack_gpu_data.py)")
    parser.add_argument("--phantom-root", type=Path, default=None,
                        help="--quick: phantom data to use (default: generated)")
    parser.add_argument("--out", type=Path, default=None, help="run folders (default: temp)")
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    steps = args.steps or (1 if args.quick else 10)
    warmup = args.warmup or (1 if args.quick else 3)
    if args.quick:
        torch.set_num_threads(1)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# gpu_check: {name}, torch {torch.__version__}{' (quick CPU mode)' * args.quick}")
    rates: dict[tuple[str, str, str], float] = {}
    if args.methods:
        print("\n## Step throughput (random tensors, published batch and patch"
              f"{'; quick: tiny' * args.quick}), {steps} steps after {warmup} warm-up\n")
        print("| dataset | method | batch | patch | variant | it/s | peak GiB | warm-up s |")
        print("|---|---|---|---|---|---|---|---|")
        for dataset in args.datasets:
            for method in args.methods:
                for var in args.variants:
                    try:
                        r = step_throughput(dataset, method, var, device, steps, warmup, args.quick)
                    except torch.OutOfMemoryError:
                        print(f"| {dataset} | {method} | | | {var} | OOM | | |", flush=True)
                        torch.cuda.empty_cache()
                        continue
                    except Exception as err:  # one failing variant must not cost the whole check
                        if args.quick:
                            raise
                        line = f"{type(err).__name__}: {err}".splitlines()[0][:120]
                        print(f"| {dataset} | {method} | | | {var} | failed: {line} | | |",
                              flush=True)
                        continue
                    if r is None:
                        continue
                    rates[(dataset, method, var)] = r["it_s"]
                    print(f"| {dataset} | {method} | {r['batch']} | {r['patch']} | {var} | "
                          f"{r['it_s']:.2f} | {r['peak_gib']:.2f} | {r['warmup_s']:.1f} |"
                          f"{'' if r['finite'] else ' non-finite loss!'}", flush=True)
        if "plain" in args.variants and len(args.variants) > 1:
            print("\n| dataset | method | " + " | ".join(f"{v} / plain" for v in args.variants
                                                        if v != "plain") + " |")
            print("|---|---|" + "---|" * (len(args.variants) - 1))
            for dataset in args.datasets:
                for method in args.methods:
                    base = rates.get((dataset, method, "plain"))
                    if not base:
                        continue
                    cells = [f"{rates[(dataset, method, v)] / base:.2f}x"
                             if (dataset, method, v) in rates else "n/a"
                             for v in args.variants if v != "plain"]
                    print(f"| {dataset} | {method} | " + " | ".join(cells) + " |")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        data = args.data
        if args.quick:
            data = args.phantom_root or _phantom_acdc(out / "phantoms")
        elif not (data / "train_slices.list").is_file():
            raise SystemExit(f"{data}: no packed data; run benchmarks/pack_gpu_data.py")
        n = 3 if args.quick else 100
        print(f"\n## Batch route: ACDC training batches/s (12+12 @ 256x256{'; quick' * args.quick}"
              f"), {n} batches\n")
        print("| route | batches/s |\n|---|---|")
        workers = 0 if args.quick else args.workers
        for on_device, label in ((False, f"DataLoader, {workers} worker(s)"),
                                 (True, "on the device (data.on_device)")):
            rate_b = batch_route(data, device, on_device, args.workers, n, args.quick)
            print(f"| {label} | {rate_b:.1f} |", flush=True)
        if args.minutes <= 0:
            return
        if args.quick:
            iterations = 6
        else:
            rate = rates.get(("acdc", args.loop_method, args.loop_variant)) or rates.get(
                ("acdc", args.loop_method, "fast"), 5.0)
            # the loop also loads data, validates 4 times and tests: budget half of the time
            iterations = max(int(args.minutes * 60 * rate * 0.5), 8)
        extra = {"compile": ["train.compile=true"], "bf16": ["train.amp=true"]}.get(
            args.loop_variant, [])
        if not args.quick:
            extra.append(f"data.num_workers={args.workers}")
        r = whole_loop(args.loop_method, data, iterations, out, device.type, args.quick, extra)
        print(f"\n## Whole loop: `ssmis train configs/acdc/{args.loop_method}.yaml`, "
              f"{r['iterations']} iterations ({args.loop_variant})\n")
        print(f"whole loop: {r['it_s']:.2f} it/s over {r['iterations']} iterations "
              f"(training {r['train_wall_s']:.0f} s incl. validation, whole command "
              f"{r['wall_s']:.0f} s incl. start-up and test), peak GPU memory "
              f"{r['peak_gib']} GiB, best val Dice {r['best_val_dice']}, test Dice "
              f"{100 * r['test_dice']:.2f} %")
        print(f"command: {r['command']}")


if __name__ == "__main__":
    main()
