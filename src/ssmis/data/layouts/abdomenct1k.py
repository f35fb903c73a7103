"""``abdomenct1k``: the AbdomenCT-1K release read as it is unzipped (``JunMa11/AbdomenCT-1K``,
Ma et al., TPAMI 2022): ``AbdomenCT-1K-ImagePart{1,2,3}/Case_XXXXX_0000.nii.gz`` (CT in HU) and
``Mask/Case_XXXXX.nii.gz`` with 0 background, 1 liver, 2 kidney, 3 spleen, 4 pancreas (the
label table of the authors' nnU-Net conversion, ``2-Semi-supervisedLearning/nnUNet/nnunet/
dataset_conversion/Task233_SplPanLiTSKiTS.py`` @ ``4ea363f``). An image without a mask is an
unlabeled case.

ALHVR (ICCV 2025) reports AbdomenCT-1K at 5 % / 10 % labeled, but its repository
(``ziziyao/ALHVR`` @ ``c13efae``) has no AbdomenCT-1K code, list or preprocessing: the split
here follows the own-data rules (``data.labeled_fraction``, ``val_*``, ``test_*``, drawn with
``data.split_seed``), and ``data.split_file`` takes the authors' lists when a user has them.
Volumes are read in the files' voxel order with the header spacing (mm); intensities go
through ``data.normalization`` (``ct``: clip to ``data.intensity_window``, scale to [0, 1]).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ssmis.data.cases import CaseInfo, Catalog
from ssmis.data.layouts.catalog import CatalogLayout
from ssmis.data.layouts.nifti import write_nifti
from ssmis.data.layouts.params import LabelGeometry, MaskValues, SplitRules
from ssmis.errors import SSMISError

#: image folders of the release (one per downloaded part)
IMAGE_PARTS = "AbdomenCT-1K-ImagePart*"
#: mask folder of the release
MASK_FOLDER = "Mask"
#: label values of the masks
ORGANS = {1: "liver", 2: "kidney", 3: "spleen", 4: "pancreas"}
#: every label value of the masks with its name
LABELS = {0: "background", **ORGANS}
_IMAGE = re.compile(r"^(?P<case>Case_\d{5})_0000\.nii\.gz$")
_MASK = re.compile(r"^(?P<case>Case_\d{5})\.nii\.gz$")


def _report(problems: list[str] | None, message: str) -> None:
    """Collect ``message`` in ``problems``, or raise it when no list is given."""
    if problems is None:
        raise SSMISError(message)
    problems.append(message)


def scan_abdomenct1k(root: Path, problems: list[str] | None = None) -> Catalog:
    """Catalog of the release under ``root`` (kind ``nifti``, channel ``CT``).

    Cases are ``Case_XXXXX`` in id order; those with a mask are labeled training cases, the
    others unlabeled. With a ``problems`` list, fixable problems are collected, else raised.

    Raises:
        SSMISError: no ``AbdomenCT-1K-ImagePart*`` folder, a case in two parts, a mask without
            an image, a ``.nii.gz`` file not named like the release, or no image at all.
    """
    root = Path(root)
    parts = sorted(p for p in root.glob(IMAGE_PARTS) if p.is_dir())
    if not parts:
        raise SSMISError(f"{root}: no {IMAGE_PARTS} folder (AbdomenCT-1K release, unzipped)")
    images: dict[str, Path] = {}
    for part in parts:
        for path in sorted(part.iterdir()):
            if not path.name.endswith(".nii.gz"):
                continue
            match = _IMAGE.match(path.name)
            if match is None:
                _report(problems, f"{path}: expected an image named Case_XXXXX_0000.nii.gz")
                continue
            case = match["case"]
            if case in images:
                _report(problems, f"{path}: case '{case}' also in {images[case].parent.name}/")
                continue
            images[case] = path
    masks: dict[str, Path] = {}
    mask_dir = root / MASK_FOLDER
    if mask_dir.is_dir():
        for path in sorted(mask_dir.iterdir()):
            if not path.name.endswith(".nii.gz"):
                continue
            match = _MASK.match(path.name)
            if match is None:
                _report(problems, f"{path}: expected a mask named Case_XXXXX.nii.gz")
            elif match["case"] not in images:
                _report(problems, f"{path}: mask without an image ({IMAGE_PARTS}/"
                                   f"{match['case']}_0000.nii.gz)")
            else:
                masks[match["case"]] = path
    if not images:
        _report(problems, f"{root}: no images named Case_XXXXX_0000.nii.gz in {IMAGE_PARTS}")
    cases = {case: CaseInfo(case, [images[case]], masks.get(case), None,
                            "train" if case in masks else "unlabeled")
             for case in sorted(images)}
    return Catalog("abdomenct1k", root, cases, ["CT"], dict(LABELS), {}, kind="nifti")


class AbdomenCT1K(CatalogLayout):
    """The AbdomenCT-1K release (3D, or 2D slices along ``data.slice_axis``); five classes
    (background + the four organs) unless ``data.mask_values`` merges them."""

    name = "abdomenct1k"
    description = ("AbdomenCT-1K release: AbdomenCT-1K-ImagePart*/Case_XXXXX_0000.nii.gz, "
                   "Mask/Case_XXXXX.nii.gz (liver, kidney, spleen, pancreas)")
    labeled_key = "data.labeled_fraction"

    class Params(SplitRules, MaskValues, LabelGeometry):
        """The own-data split rules (the release has no lists), ``data.mask_values`` (merge
        organs) and ``data.label_geometry``."""

    @classmethod
    def config_problem(cls, data: Any) -> str | None:
        if data.params.mask_values is None and data.num_classes != len(ORGANS) + 1:
            return (f"data.num_classes: {data.num_classes}, but AbdomenCT-1K masks hold 0..4 "
                    "(liver, kidney, spleen, pancreas): set 5, or map values with "
                    "data.mask_values")
        if (data.split_file is None and data.params.test_count is None
                and data.params.test_fraction is None):
            return ("data.test_fraction: give test_count or test_fraction for abdomenct1k "
                    "(the release has no test list)")
        return super().config_problem(data)

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / MASK_FOLDER).is_dir() and any(p.is_dir() for p in root.glob(IMAGE_PARTS))

    @classmethod
    def scan(cls, root: Path, data: Any = None, problems: list[str] | None = None) -> Catalog:
        return scan_abdomenct1k(root, problems)

    @classmethod
    def write_example(cls, root: Path) -> dict[str, Any]:
        """Seven int16 HU volumes (X, Y, Z) = 40 x 40 x 32 at 0.8 x 0.8 x 2.5 mm with uint8
        masks holding the four organs; ``Case_00801`` (ImagePart3) has no mask."""
        spacing = (0.8, 0.8, 2.5)
        shape = (40, 40, 32)
        hu = {1: 60, 2: 160, 3: 250, 4: -40}  # HU, apart so that a short run can tell them
        for k in (*range(1, 7), 801):
            rng = np.random.default_rng(k)
            label = np.zeros(shape, dtype=np.uint8)
            for organ in ORGANS:
                x, y, z = (int(rng.integers(0, n - 9)) for n in shape)
                label[x:x + 9, y:y + 9, z:z + 7] = organ
            image = rng.normal(-80.0, 20.0, shape)
            for organ, value in hu.items():
                image[label == organ] = value + rng.normal(0.0, 10.0, int((label == organ).sum()))
            case = f"Case_{k:05d}"
            part = 1 if k <= 400 else 2 if k <= 800 else 3
            write_nifti(root / f"AbdomenCT-1K-ImagePart{part}" / f"{case}_0000.nii.gz",
                        image.astype(np.int16), spacing)
            if k != 801:
                write_nifti(root / MASK_FOLDER / f"{case}.nii.gz", label, spacing)
        return {"layout": cls.name, "root": str(root), "num_classes": 5, "labeled_count": 2,
                "val_count": 1, "test_count": 1, "patch_size": [16, 16, 16],
                "normalization": "ct", "intensity_window": [-125.0, 275.0]}
