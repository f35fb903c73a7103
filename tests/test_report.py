"""Tables and pictures of ssmis.eval.report, from a small hand-made metrics result."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ssmis.eval import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _metrics(dice: float, hd95: float | None) -> dict[str, Any]:
    return {"dice": dice, "jaccard": dice / (2 - dice), "hd95": hd95, "asd": 0.5}


@pytest.fixture
def result() -> dict[str, Any]:
    """Two classes, three cases, one undefined HD95 (empty mask)."""
    return {
        "split": "test", "checkpoint": "best", "iteration": 1200, "seed": 1337,
        "commit": "abc123", "method": "supervised", "unit": "mm", "spacing": "mm",
        "empty_rule": "nan", "empty_rule_text": "undefined when empty", "hd95_mode": "monai",
        "definitions": {}, "classes": {"1": "RV", "2": "Myo"},
        "per_case": [
            {"case": "p1", "domain": "siteA", "metrics": {"1": _metrics(0.9, 2.1),
                                                         "2": _metrics(0.8, 3.0)}},
            {"case": "p2", "domain": "siteA", "metrics": {"1": _metrics(0.92, None),
                                                         "2": _metrics(0.82, 3.2)}},
            {"case": "p3", "domain": "siteB", "metrics": {"1": _metrics(0.88, 2.5),
                                                         "2": _metrics(0.78, 2.8)}},
        ],
        "per_class": {
            "RV": {"dice": {"mean": 0.9, "std": 0.0163, "n": 3, "undefined": 0},
                   "jaccard": {"mean": 0.818, "std": 0.027, "n": 3, "undefined": 0},
                   "hd95": {"mean": 2.3, "std": 0.2, "n": 2, "undefined": 1},
                   "asd": {"mean": 0.5, "std": 0.0, "n": 3, "undefined": 0}},
            "Myo": {"dice": {"mean": 0.8, "std": 0.0163, "n": 3, "undefined": 0},
                    "jaccard": {"mean": 0.667, "std": 0.022, "n": 3, "undefined": 0},
                    "hd95": {"mean": None, "std": None, "n": 0, "undefined": 3},
                    "asd": {"mean": 0.5, "std": 0.0, "n": 3, "undefined": 0}},
        },
        "mean": {"dice": {"mean": 0.85, "std": 0.05, "n": 3, "undefined": 0},
                 "jaccard": {"mean": 0.74, "std": 0.07},
                 "hd95": {"mean": 2.3, "std": 0.2, "n": 3, "undefined": 0},
                 "asd": {"mean": 0.5, "std": 0.0}},
    }


def _row(md: str, name: str) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == name:
            return cells
    raise AssertionError(f"no row {name!r} in\n{md}")


def test_markdown_rows_and_values(result: dict[str, Any]) -> None:
    md = report.metrics_table_markdown(result)
    header = _row(md, "Class")
    assert header[1:] == ["Dice (%)", "Jaccard (%)", "HD95 (mm, monai)", "ASD (mm)", "n",
                          "HD95/ASD undefined"]
    assert _row(md, "RV")[1:] == ["90.00 ± 1.63", "81.80 ± 2.70", "2.30 ± 0.20", "0.50 ± 0.00",
                                  "3", "1/3"]
    assert _row(md, "Myo")[3:] == ["n/a", "0.50 ± 0.00", "3", "3/3"]
    # the mean's HD95 comes from 2 of the 6 case x class values
    assert _row(md, "mean")[1] == "85.00 ± 5.00" and _row(md, "mean")[5:] == ["3", "4/6"]
    assert "split: test" in md and "checkpoint: best" in md and "iteration: 1200" in md
    assert "empty rule: nan" in md and "unit: mm" in md and "HD95: monai" in md
    assert "siteA" not in md  # no per-domain table without per_domain


def test_per_domain_table(result: dict[str, Any]) -> None:
    result["per_domain"] = {"siteA": {"dice": {"mean": 0.86, "std": 0.01}},
                            "siteB": {"dice": {"mean": None, "std": None}}}
    result["domain_mean"] = {"dice": {"mean": 0.86, "std": 0.0}, "jaccard": {"mean": 0.75},
                             "hd95": {"mean": 2.5, "std": 0.5}, "asd": {"mean": None}}
    md = report.metrics_table_markdown(result)
    header = _row(md, "Method")
    assert header == ["Method", "siteA Dice (%)", "siteB Dice (%)", "mean Dice (%)",
                      "mean Jaccard (%)", "mean HD95 (mm, monai)", "mean ASD (mm)"]
    assert _row(md, "supervised") == ["supervised", "86.00 ± 1.00", "n/a", "86.00 ± 0.00",
                                      "75.00", "2.50 ± 0.50", "n/a"]
    assert report.DOMAIN_NOTE in md
    text = report.metrics_table_text(result)
    assert "siteB Dice (%)" in text and "86.00 ± 1.00" in text


def test_text_table_is_aligned(result: dict[str, Any]) -> None:
    text = report.metrics_table_text(result)
    lines = text.splitlines()
    assert lines[0].startswith("Class") and "HD95 (mm, monai)" in lines[0]
    assert len({len(ln) for ln in lines[:5]}) == 1  # right-aligned numeric columns: equal widths
    assert "90.00 ± 1.63" in text and "n/a" in text and "split: test" in text


def test_per_case_csv(result: dict[str, Any]) -> None:
    rows = list(csv.DictReader(io.StringIO(report.per_case_csv(result))))
    assert len(rows) == 6
    assert list(rows[0]) == ["case", "domain", "class", "dice", "jaccard", "hd95", "asd"]
    assert (rows[0]["case"], rows[0]["domain"], rows[0]["class"]) == ("p1", "siteA", "RV")
    assert float(rows[0]["dice"]) == pytest.approx(0.9)
    undefined = [r for r in rows if r["hd95"] == ""]
    assert [(r["case"], r["class"]) for r in undefined] == [("p2", "RV")]


def test_null_domain_in_csv(result: dict[str, Any]) -> None:
    result["per_case"][0]["domain"] = None
    rows = list(csv.DictReader(io.StringIO(report.per_case_csv(result))))
    assert rows[0]["domain"] == ""


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_learning_curve(tmp_path: Path) -> None:
    rows = [{"iter": i, "phase": "train", "loss": 1.0 / i, "loss_ce": 0.5 / i,
             "loss_dice": None if i == 30 else 0.5 / i, "lr": 0.01 * (1 - i / 200), "it_s": 3.0}
            for i in range(10, 200, 10)]
    scalars = _write_jsonl(tmp_path / "scalars.jsonl", rows)
    val = _write_jsonl(tmp_path / "val.jsonl", [
        {"iter": 50, "phase": "train", "val_dice": 0.6, "best": True},
        {"iter": 100, "phase": "train", "val_dice": 0.8, "best": True},
        {"iter": 150, "phase": "train", "val_dice": 0.7, "best": False}])
    out = tmp_path / "plots" / "curve.png"
    report.plot_learning_curve(scalars, out, val)
    assert _is_png(out)


@pytest.mark.parametrize("val_kind", ["missing", "empty", "none"])
def test_learning_curve_single_row(tmp_path: Path, val_kind: str) -> None:
    scalars = _write_jsonl(tmp_path / "scalars.jsonl",
                           [{"iter": 1, "phase": "train", "loss": 0.5, "lr": 0.01}])
    val: Path | None = tmp_path / "val.jsonl"
    if val_kind == "empty":
        val.write_text("")
    elif val_kind == "none":
        val = None
    out = tmp_path / "curve.png"
    report.plot_learning_curve(scalars, out, val)
    assert _is_png(out)


def test_best_point_is_the_selected_checkpoint() -> None:
    # selection over the whole run: the pre-training checkpoint at 20 stays selected
    rows = [{"iter": 10, "phase": "pre", "val_dice": 0.5, "best": True},
            {"iter": 20, "phase": "pre", "val_dice": 0.8, "best": True},
            {"iter": 30, "phase": "train", "val_dice": 0.6, "best": False},
            {"iter": 40, "phase": "train", "val_dice": 0.7, "best": False}]
    assert report._best_points(rows) == [(20.0, 0.8)]
    unflagged = [{k: v for k, v in r.items() if k != "best"} for r in rows]
    assert report._best_points(unflagged) == [(20.0, 0.8)]


def test_pick_slice() -> None:
    vol = np.zeros((5, 6, 7), dtype=np.int64)
    assert report.pick_slice(vol, 0) == 2
    assert report.pick_slice(vol, 2) == 3
    vol[3, 1:4, 1:4] = 1
    vol[1, 2, 2] = 2
    assert report.pick_slice(vol, 0) == 3
    assert report.pick_slice(vol, -3) == 3
    vol[:, :, 5] = 1
    assert report.pick_slice(vol, 2) == 5


def test_label_to_rgba_background_transparent() -> None:
    rgba = report.label_to_rgba(np.array([[0, 1], [2, 9]]))
    assert rgba[0, 0, 3] == 0
    assert rgba[0, 1, 3] > 0 and tuple(rgba[0, 1, :3]) == pytest.approx(report.class_color(1))
    assert report.class_color(9) == report.class_color(1)  # cycles


def test_overlays_2d_and_picked_slice(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    label3d = np.zeros((16, 16, 8), dtype=np.int64)
    label3d[4:12, 4:12, 5] = 1
    label3d[6:10, 6:10, 5] = 2
    image3d = rng.normal(size=label3d.shape).astype(np.float32)
    index = report.pick_slice(label3d, 2)
    assert index == 5
    pred2d = label3d[..., index].copy()
    pred2d[4, 4:8] = 0
    cases = [
        {"case": "vol1", "image": image3d.take(index, 2), "label": label3d.take(index, 2),
         "pred": pred2d, "dice": 0.95},
        {"case": "slice2", "image": np.ones((12, 10)), "label": np.zeros((12, 10), int),
         "pred": np.zeros((12, 10), int)},
    ]
    out = tmp_path / "overlays.png"
    report.plot_overlays(cases, out, {1: "RV", 2: "Myo"}, max_cases=4)
    assert _is_png(out)
    report.plot_overlays([], tmp_path / "none.png")
    assert _is_png(tmp_path / "none.png")


def test_log_scale_only_when_all_losses_positive() -> None:
    rows = [{"iter": 1, "loss": 0.5, "loss_ce": None}, {"iter": 2, "loss": 0.25, "loss_ce": 0.1}]
    keys = report._loss_keys(rows)
    assert keys == ["loss", "loss_ce"]
    assert report._all_positive(rows, keys)
    rows[1]["loss_ce"] = -0.1  # e.g. a negative entropy term
    assert not report._all_positive(rows, keys)


def test_empty_pair_distances_read_as_undefined_in_the_tables() -> None:
    """metrics.md / the printed table: a distance mean of empty/empty pairs only is 'n/a'."""
    from ssmis.eval.metrics import case_metrics, summarize
    from ssmis.eval.report import metrics_table_markdown

    gt = np.zeros((16, 16), np.int64)
    gt[4:9, 4:9] = 1
    refs = [np.zeros_like(gt)] * 3 + [gt] * 2
    per_case = [{"case": f"c{i}", "domain": None,
                 "metrics": {str(k): v for k, v in case_metrics(np.zeros_like(gt), g,
                                                                [1]).items()}}
                for i, g in enumerate(refs)]
    result = {**summarize(per_case, {1: "fg"}), "classes": {1: "fg"}, "unit": "voxel",
              "hd95_mode": "monai"}
    text = metrics_table_markdown(result)
    rows = [line for line in text.splitlines() if line.startswith(("| fg", "| mean"))]
    assert len(rows) == 2
    for row in rows:
        assert row.endswith("| 60.00 ± 48.99 | n/a (3 empty/empty) | n/a (3 empty/empty) "
                            "| 5 | 5/5 |"), row
