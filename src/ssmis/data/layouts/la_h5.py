"""``la_h5``: the UA-MT Left Atrium layout (``2018LA_Seg_Training Set/<id>/mri_norm2.h5``,
``train.list`` / ``test.list``), used by UA-MT, BCP, CVBM and CML (source:
yulequan/UA-MT, ``code/dataloaders/la_heart.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from ssmis.data.h5 import LA_FOLDER, la_volume_path, read_list
from ssmis.data.layouts.base import CaseEntry
from ssmis.data.layouts.h5 import H5Layout, check_root, read_split_list, write_h5, write_list
from ssmis.data.layouts.params import LayoutParams
from ssmis.data.normalisation import ChannelNorm
from ssmis.data.splits import Split
from ssmis.errors import SSMISError


def la_split(root: Path, labeled_count: int, val_count: int) -> Split:
    """UA-MT LA split: the first ``labeled_count`` ids of ``train.list`` are labeled.

    Validation is carved from the END of ``train.list`` (never from ``test.list``, so the test
    cases stay unseen until the final evaluation); the ids in between are unlabeled.
    """
    root = check_root(root)
    train = read_split_list(root / "train.list", "train")
    test = read_split_list(root / "test.list", "test")
    if labeled_count < 1:
        raise SSMISError(f"data.labeled_count: {labeled_count} is out of range, expected >= 1")
    if val_count < 1:
        raise SSMISError(
            f"data.val_count: {val_count} is out of range, expected >= 1 (validation cases "
            "are carved from the end of train.list)"
        )
    if labeled_count + val_count > len(train):
        raise SSMISError(
            f"data.labeled_count + data.val_count: {labeled_count} + {val_count} exceed the "
            f"{len(train)} ids in {root / 'train.list'}"
        )
    split = Split(
        labeled=train[:labeled_count],
        unlabeled=train[labeled_count: len(train) - val_count],
        val=train[len(train) - val_count:],
        test=test,
    )
    in_train = sorted(set(train) & set(test))
    if in_train:
        raise SSMISError(f"{root / 'test.list'}: id(s) {in_train[:5]} also in train.list")
    split.check_disjoint()
    return split


class LAH5(H5Layout):
    """3D volumes (X, Y, Z); the first ``data.labeled_count`` ids of ``train.list`` are
    labeled, ``data.val_count`` validation cases are carved from its end."""

    name = "la_h5"
    description = "UA-MT Left Atrium: '2018LA_Seg_Training Set/<id>/mri_norm2.h5', *.list"
    patch_dims = (3,)
    stored_normalisation = ChannelNorm(
        "zscore", stored=True, source="UA-MT LA preprocessing, per volume before cropping "
        "(yulequan/UA-MT code/dataloaders/la_heart_processing.py)")

    #: what the labeled count means for this dataset (the config error's hint)
    labeled_hint: str = "the first ids of train.list"

    class Params(LayoutParams):
        """The first ``labeled_count`` ids of the list are labeled, ``val_count`` are carved
        from its end."""

        labeled_count: int | None = Field(default=None, ge=1,
                                          description="the first ids of the list labeled")
        val_count: int | None = Field(
            default=None, ge=1, description="validation cases carved from the end of the list")

    @classmethod
    def config_problem(cls, data: Any) -> str | None:
        """``labeled_count`` and ``val_count`` are needed unless ``data.split_file`` gives the
        split, then the patch rule."""
        if data.split_file is None:
            if data.params.labeled_count is None:
                return f"data.labeled_count: required for {cls.name} ({cls.labeled_hint})"
            if data.params.val_count is None:
                return (f"data.val_count: required for {cls.name} (validation cases carved "
                        "from the end of train.list)")
        return super().config_problem(data)

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / LA_FOLDER).is_dir()

    @classmethod
    def write_example(cls, root: Path) -> dict[str, Any]:
        from ssmis.data.phantoms import blob_volume

        ids = [f"CASE{i:02d}" for i in range(6)]
        for i, case in enumerate(ids):
            image, label = blob_volume(np.random.default_rng(i), (24, 24, 16))
            write_h5(la_volume_path(root, case), image, label)
        write_list(root / "train.list", ids[:4])
        write_list(root / "test.list", ids[4:])
        return {"layout": cls.name, "root": str(root), "num_classes": 2, "labeled_count": 2,
                "val_count": 1, "patch_size": [16, 16, 16]}

    def train_path(self, case: str) -> Path:
        return la_volume_path(self.root, case)

    def cases(self) -> list[CaseEntry]:
        return [CaseEntry(i, i, subset, True) for subset, name in
                (("train", "train.list"), ("test", "test.list"))
                for i in read_list(self.root / name)]

    def protocol_split(self) -> Split:
        return la_split(self.root, labeled_count=self.data.params.labeled_count or 0,
                        val_count=self.data.params.val_count or 0)
