"""NIfTI files and nnU-Net ``dataset.json`` as ssmis reads them (nibabel).

:func:`read_nifti` returns array, spacing (mm, array-axis order), affine and the image object;
:func:`grid_difference` / :func:`resample_label_to` compare and align a label's voxel grid with
its image's; the ``dataset_json_*`` readers take nnU-Net v2 and v1/MSD spellings
(``channel_names`` or ``modality``; ``{"name": value}`` or ``{"value": "name"}`` labels).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ssmis.data.cases import Catalog
from ssmis.errors import SSMISError

NIFTI_ENDINGS = (".nii.gz", ".nii")
#: nnU-Net's channel file stem ``<case>_<XXXX>`` (``case07_0000``): groups ``case``, ``ch``
CHANNEL_STEM = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


def read_nifti(path: Path, header_only: bool = False):
    """(array or None, spacing, affine, image object) of a NIfTI file; errors name the file."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise SSMISError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        data = None if header_only else np.asanyarray(img.dataobj)
    except Exception as exc:  # ImageFileError, EOFError, zlib.error, OSError, ValueError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SSMISError(f"{path}: not a readable NIfTI file ({reason})") from None
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
        data = data[..., 0] if data is not None else None
    if len(shape) not in (2, 3):
        raise SSMISError(f"{path}: shape {shape}, expected a 2D or 3D volume (one channel per "
                         "file, nnU-Net naming _0000, _0001, ...)")
    spacing = tuple(float(z) for z in img.header.get_zooms()[: len(shape)])
    return data, spacing, np.asarray(img.affine, dtype=np.float64), img


def _grid(img: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """(spacing mm, origin mm, direction cosines 3x3, orientation codes) of a NIfTI header."""
    import nibabel as nib

    affine = np.asarray(img.affine, dtype=np.float64)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    direction = affine[:3, :3] / np.where(spacing > 0, spacing, 1.0)
    return spacing, affine[:3, 3], direction, tuple(nib.aff2axcodes(affine))


def _fmt(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def grid_difference(reference: Any, other: Any) -> str | None:
    """How the voxel grid of NIfTI image ``other`` differs from ``reference`` (both nibabel
    images, headers only), or None when they agree: orientation (axis codes), spacing (mm,
    relative tolerance 1e-3), origin (mm, tolerance 1e-3 of the smallest voxel size) and
    direction cosines (tolerance 1e-3). Shapes are compared elsewhere."""
    sp_r, or_r, dir_r, ax_r = _grid(reference)
    sp_o, or_o, dir_o, ax_o = _grid(other)
    n = min(len(reference.shape), len(other.shape), 3)
    parts = []
    if ax_r != ax_o:
        parts.append(f"orientation {''.join(ax_o)} vs {''.join(ax_r)}")
    elif not np.allclose(dir_r, dir_o, atol=1e-3):
        parts.append("direction cosines differ (oblique)")
    if not np.allclose(sp_r[:n], sp_o[:n], rtol=1e-3, atol=1e-6):
        parts.append(f"spacing {_fmt(sp_o[:n])} vs {_fmt(sp_r[:n])} mm")
    if not np.allclose(or_r, or_o, atol=1e-3 * max(float(sp_r[:n].min()), 1e-3)):
        parts.append(f"origin {_fmt(or_o)} vs {_fmt(or_r)} mm")
    return "; ".join(parts) or None


def resample_label_to(label_img: Any, image_img: Any) -> np.ndarray:
    """Label array resampled (nearest neighbour, 0 outside) onto the voxel grid of
    ``image_img`` through both affines (``nibabel.processing.resample_from_to``); 2D files are
    resampled as one-slice volumes. Returns an array of the image's spatial shape."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    target_shape = tuple(int(s) for s in image_img.shape[:3])
    data = np.asanyarray(label_img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    flat = len(target_shape) == 2
    if flat:
        target_shape = (*target_shape, 1)
    if data.ndim == 2:
        data = data[..., None]
    source = nib.Nifti1Image(np.asarray(data), label_img.affine)
    out = resample_from_to(source, (target_shape, image_img.affine), order=0, mode="constant",
                           cval=0)
    array = np.asanyarray(out.dataobj)
    return array[..., 0] if flat else array


def read_dataset_json(root: Path) -> dict[str, Any]:
    path = root / "dataset.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SSMISError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SSMISError(f"{path}: expected a JSON object")
    return data


def dataset_json_channels(meta: dict[str, Any], path: Path) -> list[str]:
    """Channel names of a ``dataset.json`` in channel order: nnU-Net v2 ``channel_names`` or
    v1/MSD ``modality``. Keys that are all channel indices ("0", "1") are ordered by number;
    other keys (``{"CT": "CT"}``) by their order in the file, as nnU-Net takes the values.

    Raises:
        SSMISError: the entry is not an object of strings, naming ``path``.
    """
    key = "channel_names" if "channel_names" in meta else "modality"
    raw = meta.get(key)
    if raw is None:
        return []
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise SSMISError(f"{path}: '{key}' must map channels to names ({{\"0\": \"CT\"}}), "
                         f"got {raw!r}")
    items = list(raw.items())
    if all(str(k).strip().isdigit() for k, _ in items):
        items.sort(key=lambda kv: int(kv[0]))
    return [str(v) for _, v in items]


def dataset_json_labels(meta: dict[str, Any], path: Path) -> dict[int, str]:
    """Label value -> name of a ``dataset.json``: nnU-Net v2 ``{"background": 0, "LA": 1}``
    (region lists ``{"WT": [1, 2, 3]}`` name no single value), or v1/MSD ``{"0":
    "background", "1": "LA"}``.

    Raises:
        SSMISError: an entry that is neither form, naming ``path``.
    """
    raw = meta.get("labels") or {}
    if not isinstance(raw, dict):
        raise SSMISError(f"{path}: 'labels' must be an object, got {raw!r}")
    names: dict[int, str] = {}
    for key, value in raw.items():
        if isinstance(value, bool):
            pass
        elif isinstance(value, int):
            names[value] = str(key)
            continue
        elif isinstance(value, list) and all(isinstance(v, int) for v in value):
            continue
        elif isinstance(value, str) and str(key).strip().isdigit():
            names[int(key)] = value
            continue
        raise SSMISError(f"{path}: labels entry {key!r}: {value!r} is neither nnU-Net v2 "
                         "(name: value) nor v1 (\"value\": name)")
    return names


def dataset_json_values(meta: dict[str, Any]) -> set[int]:
    """Every label value a ``dataset.json`` declares (v2 values and regions, v1 keys)."""
    out: set[int] = set()
    for key, value in (meta.get("labels") or {}).items():
        if isinstance(value, int) and not isinstance(value, bool):
            out.add(value)
        elif isinstance(value, list):
            out.update(int(v) for v in value if isinstance(v, int))
        elif str(key).strip().isdigit():
            out.add(int(key))
    return out


def file_ending(meta: dict[str, Any], path: Path) -> str:
    """``file_ending`` of a dataset.json (default .nii.gz); ssmis reads NIfTI only.

    Raises:
        SSMISError: another ending (.mha, .nrrd, .png), naming ``path``.
    """
    ending = str(meta.get("file_ending", ".nii.gz"))
    if ending.lower() not in NIFTI_ENDINGS:
        raise SSMISError(f"{path}: file_ending '{ending}': the nifti layout reads .nii.gz and "
                         ".nii files; convert the files (2D pictures: data.layout: images)")
    return ending


def declared_classes_problem(catalog: Catalog, num_classes: int | None, mask_values: Any
                             ) -> str | None:
    """One line when the ``dataset.json`` labels declare another class count than
    ``data.num_classes`` (values 0..k give k + 1 classes); None when they agree, when nothing
    is declared or when ``data.mask_values`` maps the label values."""
    values = dataset_json_values(catalog.manifest) if catalog.kind == "nifti" else set()
    if not values or num_classes is None or mask_values is not None:
        return None
    declared = max(values) + 1
    if declared == num_classes:
        return None
    return (f"{catalog.root / 'dataset.json'}: labels declare {declared} classes (values "
            f"{sorted(values)}), data.num_classes = {num_classes}")
