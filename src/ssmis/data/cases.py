"""A dataset as a catalog of cases, and one loaded case.

:class:`Catalog` lists the cases a layout's scanner found (:class:`CaseInfo`: channel files,
label file, domain, subset) and the folder entries it did not read, with the reason;
:class:`CaseArrays` is one case as read by :class:`ssmis.data.reader.CaseReader`. Scanners that
collect problems instead of raising use :func:`report_problem`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssmis.errors import SSMISError


@dataclass
class CaseInfo:
    """One case on disk: its channel files, label file (None = unlabeled), domain, subset, and
    its region-of-interest mask file (field of view; None = the whole image is scored)."""

    case: str
    images: list[Path]
    label: Path | None
    domain: str | None = None
    subset: str = "train"  # train | test | unlabeled
    shape: tuple[int, ...] | None = None  # known without reading (prepared manifest)
    roi: Path | None = None


@dataclass
class Catalog:
    layout: str
    root: Path
    cases: dict[str, CaseInfo]
    channel_names: list[str] = field(default_factory=list)
    label_names: dict[int, str] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    #: how :class:`CaseReader` decodes the files: nifti | images | prepared (default: layout)
    kind: str = ""
    #: (path, reason) of the entries in the dataset's folders that no case uses
    ignored: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.kind = self.kind or self.layout

    def get(self, case: str) -> CaseInfo:
        if case not in self.cases:
            raise SSMISError(f"case '{case}' is not in {self.root} ({self.layout} layout)")
        return self.cases[case]

    def ids(self, subset: str, labeled: bool | None = None) -> list[str]:
        return [c.case for c in self.cases.values() if c.subset == subset
                and (labeled is None or (c.label is not None) == labeled)]

    def domains(self) -> dict[str, str | None]:
        return {c.case: c.domain for c in self.cases.values()}


@dataclass
class CaseArrays:
    """A loaded case: image (C, *spatial) float32, label (*spatial) int64 or None.

    ``roi`` (*spatial) bool marks the pixels that are scored (None: all); ``source_dtype`` and
    ``source_range`` (min, max) describe the image file's values before normalisation;
    ``snapped`` counts the mask pixels whose value was not a declared one and was snapped to
    the nearest (lossy masks, ``data.mask_snap``).
    """

    case: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, ...] | None
    affine: np.ndarray | None = None
    domain: str | None = None
    roi: np.ndarray | None = None
    source_dtype: str | None = None
    source_range: tuple[float, float] | None = None
    snapped: int = 0


def report_problem(problems: list[str] | None, message: str) -> None:
    if problems is None:
        raise SSMISError(message)
    problems.append(message)


def strip_ending(name: str, endings: Sequence[str]) -> str | None:
    low = name.lower()
    for ending in endings:
        if low.endswith(ending):
            return name[: len(name) - len(ending)]
    return None


def note_ignored(catalog: Catalog, path: Path, reason: str) -> None:
    catalog.ignored.append((str(path), reason))


def ignored_lines(catalog: Catalog, limit: int = 5) -> list[str]:
    """Lines naming the entries of a dataset folder that the layout does not read, with the
    reason (``ssmis data inspect`` and the run log); empty when every entry is used."""
    if not catalog.ignored:
        return []
    lines = [f"not read: {path} ({why})" for path, why in catalog.ignored[:limit]]
    if len(catalog.ignored) > limit:
        lines.append(f"not read: ... and {len(catalog.ignored) - limit} more entries")
    return lines


def move_slice_axis(arrays: CaseArrays, axis: int) -> CaseArrays:
    """Volume (C, X, Y, Z) -> (C, D, H, W) with ``axis`` first; spacing permuted the same way."""
    image = np.moveaxis(arrays.image, axis + 1, 1)
    label = np.moveaxis(arrays.label, axis, 0) if arrays.label is not None else None
    spacing = arrays.spacing
    if spacing is not None and len(spacing) == 3:
        order = [axis] + [a for a in range(3) if a != axis]
        spacing = tuple(spacing[a] for a in order)
    roi = np.ascontiguousarray(np.moveaxis(arrays.roi, axis, 0)) \
        if arrays.roi is not None else None
    return CaseArrays(arrays.case, np.ascontiguousarray(image),
                      np.ascontiguousarray(label) if label is not None else None, spacing,
                      arrays.affine, arrays.domain, roi=roi, source_dtype=arrays.source_dtype,
                      source_range=arrays.source_range, snapped=arrays.snapped)


def check_finite(path: Path, image: np.ndarray) -> None:
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise SSMISError(f"{path}: image contains {int(np.isnan(image).sum())} NaN and "
                         f"{int(np.isinf(image).sum())} inf values, expected finite intensities")
