"""``nifti``: the nnU-Net folder layout (``imagesTr/<case>_0000.nii.gz`` per channel,
``labelsTr/<case>.nii.gz``, optional ``imagesTs``/``labelsTs``, ``imagesUnlabeled`` and
``dataset.json``); geometry from the headers (:func:`scan_nifti`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ssmis.data.cases import CaseInfo, Catalog, note_ignored, report_problem, strip_ending
from ssmis.data.layouts.catalog import CatalogLayout
from ssmis.data.layouts.params import LabelGeometry, MaskValues, SplitRules
from ssmis.data.nifti_io import (
    CHANNEL_STEM,
    NIFTI_ENDINGS,
    dataset_json_channels,
    dataset_json_labels,
    file_ending,
    read_dataset_json,
)
from ssmis.errors import SSMISError


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

    class Params(SplitRules, MaskValues, LabelGeometry):
        """The own-data split rules, ``data.mask_values`` and ``data.label_geometry``."""

    @classmethod
    def config_problem(cls, data: Any) -> str | None:
        """SynFoC's augmentation needs 8-bit images scaled to [0, 1], then the catalog rules."""
        norms = data.normalization if isinstance(data.normalization, list) \
            else [data.normalization]
        if data.augmentation == "synfoc" and any(n != "scale" for n in norms):
            return ("data.augmentation: synfoc works on 8-bit images scaled to [0, 1]; "
                    "set data.normalization: scale")
        return super().config_problem(data)

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "imagesTr").is_dir()

    @classmethod
    def scan(cls, root: Path, data: Any = None, problems: list[str] | None = None) -> Catalog:
        return scan_nifti(root, problems)

    def legacy_schemes(self) -> list[str] | None:
        """ssmis before the normalisation record read only ``channel_names`` (not v1's
        ``modality``) and mapped only ``CT`` (to ct; every other name, or none, to zscore)."""
        meta = self.catalog.manifest
        raw = meta.get("channel_names") or {}
        if not isinstance(raw, dict) or not all(str(k).strip().isdigit() for k in raw):
            return None  # that version stopped on such a dataset.json: no run to read back
        names = [str(v) for _, v in sorted(raw.items(), key=lambda kv: int(kv[0]))]
        norm = self.data.normalization
        schemes = []
        for c in range(int(self.data.in_channels)):
            choice = norm if isinstance(norm, str) else norm[c]
            if choice == "auto":
                name = names[c] if c < len(names) else ""
                choice = "ct" if name.strip().upper() == "CT" else "zscore"
            schemes.append(choice)
        return schemes

    @classmethod
    def write_example(cls, root: Path) -> dict[str, Any]:
        from ssmis.data.phantoms import blob_volume

        for i in range(6):
            image, label = blob_volume(np.random.default_rng(i), (24, 24, 16))
            write_nifti(root / "imagesTr" / f"case{i:02d}_0000.nii.gz", image, (1.0, 1.0, 2.0))
            write_nifti(root / "labelsTr" / f"case{i:02d}.nii.gz", label, (1.0, 1.0, 2.0))
        return {"layout": cls.name, "root": str(root), "num_classes": 2, "labeled_count": 2,
                "val_count": 1, "test_count": 1, "patch_size": [16, 16, 16]}




#: the entries of a nifti dataset's root that the layout reads
NIFTI_ENTRIES = ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "imagesUnlabeled",
                 "dataset.json")


def _nifti_folder(folder: Path, catalog: Catalog, problems: list[str] | None
                  ) -> dict[str, dict[int, Path]]:
    """``<case>_<XXXX>.nii[.gz]`` files of a folder grouped by case -> {channel: path}; every
    other entry is recorded in ``catalog.ignored`` with the reason."""
    cases: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            note_ignored(catalog, path, "hidden file")
            continue
        stem = strip_ending(path.name, NIFTI_ENDINGS)
        if not path.is_file():
            note_ignored(catalog, path, "a folder inside an image folder (not read)")
            continue
        if stem is None:
            note_ignored(catalog, path, "not a NIfTI file (.nii.gz, .nii)")
            continue
        match = CHANNEL_STEM.match(stem)
        if match is None:
            report_problem(problems, f"{path}: image name must end in _0000.nii.gz (channel index, "
                           "nnU-Net naming)")
            continue
        channels = cases.setdefault(match["case"], {})
        channel = int(match["ch"])
        if channel in channels:
            report_problem(problems, f"{path}: channel {channel} of case '{match['case']}' also in "
                           f"{channels[channel].name}; keep one file")
            continue
        channels[channel] = path
    return cases


def _label_files(folder: Path, catalog: Catalog, problems: list[str] | None
                 ) -> dict[str, Path]:
    """{case: label file} of a labels folder, any NIfTI ending. A case's label in another
    format (``.mha``, ``.nrrd``, ``.png``) or in two files is a problem naming the file: a
    label that exists is never read as 'no label'."""
    labels: dict[str, Path] = {}
    if not folder.is_dir():
        return labels
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            note_ignored(catalog, path, "hidden file")
            continue
        if not path.is_file():
            note_ignored(catalog, path, "a folder inside a label folder (not read)")
            continue
        stem = strip_ending(path.name, NIFTI_ENDINGS)
        if stem is None:
            report_problem(problems, f"{path}: label file in a format the nifti layout does not "
                           "read (expected .nii.gz or .nii); convert it")
            continue
        if stem in labels:
            report_problem(problems, f"{path}: second label file of case '{stem}' (also "
                           f"{labels[stem].name}); keep one")
            continue
        labels[stem] = path
    return labels


def scan_nifti(root: Path, problems: list[str] | None = None) -> Catalog:
    """Catalog of an nnU-Net folder (v1 or v2 ``dataset.json``; ``.nii.gz`` and ``.nii`` files
    alike). Entries the layout does not read are listed in ``Catalog.ignored`` with the reason.

    Raises:
        SSMISError: no ``imagesTr/``, a dataset.json nnU-Net would not read, or (without
            ``problems``) the first problem found.
    """
    meta = read_dataset_json(root)
    meta_path = root / "dataset.json"
    file_ending(meta, meta_path)
    channel_names = dataset_json_channels(meta, meta_path)
    label_names = dataset_json_labels(meta, meta_path)
    domains = meta.get("domains") or {}
    if not (root / "imagesTr").is_dir():
        raise SSMISError(f"{root}: no imagesTr/ folder (nnU-Net layout)")
    catalog = Catalog("nifti", root, {}, channel_names, label_names, meta)
    for entry in sorted(root.iterdir()):
        if entry.name not in NIFTI_ENTRIES:
            note_ignored(catalog, entry, "not part of the nifti layout (reads "
                                    f"{', '.join(NIFTI_ENTRIES)})")
    for images_dir, labels_dir, subset in (("imagesTr", "labelsTr", "train"),
                                           ("imagesTs", "labelsTs", "test"),
                                           ("imagesUnlabeled", None, "unlabeled")):
        folder = root / images_dir
        if not folder.is_dir():
            continue
        labels = _label_files(root / labels_dir, catalog, problems) if labels_dir else {}
        for case, channels in _nifti_folder(folder, catalog, problems).items():
            expected = len(channel_names) or len(channels)
            if sorted(channels) != list(range(expected)):
                got = ", ".join(p.name for _, p in sorted(channels.items()))
                report_problem(problems, f"{folder}: case '{case}' has channel files [{got}], "
                               f"expected _0000.._{expected - 1:04d}")
                continue
            if case in catalog.cases:
                report_problem(problems, f"{folder}: case '{case}' also in "
                               f"{catalog.cases[case].images[0].parent.name}/")
                continue
            catalog.cases[case] = CaseInfo(case, [channels[k] for k in sorted(channels)],
                                           labels.get(case), domains.get(case), subset)
        for stem, path in labels.items():
            if stem not in catalog.cases or catalog.cases[stem].subset != subset:
                report_problem(problems, f"{path}: label without an image "
                               f"({images_dir}/{stem}_0000.nii.gz)")
    if not catalog.cases:
        report_problem(problems, f"{root / 'imagesTr'}: no images named <case>_0000.nii.gz")
    return catalog
