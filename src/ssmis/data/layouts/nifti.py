"""``nifti``: the nnU-Net folder layout (``imagesTr/<case>_0000.nii.gz`` per channel,
``labelsTr/<case>.nii.gz``, optional ``imagesTs``/``labelsTs``, ``imagesUnlabeled`` and
``dataset.json``); geometry from the headers (:func:`ssmis.data.owndata.scan_nifti`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ssmis.data.layouts.catalog import CatalogLayout
from ssmis.data.owndata import Catalog, scan_nifti


def write_nifti(path: Path, array: np.ndarray, spacing: tuple[float, ...]) -> None:
    """Save ``array`` with a diagonal affine of ``spacing`` (mm per voxel)."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(array, affine), str(path))


class NiftiLayout(CatalogLayout):
    """Your own 3D (or 2D-in-NIfTI) data in the nnU-Net layout."""

    name = "nifti"
    description = "nnU-Net folder: imagesTr/<case>_0000.nii.gz, labelsTr/, imagesTs/, ..."

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "imagesTr").is_dir()

    @classmethod
    def scan(cls, root: Path, data: Any = None, problems: list[str] | None = None) -> Catalog:
        return scan_nifti(root, problems)

    @classmethod
    def write_example(cls, root: Path) -> dict[str, Any]:
        from ssmis.data.phantoms import blob_volume

        for i in range(6):
            image, label = blob_volume(np.random.default_rng(i), (24, 24, 16))
            write_nifti(root / "imagesTr" / f"case{i:02d}_0000.nii.gz", image, (1.0, 1.0, 2.0))
            write_nifti(root / "labelsTr" / f"case{i:02d}.nii.gz", label, (1.0, 1.0, 2.0))
        return {"layout": cls.name, "root": str(root), "num_classes": 2, "labeled_count": 2,
                "val_count": 1, "test_count": 1, "patch_size": [16, 16, 16]}
