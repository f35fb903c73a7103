"""Synthetic cardiac-like phantoms in the exact ACDC h5 layout (the embedded default dataset).

``ssmis demo`` and the tests train on these, through the same readers, splits and engine as a
real ACDC run, without any download. The images are meant to be learnable by a small 2D U-Net
in a few hundred CPU iterations yet not trivially thresholdable: the right and left ventricle
blood pools have similar brightness (as in cine MRI), the myocardium has the intensity of some
background structures and of the (unlabeled) RV free wall, there are bright background blobs
(an aorta-like vessel), papillary muscles inside the LV cavity, a smooth bias field, Rician noise
and partial-volume blur; shapes change smoothly from base to apex and the RV vanishes near the
apex. Every volume is min-max normalised to [0, 1] like the SSL4MIS ACDC files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage

from ssmis.errors import SSMISError

#: Structure classes written for ``num_classes = 4`` (the ACDC convention).
BACKGROUND, RV, MYO, LV = 0, 1, 2, 3


@dataclass
class _Heart:
    """Per-volume anatomy; per-slice geometry is derived from it by the slice position."""

    center: np.ndarray  # (row, col) at the base, pixels
    drift: np.ndarray  # centre displacement from base to apex, pixels
    lv_axes: np.ndarray  # endocardial semi-axes at the base, pixels
    thickness: float  # myocardium thickness at the base, pixels
    theta: float  # LV ellipse orientation, radians
    twist: float  # orientation change from base to apex, radians
    rv_dir: float  # direction of the RV from the LV centre, radians
    rv_offset: float  # RV ellipse centre distance, in epicardial radii
    rv_axes: np.ndarray  # RV ellipse semi-axes (along, across rv_dir), in epicardial radii
    rv_end: float  # slice position (0 base .. 1 apex) beyond which there is no RV
    apex_scale: float  # LV size at the apex relative to the base
    papillary: np.ndarray  # (n, 2): angle and radial fraction of papillary muscles


def _ellipse(rows: np.ndarray, cols: np.ndarray, center: np.ndarray, axes: np.ndarray,
             angle: float) -> np.ndarray:
    """Normalised radius field: < 1 inside the rotated ellipse."""
    # python floats keep the float32 grids float32 (numpy scalars would upcast to float64)
    dr, dc = rows - float(center[0]), cols - float(center[1])
    c, s = float(np.cos(angle)), float(np.sin(angle))
    u = (c * dr + s * dc) * (1.0 / float(axes[0]))
    v = (c * dc - s * dr) * (1.0 / float(axes[1]))
    return u * u + v * v


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], waves: int,
                  amplitude: float) -> np.ndarray:
    """Smooth random field ``1 + amplitude * noise`` (bias field / tissue texture): a few random
    low-frequency plane waves, cheaper than filtering white noise."""
    rows = np.arange(shape[0], dtype=np.float32)[:, None] / max(shape)
    cols = np.arange(shape[1], dtype=np.float32)[None, :] / max(shape)
    field = np.zeros(shape, dtype=np.float32)
    for _ in range(waves):
        freq = rng.uniform(0.5, 0.5 + waves / 2.0) * 2.0 * np.pi
        direction = rng.uniform(0.0, 2.0 * np.pi)
        phase = rng.uniform(0.0, 2.0 * np.pi)
        field += np.cos(freq * (np.cos(direction) * rows + np.sin(direction) * cols) + phase)
    return 1.0 + amplitude * field / np.sqrt(waves / 2.0) / 1.5


def _sample_heart(rng: np.random.Generator, size: tuple[int, int]) -> _Heart:
    unit = min(size) / 96.0
    half = np.array(size, dtype=float) / 2.0
    a = rng.uniform(9.0, 13.0) * unit
    return _Heart(
        center=half + rng.uniform(-0.08, 0.08, size=2) * np.array(size),
        drift=rng.normal(0.0, 2.0 * unit, size=2),
        lv_axes=np.array([a, a * rng.uniform(0.75, 0.95)]),
        thickness=rng.uniform(3.5, 5.5) * unit,
        theta=rng.uniform(0.0, np.pi),
        twist=rng.uniform(-0.3, 0.3),
        rv_dir=rng.uniform(0.65, 1.35) * np.pi,
        rv_offset=rng.uniform(0.7, 0.9),
        rv_axes=np.array([rng.uniform(0.7, 0.9), rng.uniform(1.2, 1.5)]),
        rv_end=rng.uniform(0.75, 1.0),
        apex_scale=rng.uniform(0.4, 0.6),
        papillary=np.stack([rng.uniform(0, 2 * np.pi, 2), rng.uniform(0.55, 0.8, 2)], axis=1),
    )


def _slice_labels(
    heart: _Heart, f: float, rows: np.ndarray, cols: np.ndarray, unit: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Labels of the slice at relative position ``f`` (0 base, 1 apex), the RV free wall
    (labeled background), papillary muscles (dark, labeled LV as in ACDC), the epicardial fat
    arc (bright, background) and a margin around the heart that keeps distractors off it."""
    scale = 1.0 - (1.0 - heart.apex_scale) * f**1.3
    center = heart.center + heart.drift * f
    angle = heart.theta + heart.twist * f
    axes = heart.lv_axes * scale * rng.uniform(0.97, 1.03, size=2)
    thick = heart.thickness * (1.0 - 0.25 * f)
    endo = _ellipse(rows, cols, center, axes, angle) < 1.0
    epi_field = _ellipse(rows, cols, center, axes + thick, angle)
    epi = epi_field < 1.0
    r_epi = float(np.mean(axes + thick))
    margin = epi_field < (1.0 + 4.0 * unit / r_epi) ** 2
    labels = np.zeros(rows.shape, dtype=np.uint8)
    wall = np.zeros(rows.shape, dtype=bool)
    if f <= heart.rv_end:
        rv_scale = 1.0 - 0.45 * (f / max(heart.rv_end, 1e-6)) ** 1.2
        direction = np.array([np.cos(heart.rv_dir), np.sin(heart.rv_dir)])
        rv_center = center + direction * heart.rv_offset * r_epi
        rv_axes = heart.rv_axes * r_epi * np.array([rv_scale, 0.5 + 0.5 * rv_scale])
        rv_field = _ellipse(rows, cols, rv_center, rv_axes, heart.rv_dir)
        rv = (rv_field < 1.0) & ~epi
        # thin free wall: a shell just outside the cavity, away from the septum
        shell = rv_field < (1.0 + 1.3 * unit / float(np.min(rv_axes))) ** 2
        wall = shell & ~epi & ~rv
        margin |= rv_field < (1.0 + 4.0 * unit / float(np.min(rv_axes))) ** 2
        labels[rv] = RV
    labels[epi] = MYO
    labels[endo] = LV
    # epicardial fat: a bright arc on the side away from the RV
    fat_field = epi_field < (1.0 + 1.5 * unit / r_epi) ** 2
    dr, dc = rows - float(center[0]), cols - float(center[1])
    along = dr * float(np.cos(heart.rv_dir)) + dc * float(np.sin(heart.rv_dir))
    side = along < -0.5 * np.hypot(dr, dc)
    fat = fat_field & ~epi & side & (labels == BACKGROUND) & ~wall
    papillary = np.zeros(rows.shape, dtype=bool)
    for phi, frac in heart.papillary:
        u, v = axes[0] * frac * np.cos(phi), axes[1] * frac * np.sin(phi)
        offset = u * np.array([np.cos(angle), np.sin(angle)]) + v * np.array(
            [-np.sin(angle), np.cos(angle)])
        radius = rng.uniform(1.3, 2.2) * unit * (0.6 + 0.4 * scale)
        pr, pc = float(center[0] + offset[0]), float(center[1] + offset[1])
        papillary |= (rows - pr) ** 2 + (cols - pc) ** 2 < float(radius) ** 2
    return labels, wall, papillary & endo, fat, margin


def _volume(rng: np.random.Generator, slices: int, size: tuple[int, int]
            ) -> tuple[np.ndarray, np.ndarray]:
    """One phantom volume (Z, H, W): float32 image in [0, 1] and uint8 labels 0..3."""
    unit = min(size) / 96.0
    rows, cols = np.meshgrid(np.arange(size[0], dtype=np.float32),
                             np.arange(size[1], dtype=np.float32), indexing="ij")
    heart = _sample_heart(rng, size)
    blood = rng.uniform(0.8, 0.95)
    myo = rng.uniform(0.16, 0.24)
    value = np.array([0.0, blood * rng.uniform(0.85, 0.95), myo, blood], dtype=np.float32)
    body = _ellipse(rows, cols, np.array(size) / 2.0 + rng.normal(0, 2 * unit, 2),
                    np.array(size) * rng.uniform(0.44, 0.5, 2), rng.uniform(-0.3, 0.3)) < 1.0
    tissue = rng.uniform(0.35, 0.45)
    backdrop = np.where(body, tissue * _smooth_field(rng, size, 6, 0.15), 0.02)
    blob_mask = np.zeros(size, dtype=bool)
    blob_value = np.zeros(size, dtype=np.float32)
    for center, axes, angle, v in _background_blobs(rng, size, unit, myo):
        inside = (_ellipse(rows, cols, center, axes, angle) < 1.0) & body
        blob_mask |= inside
        blob_value[inside] = v
    fat_value = rng.uniform(0.55, 0.68)
    bias = _smooth_field(rng, size, 2, 0.12)
    image = np.empty((slices, *size), dtype=np.float32)
    label = np.empty((slices, *size), dtype=np.uint8)
    for k in range(slices):
        f = k / (slices - 1) if slices > 1 else 0.0
        lab, wall, papillary, fat, margin = _slice_labels(heart, f, rows, cols, unit, rng)
        img = np.where(blob_mask & ~margin, blob_value, backdrop)
        img[fat] = fat_value
        img[wall] = 0.5 * (myo + tissue)
        img[lab > 0] = value[lab[lab > 0]]
        img[papillary] = myo * 1.1  # inside the cavity, labeled LV
        img = ndimage.gaussian_filter(img, sigma=rng.uniform(0.6, 0.9) * unit)
        image[k] = img * bias * rng.uniform(0.95, 1.05)
        label[k] = lab
    sigma = rng.uniform(0.03, 0.05)
    noise = rng.standard_normal(size=(2, *image.shape), dtype=np.float32) * np.float32(sigma)
    image = np.hypot(image + noise[0], noise[1])  # Rician magnitude noise, as in MRI
    lo, hi = float(image.min()), float(image.max())
    image = (image - lo) / max(hi - lo, 1e-8)
    return image.astype(np.float32), label


def _background_blobs(rng: np.random.Generator, size: tuple[int, int], unit: float,
                      myo_value: float) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
    """Distractors: an aorta-like bright disc, dark lung-like regions, myocardium-grey blobs."""
    blobs = []
    n = int(rng.integers(3, 6))
    for i in range(n):
        center = rng.uniform(0.12, 0.88, size=2) * np.array(size)
        if i == 0:  # bright vessel, as bright as blood
            axes = np.full(2, rng.uniform(3.0, 5.0) * unit)
            value = rng.uniform(0.75, 0.95)
        elif i == 1:  # dark lung
            axes = rng.uniform(8.0, 18.0, size=2) * unit
            value = rng.uniform(0.04, 0.12)
        else:
            axes = rng.uniform(3.0, 10.0, size=2) * unit
            value = float(rng.choice([myo_value, rng.uniform(0.45, 0.55)]))
        blobs.append((center, axes, float(rng.uniform(0, np.pi)), value))
    return blobs


def _remap(label: np.ndarray, num_classes: int) -> np.ndarray:
    """Fewer classes: 3 = background/Myo/LV (RV unlabeled), 2 = background/LV cavity."""
    if num_classes == 4:
        return label
    table = np.array([0, 0, 1, 2] if num_classes == 3 else [0, 0, 0, 1], dtype=np.uint8)
    return table[label]


def _write(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image)
        f.create_dataset("label", data=label)


def make_phantom_dataset(
    root: Path,
    *,
    num_train_volumes: int = 16,
    num_val: int = 4,
    num_test: int = 6,
    slices: int = 8,
    size: tuple[int, int] = (96, 96),
    num_classes: int = 4,
    seed: int = 0,
) -> Path:
    """Write a synthetic dataset in the ACDC h5 layout under ``root`` and return ``root``.

    Patients ``patient001..`` are training (stored as slices), then validation, then test
    (stored as volumes), one frame each. Patient ``i`` depends only on ``(seed, i)``, so adding
    volumes does not change the existing ones.
    """
    if min(num_train_volumes, num_val, num_test, slices) < 1:
        raise SSMISError("make_phantom_dataset: volume and slice counts must be >= 1")
    if num_classes not in (2, 3, 4):
        raise SSMISError(f"data.num_classes: {num_classes} not supported by the phantoms, "
                         "expected 2, 3 or 4")
    size = (int(size[0]), int(size[1]))
    if min(size) < 24:
        raise SSMISError(f"make_phantom_dataset: size {size} too small, expected >= 24 pixels")
    root = Path(root)
    slice_dir = root / "data" / "slices"
    slice_dir.mkdir(parents=True, exist_ok=True)
    total = num_train_volumes + num_val + num_test
    train_slices: list[str] = []
    train_volumes: list[str] = []
    val: list[str] = []
    test: list[str] = []
    for i in range(total):
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        image, label = _volume(rng, slices, size)
        label = _remap(label, num_classes)
        volume_id = f"patient{i + 1:03d}_frame01"
        if i < num_train_volumes:
            train_volumes.append(volume_id)
            for k in rng.permutation(slices):  # shuffled within a patient, as in ACDC's list
                slice_id = f"{volume_id}_slice_{k + 1}"
                _write(slice_dir / f"{slice_id}.h5", image[k], label[k])
                train_slices.append(slice_id)
        else:
            _write(root / "data" / f"{volume_id}.h5", image, label)
            (val if i < num_train_volumes + num_val else test).append(volume_id)
    for name, ids in (("train_slices", train_slices), ("train", train_volumes), ("val", val),
                      ("test", test)):
        (root / f"{name}.list").write_text("".join(f"{i}\n" for i in ids))
    return root


def blob_volume(rng: np.random.Generator, shape: tuple[int, ...]
                ) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image with one bright box-shaped foreground object and its 0/1 label.

    Used by the layouts' tiny synthetic copies (:meth:`ssmis.data.layouts.Layout.
    write_example`). Returns ``(image float32, label uint8)``, both of ``shape`` (2D or 3D);
    the object spans a third of each axis at a random position.
    """
    label = np.zeros(shape, dtype=np.uint8)
    box = []
    for n in shape:
        size = max(2, n // 3)
        start = int(rng.integers(0, max(1, n - size)))
        box.append(slice(start, start + size))
    label[tuple(box)] = 1
    image = (label * 2.0 + rng.normal(0.0, 0.3, shape)).astype(np.float32)
    return image, label
