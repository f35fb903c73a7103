"""Whole runs: train (fresh or resumed), then evaluate the chosen checkpoint on the test split."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ssmis.atomic import write_json, write_text
from ssmis.config import (
    ExperimentConfig,
    apply_overrides,
    check_paths,
    read_yaml,
    validate_config,
)
from ssmis.data.splits import Split
from ssmis.engine import distributed as dist
from ssmis.engine.checkpoint import load_into
from ssmis.engine.data import eval_cases
from ssmis.engine.evaluate import evaluate_split
from ssmis.engine.prepare import prepare
from ssmis.engine.resume import plan_resume
from ssmis.engine.runfolder import (
    CONFIG_FILE,
    LEARNING_CURVE,
    LOG_FILE,
    SCALARS_FILE,
    SELECTED,
    SPLIT_FILE,
    VAL_FILE,
    checkpoint_path,
    has_run_files,
    new_run_dir,
    overlays_file,
    result_stem,
)
from ssmis.engine.runlock import run_lock
from ssmis.engine.runlog import LOGGER_NAME, setup_logger
from ssmis.engine.trainer import Trainer
from ssmis.errors import SSMISError
from ssmis.experiment import load_config


def train_run(cfg: ExperimentConfig, run_dir: Path | None = None, evaluate: bool = True,
              verbose: bool = True, split: Split | None = None) -> Path:
    """Validate everything, create the run folder, train, and evaluate on the test split.

    Under torchrun (several processes) the run is one DDP run: rank 0 names, locks and writes
    the run folder, every process trains its share of each batch (see
    :mod:`ssmis.engine.distributed`).
    """
    dist.setup(cfg.train.device)
    with dist.shared_errors():
        prepared = prepare(cfg, split)
        path = dist.on_main(new_run_dir, cfg, run_dir)
    with dist.main_only(run_lock, path):
        if run_dir is not None and dist.on_main(has_run_files, path):  # another run came first
            raise dist.SharedError(f"{path}: run folder exists and is not empty (use --resume "
                                   "to continue it, or choose another --run-dir)")
        trainer = Trainer(prepared, path)
        if dist.is_main_process():
            trainer.write_start_files()
        _logger(path, verbose)
        trainer.fit()
        if evaluate:
            evaluate_run(path, split="test", checkpoint=SELECTED, verbose=verbose,
                         prepared=prepared)
    return path


def train_config(config: Path, overrides: list[str] | None = None, run_dir: Path | None = None,
                 evaluate: bool = True, verbose: bool = True) -> Path:
    """:func:`train_run` of an experiment YAML with ``key=value`` overrides (what
    ``ssmis train CONFIG OVERRIDES`` does in one process); returns the run folder.

    Raises:
        SSMISError: the config is unreadable or invalid, or anything :func:`train_run` raises.
    """
    return train_run(load_config(Path(config), list(overrides or [])), run_dir,
                     evaluate=evaluate, verbose=verbose)


def _logger(run_dir: Path, verbose: bool) -> None:
    """The run's log (file + console) on rank 0; other DDP processes log nothing."""
    if dist.is_main_process():
        setup_logger(run_dir / LOG_FILE, verbose)
    else:
        _silent_logger()


def _silent_logger() -> None:
    """No output at all, warnings included (Python's last-resort handler would print them)."""
    setup_logger(None, verbose=False).addHandler(logging.NullHandler())


def load_run_config(run_dir: Path, overrides: list[str] | None = None) -> ExperimentConfig:
    if not run_dir.is_dir():
        raise SSMISError(f"{run_dir}: run folder not found")
    raw = apply_overrides(read_yaml(run_dir / CONFIG_FILE), overrides or [])
    cfg = validate_config(raw, source=str(run_dir / CONFIG_FILE))
    check_paths(cfg)
    return cfg


def resume_run(run_dir: Path, overrides: list[str] | None = None, evaluate: bool = True,
               verbose: bool = True) -> Path:
    """Continue a stopped run from its last checkpoint. Overrides follow the rules of
    :mod:`ssmis.engine.resume` (``train.iterations=`` and ``train.lr=`` by a stated rule with
    a warning, run-changing fields refused); the session is added to ``segments.json``."""
    with dist.shared_errors():
        plan = plan_resume(run_dir, overrides or [])
        cfg = plan.cfg
        dist.setup(cfg.train.device)
        split = Split.load(run_dir / SPLIT_FILE)
        prepared = prepare(cfg, split, from_run=True)
    with dist.main_only(run_lock, run_dir):
        trainer = Trainer(prepared, run_dir, plan=plan)
        _logger(run_dir, verbose)
        # the checkpoint and the plan are checked before config.yaml / segments.json (rank 0)
        write = None
        if dist.is_main_process():
            write = trainer.write_start_files if plan.changes else trainer.write_segments
        trainer.fit(resume=True, after_resume=write)
        if evaluate:
            evaluate_run(run_dir, split="test", checkpoint=SELECTED, verbose=verbose,
                         prepared=prepared)
    return run_dir


def evaluate_run(run_dir: Path, split: str = "test", checkpoint: str = "best",
                 verbose: bool = True, prepared=None) -> dict[str, Any]:
    """Evaluate a checkpoint of a run; writes metrics JSON/Markdown/CSV and pictures.

    The files are named by :func:`result_stem`. Raises SSMISError for a missing or damaged
    checkpoint, or while another process holds the run folder.
    """
    from ssmis.eval import report

    if prepared is None:
        with dist.shared_errors():
            cfg = load_run_config(run_dir)
            dist.setup(cfg.train.device)
            prepared = prepare(cfg, Split.load(run_dir / SPLIT_FILE), from_run=True)
        if dist.is_main_process():
            setup_logger(None, verbose)
        else:
            _silent_logger()
    cfg, method, device = prepared.cfg, prepared.method, prepared.device
    with dist.main_only(run_lock, run_dir):

        def load() -> tuple[Path, int]:
            path = checkpoint_path(run_dir, checkpoint, method.phases())
            meta = load_into(method, path, method_name=cfg.method.name,
                             model_name=cfg.model.name)
            return path, int(meta.get("step", "0"))

        ckpt, iteration = dist.on_main(load)  # DDP: rank 0 reads it, the others receive it
        dist.broadcast_state(method)
        ids = dist.shard(getattr(prepared.split, split))  # DDP: this process's cases
        result, kept = evaluate_split(method, eval_cases(cfg, ids), cfg, device, split=split,
                                      checkpoint=ckpt.stem, iteration=iteration,
                                      keep_predictions=cfg.eval.overlay_cases, total=len(ids))
        phase = phase_of(method.phases(), iteration)
        if phase is not None:
            result["phase"] = phase
        if not dist.is_main_process():  # every process holds the gathered result
            return result
        stem = result_stem(split, checkpoint)
        write_json(run_dir / f"{stem}.json", result)
        write_text(run_dir / f"{stem}.md", report.metrics_table_markdown(result) + "\n")
        write_text(run_dir / f"{stem}_per_case.csv", report.per_case_csv(result))
        _pictures(run_dir, cfg, kept, split)
    log = logging.getLogger(LOGGER_NAME)
    for name in result.get("absent_classes", []):
        log.warning(f"warning: class '{name}' never occurs in any {split} reference: it is "
                    "reported apart and left out of the mean (check data.num_classes)")
    log.info("\n" + report.metrics_table_text(result))
    return result


def phase_of(phases: list, iteration: int) -> str | None:
    """The phase a checkpoint saved after ``iteration`` iterations belongs to (a two-phase
    method's ``pretrain`` or ``self_train``), or None for a one-phase method."""
    if len(phases) < 2:
        return None
    end = 0
    for phase in phases:
        end += phase.iterations
        if iteration <= end:
            return str(phase.name)
    return str(phases[-1].name)


def _pictures(run_dir: Path, cfg: ExperimentConfig, kept, split: str) -> None:
    from ssmis.eval import report

    scalars = run_dir / SCALARS_FILE
    if scalars.is_file() and scalars.stat().st_size > 0:
        val = run_dir / VAL_FILE
        report.plot_learning_curve(scalars, run_dir / LEARNING_CURVE,
                                   val if val.is_file() else None)
    if not kept:
        return
    axis = 0 if cfg.data.spatial_dims == 2 else 2  # ACDC (Z, H, W); LA (X, Y, Z)
    cases = []
    for case, pred in kept:
        image = case.image if case.image.ndim == case.label.ndim else case.image[0]
        if case.label.ndim == 2:  # a 2D image case: no slice to pick; RGB shown in colour
            if case.image.ndim == 3 and case.image.shape[0] == 3:
                image = np.moveaxis(case.image, 0, -1)
            cases.append({"case": case.case, "domain": case.domain, "image": image,
                          "label": case.label, "pred": pred})
            continue
        index = report.pick_slice(case.label, axis)
        cases.append({"case": case.case, "domain": case.domain,
                      "image": image.take(index, axis),
                      "label": case.label.take(index, axis), "pred": pred.take(index, axis)})
    report.plot_overlays(cases, run_dir / overlays_file(split), cfg.data.names())
