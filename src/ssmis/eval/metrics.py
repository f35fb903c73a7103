"""Overlap and surface-distance metrics per class and per case, with their rules written down.

Dice and Jaccard are computed on voxel counts. HD95 and ASD use the boundary voxels of each mask
(the mask minus its erosion by the face-connected structuring element, the image border counting
as background — the same surface MONAI and medpy take) and exact Euclidean distances between
those voxels, scaled by the voxel spacing when one is given. Only the bounding box of the union of
the two masks (plus a one-voxel margin) is looked at, and distances come from a KD-tree over the
boundary voxels, so a 200x140x88 volume takes milliseconds, not a full distance transform.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = [
    "EMPTY_RULES",
    "HD95_MODES",
    "METRIC_DEFINITIONS",
    "METRIC_NAMES",
    "binary_metrics",
    "boundary",
    "case_metrics",
    "class_mask",
    "dice_per_class",
    "occurs_in",
    "summarize",
    "surface_distances",
]

METRIC_NAMES: tuple[str, ...] = ("dice", "jaccard", "hd95", "asd")

#: the distance metrics: 0 for a pair of empty masks by the empty-mask rule, not a measurement
DISTANCES: tuple[str, ...] = ("hd95", "asd")

#: per-case key (true) of a class whose prediction and reference are both empty; a distance
#: mean made of such pairs only is undefined (``empty_pairs`` in the summary, "n/a" in tables)
EMPTY_PAIR = "empty_pair"

METRIC_DEFINITIONS: dict[str, str] = {
    "dice": "2|P∩G| / (|P| + |G|) over the voxels of one class",
    "jaccard": "|P∩G| / |P∪G| over the voxels of one class",
    "hd95": "95th-percentile Hausdorff distance between the boundary voxels of P and G; "
            "mode 'monai' = max of the two directed 95th percentiles (MONAI), mode 'medpy' = "
            "95th percentile of both directions pooled (medpy.metric.binary.hd95)",
    "asd": "average surface distance: mean distance from each boundary voxel of P to the "
           "nearest boundary voxel of G (directed, as MONAI's default and medpy's asd)",
    "boundary": "mask XOR its binary erosion with the face-connected structuring element; "
                "voxels outside the image count as background",
    "mean": "per case, the mean over foreground classes (undefined values skipped); then mean "
            "and population std of those case means over cases",
    "per_class": "mean and population std over cases of one class; n = cases with a defined "
                 "value, undefined = cases without",
}

EmptyRule = Literal["nan", "medpy"]
EMPTY_RULES: dict[str, str] = {
    "nan": "both masks empty: dice 1, jaccard 1, hd95 0, asd 0 (a distance mean made of such "
           "pairs only is undefined: null, with their count as empty_pairs); exactly one "
           "empty: dice 0, jaccard 0, hd95 and asd undefined (null, left out of means and "
           "counted as 'undefined')",
    "medpy": "as SSL4MIS/UA-MT's calculate_metric_percase: an empty prediction scores 0 on all "
             "four metrics (which flatters the distances); a prediction with an empty ground "
             "truth scores dice 0, jaccard 0 and undefined distances",
}

HD95_MODES: tuple[str, ...] = ("monai", "medpy")


def _spacing(spacing: Sequence[float] | None, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    values = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if values.size == 1:
        return np.full(ndim, float(values[0]))
    if values.size != ndim:
        raise ValueError(f"spacing {tuple(values)} has {values.size} values for a {ndim}-D mask")
    return values


def boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a boolean mask (mask minus its face-connected erosion)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _crop_union(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union; the erosion border stays background."""
    union = pred | gt
    coords = [np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != ax)))
              for ax in range(union.ndim)]
    box = tuple(slice(int(c[0]), int(c[-1]) + 1) for c in coords)
    return pred[box], gt[box]


def surface_distances(pred: np.ndarray, gt: np.ndarray,
                      spacing: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Directed boundary distances (pred→gt, gt→pred) of two non-empty boolean masks."""
    pred, gt = _crop_union(pred.astype(bool), gt.astype(bool))
    scale = _spacing(spacing, pred.ndim)
    points_pred = np.argwhere(boundary(pred)) * scale
    points_gt = np.argwhere(boundary(gt)) * scale
    to_gt, _ = cKDTree(points_gt).query(points_pred)
    to_pred, _ = cKDTree(points_pred).query(points_gt)
    return np.asarray(to_gt, dtype=np.float64), np.asarray(to_pred, dtype=np.float64)


def binary_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None,
                   empty_rule: EmptyRule = "nan", hd95_mode: str = "monai") -> dict[str, float]:
    """Dice, Jaccard, HD95 and ASD of two boolean masks of the same shape."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {gt.shape}")
    if empty_rule not in EMPTY_RULES:
        raise ValueError(f"empty_rule {empty_rule!r}: expected one of {sorted(EMPTY_RULES)}")
    if hd95_mode not in HD95_MODES:
        raise ValueError(f"hd95_mode {hd95_mode!r}: expected one of {list(HD95_MODES)}")
    pred, gt = pred.astype(bool, copy=False), gt.astype(bool, copy=False)
    n_pred, n_gt = int(pred.sum()), int(gt.sum())
    nan = float("nan")
    if n_pred == 0 or n_gt == 0:
        if empty_rule == "medpy" and n_pred == 0:
            return {"dice": 0.0, "jaccard": 0.0, "hd95": 0.0, "asd": 0.0}
        if n_pred == 0 and n_gt == 0:
            return {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}
        return {"dice": 0.0, "jaccard": 0.0, "hd95": nan, "asd": nan}
    inter = int(np.count_nonzero(pred & gt))
    dice = 2.0 * inter / (n_pred + n_gt)
    jaccard = inter / (n_pred + n_gt - inter)
    to_gt, to_pred = surface_distances(pred, gt, spacing)
    if hd95_mode == "monai":
        hd95 = max(float(np.percentile(to_gt, 95)), float(np.percentile(to_pred, 95)))
    else:
        hd95 = float(np.percentile(np.concatenate([to_gt, to_pred]), 95))
    return {"dice": dice, "jaccard": jaccard, "hd95": hd95, "asd": float(to_gt.mean())}


def class_mask(labels: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """Pixels whose label is one of ``ids`` (``==`` per id: ~15x faster than ``np.isin``)."""
    mask = labels == ids[0]
    for i in ids[1:]:
        mask |= labels == i
    return mask


def case_metrics(pred: np.ndarray, gt: np.ndarray,
                 classes: Sequence[int] | Mapping[str, Sequence[int]],
                 spacing: Sequence[float] | None = None, empty_rule: EmptyRule = "nan",
                 hd95_mode: str = "monai") -> dict[Any, dict[str, float | None]]:
    """Metrics of one case for each class id in ``classes`` (keyed by id), or for each region
    of a ``{key: class ids}`` mapping (the union of those classes, keyed by ``key``);
    undefined values are ``None``."""
    regions = classes if isinstance(classes, Mapping) else {int(c): [c] for c in classes}
    out: dict[Any, dict[str, float | None]] = {}
    for key, ids in regions.items():
        p, g = class_mask(pred, ids), class_mask(gt, ids)
        values = binary_metrics(p, g, spacing, empty_rule, hd95_mode)
        out[key] = {k: (None if math.isnan(v) else v) for k, v in values.items()}
        if not p.any() and not g.any():
            out[key][EMPTY_PAIR] = True
    return out


def _stat(values: Sequence[float | None], empty: Sequence[bool] = ()) -> dict[str, Any]:
    """Mean, population std, ``n`` defined and ``undefined`` values. ``empty`` (distances):
    per value, whether it comes from empty/empty pairs only; when every defined value does,
    the mean is not a distance: undefined, with their count as ``empty_pairs``."""
    flags = list(empty) or [False] * len(values)
    pairs = [(float(v), e) for v, e in zip(values, flags, strict=True)
             if v is not None and math.isfinite(float(v))]
    defined = [v for v, _ in pairs]
    if pairs and all(e for _, e in pairs):
        return {"mean": None, "std": None, "n": 0, "undefined": len(values),
                "empty_pairs": len(pairs)}
    if not defined:
        return {"mean": None, "std": None, "n": 0, "undefined": len(values)}
    arr = np.asarray(defined)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": len(defined),
            "undefined": len(values) - len(defined)}


def _case_means(entries: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, dict]:
    """Per metric, the summary of each case's mean over its classes (None when every class is
    undefined); a distance case mean made of empty/empty pairs only is flagged (see
    :func:`_stat`)."""
    means: dict[str, list] = {m: [] for m in METRIC_NAMES}
    empty: dict[str, list] = {m: [] for m in METRIC_NAMES}
    for entry in entries:
        for m in METRIC_NAMES:
            found = [entry["metrics"][k] for k in keys if entry["metrics"].get(k)]
            found = [c for c in found if c.get(m) is not None]
            means[m].append(float(np.mean([c[m] for c in found])) if found else None)
            empty[m].append(bool(found) and all(c.get(EMPTY_PAIR) for c in found))
    return {m: _stat(means[m], empty[m] if m in DISTANCES else ()) for m in METRIC_NAMES}


def _class_stat(entries: Sequence[Mapping[str, Any]], key: str, metric: str) -> dict[str, Any]:
    """The summary of one class and metric over cases (distances: empty/empty pairs flagged)."""
    cells = [e["metrics"].get(key) or {} for e in entries]
    flags = [bool(c.get(EMPTY_PAIR)) for c in cells] if metric in DISTANCES else []
    return _stat([c.get(metric) for c in cells], flags)


def summarize(per_case: Sequence[Mapping[str, Any]],
              names: Mapping[Any, str], absent: Sequence[Any] = ()) -> dict[str, Any]:
    """Per-class, mean-over-classes and (when cases carry a domain) per-domain summaries.

    With domains, ``domain_mean`` is the unweighted mean of the per-domain means (std across
    domains): the average the SynFoC papers report, where a small domain counts as much as a
    large one, unlike ``mean`` which pools all cases.

    ``per_case`` entries look like ``{"case", "domain", "metrics": {"1": {"dice": ...}}}``;
    ``names`` maps each metrics key (class id or region name) to its display name. Keys in
    ``absent`` (classes that occur in no reference) keep their per-class entry but are left out
    of the means and listed as ``absent_classes``: their Dice is 0 or 1 by the empty-mask rule
    alone, not a measurement.
    """
    display = {str(k): v for k, v in names.items()}
    absent_keys = {str(k) for k in absent}
    keys = [k for k in display if k not in absent_keys]
    per_class = {display[k]: {m: _class_stat(per_case, k, m) for m in METRIC_NAMES}
                 for k in display}
    summary: dict[str, Any] = {
        "num_cases": len(per_case),
        "per_class": per_class,
        "mean": _case_means(per_case, keys),
    }
    if absent_keys:
        summary["absent_classes"] = [display[k] for k in display if k in absent_keys]
    domains = sorted({e.get("domain") for e in per_case if e.get("domain") is not None})
    if domains:
        summary["per_domain"] = {}
        for d in domains:
            members = [e for e in per_case if e.get("domain") == d]
            summary["per_domain"][d] = _case_means(members, keys)
        summary["domain_mean"] = domain_average(summary["per_domain"])
    return summary


def domain_average(per_domain: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per metric, the unweighted mean (and std) of the per-domain means."""
    return {m: _stat([((per_domain[d] or {}).get(m) or {}).get("mean") for d in per_domain])
            for m in METRIC_NAMES}


def occurs_in(label: np.ndarray, structures: dict[str, list[int]]) -> list[bool]:
    """Per structure (class or region of class ids), whether ``label`` holds any of its voxels."""
    return [bool(class_mask(label, ids).any()) for ids in structures.values()]


def dice_per_class(pred: np.ndarray, label: np.ndarray, num_classes: int,
                   regions: dict[str, list[int]] | None = None) -> list[float]:
    """Dice of classes 1..C-1, or of each region (a union of classes), 1.0 when both masks are
    empty: the cheap validation score."""
    scores = []
    for ids in (regions or {str(c): [c] for c in range(1, num_classes)}).values():
        p, g = class_mask(pred, ids), class_mask(label, ids)
        denom = int(p.sum()) + int(g.sum())
        scores.append(1.0 if denom == 0 else 2.0 * int((p & g).sum()) / denom)
    return scores
