"""Metrics against independent implementations (MONAI in float32, medpy in float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

from ssmis.eval.metrics import binary_metrics, case_metrics, summarize


def _blob(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A random, irregular blob: smoothed noise thresholded, so boundaries are not spheres."""
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=3)
    return noise > np.quantile(noise, 0.8)


def _monai(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...]) -> tuple[float, float]:
    p = torch.from_numpy(pred[None, None].astype(np.float32))
    g = torch.from_numpy(gt[None, None].astype(np.float32))
    hd = compute_hausdorff_distance(p, g, percentile=95, spacing=spacing)
    asd = compute_average_surface_distance(p, g, symmetric=False, spacing=spacing)
    return float(hd), float(asd)


@pytest.mark.parametrize("shape,spacing", [((40, 36, 20), (0.7, 0.9, 2.5)),
                                           ((64, 50), (1.2, 0.4)),
                                           ((30, 30, 30), (1.0, 1.0, 1.0))])
def test_distances_match_monai(shape: tuple[int, ...], spacing: tuple[float, ...]) -> None:
    rng = np.random.default_rng(len(shape) * 7 + shape[0])
    for _ in range(3):
        pred, gt = _blob(shape, rng), _blob(shape, rng)
        ours = binary_metrics(pred, gt, spacing)
        hd, asd = _monai(pred, gt, spacing)
        # MONAI returns float32: agreement is to its precision (relative 1e-6).
        assert ours["hd95"] == pytest.approx(hd, rel=1e-6, abs=1e-6)
        assert ours["asd"] == pytest.approx(asd, rel=1e-6, abs=1e-6)


def test_medpy_mode_matches_medpy() -> None:
    medpy = pytest.importorskip("medpy.metric.binary")
    rng = np.random.default_rng(11)
    spacing = (0.8, 1.1, 2.0)
    pred, gt = _blob((36, 36, 20), rng), _blob((36, 36, 20), rng)
    ours = binary_metrics(pred, gt, spacing, hd95_mode="medpy")
    assert ours["hd95"] == pytest.approx(medpy.hd95(pred, gt, voxelspacing=spacing), abs=1e-6)
    assert ours["asd"] == pytest.approx(medpy.asd(pred, gt, voxelspacing=spacing), abs=1e-6)
    assert ours["dice"] == pytest.approx(medpy.dc(pred, gt), abs=1e-12)
    assert ours["jaccard"] == pytest.approx(medpy.jc(pred, gt), abs=1e-12)


def test_hand_computed_squares() -> None:
    gt = np.zeros((10, 10), bool)
    gt[2:6, 2:6] = True  # 16 voxels
    pred = np.zeros((10, 10), bool)
    pred[2:6, 4:8] = True  # 16 voxels, 8 shared
    m = binary_metrics(pred, gt)
    assert m["dice"] == pytest.approx(0.5)
    assert m["jaccard"] == pytest.approx(8 / 24)
    assert m["hd95"] == pytest.approx(2.0)  # the shift is two columns


def test_empty_rules() -> None:
    empty = np.zeros((8, 8), bool)
    full = np.zeros((8, 8), bool)
    full[2:5, 2:5] = True
    both = binary_metrics(empty, empty)
    assert both == {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}
    missed = binary_metrics(empty, full)
    assert missed["dice"] == 0.0 and math.isnan(missed["hd95"]) and math.isnan(missed["asd"])
    assert binary_metrics(empty, full, empty_rule="medpy") == \
        {"dice": 0.0, "jaccard": 0.0, "hd95": 0.0, "asd": 0.0}
    spurious = binary_metrics(full, empty, empty_rule="medpy")
    assert spurious["dice"] == 0.0 and math.isnan(spurious["hd95"])


def test_case_metrics_and_summary() -> None:
    gt = np.zeros((3, 12, 12), np.uint8)
    gt[:, 2:6, 2:6] = 1
    gt[:, 7:10, 7:10] = 2
    pred = gt.copy()
    pred[:, 7:10, 7:10] = 0  # class 2 missed entirely in case a
    a = case_metrics(pred, gt, [1, 2], spacing=(2.0, 1.0, 1.0))
    b = case_metrics(gt, gt, [1, 2])
    assert a[1]["dice"] == 1.0 and a[2]["dice"] == 0.0 and a[2]["hd95"] is None
    per_case = [{"case": "a", "domain": "x", "metrics": {str(k): v for k, v in a.items()}},
                {"case": "b", "domain": "y", "metrics": {str(k): v for k, v in b.items()}}]
    s = summarize(per_case, {1: "one", 2: "two"})
    assert s["per_class"]["two"]["dice"]["mean"] == pytest.approx(0.5)
    assert s["per_class"]["two"]["hd95"] == {"mean": 0.0, "std": 0.0, "n": 1, "undefined": 1}
    assert s["mean"]["dice"]["mean"] == pytest.approx(0.75)
    assert s["mean"]["dice"]["std"] == pytest.approx(0.25)
    assert s["per_domain"]["x"]["dice"]["mean"] == pytest.approx(0.5)
    no_domain = summarize([{**e, "domain": None} for e in per_case], {1: "one", 2: "two"})
    assert "per_domain" not in no_domain


def test_regions_score_unions_of_classes() -> None:
    """Fundus: cup = {1}, disc = {1, 2} (cup + rim), as the SynFoC papers score it."""
    gt = np.zeros((10, 10), dtype=np.int64)
    gt[2:8, 2:8] = 2  # rim
    gt[4:6, 4:6] = 1  # cup
    pred = gt.copy()
    pred[4:6, 4:6] = 2  # the cup predicted as rim: cup wrong, disc perfect
    out = case_metrics(pred, gt, {"cup": [1], "disc": [1, 2]})
    assert out["disc"]["dice"] == pytest.approx(1.0)
    assert out["cup"]["dice"] == pytest.approx(0.0)
    per_class = case_metrics(pred, gt, [1, 2])
    assert per_class[2]["dice"] < 1.0  # the rim alone is not perfect


def _nothing_segmented(n_empty: int, n_missed: int) -> list[dict]:
    """A model that predicts nothing: ``n_empty`` cases with an empty reference (empty/empty
    pairs, distance 0 by the empty rule) and ``n_missed`` with a structure (distance undefined)."""
    gt_full = np.zeros((16, 16), np.int64)
    gt_full[4:9, 4:9] = 1
    pred = np.zeros((16, 16), np.int64)
    refs = [np.zeros_like(gt_full)] * n_empty + [gt_full] * n_missed
    return [{"case": f"c{i}", "domain": None, "metrics": {
        str(k): v for k, v in case_metrics(pred, gt, [1]).items()}} for i, gt in enumerate(refs)]


@pytest.mark.parametrize("empty_rule_cases", [(3, 2), (2, 0)])
def test_a_distance_made_of_empty_pairs_only_is_undefined(empty_rule_cases) -> None:
    """A model that segments nothing read 'HD95 0.00' (3 of 5 test masks empty): the defined
    values were all empty/empty pairs, which are not distances."""
    n_empty, n_missed = empty_rule_cases
    summary = summarize(_nothing_segmented(n_empty, n_missed), {1: "fg"})
    for m in ("hd95", "asd"):
        for stat in (summary["per_class"]["fg"][m], summary["mean"][m]):
            assert stat["mean"] is None and stat["n"] == 0
            assert stat["empty_pairs"] == n_empty and stat["undefined"] == n_empty + n_missed
    assert summary["mean"]["dice"]["mean"] == pytest.approx(n_empty / (n_empty + n_missed))


def test_empty_pairs_beside_real_distances_still_count_as_zero() -> None:
    """The documented empty rule is kept where a real distance exists."""
    cases = _nothing_segmented(2, 0)
    gt = np.zeros((16, 16), np.int64)
    gt[4:9, 4:9] = 1
    pred = np.zeros_like(gt)
    pred[4:9, 5:10] = 1
    real = case_metrics(pred, gt, [1])[1]
    cases.append({"case": "c9", "domain": None, "metrics": {"1": real}})
    summary = summarize(cases, {1: "fg"})
    assert summary["mean"]["hd95"]["mean"] == pytest.approx(real["hd95"] / 3)
    assert "empty_pairs" not in summary["mean"]["hd95"]
    assert summary["per_class"]["fg"]["hd95"]["n"] == 3
