"""``acdc_nifti``: the official ACDC release (Bernard et al., IEEE TMI 2018;
https://www.creatis.insa-lyon.fr/Challenge/acdc/) read directly, so that distances are in mm
from the NIfTI headers::

    training/patient001/Info.cfg                     ED: 1 / ES: 12 / Group: DCM / ...
    training/patient001/patient001_frame01.nii.gz    end-diastole (ED) volume (X, Y, Z)
    training/patient001/patient001_frame01_gt.nii.gz its labels: 0 bg, 1 RV, 2 Myo, 3 LV
    training/patient001/patient001_frame12.nii.gz    end-systole (ES), + _gt
    training/patient001/patient001_4d.nii.gz         the cine series (not read)
    testing/patient101/...                           patients 101-150 (the challenge test set)

(the root may also be the ``database/`` folder of the 2023 re-release, or hold it). A case is
one frame, ``patientNNN_frameMM`` (the file stem); its group is the patient, so the ED and ES
frames of a patient are always in the same split.

Protocol: the SSL4MIS patient split of the 100 training patients (HiLab-git/SSL4MIS,
``data/ACDC/train_slices.list`` / ``val.list`` / ``test.list``, the lists in
``../shared/data/acdc``): 70 training patients, in the order their slices appear in
``train_slices.list`` (the first ``data.labeled_patients`` are labeled: 3 -> 099, 038, 050),
10 validation and 20 test patients; both frames of each. SSL4MIS names the frames
``frame01`` / ``frame02`` (first and second annotated frame, i.e. ED and ES); here they keep
their release names. ``data.split_file`` replaces the protocol and is checked for patients
split across lists.

2D training on slices along the through-plane axis, taken from the headers (the axis with the
largest voxel size: ACDC's 5-10 mm slices; ``data.slice_axis`` is not used); evaluation on
whole volumes (D, H, W) with the header spacing permuted the same way, in mm. Intensities:
``data.normalization: auto`` is the SSL4MIS preprocessing (per-volume min-max to [0, 1],
HiLab-git/SSL4MIS ``code/dataloaders/acdc_data_processing.py``, also in caoluyang0830/CVBM @
2ca4aad ``dataloaders/acdc_data_processing.py``); nibabel's (X, Y) in-plane order is the
transpose of the h5 slices' (Y, X) (SimpleITK), which voxel-unit metrics do not see.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ssmis.data.cases import CaseArrays, CaseInfo, Catalog
from ssmis.data.layouts.base import CaseEntry
from ssmis.data.layouts.catalog import CatalogLayout
from ssmis.data.layouts.params import LayoutParams
from ssmis.data.nifti_io import read_nifti
from ssmis.data.normalisation import ChannelNorm, normalize
from ssmis.data.reader import CaseReader
from ssmis.data.splits import Split
from ssmis.errors import SSMISError

#: SSL4MIS ACDC patients (numbers), in list order: training (as in train_slices.list),
#: validation (val.list) and test (test.list).
SSL4MIS_TRAIN = (
    99, 38, 50, 100, 58, 21, 49, 20, 72, 40, 60, 89, 4, 56, 98, 96, 31, 18, 94, 47, 48, 55, 97,
    74, 43, 41, 63, 37, 95, 54, 26, 88, 32, 69, 6, 71, 12, 73, 61, 17, 25, 10, 57, 29, 51, 5, 36,
    46, 62, 34, 76, 92, 70, 77, 67, 3, 91, 16, 14, 44, 42, 90, 53, 27, 35, 86, 23, 9, 79, 15)
SSL4MIS_VAL = (28, 85, 82, 87, 19, 30, 78, 45, 2, 39)
SSL4MIS_TEST = (11, 13, 84, 33, 93, 22, 68, 24, 83, 81, 80, 1, 7, 66, 8, 65, 75, 64, 59, 52)
CLASS_NAMES = {0: "background", 1: "RV", 2: "Myo", 3: "LV"}


def patient_name(number: int) -> str:
    """``99`` -> ``patient099``."""
    return f"patient{number:03d}"


def patient_of(case: str) -> str:
    """``patient099_frame01`` -> ``patient099``."""
    return case.split("_frame")[0]


def read_info(path: Path) -> dict[str, str]:
    """The ``key: value`` lines of an ACDC ``Info.cfg`` (ED, ES, Group, Height, NbFrame, Weight).

    Raises:
        SSMISError: the file is missing, or ED / ES is absent or not an integer.
    """
    if not path.is_file():
        raise SSMISError(f"{path}: not found (each ACDC patient folder has an Info.cfg)")
    info: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            info[key.strip()] = value.strip()
    for key in ("ED", "ES"):
        if not info.get(key, "").isdigit():
            raise SSMISError(f"{path}: '{key}' missing or not a frame number")
    return info


def through_plane_axis(zooms: tuple[float, ...], shape: tuple[int, ...]) -> int:
    """The slice axis of a 3D volume from its header: the largest voxel size (thick slices);
    for isotropic voxels, the axis with the fewest voxels."""
    spacing = [round(float(z), 4) for z in zooms[:3]]
    largest = max(spacing)
    axes = [a for a in range(3) if spacing[a] == largest]
    return min(axes, key=lambda a: (shape[a], -a))


class ACDCReader(CaseReader):
    """NIfTI case reader; with ``data.normalization: auto`` each volume is rescaled to [0, 1]
    (SSL4MIS: ``(x - min) / (max - min)``; the reader's z-score before it does not change the
    result, min-max being invariant to it)."""

    def __init__(self, catalog: Catalog, data_cfg: Any, slice_axis: int | None) -> None:
        super().__init__(catalog, data_cfg, slice_axis=slice_axis)
        self.minmax = data_cfg.normalization == "auto"

    def normalisation(self, data_cfg: Any) -> list[ChannelNorm]:
        """Min-max per volume with ``data.normalization: auto`` (SSL4MIS), else the
        configured scheme."""
        if not self.minmax:
            return super().normalisation(data_cfg)
        return [ChannelNorm("minmax", source="data.normalization auto: the SSL4MIS ACDC "
                            "preprocessing (code/dataloaders/acdc_data_processing.py)")]

    def load_raw(self, case: str, with_label: bool) -> CaseArrays:
        """Image (1, X, Y, Z) float32, label (X, Y, Z) int64, spacing (mm) from the header."""
        arrays = super().load_raw(case, with_label)
        if self.minmax:
            arrays.image = normalize(arrays.image, "minmax")
        return arrays


class ACDCNifti(CatalogLayout):
    """The ACDC release: per-patient NIfTI frames with headers, patient-grouped splits."""

    name = "acdc_nifti"
    zoom_back = "labels"  # SSL4MIS test_single_volume: the label map, nearest neighbour
    description = "official ACDC release: training/patientNNN/patientNNN_frameMM[_gt].nii.gz"
    patch_dims = (2,)
    labeled_key = "data.labeled_patients"

    class Params(LayoutParams):
        """The SSL4MIS 70/10/20 patient split: only how many patients are labeled, and where
        validation is drawn from (any other split: ``data.split_file``)."""

        labeled_patients: int | None = Field(
            default=None, ge=1, description="the first patients of the SSL4MIS training list "
                                            "labeled (3 or 7 in the tables)")
        val_pool: Literal["held_out", "unlabeled"] = Field(
            default="held_out", description="validation patients held out, or shared with the "
                                            "unlabeled list")

    @classmethod
    def config_problem(cls, data: Any) -> str | None:
        if data.split_file is None and data.params.labeled_patients is None:
            return ("data.labeled_patients: required for acdc_nifti (the first patients of "
                    "the SSL4MIS training list; 3 or 7 in the tables)")
        return super(CatalogLayout, cls).config_problem(data)

    @staticmethod
    def base(root: Path) -> Path:
        """``root``, or its ``database/`` folder (the 2023 re-release)."""
        return root / "database" if (root / "database" / "training").is_dir() else root

    @classmethod
    def detect(cls, root: Path) -> bool:
        training = cls.base(root) / "training"
        return training.is_dir() and any(training.glob("patient*/Info.cfg"))

    @classmethod
    def scan(cls, root: Path, data: Any = None, problems: list[str] | None = None) -> Catalog:
        """Catalog of the ED and ES frames of every patient of ``training/`` and ``testing/``
        (frames from ``Info.cfg``; a frame without ``_gt`` is unlabeled).

        Raises:
            SSMISError: no ``training/`` folder, a missing ``Info.cfg`` or frame file (one line
                naming it; collected into ``problems`` instead when given).
        """
        base = cls.base(root)
        if not (base / "training").is_dir():
            raise SSMISError(f"{root}: no training/ folder (ACDC release: training/patientNNN/)")
        cases: dict[str, CaseInfo] = {}
        meta: dict[str, dict[str, str]] = {}
        for subset, folder in (("train", "training"), ("test", "testing")):
            if not (base / folder).is_dir():
                continue
            for patient_dir in sorted((base / folder).glob("patient*")):
                if not patient_dir.is_dir():
                    continue
                patient = patient_dir.name
                try:
                    info = read_info(patient_dir / "Info.cfg")
                except SSMISError as err:
                    if problems is None:
                        raise
                    problems.append(str(err))
                    continue
                meta[patient] = info
                for phase in ("ED", "ES"):
                    case = f"{patient}_frame{int(info[phase]):02d}"
                    image = patient_dir / f"{case}.nii.gz"
                    if not image.is_file():
                        message = (f"{image}: not found ({phase} frame in "
                                   f"{patient_dir / 'Info.cfg'})")
                        if problems is None:
                            raise SSMISError(message)
                        problems.append(message)
                        continue
                    label = patient_dir / f"{case}_gt.nii.gz"
                    cases[case] = CaseInfo(case, [image], label if label.is_file() else None,
                                           None, subset)
        if not cases:
            message = f"{base / 'training'}: no patientNNN/ folders with Info.cfg"
            if problems is None:
                raise SSMISError(message)
            problems.append(message)
        return Catalog(cls.name, root, cases, ["MRI"], dict(CLASS_NAMES), {"info": meta},
                       kind="nifti")

    @classmethod
    def write_example(cls, root: Path) -> dict[str, Any]:
        """Patients 001-100 (+ 101 in ``testing/``) of 2 annotated frames each, 20 x 24 x 5
        voxels of 1.5625 x 1.5625 x 10 mm: int16 images, uint8 labels 0..3, an ``Info.cfg`` and
        a ``_4d`` series per patient, as the release stores them."""
        import nibabel as nib

        from ssmis.data.phantoms import _volume

        groups = ("DCM", "HCM", "MINF", "NOR", "RV")
        affine = np.diag([1.5625, 1.5625, 10.0, 1.0])
        for number in range(1, 102):
            patient = patient_name(number)
            folder = root / ("training" if number <= 100 else "testing") / patient
            folder.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(number)
            ed, es, frames = 1, int(rng.integers(8, 14)), 15
            (folder / "Info.cfg").write_text(
                f"ED: {ed}\nES: {es}\nGroup: {groups[number % 5]}\nHeight: 175.0\n"
                f"NbFrame: {frames}\nWeight: 80.0\n")
            series = []
            for frame in (ed, es):
                image, label = _volume(rng, 5, (24, 20))  # (Z, H, W) as SimpleITK reads it
                voxels = (image * 800).astype(np.int16).transpose(2, 1, 0)  # nibabel (X, Y, Z)
                stem = folder / f"{patient}_frame{frame:02d}"
                nib.save(nib.Nifti1Image(voxels, affine), f"{stem}.nii.gz")
                nib.save(nib.Nifti1Image(label.transpose(2, 1, 0).astype(np.uint8), affine),
                         f"{stem}_gt.nii.gz")
                series.append(voxels)
            nib.save(nib.Nifti1Image(np.stack(series, -1), affine),
                     str(folder / f"{patient}_4d.nii.gz"))
        return {"layout": cls.name, "root": str(root), "num_classes": 4,
                "labeled_patients": 1, "patch_size": [16, 16]}

    # -- interface --------------------------------------------------------------------------
    def slice_axis(self) -> int:
        """The through-plane axis of the first case's header (:func:`through_plane_axis`)."""
        first = next(iter(self.catalog.cases.values()))
        _, zooms, _, img = read_nifti(first.images[0], header_only=True)
        return through_plane_axis(zooms, tuple(img.shape))

    @classmethod
    def make_reader(cls, catalog: Catalog, data: Any, slice_axis: int | None = None
                    ) -> ACDCReader:
        """:class:`ACDCReader` (SSL4MIS min-max intensities with ``normalization: auto``)."""
        return ACDCReader(catalog, data, slice_axis=slice_axis)

    @property
    def reader(self) -> ACDCReader:
        """The reader with the header's through-plane axis first (2D models)."""
        if self._reader is None:
            axis = self.slice_axis() if self.data.spatial_dims == 2 else None
            self._reader = self.make_reader(self.catalog, self.data, slice_axis=axis)
        assert isinstance(self._reader, ACDCReader)
        return self._reader

    def cases(self) -> list[CaseEntry]:
        return [CaseEntry(c.case, patient_of(c.case), c.subset, c.label is not None)
                for c in self.catalog.cases.values()]

    def protocol_split(self) -> Split:
        """The SSL4MIS 70/10/20 patient split (both frames of each patient).

        Raises:
            SSMISError: ``data.labeled_patients`` out of 1..69, or a patient of the lists
                missing from ``training/`` (naming its folder).
        """
        n = self.data.params.labeled_patients
        if not 1 <= n < len(SSL4MIS_TRAIN):
            raise SSMISError(f"data.labeled_patients: {n} is out of range, expected 1.."
                             f"{len(SSL4MIS_TRAIN) - 1} (SSL4MIS training patients)")
        by_patient: dict[str, list[str]] = {}
        for case, info in self.catalog.cases.items():
            if info.subset == "train" and info.label is not None:
                by_patient.setdefault(patient_of(case), []).append(case)

        def frames(numbers: tuple[int, ...]) -> list[str]:
            out: list[str] = []
            for number in numbers:
                patient = patient_name(number)
                if len(by_patient.get(patient, [])) != 2:
                    folder = self.base(self.root) / "training" / patient
                    raise SSMISError(f"{folder}: the ED and ES frames with their _gt files are "
                                     "needed by the SSL4MIS split (or set data.split_file)")
                out += by_patient[patient]
            return out

        split = Split(labeled=frames(SSL4MIS_TRAIN[:n]), unlabeled=frames(SSL4MIS_TRAIN[n:]),
                      val=frames(SSL4MIS_VAL), test=frames(SSL4MIS_TEST))
        split.check_disjoint()
        return split

    def check_split(self, split: Split, source: str) -> None:
        """As :meth:`CatalogLayout.check_split`, and no patient in two lists (validation may
        share patients with the unlabeled list under ``data.val_pool: unlabeled``); the
        patient rule first, so its message names the patient."""
        seen: dict[str, str] = {}
        shared_ok = self.data.params.val_pool == "unlabeled"
        for name in ("labeled", "unlabeled", "val", "test"):
            for case in getattr(split, name):
                patient = patient_of(case)
                other = seen.setdefault(patient, name)
                if other != name and not (shared_ok and {other, name} == {"unlabeled", "val"}):
                    raise SSMISError(f"{source}: patient '{patient}' is in '{other}' and "
                                     f"'{name}' (a patient's frames stay in one split)")
        super().check_split(split, source)

    def check_files(self, split: Split, need_unlabeled: bool) -> list[str] | None:
        """Every case's through-plane axis (header) agrees with the reader's, then
        :meth:`CatalogLayout.check_files` (shapes, spacing order, values)."""
        if self.data.spatial_dims == 2:
            axis = self.reader.slice_axis
            ids = split.labeled + split.val + split.test + (split.unlabeled if need_unlabeled
                                                             else [])
            for case in ids:
                path = self.catalog.get(case).images[0]
                _, zooms, _, img = read_nifti(path, header_only=True)
                if through_plane_axis(zooms, tuple(img.shape)) != axis:
                    raise SSMISError(f"{path}: slice axis {through_plane_axis(zooms, img.shape)} "
                                     f"(voxel size {tuple(round(float(z), 3) for z in zooms)}) "
                                     f"differs from the dataset's axis {axis}")
        return super().check_files(split, need_unlabeled)
