"""Pack a compact ACDC copy (< 64 MiB) for ``benchmarks/gpu_check.sh`` on a lent GPU machine.

The device tool carries at most 64 MiB of ignored files, and the full ACDC h5 set is 130 MB.
This copies, unchanged and in the same ``acdc_h5`` layout (so ``data.layout: acdc_h5`` reads
it as it is): every slice of the first patients of ``train_slices.list`` (the labeled ones of the
3- and 7-patient settings come first, the rest are unlabeled) until ``--budget-mib`` is used,
the first ``--val`` and ``--test`` volumes of ``val.list`` / ``test.list``, and the lists cut
to what was copied. The output folder (default ``benchmarks/data/acdc``) is git-ignored.

    python benchmarks/pack_gpu_data.py                      # from ../shared/data/acdc
    python benchmarks/pack_gpu_data.py --src DIR --out DIR --budget-mib 50

The test Dice of a run on this copy is on its ``--test`` volumes, not the 40 published ones.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO.parent / "shared" / "data" / "acdc"
DEFAULT_OUT = REPO / "benchmarks" / "data" / "acdc"


def _read(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _patient(slice_id: str) -> str:
    return slice_id.split("_")[0]


def pack(src: Path, out: Path, budget_mib: float = 50.0, val: int = 4, test: int = 12,
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
    parser.add_argument("--budget-mib", type=float, default=50.0)
    parser.add_argument("--val", type=int, default=4, help="validation volumes")
    parser.add_argument("--test", type=int, default=12, help="test volumes")
    args = parser.parse_args()
    info = pack(args.src, args.out, args.budget_mib, args.val, args.test)
    print(f"{args.out}: {info['slices']} training slices of {info['patients']} patients, "
          f"{info['val']} val + {info['test']} test volumes, {info['bytes'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
