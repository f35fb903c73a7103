"""Validation during training and the final evaluation of a chosen checkpoint: the engine's
side, which drives :mod:`ssmis.eval` (a case segmented by :mod:`ssmis.eval.segment`, scored by
:mod:`ssmis.eval.metrics`) over the cases, the processes and the run's record.

Model selection reads only the validation split; the test split is touched once, by
:func:`evaluate_split` on the chosen checkpoint, and every number is stored with its definition.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from ssmis import __version__
from ssmis.config import ExperimentConfig
from ssmis.data.datasets import EvalCase
from ssmis.engine import distributed as dist
from ssmis.engine.runlog import CaseProgress
from ssmis.eval.metrics import (
    EMPTY_RULES,
    METRIC_DEFINITIONS,
    case_metrics,
    dice_per_class,
    occurs_in,
    summarize,
)
from ssmis.eval.segment import inference_note, predict_case, within_roi
from ssmis.methods.base import Method


@dataclass
class ValidationScore:
    """One validation pass: the selection score and how many cases had no foreground."""

    dice: float  # mean over cases of the mean foreground Dice (NaN without cases)
    cases: int
    empty_predictions: int  # cases where the model predicted no foreground voxel at all
    #: classes (or regions) that occur in no validation reference: left out of ``dice``, where
    #: they would score 1 (both masks empty) or 0 without measuring anything
    absent: tuple[str, ...] = ()


@torch.no_grad()
def validation_cases(method: Method, cases: Iterator[EvalCase], cfg: ExperimentConfig,
                     device: torch.device, amp: bool = False
                     ) -> list[tuple[list[float], list[bool], bool]]:
    """Per case: (Dice of each scored class or region, whether each occurs in the reference,
    whether the model predicted no foreground at all)."""
    was_training = method.training
    method.eval()
    structures = _validation_structures(cfg)
    out: list[tuple[list[float], list[bool], bool]] = []
    try:
        for case in cases:
            pred, label = within_roi(predict_case(method, case, cfg, device, amp), case)
            out.append((dice_per_class(pred, label, cfg.data.num_classes, cfg.eval.regions),
                        occurs_in(label, structures),
                        not pred.any()))
    finally:
        method.train(was_training)
    return out


def _validation_structures(cfg: ExperimentConfig) -> dict[str, list[int]]:
    return cfg.eval.regions or {str(c): [c] for c in range(1, cfg.data.num_classes)}


def summarize_validation(per_case: list[tuple[list[float], list[bool], bool]],
                         cfg: ExperimentConfig) -> ValidationScore:
    """:class:`ValidationScore` of :func:`validation_cases`' results (all cases, in order):
    the mean over cases of the mean Dice over the classes that occur in at least one
    validation reference."""
    if not per_case:
        return ValidationScore(float("nan"), 0, 0)
    structures = _validation_structures(cfg)
    present = np.zeros(len(structures), bool)
    for _, seen, _ in per_case:
        present |= seen
    keep = present if present.any() else np.ones_like(present)
    dice = float(np.mean(np.asarray([d for d, _, _ in per_case])[:, keep].mean(axis=1)))
    absent = tuple(name for name, seen in zip(structures, keep, strict=True) if not seen)
    empty = sum(int(e) for _, _, e in per_case)
    return ValidationScore(dice, len(per_case), empty, absent)


def validation_score(method: Method, cases: Iterator[EvalCase], cfg: ExperimentConfig,
                     device: torch.device, amp: bool = False) -> ValidationScore:
    """Mean over cases of the mean foreground Dice (what the published code selects on), over
    the classes that occur in at least one validation reference, and the number of cases
    predicted entirely as background (a collapsed model)."""
    return summarize_validation(validation_cases(method, cases, cfg, device, amp), cfg)


def git_commit() -> str:
    """Commit of the ssmis source tree, or the package version when not in a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, timeout=5, check=True)
        return out.stdout.strip()
    except Exception:
        return f"ssmis {__version__} (no git)"


@torch.no_grad()
def evaluate_split(
    method: Method, cases: Iterator[EvalCase], cfg: ExperimentConfig, device: torch.device,
    *, split: str, checkpoint: str, iteration: int | None, keep_predictions: int = 0,
    total: int | None = None,
) -> tuple[dict[str, Any], list[tuple[EvalCase, np.ndarray]]]:
    """Full metrics on ``split``; returns the result JSON and up to ``keep_predictions`` cases
    with their predictions (for the overlay figure), spread over the domains: the first case
    of each domain, then the second of each, ... (one domain: the first cases).

    ``total``: the number of ``cases`` (this process's shard under DDP); given, progress
    (cases done, s/case, ETA) is shown on a terminal bar and written to the run log.
    """
    method.eval()
    structures = cfg.eval.structures(cfg.data.names())
    names = ({k: k for k in structures} if cfg.eval.regions
             else {k: cfg.data.names()[int(k)] for k in structures})
    per_case: list[dict[str, Any]] = []
    kept: list[tuple[int, EvalCase, np.ndarray]] = []
    spacing_note = "voxel units"
    present = dict.fromkeys(structures, False)
    per_domain: dict[str | None, int] = {}
    progress = CaseProgress(total or 0, f"{split} evaluation",
                            enabled=total is not None and dist.is_main_process())
    for index, case in enumerate(cases):
        pred, label = within_roi(predict_case(method, case, cfg, device, amp=cfg.train.amp),
                                 case)
        for key, seen in zip(structures, occurs_in(label, structures), strict=True):
            present[key] = present[key] or seen
        spacing = case.spacing if cfg.eval.unit == "mm" else None
        if cfg.eval.unit == "mm" and spacing is None:
            spacing_note = "voxel units: no spacing known (set data.spacing)"
        elif spacing is not None:
            spacing_note = "mm, from data.spacing / headers"
        values = case_metrics(pred, label, structures, spacing,
                              empty_rule=cfg.eval.empty_rule, hd95_mode=cfg.eval.hd95_mode)
        per_case.append({"case": case.case, "domain": case.domain,
                         "metrics": {str(k): v for k, v in values.items()}})
        if case.roi is not None:
            per_case[-1]["within_roi"] = True
        if per_domain.get(case.domain, 0) < keep_predictions:
            per_domain[case.domain] = per_domain.get(case.domain, 0) + 1
            kept.append((index, case, pred))
        progress.advance()
    progress.close()
    # DDP: ``cases`` was this process's shard; every process gets all cases, in order
    per_case = dist.unshard(per_case)
    kept_cases = _gather_kept(kept, keep_predictions)
    present = {k: any(p[k] for p in dist.all_gather(present)) for k in present}
    summary = summarize(per_case, names, absent=[k for k, seen in present.items()
                                                 if not seen and per_case])
    unit = "mm" if spacing_note.startswith("mm") else "voxel"
    result: dict[str, Any] = {
        "split": split, "checkpoint": checkpoint, "iteration": iteration, "seed": cfg.seed,
        "commit": git_commit(), "method": cfg.method.name, "model": cfg.model.name,
        "dataset": str(cfg.data.root), "unit": unit, "spacing": spacing_note,
        "empty_rule": cfg.eval.empty_rule, "empty_rule_text": EMPTY_RULES[cfg.eval.empty_rule],
        "hd95_mode": cfg.eval.hd95_mode, "lcc": cfg.eval.lcc, "inference": inference_note(cfg),
        "selection": cfg.eval.selection,
        "definitions": METRIC_DEFINITIONS,
        "classes": {str(k): v for k, v in names.items()},
        "per_case": per_case, **summary,
        "processes": dist.world_size(),  # evaluated by this many processes (DDP shards)
    }
    if cfg.eval.regions:
        result["regions"] = structures
    if any(p.get("within_roi") for p in per_case):
        result["roi"] = ("metrics count only the pixels inside each case's ROI mask "
                         "(field of view: data.roi_dir, or the layout's own masks such as HRF's "
                         "mask/); cases marked within_roi")
    return result, kept_cases


def _gather_kept(local: list[tuple[int, EvalCase, np.ndarray]], count: int
                 ) -> list[tuple[EvalCase, np.ndarray]]:
    """The ``count`` cases for the figure, chosen by :func:`spread_over_domains` over every
    process's kept cases in the global case order (local case ``i`` of rank ``r`` is global
    case ``r + world_size * i``); under DDP only the chosen ones travel."""
    n, r = dist.world_size(), dist.rank()
    mine = {r + n * i: (case, pred) for i, case, pred in local}
    every = sorted(item for part in dist.all_gather([(g, c.domain) for g, (c, _) in
                                                     mine.items()]) for item in part)
    chosen = [g for g, _ in spread_over_domains(every, lambda item: item[1], count)]
    parts = dist.all_gather({g: mine[g] for g in chosen if g in mine})
    found = {g: item for part in parts for g, item in part.items()}
    return [found[g] for g in chosen]


T = TypeVar("T")


def spread_over_domains(items: list[T], domain_of: Callable[[T], str | None], count: int
                        ) -> list[T]:
    """Up to ``count`` of ``items`` (in their order), taking the domains in turn (in the
    order they first occur): a figure of 4 cases from 2 hospitals shows 2 of each."""
    groups: dict[str | None, list[T]] = {}
    for item in items:
        groups.setdefault(domain_of(item), []).append(item)
    picked: list[T] = []
    depth = 0
    while len(picked) < count and any(depth < len(g) for g in groups.values()):
        picked.extend(g[depth] for g in groups.values() if depth < len(g))
        depth += 1
    return picked[:count]
