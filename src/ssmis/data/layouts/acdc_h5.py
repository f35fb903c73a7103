"""``acdc_h5``: the SSL4MIS ACDC layout (``data/slices/<patient>_frameNN_slice_K.h5`` training
slices, ``data/<patient>_frameNN.h5`` volumes, ``train_slices.list`` / ``val.list`` /
``test.list``), the one BCP, CVBM, CML and ALHVR train on (source: HiLab-git/SSL4MIS,
``code/dataloaders/dataset.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from ssmis.data.h5 import acdc_slice_path, acdc_volume_path, read_list
from ssmis.data.layouts.base import CaseEntry
from ssmis.data.layouts.h5 import H5Layout, check_root, read_split_list
from ssmis.data.layouts.params import LayoutParams
from ssmis.data.normalisation import ChannelNorm
from ssmis.data.splits import Split, patient_of_slice
from ssmis.errors import SSMISError


def acdc_split(
    root: Path, labeled_patients: int | None = None, labeled_slices: int | None = None
) -> Split:
    """SSL4MIS ACDC split: the first patients (or slices) of ``train_slices.list`` are labeled.

    Patients are taken in the order they first appear in the list, and all of a patient's
    slices are labeled; on the published lists this is exactly the first 68 slices for 3
    patients and the first 136 for 7. Val and test are whole volumes from ``val.list`` and
    ``test.list``.
    """
    root = check_root(root)
    if (labeled_patients is None) == (labeled_slices is None):
        raise SSMISError(
            "data.labeled_patients / data.labeled_slices: set exactly one of the two "
            f"(got {labeled_patients} and {labeled_slices})"
        )
    train = read_split_list(root / "train_slices.list", "train")
    val = read_split_list(root / "val.list", "val")
    test = read_split_list(root / "test.list", "test")
    if labeled_patients is not None:
        patients = list(dict.fromkeys(patient_of_slice(i) for i in train))
        if not 1 <= labeled_patients <= len(patients):
            raise SSMISError(
                f"data.labeled_patients: {labeled_patients} is out of range, expected 1.."
                f"{len(patients)} (patients in {root / 'train_slices.list'})"
            )
        chosen = set(patients[:labeled_patients])
        labeled = [i for i in train if patient_of_slice(i) in chosen]
        unlabeled = [i for i in train if patient_of_slice(i) not in chosen]
    else:
        assert labeled_slices is not None
        if not 1 <= labeled_slices <= len(train):
            raise SSMISError(
                f"data.labeled_slices: {labeled_slices} is out of range, expected 1..{len(train)}"
                f" (slices in {root / 'train_slices.list'})"
            )
        labeled, unlabeled = train[:labeled_slices], train[labeled_slices:]
    split = Split(labeled=labeled, unlabeled=unlabeled, val=val, test=test)
    split.check_disjoint()
    # slices and volumes have different ids, so also compare patients: none may leak
    train_patients = {patient_of_slice(i) for i in train}
    for name, ids in (("val", val), ("test", test)):
        leaked = sorted(train_patients & {patient_of_slice(i) for i in ids})
        if leaked:
            raise SSMISError(
                f"{root / (name + '.list')}: patient(s) {leaked[:5]} also in train_slices.list"
            )
    val_patients = {patient_of_slice(i) for i in val}
    leaked = sorted(val_patients & {patient_of_slice(i) for i in test})
    if leaked:
        raise SSMISError(f"{root / 'test.list'}: patient(s) {leaked[:5]} also in val.list")
    return split


class ACDCH5(H5Layout):
    """2D training slices, whole volumes (Z, H, W) for validation and test; the first
    ``data.labeled_patients`` patients (or ``labeled_slices`` slices) of ``train_slices.list``
    are labeled."""

    class Params(LayoutParams):
        """How many of ``train_slices.list`` are labeled: patients or slices."""

        labeled_patients: int | None = Field(default=None, ge=1,
                                             description="the first patients labeled")
        labeled_slices: int | None = Field(default=None, ge=1,
                                           description="the first slices labeled")

    stored_normalisation = ChannelNorm(
        "minmax", stored=True, source="SSL4MIS ACDC preprocessing, per volume "
        "(HiLab-git/SSL4MIS code/dataloaders/acdc_data_processing.py)")

    name = "acdc_h5"
    description = "SSL4MIS ACDC: 2D training slices + (Z, H, W) volumes, *.list split files"
    patch_dims = (2,)
    labeled_key = "data.labeled_patients"
    zoom_back = "labels"  # SSL4MIS test_single_volume: the label map, nearest neighbour

    @classmethod
    def config_problem(cls, data: Any) -> str | None:
        if (data.params.labeled_patients is None) == (data.params.labeled_slices is None):
            return "data: give exactly one of labeled_patients / labeled_slices"
        return super().config_problem(data)

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "train_slices.list").is_file()

    @classmethod
    def write_example(cls, root: Path) -> dict[str, Any]:
        from ssmis.data.phantoms import make_phantom_dataset

        make_phantom_dataset(root, num_train_volumes=3, num_val=1, num_test=1, slices=3,
                             size=(32, 32), seed=0)
        return {"layout": cls.name, "root": str(root), "num_classes": 4,
                "labeled_patients": 1, "patch_size": [32, 32]}

    def train_path(self, case: str) -> Path:
        return acdc_slice_path(self.root, case)

    def eval_path(self, case: str) -> Path:
        return acdc_volume_path(self.root, case)

    def cases(self) -> list[CaseEntry]:
        out = []
        for subset, name in (("train", "train_slices.list"), ("val", "val.list"),
                             ("test", "test.list")):
            out += [CaseEntry(i, patient_of_slice(i), subset, True)
                    for i in read_list(self.root / name)]
        return out

    def protocol_split(self) -> Split:
        return acdc_split(self.root, labeled_patients=self.data.params.labeled_patients,
                          labeled_slices=self.data.params.labeled_slices)
