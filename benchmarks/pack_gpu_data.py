"""Pack a compact ACDC copy (< 64 MiB) for ``benchmarks/gpu_check.sh`` on a lent GPU machine.

The device tool carries at most 64 MiB of ignored files, and the full ACDC h5 set is 130 MB.
This copies, unchanged and in the same ``acdc_h5`` layout (so ``data.layout: acdc_h5`` reads
it as it is): every slice of the first patients of ``train_slices.list`` (the labeled ones of the
3- and 7-patient settings come first, the rest are unlabeled) until ``--budget-mib`` is used,
the first ``--val`` and ``--test`` volumes of ``val.list`` / ``test.list``, and the lists cut
to what was copied. The output folder (default ``benchmarks/data/acdc``) is git-ignored.

    python benchmarks/pack_gpu_data.py                      # from ../shared/data/acdc
    python benchmarks/pack_gpu_data.py --src DIR --out DIR --budget-mib 44
    python benchmarks/pack_gpu_data.py --wheels             # + benchmarks/data/wheels

``--wheels`` also downloads (``pip download``, Python 3.12 manylinux wheels, this environment's
versions) the dependencies that the GPU machine's image lacks (pydantic and its helpers, MONAI,
nibabel) into ``benchmarks/data/wheels``; ``gpu_check.sh`` installs them there, offline.

The test Dice of a run on this copy is on its ``--test`` volumes, not the 40 published ones.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO.parent / "shared" / "data" / "acdc"
DEFAULT_OUT = REPO / "benchmarks" / "data" / "acdc"
WHEELS = REPO / "benchmarks" / "data" / "wheels"
#: ssmis's dependencies missing from the GPU machine's image (/work/.library/device/KINDS.md)
MISSING_THERE = ("pydantic", "pydantic_core", "annotated_types", "typing_inspection",
                 "typing_extensions", "monai", "nibabel")


def download_wheels(out: Path = WHEELS) -> list[str]:
    """``pip download`` the packages of :data:`MISSING_THERE` at this environment's versions."""
    import subprocess
    import sys
    from importlib.metadata import version

    pins = [f"{name}=={version(name)}" for name in MISSING_THERE]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    platforms = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp",
           *sum((["--platform", p] for p in platforms), []), "-d", str(out), *pins]
    subprocess.run(cmd, check=True)
    return sorted(p.name for p in out.glob("*.whl"))


def _read(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _patient(slice_id: str) -> str:
    return slice_id.split("_")[0]


def pack(src: Path, out: Path, budget_mib: float = 44.0, val: int = 4, test: int = 12,
         min_patients: int = 7) -> dict[str, int]:
    """Copy the compact subset; returns counts and the size in bytes."""
    if out.exists():
        shutil.rmtree(out)
    (out / "data" / "slices").mkdir(parents=True)
    budget = budget_mib * 2**20
    used = 0
    volumes = {"val": _read(src / "val.list")[:val], "test": _read(src / "test.list")[:test]}
    for name, ids in volumes.items():
        for case in ids:
            f = src / "data" / f"{case}.h5"
            shutil.copy2(f, out / "data" / f.name)
            used += f.stat().st_size
        (out / f"{name}.list").write_text("\n".join(ids) + "\n")
    slices = _read(src / "train_slices.list")
    order: list[str] = []
    for s in slices:  # patients in list order
        if _patient(s) not in order:
            order.append(_patient(s))
    kept: list[str] = []
    for i, patient in enumerate(order):
        group = [s for s in slices if _patient(s) == patient]
        size = sum((src / "data" / "slices" / f"{s}.h5").stat().st_size for s in group)
        if i >= min_patients and used + size > budget:
            break
        for s in group:
            shutil.copy2(src / "data" / "slices" / f"{s}.h5", out / "data" / "slices")
        used += size
        kept.extend(group)
    kept_set = set(kept)
    (out / "train_slices.list").write_text(
        "\n".join(s for s in slices if s in kept_set) + "\n")
    readme = src / "README.md"
    if readme.is_file():
        shutil.copy2(readme, out / "SOURCE_README.md")
    return {"slices": len(kept), "patients": len({_patient(s) for s in kept}),
            "val": len(volumes["val"]), "test": len(volumes["test"]), "bytes": used}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--budget-mib", type=float, default=44.0,
                        help="size of the copy (the device tool carries 64 MiB in all: the "
                        "repository, about 1 MiB, and the wheels, about 8 MiB, travel too)")
    parser.add_argument("--wheels", action="store_true",
                        help="also download the wheels the GPU machine lacks")
    parser.add_argument("--val", type=int, default=4, help="validation volumes")
    parser.add_argument("--test", type=int, default=12, help="test volumes")
    args = parser.parse_args()
    info = pack(args.src, args.out, args.budget_mib, args.val, args.test)
    print(f"{args.out}: {info['slices']} training slices of {info['patients']} patients, "
          f"{info['val']} val + {info['test']} test volumes, {info['bytes'] / 2**20:.1f} MiB")
    if args.wheels:
        names = download_wheels()
        size = sum(p.stat().st_size for p in WHEELS.glob("*.whl")) / 2**20
        print(f"{WHEELS}: {len(names)} wheels, {size:.1f} MiB: {', '.join(names)}")


if __name__ == "__main__":
    main()
