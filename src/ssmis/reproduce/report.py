"""The reproduction report: ours (mean ± std over seeds) beside the paper's numbers.

``report.md`` (with its figures in ``report_files/``) and a self-contained ``report.html``
(the same tables, figures embedded as base64 PNG) are rendered from ``report.json``, which is
built from the files the runs leave (``protocol_<name>.json``, ``val.jsonl``,
``protocol_overlays.npz``, ``train_summary.json``), so a report can be rebuilt without a model.

Every number carries its protocol; every HD95 column names its unit and ``hd95_mode``; the
budget is in the title. A difference is shown only when both numbers share a unit.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ssmis.engine.runfolder import CONFIG_FILE, SUMMARY_FILE
from ssmis.errors import SSMISError
from ssmis.reproduce.protocols import PROTOCOLS
from ssmis.reproduce.published import METRIC_KEYS, PublishedTable
from ssmis.reproduce.runner import Plan, describe_budget

__all__ = ["build_report", "collect", "render_html", "render_markdown", "write_report"]

_TITLES = {"dice": "Dice", "jaccard": "Jaccard", "hd95": "HD95", "asd": "ASD"}
_PERCENT = {"dice", "jaccard"}


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample std (ddof 1; None for one value) of the finite values, and n."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else None,
            "n": len(v)}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _val_curve(run: Path) -> list[tuple[int, float]]:
    from ssmis.reproduce.protocols import _val_rows

    return [(int(r["iter"]), float(r["val_dice"])) for r in _val_rows(run)]


def _recorded_iterations(run: Path) -> int | None:
    """``train.iterations`` of the run's recorded ``config.yaml`` (its real budget)."""
    from ssmis.config import read_yaml

    try:
        return int((read_yaml(run / CONFIG_FILE).get("train") or {})["iterations"])
    except (SSMISError, OSError, KeyError, TypeError, ValueError):
        return None


def collect(plan: Plan) -> dict[str, Any]:
    """``report.json``'s content: per (setting, method), every seed's numbers per protocol."""
    cells: dict[str, dict[str, Any]] = {}
    for job in plan.jobs:
        s, m = job.info["setting"], job.info["method"]
        cell = cells.setdefault(f"{s}/{m}", {"setting": s, "method": m, "seeds": [],
                                             "missing": [], "protocols": {}, "curves": [],
                                             "runs": [], "wall_s": [], "iterations": []})
        run = Path(job.run_dir)
        results = {p: _read_json(run / f"protocol_{p}.json") for p in PROTOCOLS}
        if not all(results.values()):
            cell["missing"].append(job.info["seed"])
            continue
        cell["seeds"].append(job.info["seed"])
        cell["runs"].append(str(run))
        cell["iterations"].append(_recorded_iterations(run))
        summary = _read_json(run / SUMMARY_FILE) or {}
        cell["wall_s"].append((summary.get("timing") or {}).get("wall_s"))
        cell["curves"].append(_val_curve(run))
        for p, res in results.items():
            assert res is not None
            entry = cell["protocols"].setdefault(p, {
                "unit": res.get("unit"), "hd95_mode": res.get("hd95_mode"),
                "empty_rule": res.get("empty_rule"), "selection": res.get("selection"),
                "checkpoints": [], "values": {k: [] for k in METRIC_KEYS}, "per_class": {}})
            entry["checkpoints"].append(f"{res.get('checkpoint')}@{res.get('iteration')}")
            for k in METRIC_KEYS:
                v = ((res.get("mean") or {}).get(k) or {}).get("mean")
                entry["values"][k].append(None if v is None else
                                          float(v) * (100 if k in _PERCENT else 1))
            for cls, stats in (res.get("per_class") or {}).items():
                pc = entry["per_class"].setdefault(cls, {k: [] for k in METRIC_KEYS})
                for k in METRIC_KEYS:
                    v = (stats.get(k) or {}).get("mean")
                    pc[k].append(None if v is None else float(v) * (100 if k in _PERCENT else 1))
    for cell in cells.values():
        for entry in cell["protocols"].values():
            entry["stats"] = {k: _mean_std(v) for k, v in entry["values"].items()}
            entry["per_class_stats"] = {c: {k: _mean_std(v) for k, v in d.items()}
                                        for c, d in entry["per_class"].items()}
    return {"cells": cells}


# ------------------------------------------------------------------------------ figures

def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _bar_chart(rows: list[dict[str, Any]], title: str) -> bytes:
    """Dice per method: ours under each protocol (error bars: std over seeds) and the paper's."""
    fig = Figure(figsize=(max(5.0, 1.3 * len(rows) + 2), 3.6))
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    width = 0.27
    series = [("ours (honest)", "honest", "#1f77b4"), ("ours (paper protocol)", "paper",
                                                      "#ff7f0e")]
    for k, (label, proto, color) in enumerate(series):
        means = [r["ours"].get(proto, {}).get("dice", {}).get("mean") for r in rows]
        stds = [r["ours"].get(proto, {}).get("dice", {}).get("std") for r in rows]
        ax.bar(x + (k - 1) * width, [m if m is not None else 0 for m in means], width,
               yerr=[s if s is not None else 0 for s in stds], capsize=3, label=label,
               color=color)
    ax.bar(x + width, [r["paper"]["dice"] or 0 for r in rows], width, label="paper",
           color="#7f7f7f")
    ax.set_xticks(x, [r["label"] for r in rows], rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("Dice (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _curves(cells: list[dict[str, Any]], title: str) -> bytes | None:
    """Validation Dice against iteration, per method: mean over seeds, band min..max."""
    fig = Figure(figsize=(6.0, 3.6))
    ax = fig.add_subplot()
    drawn = False
    for cell in cells:
        curves = [c for c in cell["curves"] if c]
        if not curves:
            continue
        iters = sorted({i for c in curves for i, _ in c})
        table = np.full((len(curves), len(iters)), np.nan)
        for r, c in enumerate(curves):
            for i, v in c:
                table[r, iters.index(i)] = v * 100
        mean = np.nanmean(table, axis=0)
        line = ax.plot(iters, mean, marker="o", ms=3, label=f"{cell['method']} "
                       f"({len(curves)} seed{'s' if len(curves) > 1 else ''})")[0]
        if len(curves) > 1:
            ax.fill_between(iters, np.nanmin(table, axis=0), np.nanmax(table, axis=0),
                            color=line.get_color(), alpha=0.15)
        drawn = True
    if not drawn:
        return None
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation Dice (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _png(fig)


def _overlays(cells: list[dict[str, Any]], title: str) -> bytes | None:
    """The same test cases (first seed's honest checkpoint) for every method, beside the
    reference: rows are cases, columns the reference then each method."""
    from ssmis.eval.report import label_to_rgba

    shown = []
    for cell in cells:
        if not cell["runs"]:
            continue
        path = Path(cell["runs"][0]) / "protocol_overlays.npz"
        if path.is_file():
            with np.load(path) as z:
                shown.append((cell["method"], {k: z[k] for k in z.files}))
    if not shown:
        return None
    cases = [str(c) for c in shown[0][1]["case"]]
    ncol = len(shown) + 1
    fig = Figure(figsize=(2.0 * ncol, 2.0 * len(cases) + 0.4))
    for r, case in enumerate(cases):
        ref = shown[0][1]
        image = ref[f"image{r}"]
        lo, hi = np.percentile(image, [1, 99])
        panels = [("reference", ref[f"label{r}"])]
        for method, z in shown:
            ids = [str(c) for c in z["case"]]
            panels.append((method, z[f"pred{ids.index(case)}"] if case in ids else None))
        for c, (name, label) in enumerate(panels):
            ax = fig.add_subplot(len(cases), ncol, r * ncol + c + 1)
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
            if label is not None:
                ax.imshow(label_to_rgba(label))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
            if c == 0:
                ax.set_ylabel(case, fontsize=6)
    fig.suptitle(title, fontsize=9)
    return _png(fig)


# ------------------------------------------------------------------------------ tables

def _fmt(stat: dict[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    if stat.get("std") is None:
        return f"{stat['mean']:.2f}"
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _unit_of(table: PublishedTable, metric: str) -> str:
    return "%" if metric in _PERCENT else table.metrics[metric].unit


def _protocol_rows(report: dict[str, Any], table: PublishedTable, setting_key: str,
                   protocol: str) -> tuple[list[str], list[list[str]]]:
    setting = next(s for s in report["settings"] if s["key"] == setting_key)
    units = setting["units"].get(protocol, {})
    header = ["Method (as printed)", "ssmis", "seeds"]
    for k in METRIC_KEYS:
        ours_unit = "%" if k in _PERCENT else units.get("unit", "?")
        mode = f", {units.get('hd95_mode', '?')}" if k == "hd95" else ""
        paper_mode = f", {table.hd95_mode}" if k == "hd95" else ""
        header += [f"{_TITLES[k]} ours ({ours_unit}{mode})",
                   f"{_TITLES[k]} paper ({_unit_of(table, k)}{paper_mode})", "Δ"]
    rows = []
    for r in setting["rows"]:
        ours = r["ours"].get(protocol)
        line = [r["label"], r["ssmis"] or "—", str(r["seeds"]) if ours else r["status"]]
        for k in METRIC_KEYS:
            paper = r["paper"][k]
            stat = (ours or {}).get(k)
            same_unit = k in _PERCENT or units.get("unit") == _unit_of(table, k)
            if k == "hd95":
                same_unit = same_unit and units.get("hd95_mode") == table.hd95_mode
            delta = "n/a"
            if stat and stat.get("mean") is not None and paper is not None:
                delta = (f"{stat['mean'] - paper:+.2f}" if same_unit
                         else "n/a (other definition)")
            line += [_fmt(stat) if ours else "—", _num(paper), delta if ours else ""]
        rows.append(line)
    return header, rows


def _per_class_rows(report: dict[str, Any], setting_key: str,
                    protocol: str) -> tuple[list[str], list[list[str]]] | None:
    setting = next(s for s in report["settings"] if s["key"] == setting_key)
    classes: list[str] = []
    for r in setting["rows"]:
        for c in (r["per_class"].get(protocol) or {}):
            if c not in classes:
                classes.append(c)
    if not classes:
        return None
    units = setting["units"].get(protocol, {})
    header = ["ssmis method"] + [f"{c} Dice (%)" for c in classes] + [
        f"{c} HD95 ({units.get('unit', '?')}, {units.get('hd95_mode', '?')})" for c in classes]
    rows, seen = [], set()
    for r in setting["rows"]:
        pc = r["per_class"].get(protocol)
        if not pc or r["ssmis"] in seen:
            continue
        seen.add(r["ssmis"])
        rows.append([r["ssmis"]] + [_fmt(pc.get(c, {}).get("dice")) for c in classes]
                    + [_fmt(pc.get(c, {}).get("hd95")) for c in classes])
    return header, rows


def _actual_iterations(collected: dict[str, Any]) -> dict[str, list[int]]:
    """method -> the recorded iterations of its finished runs (every setting)."""
    actual: dict[str, list[int]] = {}
    for cell in collected["cells"].values():
        actual.setdefault(cell["method"], []).extend(
            i for i in cell["iterations"] if i is not None)
    return actual


def build_report(plan: Plan, wall_s: float | None = None) -> dict[str, Any]:
    """The report's data (written as ``report.json``; the Markdown and HTML render it)."""
    from ssmis.engine.evaluate import git_commit

    table = plan.table
    collected = collect(plan)
    actual = _actual_iterations(collected)
    settings = []
    for s in plan.settings:
        run_methods = plan.methods.get(s.key, [])
        rows = []
        units: dict[str, dict[str, Any]] = {}
        for r in s.rows:
            cell = collected["cells"].get(f"{s.key}/{r.ssmis}") if r.ssmis else None
            if r.ssmis is None:
                status = "not in ssmis"
            elif r.ssmis not in run_methods:
                reason = next((x for x in plan.skipped.get(s.key, [])
                               if x.startswith(f"{r.ssmis}:")), None)
                status = "no config" if reason else "not selected"
            elif not cell or not cell["seeds"]:
                status = "no finished run"
            else:
                status = "ok"
            ours, per_class = {}, {}
            if status == "ok" and cell is not None:
                for p, entry in cell["protocols"].items():
                    ours[p] = entry["stats"]
                    per_class[p] = entry["per_class_stats"]
                    units.setdefault(p, {"unit": entry["unit"], "hd95_mode": entry["hd95_mode"],
                                         "empty_rule": entry["empty_rule"],
                                         "selection": entry["selection"]})
            rows.append({"label": r.method, "ssmis": r.ssmis, "status": status,
                         "seeds": len(cell["seeds"]) if cell else 0,
                         "iterations": cell["iterations"] if cell else [],
                         "missing_seeds": cell["missing"] if cell else [],
                         "checkpoints": {p: e["checkpoints"] for p, e in
                                         (cell["protocols"].items() if cell else [])},
                         "paper": {k: r.value(k) for k in METRIC_KEYS},
                         "ours": ours, "per_class": per_class})
        settings.append({"key": s.key, "unlabeled": s.unlabeled, "rows": rows,
                         "units": units, "skipped": plan.skipped.get(s.key, [])})
    return {
        "schema": "ssmis-reproduce-report-1",
        "table": {"id": table.id, "paper": table.paper, "table": table.table,
                  "dataset": table.dataset, "source": table.source,
                  "labeled_unit": table.labeled_unit, "selection": table.selection,
                  "empty_rule": table.empty_rule,
                  "metrics": {k: v.model_dump() for k, v in table.metrics.items()}},
        "budget": plan.budget, "budget_text": describe_budget(plan, actual),
        "paper_length": plan.budget == "paper" and all(
            set(actual.get(m) or [b.iterations]) == {b.paper_iterations}
            for m, b in plan.budgets.items()),
        "protocol": plan.protocol, "seeds": plan.seeds,
        "protocols": {n: {"text": p.text, "overrides": list(p.overrides),
                          "selection": p.selection} for n, p in PROTOCOLS.items()},
        "commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_s": wall_s, "settings": settings, "cells": collected["cells"],
    }


def _title(report: dict[str, Any]) -> str:
    t = report["table"]
    budget = report["budget"]
    scale = ("the paper's budget" if report.get("paper_length")
             else f"budget '{budget}': scaled down, not the paper's budget")
    return f"Reproduction of {t['paper']}, Table {t['table']} ({t['dataset']}) — {scale}"


def _figures(report: dict[str, Any]) -> dict[str, list[tuple[str, bytes]]]:
    figs: dict[str, list[tuple[str, bytes]]] = {}
    for s in report["settings"]:
        key = s["key"]
        label = f"{key} labeled {report['table']['labeled_unit']}"
        out: list[tuple[str, bytes]] = []
        bars = [r for r in s["rows"] if r["status"] == "ok"]
        if bars:
            out.append((f"bars-{key}", _bar_chart(bars, f"Dice, {label}: ours (mean ± std "
                                                         "over seeds) and the paper's")))
        cells = [c for c in report["cells"].values() if c["setting"] == key]
        png = _curves(cells, f"Validation Dice, {label} (mean over seeds; band: min..max)")
        if png:
            out.append((f"curves-{key}", png))
        png = _overlays(cells, f"The same test cases, {label} (first seed, honest checkpoint)")
        if png:
            out.append((f"overlays-{key}", png))
        figs[key] = out
    return figs


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def esc(c: str) -> str:
        return str(c).replace("|", "\\|")
    return ["| " + " | ".join(esc(h) for h in header) + " |",
            "| " + " | ".join("---" for _ in header) + " |",
            *("| " + " | ".join(esc(c) for c in row) + " |" for row in rows)]


def _intro(report: dict[str, Any]) -> list[str]:
    t = report["table"]
    wall = report.get("wall_s")
    lines = [
        f"Source: {t['source']}.",
        f"Budget: **{report['budget']}** — {report['budget_text']}.",
        f"Seeds: {', '.join(map(str, report['seeds']))}; ours = mean ± sample std over the "
        "seeds (runs) that finished; Δ = ours − paper, only where both use the same unit and "
        "definition.",
        f"Paper's definitions: HD95 {t['metrics']['hd95']['unit']} "
        f"(hd95_mode {t['metrics']['hd95'].get('hd95_mode') or 'unknown'}: "
        f"{t['metrics']['hd95']['definition']}); ASD {t['metrics']['asd']['unit']}; empty masks: "
        f"{t['empty_rule']}; selection: {t['selection']}.",
    ]
    for name, p in report["protocols"].items():
        marker = " (headline)" if name == report["protocol"] else ""
        lines.append(f"Protocol **{name}**{marker}: {p['text']} "
                     f"(overrides: {' '.join(p['overrides'])}).")
    lines.append(f"Commit {report['commit']}, {report['date']}"
                 + (f", wall time {wall / 60:.1f} min" if wall else "") + ".")
    return lines


def _ordered_protocols(report: dict[str, Any]) -> list[str]:
    first = report["protocol"]
    return [first] + [p for p in report["protocols"] if p != first]


def render_markdown(report: dict[str, Any], figures: dict[str, list[tuple[str, bytes]]],
                    files_dir: str = "report_files") -> str:
    """``report.md``; figures are referenced as ``report_files/<name>.png``."""
    table = _table_from(report)
    out = [f"# {_title(report)}", "", *[f"- {ln}" for ln in _intro(report)], ""]
    for s in report["settings"]:
        out += [f"## {s['key']} labeled {report['table']['labeled_unit']}"
                + (f" ({s['unlabeled']} unlabeled)" if s["unlabeled"] else ""), ""]
        for p in _ordered_protocols(report):
            u = s["units"].get(p, {})
            out += [f"### Protocol {p}: unit {u.get('unit', '?')}, hd95_mode "
                    f"{u.get('hd95_mode', '?')}, empty masks {u.get('empty_rule', '?')}, "
                    f"selection {u.get('selection', '?')}", ""]
            out += _md_table(*_protocol_rows(report, table, s["key"], p)) + [""]
        pc = _per_class_rows(report, s["key"], report["protocol"])
        if pc:
            out += [f"### Per class (protocol {report['protocol']})", ""]
            out += _md_table(*pc) + [""]
        for x in s["skipped"]:
            out.append(f"- not run: {x}")
        missing = [f"{r['ssmis']} seeds {r['missing_seeds']}" for r in s["rows"]
                   if r.get("missing_seeds")]
        if missing:
            out.append(f"- runs without a result (failed or unfinished): {'; '.join(missing)}")
        out.append("")
        for name, _ in figures.get(s["key"], []):
            out += [f"![{name}]({files_dir}/{name}.png)", ""]
    return "\n".join(out).rstrip() + "\n"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.2em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
h1{font-size:1.35em}h2{font-size:1.15em;margin-top:1.6em}h3{font-size:1em}
img{max-width:100%;display:block;margin:0.5em 0}li{margin:0.2em 0}"""


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(report: dict[str, Any], figures: dict[str, list[tuple[str, bytes]]]) -> str:
    """``report.html``: self-contained (figures embedded as base64 PNG, no external file)."""
    table = _table_from(report)
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(_title(report))}"
             f"</title><style>{_CSS}</style></head><body><h1>{esc(_title(report))}</h1><ul>"]
    parts += [f"<li>{esc(ln).replace('**', '')}</li>" for ln in _intro(report)]
    parts.append("</ul>")
    for s in report["settings"]:
        parts.append(f"<h2>{esc(s['key'])} labeled {esc(report['table']['labeled_unit'])}"
                     + (f" ({s['unlabeled']} unlabeled)" if s["unlabeled"] else "") + "</h2>")
        for p in _ordered_protocols(report):
            u = s["units"].get(p, {})
            parts.append(f"<h3>Protocol {esc(p)}: unit {esc(str(u.get('unit', '?')))}, "
                         f"hd95_mode {esc(str(u.get('hd95_mode', '?')))}, empty masks "
                         f"{esc(str(u.get('empty_rule', '?')))}, selection "
                         f"{esc(str(u.get('selection', '?')))}</h3>")
            parts.append(_html_table(*_protocol_rows(report, table, s["key"], p)))
        pc = _per_class_rows(report, s["key"], report["protocol"])
        if pc:
            parts.append(f"<h3>Per class (protocol {esc(report['protocol'])})</h3>")
            parts.append(_html_table(*pc))
        notes = [f"not run: {x}" for x in s["skipped"]]
        notes += [f"{r['ssmis']}: no result for seeds {r['missing_seeds']} (failed or "
                  "unfinished)" for r in s["rows"] if r.get("missing_seeds")]
        if notes:
            parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
        for name, png in figures.get(s["key"], []):
            data = base64.b64encode(png).decode("ascii")
            parts.append(f"<img alt='{esc(name)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _table_from(report: dict[str, Any]) -> PublishedTable:
    """A stand-in with the fields the table renderers read (units and hd95 mode)."""
    from ssmis.reproduce.published import MetricDefinition

    t = report["table"]

    class _View:
        metrics = {k: MetricDefinition(**v) for k, v in t["metrics"].items()}
        hd95_mode = t["metrics"]["hd95"].get("hd95_mode") or "unknown"

    return _View()  # type: ignore[return-value]


def write_report(plan: Plan, wall_s: float | None = None) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` (+ ``report_files/*.png``) and ``report.html``
    under ``plan.out``, each atomically (:mod:`ssmis.atomic`); returns their paths."""
    from ssmis.atomic import write_bytes, write_json, write_text

    report = build_report(plan, wall_s)
    figures = _figures(report)
    out = plan.out
    files = out / "report_files"
    for items in figures.values():
        for name, png in items:
            write_bytes(files / f"{name}.png", png)
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    write_json(paths["json"], report, indent=1)
    write_text(paths["md"], render_markdown(report, figures))
    write_text(paths["html"], render_html(report, figures))
    return paths
