"""Shared reading of the h5 layouts of the SSMIS literature (``image`` / ``label`` datasets per
file, one file per training sample or evaluation volume; SSL4MIS, UA-MT and their successors)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from ssmis.data.h5 import check_h5_files, check_h5_values, read_list
from ssmis.data.layouts.base import Layout
from ssmis.data.spacing import check_spacing_order, h5_image_shape
from ssmis.data.splits import Split
from ssmis.errors import SSMISError


class H5Layout(Layout):
    """A layout whose cases are h5 files: subclasses say where a training sample and an
    evaluation volume of an id live (:meth:`train_path`, :meth:`eval_path`)."""

    def train_path(self, case: str) -> Path:
        """The h5 file of training sample ``case`` (a 2D slice or a 3D volume)."""
        raise NotImplementedError

    def eval_path(self, case: str) -> Path:
        """The h5 file of evaluation volume ``case`` (default: the training file)."""
        return self.train_path(case)

    def check_files(self, split: Split, need_unlabeled: bool) -> list[str] | None:
        """Metadata of every file first (existence, keys, shapes: fast), then the values
        (NaN/inf in images, label values outside ``data.num_classes``), then the spacing's
        axis order against the first validation volume."""
        groups = [([self.train_path(i) for i in split.labeled], True),
                  ([self.eval_path(i) for i in split.val], True),
                  ([self.eval_path(i) for i in split.test], True)]
        if need_unlabeled:
            groups.append(([self.train_path(i) for i in split.unlabeled], False))
        for paths, with_label in groups:
            check_h5_files(paths, require_label=with_label)
        if self.data.spacing and self.data.spacing_check:
            first = self.eval_path(split.val[0])
            check_spacing_order(self.data.spacing, h5_image_shape(first), str(first))
        for paths, with_label in groups:
            check_h5_values(paths, num_classes=self.data.num_classes, require_label=with_label)

    def train_dataset(self, ids: list[str], transform, with_label: bool):
        """2D patch: :class:`~ssmis.data.datasets.SliceDataset` (``data.cache`` honoured);
        3D: :class:`~ssmis.data.datasets.VolumePatchDataset`."""
        from ssmis.data.datasets import SliceDataset, VolumePatchDataset

        paths = [self.train_path(i) for i in ids]
        if self.data.spatial_dims == 2:
            return SliceDataset(paths, ids, self.data.num_classes, transform,
                                with_label=with_label, cache=self.data.cache)
        return VolumePatchDataset(paths, ids, self.data.num_classes, transform,
                                  with_label=with_label)

    def eval_cases(self, ids: list[str]) -> Iterator:
        """Whole volumes; spacing = ``data.spacing`` (array-axis order) or None (voxels)."""
        from ssmis.data.datasets import load_eval_cases

        spacing = tuple(self.data.spacing) if self.data.spacing else None
        return load_eval_cases([self.eval_path(i) for i in ids], ids, self.data.num_classes,
                               spacing)


def write_h5(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    """Write one ``image`` / ``label`` h5 file (synthetic copies of the layouts)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image)
        f.create_dataset("label", data=label)


def write_list(path: Path, ids: list[str]) -> None:
    """One id per line (the folder is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def read_split_list(path: Path, split: str) -> list[str]:
    """The ids of a list file (one per line) of split ``split``.

    Raises:
        SSMISError: the file is missing or empty, or lists an id twice.
    """
    ids = read_list(path)
    if not ids:
        raise SSMISError(f"{path}: split '{split}' is empty")
    duplicates = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) < len(ids) else []
    if duplicates:
        raise SSMISError(f"{path}: id(s) listed more than once: {duplicates[:5]}")
    return ids


def check_root(root: Path) -> Path:
    """``root`` as a Path.

    Raises:
        SSMISError: ``data.root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise SSMISError(f"data.root: folder {root} not found")
    return root
