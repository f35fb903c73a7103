"""2D picture files (PNG, JPG, TIF, BMP, GIF) and their masks as ssmis reads them.

:func:`read_picture` keeps the file's dtype (16-bit files at 16 bits, through SimpleITK where
installed); mask files map to classes by ``data.mask_values`` (:func:`mapped_mask`, with
palette indices and snapping of lossy masks), colour masks by channel (:func:`map_rgb_mask`);
ROI (field-of-view) masks by :func:`read_roi`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssmis.data.h5 import _label_to_int
from ssmis.data.masks import LOSSY_MASK_EXTS, describe, lookup_classes, normalize_mask_values
from ssmis.errors import SSMISError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")


def read_picture(path: Path, mode: str | None = None) -> np.ndarray:
    """Pixels of a PNG/JPG/TIF/BMP/GIF file at their stored values and dtype.

    ``mode``: None (masks) keeps the stored values: palette (indexed, mode P) images give their
    indices when the palette holds colours (class colour maps: PASCAL VOC, REFUGE) and the grey
    level when every used entry is grey (what a viewer shows: GIF stores every picture with a
    palette); RGBA/CMYK give RGB, 1-bit 0/255; 'L' gives (H, W): colour converted to grey;
    'RGB' gives (H, W, 3): grey repeated. 16-bit images stay uint16 (0..65535), 32-bit integer
    int32 and float float32 in every mode, so nothing is clipped at 255; 16-bit colour PNG/TIFF
    (48-bit RGB) stays uint16 where SimpleITK is installed (Pillow reads it at 8 bits). Raises
    SSMISError naming the file when it is missing or not a readable image.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise SSMISError(f"{path}: file not found")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit grey, float
                values = np.asarray(img)
                if img.mode.startswith("I;16") or (img.mode == "I" and img.format == "PNG"):
                    values = values.astype(np.uint16)  # PNG holds at most 16 bits
                else:
                    values = values.astype(values.dtype.newbyteorder("="))
                return np.repeat(values[..., None], 3, axis=-1) if mode == "RGB" else values
            if _deep_colour(path, img):  # Pillow would reduce 16-bit colour to 8 bits
                deep = _read_deep_colour(path)
                if deep is not None:
                    if mode == "L":  # Pillow's grey weights (ITU-R 601-2), at 16 bits
                        grey = deep @ np.asarray([0.299, 0.587, 0.114])
                        return np.round(grey).astype(np.uint16)
                    return deep
            if mode is not None and img.mode != mode:
                img = img.convert(mode)
            elif mode is None and img.mode in ("P", "PA"):
                return _palette_values(img)
            elif img.mode in ("RGBA", "LA", "CMYK", "1", "YCbCr", "LAB", "HSV"):
                img = img.convert("L" if img.mode in ("LA", "1") else "RGB")
            return np.asarray(img)
    except SSMISError:
        raise
    except Exception as exc:  # UnidentifiedImageError, truncated files, decoder errors
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SSMISError(f"{path}: not a readable image ({reason})") from None


def _deep_colour(path: Path, img: Any) -> bool:
    """Whether an RGB(A) PNG or TIFF stores 16 bits per channel (Pillow decodes it to 8)."""
    if img.mode not in ("RGB", "RGBA"):
        return False
    if img.format == "PNG":
        with open(path, "rb") as f:
            head = f.read(26)
        return len(head) == 26 and head[24] == 16  # IHDR bit depth
    if img.format == "TIFF":
        bits = img.tag_v2.get(258)  # BitsPerSample
        return bits is not None and max(np.atleast_1d(bits)) > 8
    return False


def _read_deep_colour(path: Path) -> np.ndarray | None:
    """(H, W, 3) uint16 of a 16-bit colour file with SimpleITK, or None without it."""
    try:
        import SimpleITK as sitk
    except ImportError:
        return None
    values = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    if values.ndim != 3 or values.shape[-1] < 3:
        return None
    return np.ascontiguousarray(values[..., :3]).astype(np.uint16, copy=False)


def _palette_values(img: Any) -> np.ndarray:
    """(H, W) uint8 of a mode P/PA image: the indices, or the grey levels of a grey palette."""
    indices = np.asarray(img)
    indices = indices[..., 0] if indices.ndim == 3 else indices
    palette = np.asarray(img.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    used = np.unique(indices)
    if used.size and int(used[-1]) < len(palette):
        colours = palette[used]
        if (colours[:, 0] == colours[:, 1]).all() and (colours[:, 1] == colours[:, 2]).all():
            return colours[:, 0][np.searchsorted(used, indices)]
    return indices


def picture_size(path: Path) -> tuple[tuple[int, int], str]:
    """((H, W), PIL mode) from the header only; SSMISError naming the file if unreadable."""
    from PIL import Image

    if not Path(path).is_file():
        raise SSMISError(f"{path}: file not found")
    try:
        with Image.open(path) as img:
            return (img.size[1], img.size[0]), img.mode
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SSMISError(f"{path}: not a readable image ({reason})") from None


def snap_for(setting: str | bool, path: Path) -> bool:
    """Whether mask values of ``path`` are snapped: ``data.mask_snap`` nearest (always), off
    (never) or auto (lossy files: JPEG, WebP)."""
    if isinstance(setting, bool):
        return setting
    if setting == "auto":
        return Path(path).suffix.lower() in LOSSY_MASK_EXTS
    return setting == "nearest"


def map_mask(path: Path, raw: np.ndarray, mask_values: Any, num_classes: int | None,
             snap: bool = False, picture: bool = True) -> np.ndarray:
    """Mask pixel values (H, W) / (*spatial), or a grey (H, W, 3) -> class indices (int64).

    ``mask_values``: None (values are the classes), or any spelling accepted by
    :func:`ssmis.data.masks.normalize_mask_values` (exact values and ranges). ``snap`` maps
    undeclared values to the class of the nearest declared value (lossy masks). Raises
    SSMISError naming ``path`` for a colour mask, a value outside the mapping or a class outside
    0..num_classes-1. ``picture=False`` (a volume, e.g. NIfTI): a last axis of 3 or 4 is a
    spatial axis, never colour channels.
    """
    return mapped_mask(path, raw, mask_values, num_classes, snap, picture)[0]


def _is_palette(path: Path) -> bool:
    """Whether ``path`` is a palette (indexed, PIL mode P) picture; False for anything else."""
    if Path(path).suffix.lower() not in (".png", ".gif", ".tif", ".tiff", ".bmp"):
        return False
    try:
        from PIL import Image

        with Image.open(path) as img:
            return img.mode in ("P", "PA")
    except Exception:  # noqa: BLE001 (only a hint: unreadable files fail elsewhere)
        return False


def mapped_mask(path: Path, raw: np.ndarray, mask_values: Any, num_classes: int | None,
                snap: bool = False, picture: bool = True) -> tuple[np.ndarray, int]:
    """:func:`map_mask` and the number of pixels whose value was snapped."""
    if picture and raw.ndim == 3 and raw.shape[-1] in (3, 4):
        if not (np.array_equal(raw[..., 0], raw[..., 1])
                and np.array_equal(raw[..., 0], raw[..., 2])):
            raise SSMISError(f"{path}: colour mask, expected one value per pixel (grey or "
                             "indexed PNG; colour masks: data.mask_rgb_classes)")
        raw = raw[..., 0]
    lossy = Path(path).suffix.lower() in LOSSY_MASK_EXTS
    if mask_values is None:
        if not snap or num_classes is None:
            try:
                return _label_to_int(path, raw, num_classes), 0
            except SSMISError as err:
                if not lossy:
                    raise
                raise SSMISError(f"{err}; a JPEG mask is lossy: declare its values with "
                                 "data.mask_values, e.g. {0: 0, 255: 1} (snapped to the "
                                 "nearest) or 0-127:0,128-255:1") from None
        mask_values = {c: c for c in range(num_classes)}
    try:
        mapping = normalize_mask_values(mask_values)
    except ValueError as exc:
        raise SSMISError(str(exc)) from None
    assert mapping is not None
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():
        raise SSMISError(f"{path}: mask has NaN/inf values")
    small = raw.dtype.kind in "ub" and raw.size > 0 and int(raw.max()) <= 65535
    if small:  # 8/16-bit: one pass with a table instead of a sort
        counts = np.bincount(raw.ravel().astype(np.intp, copy=False))
        values = np.flatnonzero(counts)
        table_counts = counts[values]
    else:
        values, inverse, table_counts = np.unique(raw, return_inverse=True, return_counts=True)
    classes, snapped = lookup_classes(values, mapping, snap)
    unknown = values[classes < 0]
    if unknown.size:
        shown = [v.item() for v in unknown[:12]]
        hint = ""
        if _is_palette(path):
            hint = ("; a palette (indexed) image: its values are palette indices, read as the "
                    "classes when data.mask_values is left out")
        elif unknown.size > 4:
            hint = ("; a resized or lossy mask? data.mask_snap: nearest snaps each value to the "
                    "nearest declared one, or give ranges such as 0-127:0,128-255:1")
        raise SSMISError(f"{path}: mask value(s) {shown}{' ...' if unknown.size > 12 else ''} "
                         f"not in data.mask_values {describe(mapping)}{hint}")
    if small:
        table = np.zeros(int(values[-1]) + 1, dtype=np.int64)
        table[values] = classes
        out = table[raw]
    else:
        out = classes[inverse.reshape(raw.shape)]
    if num_classes is not None and out.size and out.max() >= num_classes:
        raise SSMISError(f"{path}: class {int(out.max())} from data.mask_values, expected "
                         f"0..{num_classes - 1} (data.num_classes = {num_classes})")
    return out, int(table_counts[snapped].sum())


def read_roi(path: Path, shape: tuple[int, ...], image: Path) -> np.ndarray:
    """ROI (field of view) mask file -> bool (H, W): any non-zero value is inside.

    Raises SSMISError naming ``path`` when its size differs from ``shape`` (the image's, named
    by ``image``) or when it marks no pixel.
    """
    raw = read_picture(path, None)
    roi = raw.any(axis=-1) if raw.ndim == 3 else raw != 0
    if roi.shape != tuple(shape):
        raise SSMISError(f"{path}: ROI size {roi.shape[1]}x{roi.shape[0]} differs from image "
                         f"{Path(image).name} {shape[1]}x{shape[0]}")
    if not roi.any():
        raise SSMISError(f"{path}: ROI mask is empty (every pixel 0), expected the pixels to "
                         "score as non-zero")
    return roi


def map_rgb_mask(raw: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Colour mask (H, W, 3) -> classes: channel k set (> 127) gives ``classes[k]``, later
    channels overwriting earlier ones (M&Ms: R = LV, G = MYO, B = RV); elsewhere 0."""
    out = np.zeros(raw.shape[:2], dtype=np.int64)
    for k, cls in enumerate(classes):
        out[raw[..., k] > 127] = int(cls)
    return out
