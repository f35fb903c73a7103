"""Real-data check: the NIfTI route and the h5 route give identical metrics on LA cases.

Converts a few LA sample cases (``../shared/data/la_sample``, UA-MT h5) to an nnU-Net NIfTI
folder with 0.625 mm spacing in the header, reads both back through the readers the engine
uses (``load_eval_cases`` for h5 with ``data.spacing``, ``CaseReader`` for NIfTI with the
header spacing), and computes Dice/Jaccard/HD95/ASD of the same label maps (a deterministic
perturbation of the ground truth stands in for a prediction). Not a test; prints a table.

    python benchmarks/nifti_vs_h5.py [--cases 3]

With ``--train N`` it also converts the whole sample (train.list -> imagesTr, test.list ->
imagesTs), trains ``configs/la/supervised_cpu.yaml`` for N iterations *from the NIfTI copy*,
and evaluates that run's best checkpoint on the test cases through both routes; the per-case
metrics must be identical.

    python benchmarks/nifti_vs_h5.py --train 60
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ssmis.data.datasets import load_eval_cases
from ssmis.data.h5 import la_volume_path, read_list
from ssmis.data.layouts import scan_catalog
from ssmis.data.reader import CaseReader
from ssmis.datatools import loose_data_config
from ssmis.eval.metrics import case_metrics

LA = Path(__file__).resolve().parents[2] / "shared" / "data" / "la_sample"
SPACING = 0.625


def fake_prediction(label: np.ndarray, k: int) -> np.ndarray:
    """The label dilated (even k) or eroded (odd k) by two voxels, shifted one voxel."""
    op = ndimage.binary_dilation if k % 2 == 0 else ndimage.binary_erosion
    return np.roll(op(label > 0, iterations=2), 1, axis=0).astype(np.uint8)


def write_nifti(path: Path, array: np.ndarray) -> None:
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    nib.save(nib.Nifti1Image(array, affine), str(path))


def train_from_nifti(iterations: int) -> bool:
    """Train from a NIfTI copy of the LA sample; evaluate its checkpoint via NIfTI and h5."""
    import torch

    from ssmis.engine.checkpoint import load_weights
    from ssmis.engine.data import eval_cases
    from ssmis.engine.evaluate import evaluate_split
    from ssmis.engine.run import train_run
    from ssmis.experiment import load_config
    from ssmis.methods import build_method

    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "la_nifti"
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (root / sub).mkdir(parents=True)
        for listing, images, labels in (("train.list", "imagesTr", "labelsTr"),
                                        ("test.list", "imagesTs", "labelsTs")):
            ids = read_list(LA / listing)
            for case in load_eval_cases([la_volume_path(LA, i) for i in ids], ids, 2, None):
                write_nifti(root / images / f"{case.case}_0000.nii.gz", case.image)
                write_nifti(root / labels / f"{case.case}.nii.gz", case.label.astype(np.uint8))
        (root / "dataset.json").write_text(json.dumps({
            "channel_names": {"0": "MRI"}, "labels": {"background": 0, "LA": 1},
            "file_ending": ".nii.gz"}))
        common = [f"output_dir={tmp}/runs", f"train.iterations={iterations}",
                  f"train.val_every={iterations}", "eval.overlay_cases=0"]
        cfg_n = load_config(repo / "configs/la/supervised_cpu.yaml", [
            *common, "data.layout=nifti", f"data.root={root}", "data.normalization=none",
            "data.spacing=null"])
        run = train_run(cfg_n, verbose=False)
        via_nifti = json.loads((run / "metrics.json").read_text())
        cfg_h = load_config(repo / "configs/la/supervised_cpu.yaml",
                            [*common, f"data.root={LA}"])
        method = build_method(cfg_h)
        method.load_state_dict(load_weights(run / "checkpoints" / "best.safetensors"))
        ids = [c["case"] for c in via_nifti["per_case"]]
        via_h5, _ = evaluate_split(method, eval_cases(cfg_h, ids), cfg_h, torch.device("cpu"),
                                   split="test", checkpoint="best", iteration=None)
    print(f"trained {iterations} iterations from the NIfTI copy; test cases through both routes")
    print(f"{'case':<22} {'route':<6} dice     jaccard  hd95(mm) asd(mm)")
    same = True
    for a, b in zip(via_nifti["per_case"], via_h5["per_case"], strict=True):
        for route, entry in (("nifti", a), ("h5", b)):
            m = entry["metrics"]["1"]
            fmt = [f"{m[k]:.5f}" if m[k] is not None else "n/a" for k in ("dice", "jaccard")]
            fmt += [f"{m[k]:.4f}" if m[k] is not None else "n/a" for k in ("hd95", "asd")]
            print(f"{entry['case']:<22} {route:<6} {'  '.join(fmt)}")
        same &= a["metrics"] == b["metrics"]
    print(f"units: nifti route {via_nifti['unit']} ({via_nifti['spacing']}), "
          f"h5 route {via_h5['unit']} ({via_h5['spacing']})")
    print("identical per-case metrics via both routes:", same)
    return same


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--train", type=int, default=0, metavar="N",
                        help="also train N iterations from a NIfTI copy and cross-evaluate")
    args = parser.parse_args()
    if args.train and not train_from_nifti(args.train):
        raise SystemExit(1)
    ids = read_list(LA / "train.list")[: args.cases]
    h5_cases = list(load_eval_cases([la_volume_path(LA, i) for i in ids], ids, 2,
                                    [SPACING] * 3))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "imagesTr").mkdir()
        (root / "labelsTr").mkdir()
        affine = np.diag([SPACING, SPACING, SPACING, 1.0])
        for case in h5_cases:
            nib.save(nib.Nifti1Image(case.image, affine),
                     str(root / "imagesTr" / f"{case.case}_0000.nii.gz"))
            nib.save(nib.Nifti1Image(case.label.astype(np.uint8), affine),
                     str(root / "labelsTr" / f"{case.case}.nii.gz"))
        (root / "dataset.json").write_text(json.dumps({
            "channel_names": {"0": "MRI"}, "labels": {"background": 0, "LA": 1},
            "file_ending": ".nii.gz"}))
        reader = CaseReader(scan_catalog("nifti", root),
                            loose_data_config("nifti", root, num_classes=2,
                                              normalization="none"))
        print(f"{'case':<22} {'route':<6} {'spacing':<20} dice     jaccard  hd95(mm) asd(mm)")
        identical = True
        for k, h5 in enumerate(h5_cases):
            nii = reader.load(h5.case, with_label=True)
            assert np.array_equal(nii.image[0], h5.image) and np.array_equal(nii.label, h5.label)
            pred = fake_prediction(h5.label, k)
            rows = {}
            for route, label, spacing in (("h5", h5.label, h5.spacing),
                                          ("nifti", nii.label, nii.spacing)):
                m = case_metrics(pred, label, [1], spacing)[1]
                rows[route] = m
                print(f"{h5.case:<22} {route:<6} {str(spacing):<20} {m['dice']:.5f}  "
                      f"{m['jaccard']:.5f}  {m['hd95']:.4f}   {m['asd']:.4f}")
            identical &= rows["h5"] == rows["nifti"]
    print("identical metrics via both routes:", identical)
    if not identical:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
