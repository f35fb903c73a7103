"""``pancreas_h5``: the NIH Pancreas-CT layout of MC-Net, CVBM and BCP-style 3D code
(``Pancreas_h5/<id>_norm.h5`` + ``train.list`` / ``test.list``).

Sources: the reader and the 62 / 20 lists of CVBM (``caoluyang0830/CVBM`` @ ``2ca4aad``,
``dataloaders/dataset.py`` class ``Pancreas``, ``Pancreas_train.py``, ``test_Pancreas.py``:
``<root>/Pancreas_h5/<id>_norm.h5``, keys ``image`` / ``label``, the first ``labelnum`` ids of
``train.list`` labeled, 96x96x96 crops, sliding window stride 16 in every axis); the files
themselves come from MC-Net's preprocessing (``ycwu1997/MC-Net`` @ ``fee453c``,
``data/Pancreas/Pre-processing.ipynb`` and ``data/Pancreas/{train,test}.list``): the 82 TCIA
scans resampled to 1 x 1 x 1 mm (B-spline image, nearest label), transposed to (X, Y, Z), CT
window level 75 / width 400 scaled to [0, 1], cropped in X and Y to the pancreas box plus 25
voxels (at least 96 wide), Z kept whole, then z-scored per volume; ``image`` and ``label`` are
both gzip-compressed float32 (the label 0.0 / 1.0). Ids are ``image0001`` .. ``image0082``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ssmis.data.layouts.h5 import write_list
from ssmis.data.layouts.la_h5 import LAH5
from ssmis.data.normalisation import ChannelNorm

#: folder of the preprocessed volumes under ``data.root``
PANCREAS_FOLDER = "Pancreas_h5"
#: file name ending after the case id
PANCREAS_SUFFIX = "_norm.h5"


def pancreas_volume_path(root: Path, case: str) -> Path:
    """``<root>/Pancreas_h5/<case>_norm.h5`` (one (X, Y, Z) volume at 1 mm, its 0/1 label)."""
    return Path(root) / PANCREAS_FOLDER / f"{case}{PANCREAS_SUFFIX}"


def write_pancreas_h5(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    """Write one case as MC-Net's notebook does: ``image`` and ``label`` float32, gzip.

    Args:
        path: the ``<id>_norm.h5`` file (its folder is created).
        image: (X, Y, Z) intensities (z-scored in the real data).
        label: (X, Y, Z) 0/1 pancreas mask, stored as float32 like the released files.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image.astype(np.float32), compression="gzip")
        f.create_dataset("label", data=label.astype(np.float32), compression="gzip")


class PancreasH5(LAH5):
    """3D volumes (X, Y, Z) at 1 mm isotropic; the first ``data.labeled_count`` ids of
    ``train.list`` are labeled (6 or 12 of 62 in CVBM's Table II), ``data.val_count``
    validation cases are carved from its end (CVBM selects on ``test.list``; ssmis keeps the 20
    test cases unseen), the rest are unlabeled: the LA rules (:class:`LAH5`) on other files."""

    name = "pancreas_h5"
    description = "NIH Pancreas-CT (MC-Net/CVBM): Pancreas_h5/<id>_norm.h5, train/test.list"
    labeled_hint = "the first ids of train.list; CVBM uses 6 or 12"
    stored_normalisation = ChannelNorm(
        "zscore", clip=(-125.0, 275.0), stored=True,
        source="MC-Net Pancreas pre-processing: CT window level 75 / width 400, then z-score "
        "per volume (ycwu1997/MC-Net data/Pancreas/Pre-processing.ipynb)")

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / PANCREAS_FOLDER).is_dir() and (root / "train.list").is_file()

    @classmethod
    def write_example(cls, root: Path) -> dict[str, Any]:
        from ssmis.data.phantoms import blob_volume

        ids = [f"image{i:04d}" for i in range(1, 8)]
        for k, case in enumerate(ids):
            image, label = blob_volume(np.random.default_rng(k), (40, 36, 34))
            write_pancreas_h5(pancreas_volume_path(root, case), image, label)
        write_list(root / "train.list", ids[:5])
        write_list(root / "test.list", ids[5:])
        return {"layout": cls.name, "root": str(root), "num_classes": 2, "labeled_count": 2,
                "val_count": 1, "patch_size": [16, 16, 16], "spacing": [1.0, 1.0, 1.0]}

    def train_path(self, case: str) -> Path:
        return pancreas_volume_path(self.root, case)
