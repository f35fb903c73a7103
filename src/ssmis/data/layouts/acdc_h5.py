"""``acdc_h5``: the SSL4MIS ACDC layout (``data/slices/<patient>_frameNN_slice_K.h5`` training
slices, ``data/<patient>_frameNN.h5`` volumes, ``train_slices.list`` / ``val.list`` /
``test.list``), the one BCP, CVBM, CML and ALHVR train on (source: HiLab-git/SSL4MIS,
``code/dataloaders/dataset.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssmis.data.h5 import acdc_slice_path, acdc_volume_path, read_list
from ssmis.data.layouts.base import CaseEntry
from ssmis.data.layouts.h5 import H5Layout
from ssmis.data.normalisation import ChannelNorm
from ssmis.data.splits import Split, acdc_split, patient_of_slice


class ACDCH5(H5Layout):
    """2D training slices, whole volumes (Z, H, W) for validation and test; the first
    ``data.labeled_patients`` patients (or ``labeled_slices`` slices) of ``train_slices.list``
    are labeled."""

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
        if (data.labeled_patients is None) == (data.labeled_slices is None):
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
        return acdc_split(self.root, labeled_patients=self.data.labeled_patients,
                          labeled_slices=self.data.labeled_slices)
