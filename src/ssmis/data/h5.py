"""Readers of the h5 layouts that the SSMIS literature (SSL4MIS, UA-MT and their successors) uses.

Every problem a user can fix (missing file, wrong keys, mismatched shapes, NaN in an image, label
values outside the classes) is raised as a one-line :class:`~ssmis.errors.SSMISError` naming the
file, so a broken dataset stops a run before it starts instead of hours into training.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np

from ssmis.errors import SSMISError

#: Folder of the LA training volumes in the UA-MT layout (the space is part of the name).
LA_FOLDER = "2018LA_Seg_Training Set"
#: File name of each LA volume inside its case folder.
LA_FILE = "mri_norm2.h5"

_MAX_LISTED = 12  # offending label values listed in a message before it is cut short


def read_list(path: Path) -> list[str]:
    """Ids one per line, stripped, blank lines skipped (lists are hand-edited, CRLF happens)."""
    path = Path(path)
    if not path.is_file():
        raise SSMISError(f"{path}: list file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SSMISError(f"{path}: cannot read list file ({exc})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def acdc_slice_path(root: Path, slice_id: str) -> Path:
    """Training slice ``root/data/slices/<slice_id>.h5`` (2D image/label)."""
    return Path(root) / "data" / "slices" / f"{slice_id}.h5"


def acdc_volume_path(root: Path, volume_id: str) -> Path:
    """Validation/test volume ``root/data/<volume_id>.h5`` (Z, H, W)."""
    return Path(root) / "data" / f"{volume_id}.h5"


def la_volume_path(root: Path, case_id: str) -> Path:
    """UA-MT LA volume ``root/2018LA_Seg_Training Set/<id>/mri_norm2.h5``."""
    return Path(root) / LA_FOLDER / case_id / LA_FILE


def brats_volume_path(root: Path, case_id: str) -> Path:
    """SSL4MIS BraTS2019 volume ``root/data/<id>.h5`` (``image`` = FLAIR, ``label`` = whole
    tumour 0/1); ``root/<id>.h5`` when there is no ``data/`` folder (ALHVR's copy)."""
    root = Path(root)
    folder = root / "data"
    return (folder if folder.is_dir() else root) / f"{case_id}.h5"


def _open(path: Path) -> h5py.File:
    """Open read-only, turning the many h5py/OS failure modes into one-line user errors."""
    if not path.exists():
        raise SSMISError(f"{path}: file not found")
    if not path.is_file():
        raise SSMISError(f"{path}: not a file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SSMISError(f"{path}: not a readable HDF5 file ({reason})") from None


def _dataset(f: h5py.File, path: Path, key: str) -> h5py.Dataset:
    obj = f.get(key)
    if obj is None:
        keys = sorted(f.keys())
        raise SSMISError(f"{path}: no '{key}' dataset (found keys {keys})")
    if not isinstance(obj, h5py.Dataset):
        raise SSMISError(f"{path}: '{key}' is a group, expected a dataset")
    return obj


def _check_meta(
    path: Path, image: h5py.Dataset, label: h5py.Dataset | None, ndim: int | None
) -> None:
    shape = tuple(image.shape)
    if ndim is not None and len(shape) != ndim:
        raise SSMISError(f"{path}: image has shape {shape}, expected {ndim} dimensions")
    if len(shape) < 2 or min(shape) == 0:
        raise SSMISError(f"{path}: image has shape {shape}, expected a non-empty 2D or 3D array")
    if image.dtype.kind not in "fiu":
        raise SSMISError(f"{path}: image has dtype {image.dtype}, expected a numeric array")
    if label is not None:
        if tuple(label.shape) != shape:
            raise SSMISError(
                f"{path}: image shape {shape} and label shape {tuple(label.shape)} differ"
            )
        if label.dtype.kind not in "fiub":
            raise SSMISError(f"{path}: label has dtype {label.dtype}, expected integers")


def _check_image_values(path: Path, image: np.ndarray) -> None:
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        nan = int(np.isnan(image).sum())
        inf = int(np.isinf(image).sum())
        raise SSMISError(
            f"{path}: image contains {nan} NaN and {inf} inf values, expected finite intensities"
        )


def _label_to_int(path: Path, label: np.ndarray, num_classes: int | None) -> np.ndarray:
    """Validate label values and return them as int64 (what the losses index with)."""
    if label.dtype.kind == "f" and (
        not np.isfinite(label).all() or not np.array_equal(label, np.round(label))
    ):
        raise SSMISError(f"{path}: label has non-integer values, expected class indices")
    out = label.astype(np.int64, copy=False)
    if num_classes is None:
        if out.size and out.min() < 0:
            raise SSMISError(f"{path}: label has negative values, expected class indices")
        return out
    # min/max is cheap; the (slower) unique only runs to build the message of a bad file
    if out.size and (out.min() < 0 or out.max() >= num_classes):
        values = np.unique(out)
        bad = values[(values < 0) | (values >= num_classes)]
        shown = " ".join(str(v) for v in values[:_MAX_LISTED])
        more = " ..." if values.size > _MAX_LISTED else ""
        raise SSMISError(
            f"{path}: label has values [{shown}{more}] (outside: "
            f"{' '.join(str(v) for v in bad[:_MAX_LISTED])}), expected 0..{num_classes - 1} "
            f"(data.num_classes = {num_classes})"
        )
    return out


def load_h5_case(
    path: Path, *, num_classes: int | None, require_label: bool = True, ndim: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read and validate one case: float32 image and int64 label (None without ``require_label``).

    Unlabeled cases never have their label read, so a method cannot see it even by accident.
    ``ndim`` (2 or 3), when given, also checks the number of dimensions.
    """
    path = Path(path)
    with _open(path) as f:
        image_ds = _dataset(f, path, "image")
        label_ds = _dataset(f, path, "label") if require_label else None
        _check_meta(path, image_ds, label_ds, ndim)
        try:
            image = image_ds[()]
            label = label_ds[()] if label_ds is not None else None
        except (OSError, ValueError) as exc:
            raise SSMISError(f"{path}: cannot read data ({exc})") from None
    _check_image_values(path, image)
    image = image.astype(np.float32, copy=False)
    if label is None:
        return image, None
    return image, _label_to_int(path, label, num_classes)


def check_h5_files(
    paths: Iterable[Path], *, require_label: bool, ndim: int | None = None
) -> None:
    """Fast startup check of metadata only (existence, keys, shapes); raises on the first problem.

    No array is read, so the 1372 ACDC files take about a second (h5 opening dominates).
    """
    for path in paths:
        path = Path(path)
        with _open(path) as f:
            image = _dataset(f, path, "image")
            label = _dataset(f, path, "label") if require_label else None
            _check_meta(path, image, label, ndim)


def check_h5_values(
    paths: Iterable[Path], *, num_classes: int | None, require_label: bool,
    ndim: int | None = None,
) -> None:
    """Full check of every value (NaN/inf in images, label classes); raises on the first problem.

    Slower than :func:`check_h5_files` because it reads the data; run it after the metadata
    check so that the cheap errors come first.
    """
    for path in paths:
        load_h5_case(Path(path), num_classes=num_classes, require_label=require_label, ndim=ndim)
