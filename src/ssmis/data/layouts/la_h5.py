"""``la_h5``: the UA-MT Left Atrium layout (``2018LA_Seg_Training Set/<id>/mri_norm2.h5``,
``train.list`` / ``test.list``), used by UA-MT, BCP, CVBM and CML (source:
yulequan/UA-MT, ``code/dataloaders/la_heart.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ssmis.data.h5 import LA_FOLDER, la_volume_path, read_list
from ssmis.data.layouts.base import CaseEntry
from ssmis.data.layouts.h5 import H5Layout, write_h5, write_list
from ssmis.data.normalisation import ChannelNorm
from ssmis.data.splits import Split, la_split


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

    @classmethod
    def config_problem(cls, data: Any) -> str | None:
        """``labeled_count`` and ``val_count`` are needed unless ``data.split_file`` gives the
        split, then the patch rule."""
        if data.split_file is None:
            if data.labeled_count is None:
                return f"data.labeled_count: required for {cls.name} ({cls.labeled_hint})"
            if data.val_count is None:
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
        return la_split(self.root, labeled_count=self.data.labeled_count or 0,
                        val_count=self.data.val_count or 0)
