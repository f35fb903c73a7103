"""Real-data check: the NIfTI route and the h5 route give identical metrics on LA cases.

Converts a few LA sample cases (``../shared/data/la_sample``, UA-MT h5) to an nnU-Net NIfTI
folder with 0.625 mm spacing in the header, reads both back through the readers the engine
uses (``load_eval_cases`` for h5 with ``data.spacing``, ``CaseReader`` for NIfTI with the
header spacing), and computes Dice/Jaccard/HD95/ASD of the same label maps (a deterministic
perturbation of the ground truth stands in for a prediction). Not a test; prints a table.

    python benchmarks/nifti_vs_h5.py [--cases 3]
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
from ssmis.data.owndata import CaseReader, scan
from ssmis.datatools import loose_data_config
from ssmis.metrics import case_metrics

LA = Path(__file__).resolve().parents[2] / "shared" / "data" / "la_sample"
SPACING = 0.625


def fake_prediction(label: np.ndarray, k: int) -> np.ndarray:
    """The label dilated (even k) or eroded (odd k) by two voxels, shifted one voxel."""
    op = ndimage.binary_dilation if k % 2 == 0 else ndimage.binary_erosion
    return np.roll(op(label > 0, iterations=2), 1, axis=0).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=3)
    args = parser.parse_args()
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
        reader = CaseReader(scan("nifti", root),
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
