"""Mask pixel values -> classes: exact values, value ranges, and snapping of lossy masks.

``data.mask_values`` (and ``--mask-values``) take three spellings of one mapping:

* ``{0: 0, 255: 1}`` — exact pixel values;
* ``{"0-127": 0, "128-255": 1}`` — inclusive value ranges (a threshold at 128);
* ``"0-127:0,128-255:1"`` or ``"0:0,255:1"`` — the same as one ``VALUE:CLASS`` string.

Exact values and ranges can be mixed. :func:`normalize_mask_values` turns any of them into a dict
whose keys are ints (exact values) or ``"low-high"`` strings (ranges). Lossy masks (JPEG) carry
values around the declared ones (0 -> 0..12, 255 -> 243..255): :func:`lookup_classes` with
``snap=True`` maps each undeclared value to the class of the nearest declared value or range.
Only numpy is imported here, so the config module can use it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

#: mask files whose compression changes pixel values (masks snapped by ``data.mask_snap: auto``)
LOSSY_MASK_EXTS = (".jpg", ".jpeg", ".jpe", ".jfif", ".webp")

_RANGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*$")
_VALUE = re.compile(r"^\s*(\d+)\s*$")


def _key(key: Any, field: str) -> int | str:
    """One mapping key as an int (exact value) or a canonical ``"low-high"`` string."""
    if isinstance(key, bool):
        raise ValueError(f"{field}: key {key!r} is not a pixel value")
    if isinstance(key, int):
        if key < 0:
            raise ValueError(f"{field}: key {key} is negative, expected pixel values >= 0")
        return key
    text = str(key)
    if _VALUE.match(text):
        return int(text)
    match = _RANGE.match(text)
    if match is None:
        raise ValueError(f"{field}: key {key!r}: expected a pixel value (255) or an inclusive "
                         "range (128-255)")
    low, high = float(match[1]), float(match[2])
    if high < low:
        raise ValueError(f"{field}: range {text!r} has its high end below its low end")
    return f"{low:g}-{high:g}"


def normalize_mask_values(value: Any, field: str = "data.mask_values"
                          ) -> dict[int | str, int] | None:
    """Any accepted spelling (dict, or ``"0-127:0,128-255:1"``) -> {int | "low-high": class}.

    Raises ValueError with a one-line message naming ``field`` when a key or class is not
    understood or two entries overlap.
    """
    if value is None:
        return None
    if isinstance(value, str):
        pairs: list[tuple[str, str]] = []
        for part in value.split(","):
            if not part.strip():
                continue
            key, sep, cls = part.rpartition(":")
            if not sep:
                raise ValueError(f"{field}: '{value}': expected VALUE:CLASS or LOW-HIGH:CLASS "
                                 "pairs, e.g. 0:0,255:1 or 0-127:0,128-255:1")
            pairs.append((key, cls))
        items: list[tuple[Any, Any]] = list(pairs)
    elif isinstance(value, Mapping):
        items = list(value.items())
    else:
        raise ValueError(f"{field}: expected a mapping such as {{0: 0, 255: 1}} or a string "
                         f"such as '0-127:0,128-255:1', got {type(value).__name__}")
    out: dict[int | str, int] = {}
    for key, cls in items:
        try:
            klass = int(str(cls).strip())
        except ValueError:
            raise ValueError(f"{field}: class {cls!r} of {key!r} is not an integer") from None
        out[_key(key, field)] = klass
    if not out:
        raise ValueError(f"{field}: empty mapping, expected e.g. 0:0,255:1")
    keys = list(out)
    for i, k1 in enumerate(keys):
        for k2 in keys[i + 1:]:
            (lo1, hi1), (lo2, hi2) = _span(k1), _span(k2)
            if lo1 <= hi2 and lo2 <= hi1 and out[k1] != out[k2]:
                raise ValueError(f"{field}: '{k1}' and '{k2}' overlap with different classes")
    return out


def _span(key: int | str) -> tuple[float, float]:
    if isinstance(key, int):
        return float(key), float(key)
    low, high = key.split("-")
    return float(low), float(high)


def describe(mapping: Mapping[int | str, int]) -> str:
    """``0:0,255:1`` style text of a mapping (for messages)."""
    return ",".join(f"{k}:{c}" for k, c in sorted(mapping.items(),
                                                  key=lambda kc: _span(kc[0])))


def lookup_classes(values: np.ndarray, mapping: Mapping[int | str, int], snap: bool
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Class of each of ``values`` (1D, distinct) and whether it was snapped.

    A value inside a range or equal to an exact key gets that class; with ``snap`` any other
    value gets the class of the nearest key or range (ties: the lower one), without ``snap`` -1.
    Returns (classes int64, snapped bool), both shaped like ``values``.
    """
    v = np.asarray(values, dtype=np.float64)
    spans = [(*_span(k), int(c)) for k, c in mapping.items()]
    lows = np.asarray([s[0] for s in spans])
    highs = np.asarray([s[1] for s in spans])
    classes = np.asarray([s[2] for s in spans], dtype=np.int64)
    # distance of every value to every span (0 inside), shape (values, spans)
    dist = np.maximum(lows[None, :] - v[:, None], 0) + np.maximum(v[:, None] - highs[None, :], 0)
    order = np.argsort(lows, kind="stable")  # ties go to the span with the lower values
    nearest = order[np.argmin(dist[:, order], axis=1)]
    exact = dist[np.arange(len(v)), nearest] == 0
    out = classes[nearest] if len(v) else np.zeros(0, np.int64)
    if not snap:
        out = np.where(exact, out, -1)
    return out.astype(np.int64), ~exact if snap else np.zeros(len(v), bool)
