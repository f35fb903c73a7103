"""Tables and pictures rendered from the JSON files a run writes.

Everything here reads plain data (the metrics JSON of :mod:`ssmis.engine.evaluate`, the JSONL logs
of the trainer, numpy slices), so a report can be regenerated from a run folder without the model.
Figures use :class:`matplotlib.figure.Figure` directly: no pyplot state, no backend switching, so it
works on machines without a display and inside threads.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

__all__ = [
    "CLASS_COLORS",
    "METRICS",
    "class_color",
    "display_image",
    "label_to_rgba",
    "markdown_table",
    "metric_headers",
    "metric_titles",
    "metrics_table_markdown",
    "metrics_table_text",
    "per_case_csv",
    "pick_slice",
    "plot_learning_curve",
    "plot_overlays",
    "text_table",
]

#: Metric keys in table order; overlap scores are shown in percent, distances in the run's unit.
METRICS: tuple[str, ...] = ("dice", "jaccard", "hd95", "asd")
_PERCENT = {"dice", "jaccard"}
_TITLES = {"dice": "Dice", "jaccard": "Jaccard", "hd95": "HD95", "asd": "ASD"}
NA = "n/a"

#: One colour per foreground class (class k uses entry (k - 1) mod len); background is transparent.
#: Chosen to stay distinct on a grey-scale image and against the red of the error map.
CLASS_COLORS: tuple[tuple[float, float, float], ...] = (
    (0.12, 0.47, 0.71),  # blue
    (0.17, 0.63, 0.17),  # green
    (1.00, 0.84, 0.00),  # yellow
    (0.58, 0.40, 0.74),  # purple
    (0.09, 0.75, 0.81),  # cyan
    (1.00, 0.50, 0.05),  # orange
    (0.89, 0.47, 0.76),  # pink
    (0.55, 0.34, 0.29),  # brown
)
_ERROR_COLOR = (0.90, 0.10, 0.10)


# --------------------------------------------------------------------------- formatting helpers


def _number(value: Any) -> float | None:
    """A finite float or None: JSON null, NaN and inf all mean 'undefined' in a table."""
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _fmt(value: Any, metric: str) -> str:
    v = _number(value)
    if v is None:
        return NA
    return f"{v * 100:.2f}" if metric in _PERCENT else f"{v:.2f}"


def _fmt_stat(stat: Any, metric: str) -> str:
    """``mean ± std`` of one summary entry; a missing std (single case) shows the mean alone;
    a distance made of empty/empty pairs only is "n/a (k empty/empty)"."""
    if not isinstance(stat, dict):
        return _fmt(stat, metric)
    mean = _fmt(stat.get("mean"), metric)
    if mean == NA:
        pairs = stat.get("empty_pairs")
        return f"{NA} ({pairs} empty/empty)" if pairs else NA
    std = _fmt(stat.get("std"), metric)
    return mean if std == NA else f"{mean} ± {std}"


def metric_titles(result: dict[str, Any]) -> list[str]:
    """Titles of the four metric columns: overlap scores in percent, distances in the run's
    unit, HD95 with its definition (``hd95_mode``: monai and medpy differ up to several times
    on the same masks)."""
    unit = result.get("unit") or "voxel"
    mode = result.get("hd95_mode") or "?"
    titles = {"hd95": f"HD95 ({unit}, {mode})", "asd": f"ASD ({unit})"}
    return [f"{_TITLES[m]} (%)" if m in _PERCENT else titles[m] for m in METRICS]


def metric_headers(result: dict[str, Any]) -> list[str]:
    """:func:`metric_titles`, then the case count and how many distance values are undefined
    (left out of the distance means)."""
    return metric_titles(result) + ["n", "HD95/ASD undefined"]


def _counts(stats: dict[str, Any]) -> tuple[int, int]:
    """(values, undefined HD95 values) of one class row: cases with and without a distance."""
    hd95 = stats.get("hd95") or {}
    if not isinstance(hd95, dict):
        return 0, 0
    undefined = int(hd95.get("undefined", 0))
    return int(hd95.get("n", 0)) + undefined, undefined


def _count_cells(total: int, undefined: int) -> list[str]:
    return [str(total), f"{undefined}/{total}"] if total else ["-", "-"]


def _main_rows(result: dict[str, Any]) -> list[list[str]]:
    """Class rows in the order of ``classes`` (then any other per_class keys), then the mean;
    classes absent from every reference are marked (they are left out of the mean). The last
    two cells: the number of cases, and how many distance values are undefined (class rows: of
    its cases; mean row: of all case x class values the mean is taken over)."""
    per_class: dict[str, Any] = result.get("per_class") or {}
    absent = set(result.get("absent_classes") or [])
    order = [str(n) for n in (result.get("classes") or {}).values()]
    order += [name for name in per_class if name not in order]
    rows = []
    values = undefined = 0
    for name in order:
        stats = per_class.get(name) or {}
        label = f"{name} (absent)" if name in absent else name
        total, missing = _counts(stats)
        if name not in absent:
            values, undefined = values + total, undefined + missing
        rows.append([label] + [_fmt_stat(stats.get(m), m) for m in METRICS]
                    + _count_cells(total, missing))
    mean = result.get("mean") or {}
    cases = result.get("num_cases") or (values // max(len(order) - len(absent), 1))
    rows.append(["mean"] + [_fmt_stat(mean.get(m), m) for m in METRICS]
                + [str(cases) if values else "-", f"{undefined}/{values}" if values else "-"])
    return rows


def _domain_table(result: dict[str, Any]) -> tuple[list[str], list[str]] | None:
    """Header and the one row of the SynFoC-style table (Dice per domain, then the averages).

    Domains are columns and the run is one row, as in the SynFoC paper's Prostate/Fundus/M&Ms
    tables: rows from several runs' tables can then be stacked into one comparison table as they
    are, which a rows-are-domains layout would not allow.
    """
    per_domain: dict[str, Any] = result.get("per_domain") or {}
    if not per_domain:
        return None
    domains = list(per_domain)
    unit = result.get("unit") or "voxel"
    header = ["Method"] + [f"{d} Dice (%)" for d in domains]
    mode = result.get("hd95_mode") or "?"
    header += ["mean Dice (%)", "mean Jaccard (%)", f"mean HD95 ({unit}, {mode})",
               f"mean ASD ({unit})"]
    row = [str(result.get("method") or "-")]
    row += [_fmt_stat((per_domain[d] or {}).get("dice"), "dice") for d in domains]
    mean = result.get("domain_mean") or {}
    row += [_fmt_stat(mean.get(m), m) for m in METRICS]
    return header, row


DOMAIN_NOTE = ("domain columns: mean ± std over the domain's cases; mean columns: unweighted mean "
               "over domains ± std across domains (the SynFoC average)")


def _footer(result: dict[str, Any]) -> str:
    """The context needed to read the numbers: which split/checkpoint, the distance
    definitions and how empty masks and absent classes count."""
    parts = [
        f"split: {result.get('split', '?')}",
        f"checkpoint: {result.get('checkpoint', '?')}",
        f"iteration: {result.get('iteration', '?')}"
        + (f" ({result['phase']} phase)" if result.get("phase") else ""),
        f"unit: {result.get('unit', '?')}",
        f"HD95: {result.get('hd95_mode', '?')}",
        f"empty rule: {result.get('empty_rule', '?')}"
        + (" (an empty prediction scores 0 on every metric, HD95 and ASD included)"
           if result.get("empty_rule") == "medpy" else ""),
    ]
    absent = result.get("absent_classes") or []
    if absent:
        parts.append(f"absent from every reference, not in the mean: {', '.join(absent)}")
    if result.get("roi"):
        roi_cases = sum(1 for c in result.get("per_case", []) if c.get("within_roi"))
        parts.append(f"scored inside each case's ROI / field of view ({roi_cases} of "
                     f"{len(result.get('per_case', []))} cases)")
    if result.get("inference"):
        parts.append(f"inference: {result['inference']}")
    return ", ".join(parts)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned first column, right-aligned numbers; widths from the longest cell."""
    cells = [list(header)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return [line(cells[0]), rule] + [line(r) for r in cells[1:]]


# --------------------------------------------------------------------------- tables


def metrics_table_markdown(result: dict[str, Any]) -> str:
    """Markdown summary of a metrics JSON: per-class table, context line, optional domain table."""
    lines = markdown_table(["Class", *metric_headers(result)], _main_rows(result))
    lines += ["", _footer(result)]
    domain = _domain_table(result)
    if domain is not None:
        header, row = domain
        lines += ["", *markdown_table(header, [row]), "", DOMAIN_NOTE]
    return "\n".join(lines)


def metrics_table_text(result: dict[str, Any]) -> str:
    """The same content as :func:`metrics_table_markdown`, aligned for a terminal or a log file."""
    lines = text_table(["Class", *metric_headers(result)], _main_rows(result))
    lines += [_footer(result)]
    domain = _domain_table(result)
    if domain is not None:
        header, row = domain
        lines += ["", *text_table(header, [row]), DOMAIN_NOTE]
    return "\n".join(lines)


def per_case_csv(result: dict[str, Any]) -> str:
    """One row per case x class with full-precision values; undefined values are empty cells."""
    classes = {str(k): str(v) for k, v in (result.get("classes") or {}).items()}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "domain", "class", *METRICS])
    for entry in result.get("per_case") or []:
        domain = entry.get("domain")
        for key, values in (entry.get("metrics") or {}).items():
            name = classes.get(str(key), str(key))
            cells = []
            for m in METRICS:
                v = _number((values or {}).get(m))
                cells.append("" if v is None else repr(v))
            writer.writerow([entry.get("case", ""), "" if domain is None else domain, name, *cells])
    return buf.getvalue()


# --------------------------------------------------------------------------- learning curve


def _read_jsonl(path: Path | None) -> list[dict[str, Any]]:
    """Rows of a JSONL log; a missing file or a torn last line (killed run) is not an error."""
    if path is None or not Path(path).is_file():
        return []
    rows = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and _number(row.get("iter")) is not None:
            rows.append(row)
    return rows


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(iterations, values) with undefined values as NaN so lines break instead of lying."""
    its = np.array([float(r["iter"]) for r in rows])
    vals = np.array([np.nan if _number(r.get(key)) is None else float(r[key]) for r in rows])
    return its, vals


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the finite values of the last ``window`` points (NaN-aware)."""
    finite = np.isfinite(values)
    filled = np.where(finite, values, 0.0)
    kernel = np.ones(window)
    sums = np.convolve(filled, kernel)[: len(values)]
    counts = np.convolve(finite.astype(float), kernel)[: len(values)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _loss_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k.startswith("loss") and k not in keys and (v is None or _number(v) is not None):
                keys.append(k)
    keys.sort(key=lambda k: (k != "loss", k))  # total loss first, drawn boldest
    return keys


def _all_positive(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> bool:
    """True when every logged loss value is > 0, i.e. a log axis can show all of them."""
    values = [_number(r.get(k)) for r in rows for k in keys]
    finite = [v for v in values if v is not None]
    return bool(finite) and all(v > 0 for v in finite)


def _phase_starts(rows: Sequence[dict[str, Any]]) -> list[tuple[float, str]]:
    """Iterations where the logged phase changes (multi-phase methods), to draw as separators."""
    starts = []
    prev = None
    for r in rows:
        phase = r.get("phase")
        if prev is not None and phase != prev:
            starts.append((float(r["iter"]), str(phase)))
        prev = phase
    return starts


def _best_points(rows: Sequence[dict[str, Any]]) -> list[tuple[float, float]]:
    """The selected checkpoint: the last validation row flagged ``best`` (the trainer flags
    each improvement of the checkpoint the run selects); without flags, the highest Dice."""
    scored = [r for r in rows if _number(r.get("val_dice")) is not None]
    if not scored:
        return []
    flagged = [r for r in scored if r.get("best") is True]
    best = flagged[-1] if flagged else max(scored, key=lambda r: float(r["val_dice"]))
    return [(float(best["iter"]), float(best["val_dice"]))]


def plot_learning_curve(scalars_path: Path, out_png: Path, val_path: Path | None = None) -> None:
    """Losses (raw + moving average) with the learning rate, and validation Dice, as one PNG."""
    rows = _read_jsonl(Path(scalars_path))
    val_rows = [r for r in _read_jsonl(val_path) if "val_dice" in r]

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_loss, ax_val = fig.subplots(1, 2)

    keys = _loss_keys(rows)
    if rows and keys:
        window = max(1, min(50, len(rows) // 20))  # trailing: no look-ahead
        for i, key in enumerate(keys):
            its, vals = _series(rows, key)
            color = f"C{i}"
            marker = "o" if len(its) == 1 else None
            ax_loss.plot(its, vals, color=color, alpha=0.25, lw=0.8, marker=marker)
            ax_loss.plot(its, _moving_average(vals, window), color=color, marker=marker,
                         lw=1.8 if key == "loss" else 1.2, label=key)
        if _all_positive(rows, keys):
            ax_loss.set_yscale("log")  # losses fall over decades; linear hides the late phase
        ax_loss.legend(loc="upper right", fontsize=8)
    else:
        ax_loss.text(0.5, 0.5, "no training scalars logged", ha="center", va="center",
                     transform=ax_loss.transAxes, color="0.4")
    its_lr, lr = _series(rows, "lr") if rows else (np.array([]), np.array([]))
    if np.isfinite(lr).any():
        ax_lr = ax_loss.twinx()
        ax_lr.plot(its_lr, lr, color="0.45", ls="--", lw=1.0, marker="." if len(lr) == 1 else None)
        ax_lr.set_ylabel("learning rate", color="0.45")
        ax_lr.tick_params(axis="y", colors="0.45", labelsize=8)
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("training losses (light: raw, bold: moving average)", fontsize=10)
    ax_loss.grid(alpha=0.3)

    if val_rows:
        its, dice = _series(val_rows, "val_dice")
        ax_val.plot(its, dice, color="C0", marker="o", ms=3, lw=1.2, label="val Dice")
        best = _best_points(val_rows)
        if best:
            bx, by = zip(*best, strict=True)
            ax_val.scatter(bx, by, marker="*", s=160, color="C3", zorder=3, label="best")
            for x, y in best:
                ax_val.annotate(f"{y:.4f} @ {x:.0f}", (x, y), textcoords="offset points",
                                xytext=(0, 8), ha="center", fontsize=8, color="C3")
        ax_val.legend(loc="lower right", fontsize=8)
        ax_val.margins(x=0.08, y=0.15)  # room for the best-point label
    else:
        ax_val.text(0.5, 0.5, "no validation logged", ha="center", va="center",
                    transform=ax_val.transAxes, color="0.4")
    ax_val.set_xlabel("iteration")
    ax_val.set_ylabel("mean foreground Dice")
    ax_val.set_title("validation", fontsize=10)
    ax_val.grid(alpha=0.3)

    for x, phase in _phase_starts(rows or val_rows):
        for ax in (ax_loss, ax_val):
            ax.axvline(x, color="0.6", ls=":", lw=1.0)
        ax_val.text(x, 1.0, f" {phase}", transform=ax_val.get_xaxis_transform(), fontsize=7,
                    va="top", color="0.4")

    _save(fig, out_png)


# --------------------------------------------------------------------------- overlays


def class_color(k: int) -> tuple[float, float, float]:
    """RGB of foreground class ``k >= 1``; the same everywhere so figures can be compared."""
    return CLASS_COLORS[(int(k) - 1) % len(CLASS_COLORS)]


def label_to_rgba(label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGBA image of a label map: class colours with ``alpha``, background fully transparent."""
    label = np.asarray(label).astype(np.int64)
    rgba = np.zeros((*label.shape, 4), dtype=np.float32)
    for k in np.unique(label):
        if k <= 0:
            continue
        rgba[label == k] = (*class_color(int(k)), alpha)
    return rgba


def pick_slice(label_volume: np.ndarray, axis: int) -> int:
    """Index along ``axis`` of the most-foreground slice; the middle one if there is none."""
    label_volume = np.asarray(label_volume)
    axis = axis % label_volume.ndim
    other = tuple(i for i in range(label_volume.ndim) if i != axis)
    counts = (label_volume > 0).sum(axis=other) if other else (label_volume > 0).astype(int)
    if counts.size == 0 or counts.max() == 0:
        return label_volume.shape[axis] // 2
    return int(np.argmax(counts))


def _display_range(image: np.ndarray) -> tuple[float, float]:
    """Robust grey-level window (1st-99th percentile) so outliers do not wash the image out."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [1, 99])
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:  # constant image: show it mid-grey rather than black
        lo, hi = lo - 1.0, lo + 1.0
    return float(lo), float(hi)


def display_image(image: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """What ``imshow`` gets for a 2D slice: a grey image (H x W) with its robust window as
    ``vmin``/``vmax``, or an RGB image (H x W x 3, e.g. colonoscopy or fundus photographs)
    scaled to [0, 1] by one window over the three channels, so the colours keep their
    balance."""
    image = np.asarray(image, dtype=np.float32)
    lo, hi = _display_range(image)
    if image.ndim == 3 and image.shape[-1] == 3:
        return np.clip((image - lo) / (hi - lo), 0.0, 1.0), {}
    return image, {"cmap": "gray", "vmin": lo, "vmax": hi}


def plot_overlays(cases: list[dict[str, Any]], out_png: Path,
                  class_names: dict[int, str] | None = None, max_cases: int = 4) -> None:
    """Grid of image / ground truth / prediction / error map, one row per case (up to
    max_cases), with a legend of the class colours. ``cases``: dicts with ``image`` (H x W
    grey, or H x W x 3 RGB shown in colour), ``label`` and ``pred`` (H x W class ids), and
    optionally ``case``, ``domain`` and ``dice`` for the row title."""
    shown = list(cases)[: max(0, max_cases)]
    columns = ("image", "ground truth", "prediction", "error (pred != label)")
    nrows = max(1, len(shown))
    fig = Figure(figsize=(3.0 * len(columns), 3.0 * nrows + 0.6), layout="constrained")
    axes = np.atleast_2d(fig.subplots(nrows, len(columns), squeeze=False))

    present: set[int] = set()
    for row, case in enumerate(shown):
        image = np.squeeze(np.asarray(case["image"], dtype=np.float32))
        label = np.squeeze(np.asarray(case["label"])).astype(np.int64)
        pred = np.squeeze(np.asarray(case["pred"])).astype(np.int64)
        present.update(int(k) for k in np.unique(label) if k > 0)
        present.update(int(k) for k in np.unique(pred) if k > 0)
        shown_image, style = display_image(image)
        error = np.zeros((*label.shape, 4), dtype=np.float32)
        error[pred != label] = (*_ERROR_COLOR, 0.85)
        layers = (None, label_to_rgba(label), label_to_rgba(pred), error)
        for col, (ax, layer) in enumerate(zip(axes[row], layers, strict=True)):
            ax.imshow(shown_image, interpolation="nearest", **style)
            if layer is not None:
                ax.imshow(layer, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=10)
        title = str(case.get("case", f"case {row}"))
        if case.get("domain"):
            title += f" ({case['domain']})"
        dice = _number(case.get("dice"))
        if dice is not None:
            title += f"\nDice {dice * 100:.2f}%"
        axes[row][0].set_ylabel(title, fontsize=9)

    if not shown:
        for ax in axes[0]:
            ax.set_axis_off()
        axes[0][0].text(0.5, 0.5, "no cases", ha="center", va="center",
                        transform=axes[0][0].transAxes)

    names = {int(k): str(v) for k, v in (class_names or {}).items()}
    legend_ids = sorted(set(names) | present)
    handles = [Patch(color=class_color(k), label=names.get(k, f"class{k}")) for k in legend_ids]
    handles.append(Patch(color=_ERROR_COLOR, label="error"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 8),
               fontsize=9, frameon=False)
    _save(fig, out_png)


def _save(fig: Figure, out_png: Path) -> None:
    """Save ``fig`` atomically (:mod:`ssmis.atomic`): an error names the file, none is half
    written."""
    from ssmis.atomic import atomic_write

    atomic_write(Path(out_png), lambda tmp: fig.savefig(tmp, dpi=100))
