"""Torch datasets over the h5 cases: training slices/patches and lazily loaded evaluation volumes.

Items are addressed by the sampler's ``(index, sample_seed)`` pairs; the augmentation of an
item is drawn from ``np.random.default_rng(sample_seed)``, so it does not depend on worker
processes or on what was loaded before. Each read opens its file, reads it whole and closes it:
no handle outlives a ``__getitem__`` (hundreds of open h5 files would exhaust descriptors and do
not survive forking into workers), and the optional in-memory cache keeps small 2D slices so that
each file is opened once per process.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ssmis.data.h5 import load_h5_case
from ssmis.data.transforms import Transform

Index = int | tuple[int, int]


def _split_index(index: Index) -> tuple[int, int]:
    """A plain int gets seed 0 (deterministic); the sampler passes ``(index, seed)``."""
    if isinstance(index, tuple | list):
        idx, seed = index
        return int(idx), int(seed)
    return int(index), 0


class _H5CaseDataset(Dataset):
    """Shared logic of 2D slice and 3D patch datasets (they differ only in dimensionality)."""

    ndim = 0

    def __init__(
        self,
        paths: Sequence[Path],
        ids: Sequence[str],
        num_classes: int,
        transform: Transform | None,
        with_label: bool,
        cache: bool = False,
    ) -> None:
        if len(paths) != len(ids):
            raise ValueError(f"{len(paths)} paths but {len(ids)} ids")
        self.paths = [Path(p) for p in paths]
        self.ids = list(ids)
        self.num_classes = num_classes
        self.transform = transform
        self.with_label = with_label
        self.cache = cache
        self._cache: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, idx: int) -> tuple[np.ndarray, np.ndarray | None]:
        if idx in self._cache:
            return self._cache[idx]
        image, label = load_h5_case(self.paths[idx], num_classes=self.num_classes,
                                    require_label=self.with_label, ndim=self.ndim)
        if label is not None and self.num_classes <= 256:
            label = label.astype(np.uint8)  # 8x smaller in the cache; int64 again on output
        if self.cache:
            self._cache[idx] = (image, label)
        return image, label

    def __getitem__(self, index: Index) -> dict[str, Any]:
        idx, seed = _split_index(index)
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for {len(self)} cases")
        image, label = self._read(idx)
        if self.cache:
            # transforms may return their input unchanged; the caller must not alias the cache
            image = image.copy()
            label = label.copy() if label is not None else None
        if self.transform is not None:
            image, label = self.transform(image, label, np.random.default_rng(seed))
        item: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None],
            "case": self.ids[idx],
        }
        if self.with_label and label is not None:
            item["label"] = torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
        return item


class SliceDataset(_H5CaseDataset):
    """2D training slices: ``image`` (1, H, W) float32, ``label`` (H, W) int64, ``case`` id.

    ``cache=True`` keeps every slice read in memory (all ACDC training slices are ~130 MB).
    """

    ndim = 2


class VolumePatchDataset(_H5CaseDataset):
    """3D training patches: ``image`` (1, X, Y, Z) float32, ``label`` (X, Y, Z) int64."""

    ndim = 3


class TwoStreamDataset(Dataset):
    """Labeled + unlabeled datasets concatenated, addressed by ``TwoStreamBatchSampler``.

    Items get ``"stream"``; an unlabeled item never carries a label, even if the dataset
    behind it would provide one, so a method cannot train on unlabeled ground truth.
    """

    def __init__(self, labeled: Dataset, unlabeled: Dataset) -> None:
        self.labeled = labeled
        self.unlabeled = unlabeled
        self.num_labeled = len(labeled)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.num_labeled + len(self.unlabeled)  # type: ignore[arg-type]

    def __getitem__(self, index: Index) -> dict[str, Any]:
        idx, seed = _split_index(index)
        if idx < self.num_labeled:
            item = dict(self.labeled[(idx, seed)])
            item["stream"] = "labeled"
        else:
            item = dict(self.unlabeled[(idx - self.num_labeled, seed)])
            item.pop("label", None)
            item["stream"] = "unlabeled"
        return item


def _stack(items: list[dict[str, Any]], with_label: bool) -> dict[str, Any]:
    batch: dict[str, Any] = {
        "image": torch.stack([it["image"] for it in items]),
        "case": [it["case"] for it in items],
    }
    if with_label:
        batch["label"] = torch.stack([it["label"] for it in items])
    return batch


def collate_two_stream(items: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Stack each stream separately: ``(labeled, unlabeled or None)``.

    The labeled batch has ``image``, ``label`` and ``case``; the unlabeled one only ``image``
    and ``case``.
    """
    labeled = [it for it in items if it.get("stream", "labeled") == "labeled"]
    unlabeled = [it for it in items if it.get("stream") == "unlabeled"]
    if not labeled:
        raise ValueError("a training batch needs at least one labeled item")
    return _stack(labeled, True), (_stack(unlabeled, False) if unlabeled else None)


@dataclass
class EvalCase:
    """One whole validation/test volume with its ground truth; ``roi`` (bool, shaped like
    ``label``) marks the pixels that are scored (field of view), None = all."""

    case: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, ...] | None
    domain: str | None = None
    roi: np.ndarray | None = None


def load_eval_cases(
    paths: Sequence[Path],
    ids: Sequence[str],
    num_classes: int,
    spacing: Sequence[float] | None,
    domain: str | None = None,
) -> Iterator[EvalCase]:
    """Yield evaluation cases one at a time, so only one volume is in memory."""
    if len(paths) != len(ids):
        raise ValueError(f"{len(paths)} paths but {len(ids)} ids")
    spacing_t = tuple(float(s) for s in spacing) if spacing is not None else None
    for path, case in zip(paths, ids, strict=True):
        image, label = load_h5_case(Path(path), num_classes=num_classes, require_label=True)
        assert label is not None
        yield EvalCase(case=case, image=image, label=label, spacing=spacing_t, domain=domain)


class CaseDataset(Dataset):
    """Training items of own data (``nifti`` / ``images`` / ``prepared``) via a ``CaseReader``.

    ``items`` are ``(case, slice)``: ``slice`` None for a whole case (3D patches, 2D images),
    an index for a slice of a volume (2D training on volumes; the reader puts the sliced axis
    first). Images are (C, *spatial); every channel gets the same augmentation (the transform
    is run per channel with identically seeded generators). Volumes read for slices are always
    kept in memory (one decode per volume, not per slice); ``cache`` keeps the others too.
    """

    def __init__(self, reader: Any, items: Sequence[tuple[str, int | None]],
                 transform: Transform | None, with_label: bool, cache: bool = False) -> None:
        self.reader = reader
        self.items = list(items)
        self.transform = transform
        self.with_label = with_label
        self.cache = cache or any(k is not None for _, k in self.items)
        self._cache: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, case: str) -> tuple[np.ndarray, np.ndarray | None]:
        if case in self._cache:
            return self._cache[case]
        arrays = self.reader.load(case, with_label=self.with_label)
        label = arrays.label.astype(np.uint8) if arrays.label is not None else None
        if self.cache:
            self._cache[case] = (arrays.image, label)
        return arrays.image, label

    def __getitem__(self, index: Index) -> dict[str, Any]:
        idx, seed = _split_index(index)
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for {len(self)} items")
        case, k = self.items[idx]
        image, label = self._read(case)
        if k is not None:
            image, label = image[:, k], (label[k] if label is not None else None)
        channels, out_label = [], label
        for c in range(image.shape[0]):
            img_c = np.array(image[c], copy=True)
            lab = label.copy() if label is not None else None
            if self.transform is not None:
                img_c, lab = self.transform(img_c, lab, np.random.default_rng(seed))
            channels.append(img_c)
            if c == 0:
                out_label = lab
        item: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(np.stack(channels), np.float32)),
            "case": case,
        }
        if self.with_label and out_label is not None:
            item["label"] = torch.from_numpy(np.ascontiguousarray(out_label, dtype=np.int64))
        return item
