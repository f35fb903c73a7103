"""Whole runs: train (fresh or resumed), then evaluate the chosen checkpoint on the test split."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ssmis.config import ExperimentConfig, apply_overrides, check_paths, read_yaml, validate_config
from ssmis.data.splits import Split
from ssmis.engine.checkpoint import load_weights
from ssmis.engine.data import eval_cases
from ssmis.engine.evaluate import evaluate_split
from ssmis.engine.runlog import LOGGER_NAME, setup_logger
from ssmis.engine.trainer import (
    CKPT_DIR,
    CONFIG_FILE,
    SPLIT_FILE,
    Trainer,
    best_name,
    new_run_dir,
    prepare,
)
from ssmis.errors import SSMISError


def train_run(cfg: ExperimentConfig, run_dir: Path | None = None, evaluate: bool = True,
              verbose: bool = True, split: Split | None = None) -> Path:
    """Validate everything, create the run folder, train, and evaluate on the test split."""
    prepared = prepare(cfg, split)
    path = new_run_dir(cfg, run_dir)
    trainer = Trainer(prepared, path)
    trainer.write_start_files()
    setup_logger(path / "train.log", verbose)
    trainer.fit()
    if evaluate:
        evaluate_run(path, split="test", checkpoint="best", verbose=verbose, prepared=prepared)
    return path


def load_run_config(run_dir: Path, overrides: list[str] | None = None) -> ExperimentConfig:
    if not run_dir.is_dir():
        raise SSMISError(f"{run_dir}: run folder not found")
    raw = apply_overrides(read_yaml(run_dir / CONFIG_FILE), overrides or [])
    cfg = validate_config(raw, source=str(run_dir / CONFIG_FILE))
    check_paths(cfg)
    return cfg


def resume_run(run_dir: Path, overrides: list[str] | None = None, evaluate: bool = True,
               verbose: bool = True) -> Path:
    """Continue a stopped run from its last checkpoint (``train.iterations=`` may extend it)."""
    cfg = load_run_config(run_dir, overrides)
    split = Split.load(run_dir / SPLIT_FILE)
    prepared = prepare(cfg, split)
    trainer = Trainer(prepared, run_dir)
    if overrides:
        trainer.write_start_files()
    setup_logger(run_dir / "train.log", verbose)
    trainer.fit(resume=True)
    if evaluate:
        evaluate_run(run_dir, split="test", checkpoint="best", verbose=verbose, prepared=prepared)
    return run_dir


def checkpoint_path(run_dir: Path, cfg: ExperimentConfig, method, which: str) -> Path:
    if which == "best":
        phases = method.phases()
        which = best_name(phases, phases[-1])
    path = run_dir / CKPT_DIR / f"{which}.safetensors"
    if not path.is_file():
        raise SSMISError(f"{path}: checkpoint not found (expected best or last in {CKPT_DIR}/)")
    return path


def evaluate_run(run_dir: Path, split: str = "test", checkpoint: str = "best",
                 verbose: bool = True, prepared=None) -> dict[str, Any]:
    """Evaluate a checkpoint of a run; writes metrics JSON/Markdown/CSV and pictures."""
    from ssmis import report

    if prepared is None:
        cfg = load_run_config(run_dir)
        prepared = prepare(cfg, Split.load(run_dir / SPLIT_FILE))
        setup_logger(None, verbose)
    cfg, method, device = prepared.cfg, prepared.method, prepared.device
    ckpt = checkpoint_path(run_dir, cfg, method, checkpoint)
    method.load_state_dict(load_weights(ckpt))
    from ssmis.engine.checkpoint import read_metadata

    iteration = int(read_metadata(ckpt).get("step", "0"))
    ids = getattr(prepared.split, split)
    result, kept = evaluate_split(method, eval_cases(cfg, ids), cfg, device, split=split,
                                  checkpoint=ckpt.stem, iteration=iteration,
                                  keep_predictions=cfg.eval.overlay_cases)
    stem = "metrics" if split == "test" else f"metrics_{split}"
    (run_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (run_dir / f"{stem}.md").write_text(report.metrics_table_markdown(result) + "\n")
    (run_dir / f"{stem}_per_case.csv").write_text(report.per_case_csv(result))
    _pictures(run_dir, cfg, kept, split)
    logging.getLogger(LOGGER_NAME).info("\n" + report.metrics_table_text(result))
    return result


def _pictures(run_dir: Path, cfg: ExperimentConfig, kept, split: str) -> None:
    from ssmis import report

    scalars = run_dir / "scalars.jsonl"
    if scalars.is_file() and scalars.stat().st_size > 0:
        val = run_dir / "val.jsonl"
        report.plot_learning_curve(scalars, run_dir / "learning_curve.png",
                                   val if val.is_file() else None)
    if not kept:
        return
    axis = 0 if cfg.data.spatial_dims == 2 else 2  # ACDC (Z, H, W); LA (X, Y, Z)
    cases = []
    for case, pred in kept:
        image = case.image if case.image.ndim == case.label.ndim else case.image[0]
        if case.label.ndim == 2:  # a 2D image case: no slice to pick
            cases.append({"case": case.case, "image": image, "label": case.label,
                          "pred": pred})
            continue
        index = report.pick_slice(case.label, axis)
        cases.append({"case": case.case, "image": image.take(index, axis),
                      "label": case.label.take(index, axis), "pred": pred.take(index, axis)})
    report.plot_overlays(cases, run_dir / f"overlays_{split}.png", cfg.data.names())
