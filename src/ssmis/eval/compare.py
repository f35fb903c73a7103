"""One table from several runs: each experiment's metrics, mean ± std over its seeds.

Reads only the files a run leaves (``metrics.json`` and ``config.yaml``), so a comparison can be
made any time after training, from runs made on different machines. Runs are grouped by their
config ``name`` (one experiment = one config, several seeds); a row shows the mean over the
group's runs of each run's summary number, ± the sample standard deviation over those runs
(the seed-to-seed spread, not the case-to-case spread of a single run's table).

With per-domain results (the mixed-domain setting) the columns follow the SynFoC papers: Dice
per domain, then the unweighted mean over domains of Dice, Jaccard, HD95 and ASD. Otherwise:
Dice per class, then the mean over classes of the four metrics.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ssmis.errors import SSMISError
from ssmis.eval.metrics import domain_average
from ssmis.eval.report import METRICS, markdown_table, metric_titles, text_table

__all__ = ["RunResult", "comparison_rows", "compare_runs", "load_run_result"]


@dataclass
class RunResult:
    """One run's test metrics and the experiment it belongs to."""

    path: Path
    name: str
    method: str
    seed: int | None
    metrics: dict[str, Any]


def load_run_result(path: Path, metrics_file: str = "metrics.json") -> RunResult:
    """A run folder (its ``metrics.json`` and ``config.yaml``) or a metrics JSON file."""
    path = Path(path)
    file = path / metrics_file if path.is_dir() else path
    if not file.is_file():
        hint = " (run `ssmis evaluate RUN_DIR` first)" if path.is_dir() else ""
        raise SSMISError(f"{file}: no metrics file{hint}")
    try:
        metrics = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise SSMISError(f"{file}: not a metrics JSON ({err})") from None
    if not isinstance(metrics, dict) or "mean" not in metrics:
        raise SSMISError(f"{file}: not a metrics JSON written by ssmis (no 'mean' entry)")
    method = str(metrics.get("method") or "?")
    name = method
    config = file.parent / "config.yaml"
    if config.is_file():
        name = str((yaml.safe_load(config.read_text()) or {}).get("name") or method)
    return RunResult(file.parent, name, method, metrics.get("seed"), metrics)


def _run_values(metrics: dict[str, Any], domains: Sequence[str],
                classes: Sequence[str]) -> list[float | None]:
    """The run-level numbers of one row, in column order (None where undefined)."""
    def mean_of(stat: Any) -> float | None:
        value = stat.get("mean") if isinstance(stat, dict) else None
        return float(value) if value is not None and math.isfinite(float(value)) else None

    if domains:
        per_domain = metrics.get("per_domain") or {}
        values = [mean_of((per_domain.get(d) or {}).get("dice")) for d in domains]
        average = metrics.get("domain_mean") or domain_average(per_domain)  # older runs
    else:
        per_class = metrics.get("per_class") or {}
        values = [mean_of((per_class.get(c) or {}).get("dice")) for c in classes]
        average = metrics.get("mean") or {}
    return values + [mean_of(average.get(m)) for m in METRICS]


def _cell(values: Sequence[float | None], percent: bool) -> str:
    defined = [v for v in values if v is not None]
    if not defined:
        return "n/a"
    scale = 100.0 if percent else 1.0
    mean = float(np.mean(defined)) * scale
    if len(defined) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {float(np.std(defined, ddof=1)) * scale:.2f}"


def _counts(runs: Sequence[RunResult]) -> list[str]:
    """Cases per run, and undefined distance values over all runs (of their case x class
    values, absent classes left out): the means above are taken without them."""
    cases = sorted({int(r.metrics.get("num_cases") or 0) for r in runs})
    undefined = values = 0
    absent = {name for r in runs for name in r.metrics.get("absent_classes") or []}
    for r in runs:
        for name, stats in (r.metrics.get("per_class") or {}).items():
            hd95 = (stats or {}).get("hd95")
            if name in absent or not isinstance(hd95, dict):
                continue
            undefined += int(hd95.get("undefined", 0))
            values += int(hd95.get("n", 0)) + int(hd95.get("undefined", 0))
    return ["/".join(map(str, cases)) if any(cases) else "-",
            f"{undefined}/{values}" if values else "-"]


def _checkpoints(runs: Sequence[RunResult]) -> str:
    """Which checkpoint the runs' numbers come from, and at which iterations, e.g.
    ``best (1200, 1400)``; a two-phase method's iterations name their phase, ``best (200
    pretrain, 1400 self_train)``."""
    names = sorted({str(r.metrics.get("checkpoint", "?")) for r in runs})
    iters = ", ".join(str(r.metrics.get("iteration", "?"))
                      + (f" {r.metrics['phase']}" if r.metrics.get("phase") else "")
                      for r in runs)
    return f"{'/'.join(names)} ({iters})"


def comparison_rows(results: Sequence[RunResult]) -> tuple[list[str], list[list[str]]]:
    """Header and one row per experiment (config name), in the order first seen."""
    if not results:
        raise SSMISError("compare: no runs given")
    first = results[0]
    for r in results[1:]:
        for key in ("unit", "hd95_mode", "split"):
            if r.metrics.get(key) != first.metrics.get(key):
                raise SSMISError(f"{r.path}: {key} '{r.metrics.get(key)}' differs from "
                                 f"'{first.metrics.get(key)}' of {first.path}; compare like "
                                 "with like")
    with_domains = [r for r in results if r.metrics.get("per_domain")]
    without = [r for r in results if not r.metrics.get("per_domain")]
    if with_domains and without:
        raise SSMISError(
            f"compare: some runs have per-domain results and some have not ({without[0].path} "
            f"has none, {with_domains[0].path} has); compare like with like: pass the runs of "
            "one setting")
    domains = sorted({d for r in results for d in r.metrics.get("per_domain") or {}})
    classes = list(dict.fromkeys(c for r in results for c in r.metrics.get("per_class") or {}))
    groups: dict[str, list[RunResult]] = {}
    for r in results:
        groups.setdefault(r.name, []).append(r)
    methods = [g[0].method for g in groups.values()]
    header = ["Method", "Runs"]
    header += [f"{d} Dice (%)" for d in domains] if domains else [f"{c} Dice (%)"
                                                                 for c in classes]
    header += [f"mean {h}" for h in metric_titles(first.metrics)]
    header += ["n", "HD95/ASD undefined", "Checkpoint (iterations)"]
    percent = [True] * (len(domains) or len(classes)) + [m in ("dice", "jaccard")
                                                         for m in METRICS]
    rows = []
    for name, runs in groups.items():
        method = runs[0].method
        label = method if methods.count(method) == 1 else f"{method} ({name})"
        per_run = [_run_values(r.metrics, domains, classes) for r in runs]
        cells = [_cell([v[i] for v in per_run], percent[i]) for i in range(len(percent))]
        rows.append([label, str(len(runs)), *cells, *_counts(runs), _checkpoints(runs)])
    return header, rows


def compare_runs(paths: Sequence[Path], markdown: bool = False,
                 metrics_file: str = "metrics.json") -> str:
    """The comparison table of the given runs as text (or Markdown), with a note under it.

    ``metrics_file`` picks the evaluation in each run folder (``metrics.json``: the test split
    on the selected checkpoint). Run folders without it (unfinished runs) are skipped and
    named in the note.

    Raises:
        SSMISError: no run has the file, or a given file is not an ssmis metrics JSON.
    """
    results, skipped = [], []
    for p in paths:
        if Path(p).is_dir() and not (Path(p) / metrics_file).is_file():
            skipped.append(str(p))
            continue
        results.append(load_run_result(p, metrics_file))
    if not results:
        raise SSMISError(f"compare: none of the {len(skipped)} run folder(s) has {metrics_file} "
                         "(unfinished runs? `ssmis evaluate RUN_DIR` writes it)")
    header, rows = comparison_rows(results)
    seeds: dict[str, list] = {}
    for r in results:
        seeds.setdefault(r.name, []).append(r.seed)
    repeated = [n for n, s in seeds.items() if len(s) != len(set(s))]
    domains = bool(results[0].metrics.get("per_domain"))
    note = (f"split: {results[0].metrics.get('split', '?')}; each cell: mean over the runs "
            "± sample std over them (seeds); mean columns: "
            + ("unweighted mean over domains" if domains else "mean over classes"))
    if repeated:
        note += f"; WARNING: the same seed appears twice in {', '.join(repeated)}"
    roots = sorted({str(r.metrics.get("dataset")) for r in results})
    if len(roots) > 1:  # the same data may sit in other folders on other machines
        note += f"; note: data read from {len(roots)} folders ({', '.join(roots)})"
    if skipped:
        note += (f"; skipped {len(skipped)} run(s) without {metrics_file} (unfinished?): "
                 f"{', '.join(skipped)}")
    table = markdown_table(header, rows) if markdown else text_table(header, rows)
    return "\n".join([*table, "", note] if markdown else [*table, note])
