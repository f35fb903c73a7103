"""How a run turns a file's intensities into network input, one record per channel.

A run resolves its normalisation once (:meth:`ssmis.data.layouts.Layout.normalisation`), logs
it, and stores it in its ``config.yaml`` (``data.resolved_normalization``); ``ssmis predict``
applies exactly that record to new files, whatever their container (NIfTI, PNG, TIFF), so a
model never sees intensities on another scale than the one it was trained on.

Schemes (each optionally after clipping, ``clip`` in the file's units or ``clip_percentile``):

* ``zscore``: ``(x - mean) / std`` over the case (``stats: nonzero``: over the voxels > 0, as
  the SSL4MIS BraTS preprocessing);
* ``minmax``: ``(x - min) / (max - min)`` per case (SSL4MIS ACDC, nnU-Net ``rescale_to_0_1``);
* ``ct``: clip to ``clip`` (HU), then to [0, 1] by that window;
* ``scale``: ``x / divisor`` (the maximum of the pictures' integer type: 255 for 8-bit files);
* ``none``: unchanged.

``stored: true`` marks datasets whose files already hold normalised values (the h5 copies of
the literature, ``ssmis data prepare`` caches): training reads them as they are, and the record
says what produced them, which is what raw input needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ssmis.errors import SSMISError

SCHEMES = ("zscore", "minmax", "ct", "scale", "none")

#: nnU-Net's channel-name -> scheme table (``get_normalization_scheme``, case-insensitive;
#: every other name is z-scored). nnU-Net's ``CT`` uses dataset-wide foreground statistics;
#: ssmis's ``ct`` clips to ``data.intensity_window`` and scales it to [0, 1].
NNUNET_CHANNEL_SCHEMES = {"ct": "ct", "nonorm": "none", "zscore": "zscore",
                          "rescale_to_0_1": "minmax", "rgb_to_0_1": "scale"}


def scheme_for_channel_name(name: str | None) -> str | None:
    """The scheme nnU-Net gives a ``channel_names`` / ``modality`` value, or None (no name)."""
    if name is None:
        return None
    return NNUNET_CHANNEL_SCHEMES.get(name.strip().casefold(), "zscore")


def resolve_scheme(normalization: str | Sequence[str], channel: int,
                   channel_name: str | None = None, from_image_file: bool = False) -> str:
    """The scheme of one channel from ``data.normalization`` (one value, or one per channel),
    resolving ``auto``: ``scale`` for picture files, else nnU-Net's scheme for the channel's
    ``dataset.json`` name (:func:`scheme_for_channel_name`), else ``zscore``."""
    choice = normalization if isinstance(normalization, str) else normalization[channel]
    if choice != "auto":
        return choice
    if from_image_file:
        return "scale"
    return scheme_for_channel_name(channel_name) or "zscore"


def normalize(image: np.ndarray, method: str, window: Sequence[float] = (-1000.0, 1000.0),
              raw_dtype: np.dtype | None = None) -> np.ndarray:
    """One channel's intensities as float32 by ``method`` (see the module docstring);
    ``scale`` divides by the maximum of ``raw_dtype`` (default ``image.dtype``) when it is an
    integer type.

    Raises:
        SSMISError: an unknown method.
    """
    x = image.astype(np.float32, copy=False)
    if method == "zscore":
        std = float(x.std())
        return (x - float(x.mean())) / (std if std > 1e-8 else 1.0)
    if method == "minmax":
        lo, hi = float(x.min()), float(x.max())
        return ((x - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)
    if method == "ct":
        lo, hi = float(window[0]), float(window[1])
        return (np.clip(x, lo, hi) - lo) / (hi - lo)
    if method == "scale":
        dtype = np.dtype(raw_dtype if raw_dtype is not None else image.dtype)
        if dtype.kind in "iu":
            return x / float(np.iinfo(dtype).max)
        return x
    if method == "none":
        return x
    raise SSMISError(f"data.normalization: unknown method '{method}', expected one of "
                     f"{', '.join(SCHEMES)}")


def type_divisor(dtype: Any) -> float | None:
    """The divisor of ``scale`` for files of ``dtype``: its maximum when it is an integer
    type (255 for uint8), None for floating-point pictures (left as they are)."""
    dt = np.dtype(dtype)
    return float(np.iinfo(dt).max) if dt.kind in "iu" else None


@dataclass(frozen=True)
class ChannelNorm:
    """The normalisation of one input channel, with every number it uses.

    ``source`` says where it was decided (``data.normalization``, a ``dataset.json`` channel
    name, the picture type, a dataset's published preprocessing); ``file_dtype`` is the type of
    the training files (``scale``: a file of another integer type is refused by
    :meth:`check_input`).
    """

    scheme: str
    clip: tuple[float, float] | None = None
    clip_percentile: float | None = None
    stats: str = "all"
    divisor: float | None = None
    file_dtype: str | None = None
    stored: bool = False
    source: str = ""

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``x`` (any shape, one channel) -> float32 normalised like the training data.

        Raises:
            SSMISError: non-finite values (the caller names the file first), an unknown scheme.
        """
        if self.scheme == "scale":  # as the reader: an integer file by its type's maximum
            divisor = type_divisor(np.asarray(x).dtype) or self.divisor
            y = np.asarray(x, dtype=np.float32)
            return y / np.float32(divisor) if divisor else y
        y = np.asarray(x, dtype=np.float32)
        if self.clip_percentile is not None:
            y = np.minimum(y, np.float32(np.percentile(y, self.clip_percentile)))
        if self.scheme == "ct":
            lo, hi = self.clip if self.clip is not None else (-1000.0, 1000.0)
            return normalize(y, "ct", (lo, hi))
        if self.clip is not None:
            y = np.clip(y, self.clip[0], self.clip[1])
        if self.scheme == "zscore" and self.stats == "nonzero":
            inside = y[y > 0]
            if inside.size == 0:
                return normalize(y, "zscore")
            std = float(inside.std())
            return (y - float(inside.mean())) / (std if std > 1e-8 else 1.0)
        return normalize(y, self.scheme)

    def check_input(self, path: Any, dtype: Any, value_max: float, picture: bool = False
                    ) -> None:
        """Refuse a file whose values this record would put on another scale than training's.

        Raises:
            SSMISError: ``scale``: a floating-point file whose values exceed the training
                files' integer range, or that cannot be put on it (the training files mixed
                integer types); ``ct`` (a window in HU): a picture file or 8-bit values,
                which are display pixels, not CT intensities.
        """
        floating = np.dtype(dtype).kind == "f"
        if self.scheme == "scale" and floating and self.file_dtype is not None:
            trained_int = any(np.dtype(t).kind in "iu" for t in self.file_dtype.split(", "))
            if trained_int and self.divisor is None:
                raise SSMISError(
                    f"{path}: floating-point values, but the model was trained on "
                    f"{self.file_dtype} files, each divided by its type's maximum; give the "
                    "file in one of those integer types")
        if self.scheme == "ct" and (picture or np.dtype(dtype) == np.uint8):
            what = "a picture file" if picture else "8-bit values"
            raise SSMISError(
                f"{path}: {what} ({np.dtype(dtype)}, up to {value_max:g}), but the model was "
                "trained on CT intensities in HU (its data.resolved_normalization clips to a HU "
                "window); give the scan as NIfTI in HU")
        if self.scheme == "scale" and floating and self.divisor and value_max > self.divisor:
            raise SSMISError(
                f"{path}: values up to {value_max:g} ({np.dtype(dtype)}), but the model was "
                f"trained on {self.file_dtype or 'pictures'} divided by {self.divisor:g} "
                "(its data.resolved_normalization); convert the file to the training bit depth")

    def describe(self) -> str:
        """One line: the scheme and its numbers, then its source."""
        pre = ""
        if self.clip_percentile is not None:
            pre += f"clip above the {self.clip_percentile:g}th percentile, "
        if self.scheme == "ct":
            lo, hi = self.clip if self.clip is not None else (-1000.0, 1000.0)
            text = f"ct: clip to [{lo:g}, {hi:g}], then scale that window to [0, 1]"
        else:
            if self.clip is not None:
                pre += f"clip to [{self.clip[0]:g}, {self.clip[1]:g}], "
            text = {
                "zscore": "zscore: (x - mean) / std per case"
                          + (" (mean/std of the voxels > 0)" if self.stats == "nonzero" else ""),
                "minmax": "minmax: (x - min) / (max - min) per case, to [0, 1]",
                "scale": ("scale: an integer file / its type's maximum"
                          + (f" ({self.file_dtype} files: / {self.divisor:g})" if self.divisor
                             else f" ({self.file_dtype} files)" if self.file_dtype
                             else "; floating-point values as they are")),
                "none": "none: x as it is",
            }.get(self.scheme, self.scheme)
        stored = " (already applied in the dataset's files)" if self.stored else ""
        return f"{pre}{text}{stored}; {self.source}" if self.source else f"{pre}{text}{stored}"

    def numbers(self) -> tuple[Any, ...]:
        """What the record does, without where it was decided (two versions of ssmis may word
        ``source`` differently for the same normalisation)."""
        return (self.scheme, self.clip, self.clip_percentile, self.stats, self.divisor)

    def as_dict(self) -> dict[str, Any]:
        """A plain dict for ``config.yaml`` (tuples as lists, unset numbers left out)."""
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
        return {k: v for k, v in out.items()
                if v is not None and not (k == "stats" and v == "all")
                and not (k == "stored" and v is False)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "data.resolved_normalization"
                  ) -> ChannelNorm:
        """The record :meth:`as_dict` wrote.

        Raises:
            SSMISError: an unknown key or scheme, naming ``where``.
        """
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown or raw.get("scheme") not in SCHEMES:
            raise SSMISError(f"{where}: expected a record with scheme in {', '.join(SCHEMES)} "
                             f"and keys {', '.join(sorted(known))}, got {raw}")
        values = dict(raw)
        if values.get("clip") is not None:
            values["clip"] = tuple(float(v) for v in values["clip"])
        return cls(**values)


def describe_all(norms: Sequence[ChannelNorm], names: Sequence[str] = ()) -> list[str]:
    """One line per channel (``channel 0 'CT': ct: ...``) for ``inspect`` and the run log."""
    lines = []
    for c, norm in enumerate(norms):
        name = f" '{names[c]}'" if c < len(names) else ""
        lines.append(f"channel {c}{name}: {norm.describe()}")
    return lines
