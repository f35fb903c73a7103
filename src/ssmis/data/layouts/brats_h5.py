"""``brats_h5``: the SSL4MIS BraTS2019 layout (``data/<id>.h5`` FLAIR + whole-tumour label,
``train.txt`` / ``val.txt`` / ``test.txt``), used by CML and ALHVR (source: HiLab-git/SSL4MIS,
``code/dataloaders/brats2019.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from ssmis.data.h5 import brats_volume_path, read_list
from ssmis.data.layouts.base import CaseEntry
from ssmis.data.layouts.h5 import H5Layout, check_root, read_split_list, write_h5, write_list
from ssmis.data.layouts.params import LayoutParams
from ssmis.data.normalisation import ChannelNorm
from ssmis.data.splits import Split
from ssmis.errors import SSMISError


def brats_split(root: Path, labeled_count: int) -> Split:
    """SSL4MIS BraTS2019 split: the first ``labeled_count`` ids of ``train.txt`` are labeled,
    the rest of it unlabeled (SSL4MIS: 25 of 250); ``val.txt`` and ``test.txt`` as given."""
    root = check_root(root)
    train = read_split_list(root / "train.txt", "train")
    val = read_split_list(root / "val.txt", "val")
    test = read_split_list(root / "test.txt", "test")
    if not 1 <= labeled_count < len(train):
        raise SSMISError(f"data.labeled_count: {labeled_count} is out of range, expected 1.."
                         f"{len(train) - 1} ({len(train)} ids in {root / 'train.txt'})")
    split = Split(labeled=train[:labeled_count], unlabeled=train[labeled_count:], val=val,
                  test=test)
    split.check_disjoint()
    return split


class BraTSH5(H5Layout):
    """3D volumes; the first ``data.labeled_count`` ids of ``train.txt`` are labeled."""

    name = "brats_h5"
    description = "SSL4MIS BraTS2019: data/<id>.h5, train.txt / val.txt / test.txt"
    patch_dims = (3,)
    stored_normalisation = ChannelNorm(
        "zscore", clip_percentile=99.9, stats="nonzero", stored=True,
        source="SSL4MIS BraTS2019 preprocessing (HiLab-git/SSL4MIS "
        "code/dataloaders/brats_proprecessing.py)")

    class Params(LayoutParams):
        """The first ``labeled_count`` ids of ``train.txt`` are labeled."""

        labeled_count: int | None = Field(default=None, ge=1,
                                          description="the first ids of train.txt labeled")

    @classmethod
    def config_problem(cls, data: Any) -> str | None:
        if data.params.labeled_count is None and data.split_file is None:
            return ("data.labeled_count: required for brats_h5 (the first ids of train.txt; "
                    "SSL4MIS uses 25)")
        return super().config_problem(data)

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "train.txt").is_file() and (root / "test.txt").is_file()

    @classmethod
    def write_example(cls, root: Path) -> dict[str, Any]:
        from ssmis.data.phantoms import blob_volume

        names = {"train": [f"BraTS19_TCIA_{i:03d}_1" for i in range(4)],
                 "val": ["BraTS19_CBICA_000_1"], "test": ["BraTS19_2013_0_1"]}
        k = 0
        for split, ids in names.items():
            write_list(root / f"{split}.txt", ids)
            for case in ids:
                image, label = blob_volume(np.random.default_rng(k), (24, 24, 16))
                write_h5(brats_volume_path(root, case), image, label)
                k += 1
        return {"layout": cls.name, "root": str(root), "num_classes": 2, "labeled_count": 2,
                "patch_size": [16, 16, 16]}

    def train_path(self, case: str) -> Path:
        return brats_volume_path(self.root, case)

    def cases(self) -> list[CaseEntry]:
        return [CaseEntry(i, i, subset, True) for subset in ("train", "val", "test")
                for i in read_list(self.root / f"{subset}.txt")]

    def protocol_split(self) -> Split:
        return brats_split(self.root, labeled_count=self.data.params.labeled_count or 0)
