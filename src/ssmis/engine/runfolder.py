"""The run folder: the name of every file and folder in it, which checkpoint ``best`` and
``last`` mean, and how a fresh folder is made.

A run folder holds::

    config.yaml  splits.json  segments.json  train.log  train_summary.json
    scalars.jsonl  val.jsonl  tensorboard/  learning_curve.png  overlays_<split>.png
    metrics.json/.md/_per_case.csv (metrics_<split>_<checkpoint>.* for other evaluations)
    checkpoints/  best[_<phase>].safetensors  last.safetensors
                  last-<step>.safetensors + last-<step>_state.pt + manifest last-<step>.json
    .lock (:mod:`ssmis.engine.runlock`)

No heavy imports: the CLI's ``compare`` and the sweep read run folders without torch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ssmis.engine.runlock import LOCK_FILE
from ssmis.errors import SSMISError

if TYPE_CHECKING:
    from ssmis.config import ExperimentConfig

CONFIG_FILE = "config.yaml"
SPLIT_FILE = "splits.json"
#: the run's training sessions: start/end iteration, overrides given, lr rule (engine/resume.py)
SEGMENTS_FILE = "segments.json"
LOG_FILE = "train.log"
SUMMARY_FILE = "train_summary.json"
#: one line of training scalars per logged iteration
SCALARS_FILE = "scalars.jsonl"
#: one line per validation
VAL_FILE = "val.jsonl"
TENSORBOARD_DIR = "tensorboard"
LEARNING_CURVE = "learning_curve.png"
CKPT_DIR = "checkpoints"
WEIGHTS_SUFFIX = ".safetensors"
#: the checkpoint the run selected on validation (``eval.selection``); test and predict use it
SELECTED = "best"
#: the newest weights (a link to the newest resumable generation)
LAST = "last"
LAST_LINK = f"{LAST}{WEIGHTS_SUFFIX}"
#: the resumable state of runs written before manifests existed (refused on resume)
STATE_SUFFIX = "_state.pt"
LEGACY_STATE = f"{LAST}{STATE_SUFFIX}"
#: the run's own result (test split, selected checkpoint)
RESULT_STEM = "metrics"
METRICS_FILE = f"{RESULT_STEM}.json"

_MANIFEST = re.compile(r"^last-(\d{8})\.json$")
_GENERATION_FILE = re.compile(r"^last-(\d{8})")


class _Named(Protocol):
    name: str


# --------------------------------------------------------------------------- names

def result_stem(split: str, checkpoint: str) -> str:
    """File stem of an evaluation: ``metrics`` for the run's own result (test split, selected
    checkpoint); ``metrics_<split>_<checkpoint>`` for every other pair, so that evaluating
    another checkpoint or split never overwrites the run's result."""
    if (split, checkpoint) == ("test", SELECTED):
        return RESULT_STEM
    return f"{RESULT_STEM}_{split}_{checkpoint}"


def overlays_file(split: str) -> str:
    """Name of the overlay picture of an evaluation on ``split``."""
    return f"overlays_{split}.png"


def best_name(phases: Sequence[_Named], phase: _Named) -> str:
    """Name of the best-by-validation checkpoint *within* ``phase`` (``best`` for one phase,
    ``best_<phase>`` for a method of several phases)."""
    return SELECTED if len(phases) == 1 else f"{SELECTED}_{phase.name}"


def weights_file(ckpt_dir: Path, stem: str) -> Path:
    """``CKPT_DIR/<stem>.safetensors``."""
    return ckpt_dir / f"{stem}{WEIGHTS_SUFFIX}"


# --------------------------------------------------------------------------- resumable generations

def generation_stem(step: int) -> str:
    """Stem of the resumable checkpoint saved after ``step`` iterations: ``last-<step:08d>``
    (weights ``<stem>.safetensors``, state ``<stem>_state.pt``, manifest ``<stem>.json``)."""
    return f"last-{step:08d}"


def generation_paths(ckpt_dir: Path, step: int) -> tuple[Path, Path, Path]:
    """(weights, state, manifest) of the resumable checkpoint saved after ``step``."""
    stem = generation_stem(step)
    return (weights_file(ckpt_dir, stem), ckpt_dir / f"{stem}{STATE_SUFFIX}",
            ckpt_dir / f"{stem}.json")


def state_of(weights: Path) -> Path:
    """The state file beside a generation's weights file."""
    return weights.with_name(weights.stem + STATE_SUFFIX)


def generation_step(name: str) -> int | None:
    """The step of a generation file's name (weights, state or manifest), or None."""
    match = _GENERATION_FILE.match(name)
    return int(match.group(1)) if match else None


def generation_files(ckpt_dir: Path) -> list[Path]:
    """Every file of every resumable generation in ``ckpt_dir`` (complete or not)."""
    return list(ckpt_dir.glob("last-*"))


def manifests(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """``(step, manifest path)`` of every resumable generation in ``ckpt_dir``, newest first
    (none for a missing folder)."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for path in ckpt_dir.iterdir():
        match = _MANIFEST.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def has_resumable(run_dir: Path) -> bool:
    """Whether the run folder holds a resumable checkpoint (a manifest; ``--resume`` verifies
    it and falls back to the previous one when it is damaged)."""
    return bool(manifests(run_dir / CKPT_DIR))


# --------------------------------------------------------------------------- best and last

def selected_checkpoint(run_dir: Path, phases: Sequence[_Named]) -> Path | None:
    """The checkpoint the run selected (``best``), or None when there is none.

    Runs written before ``best`` meant the selection over the whole run have only
    ``best_<phase>`` files for multi-phase methods: ``best`` is then the last phase's best."""
    ckpt_dir = run_dir / CKPT_DIR
    selected = weights_file(ckpt_dir, SELECTED)
    if selected.is_file():
        return selected
    path = weights_file(ckpt_dir, best_name(phases, phases[-1]))
    return path if path.is_file() else None


def checkpoint_path(run_dir: Path, which: str, phases: Sequence[_Named]) -> Path:
    """``best`` (the checkpoint the run selected, :func:`selected_checkpoint`), ``last``, or
    a file stem in ``checkpoints/``.

    Raises:
        SSMISError: no such checkpoint.
    """
    path = weights_file(run_dir / CKPT_DIR, which)
    if which == SELECTED and not path.is_file():
        path = weights_file(run_dir / CKPT_DIR, best_name(phases, phases[-1]))
    if not path.is_file():
        raise SSMISError(f"{path}: checkpoint not found (expected best or last in {CKPT_DIR}/)")
    return path


def phase_best(run_dir: Path, phase: str | None) -> Path:
    """``best_<phase>.safetensors`` when ``phase`` is given and it exists, else
    ``best.safetensors``.

    Raises:
        SSMISError: neither exists (the run never validated).
    """
    folder = run_dir / CKPT_DIR
    for stem in ([f"{SELECTED}_{phase}"] if phase else []) + [SELECTED]:
        path = weights_file(folder, stem)
        if path.is_file():
            return path
    raise SSMISError(f"{folder}: no best checkpoint (expected best.safetensors or "
                     f"best_<phase>.safetensors; did the run validate?)")


def resolve_checkpoint(path: Path) -> tuple[Path, Path]:
    """(run folder, checkpoint file) from a run folder or a ``.safetensors`` inside one.

    For a folder: ``best``, else (runs of ssmis < 0.2 with several phases have only
    ``best_<phase>``) the last ``best*`` by name, else ``last``.

    Raises:
        SSMISError: not a folder or checkpoint, the checkpoint is missing, or no
            ``config.yaml`` beside it.
    """
    path = Path(path)
    if path.is_dir():
        run_dir = path
        ckpts = run_dir / CKPT_DIR
        candidates = sorted(ckpts.glob(f"{SELECTED}*{WEIGHTS_SUFFIX}")) if ckpts.is_dir() else []
        plain = weights_file(ckpts, SELECTED)
        ckpt = plain if plain.is_file() else (candidates[-1] if candidates else
                                              ckpts / LAST_LINK)
    elif path.is_file() and path.suffix == WEIGHTS_SUFFIX:
        ckpt = path
        run_dir = path.parent.parent if path.parent.name == CKPT_DIR else path.parent
    else:
        raise SSMISError(f"{path}: expected a run folder or a .safetensors checkpoint")
    if not ckpt.is_file():
        raise SSMISError(f"{ckpt}: checkpoint not found")
    if not (run_dir / CONFIG_FILE).is_file():
        raise SSMISError(f"{run_dir / CONFIG_FILE}: run config not found beside the checkpoint")
    return run_dir, ckpt


# --------------------------------------------------------------------------- creation

def new_run_dir(cfg: ExperimentConfig, requested: Path | None) -> Path:
    """A fresh folder, created here (so two runs started in the same second get two folders):
    ``requested``, else ``<output_dir>/<name>/<date-time>-seed<seed>[-n]``.

    Raises:
        SSMISError: ``requested`` is a file or a non-empty folder (nothing gets overwritten),
            or the folder cannot be created.
    """
    if requested is not None:
        if requested.exists() and not requested.is_dir():
            raise SSMISError(f"{requested}: --run-dir is a file, expected a folder")
        if requested.exists() and has_run_files(requested):
            raise SSMISError(f"{requested}: run folder exists and is not empty "
                             "(use --resume to continue it, or choose another --run-dir)")
        _mkdir(requested)
        return requested
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = cfg.output_dir / cfg.name / f"{stamp}-seed{cfg.seed}"
    _mkdir(base.parent)
    path, n = base, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            path, n = base.with_name(f"{base.name}-{n}"), n + 1
        except OSError as err:
            raise SSMISError(f"{path}: cannot create the run folder ({err.strerror})") from None


def has_run_files(folder: Path) -> bool:
    """Whether ``folder`` holds anything but the run lock."""
    return any(p.name != LOCK_FILE for p in folder.iterdir())


def clear_run_files(folder: Path) -> None:
    """Delete everything in ``folder`` but the run lock (a run killed before its first
    checkpoint, started again in the same folder)."""
    import shutil

    for entry in folder.iterdir():
        if entry.name != LOCK_FILE:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SSMISError(f"{path}: cannot create the folder ({err.strerror})") from None
