"""What ``ssmis train --resume RUN key=value ...`` may change, and the run's history.

Rules per override (README, "Resume"):

* :data:`FREE` fields (validation interval, logging, threads, device, speed switches) change how
  the run is carried out, not what it trains: applied silently.
* ``train.iterations`` and ``train.lr`` are applied by a stated rule. Method parameters given
  as shares of the run (``pretrain_iterations: 20%``) keep their value for the iterations the
  run started with (written as absolute numbers in ``config.yaml``), so no phase boundary or ramp
  moves; the extension goes to the last phase. A poly schedule continues from the lr reached at
  the resume point, decaying to 0 at its phase's new end (:func:`ssmis.engine.schedule.phase_lr`);
  a new ``train.lr`` scales that lr by new / old. One warning line gives the lr before/after.
* every other field (data, model, method, seed, batch sizes, optimizer, schedule kind, AMP,
  validation cases and selection ...) would make another run: refused in one line naming it.

The run folder keeps the history in ``segments.json`` (:data:`SEGMENTS_FILE`): one entry per
training session with its start and end iteration, the overrides given, the changes applied
and the lr rule; the poly restarts it lists are what the trainer schedules by.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssmis.atomic import write_json
from ssmis.config import ExperimentConfig, apply_overrides, check_paths, read_yaml, validate_config
from ssmis.engine.runfolder import CONFIG_FILE, SEGMENTS_FILE
from ssmis.engine.schedule import Restart
from ssmis.errors import SSMISError

#: fields a resume may change without changing what the run trains
FREE = frozenset({
    "name", "output_dir", "train.val_every", "train.log_every", "train.checkpoint_minutes",
    "train.threads", "train.device", "train.deterministic", "train.compile",
    "train.channels_last", "train.foreach", "eval.slice_batch_size", "eval.window_batch_size",
    "eval.overlay_cases"})
#: fields a resume applies by the rule above (warning with the lr before/after)
RULED = ("train.iterations", "train.lr")


@dataclass
class ResumePlan:
    """A checked resume: the config to train with and what changed against ``config.yaml``."""

    #: the config the resumed run trains with (shares of the run frozen when extended)
    cfg: ExperimentConfig
    #: ``config.yaml`` as saved
    stored: ExperimentConfig
    overrides: list[str]
    #: field -> (before, after) for every changed field (FREE and RULED)
    changes: dict[str, tuple[Any, Any]]
    #: ``method.params.<name>`` -> (as written, value kept) for shares frozen by an extension
    frozen: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    #: the entries of ``segments.json`` (empty for runs written before it existed)
    segments: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ruled(self) -> dict[str, tuple[Any, Any]]:
        """The changes applied by rule (``train.iterations``, ``train.lr``)."""
        return {k: v for k, v in self.changes.items() if k in RULED}


def flat_fields(cfg: ExperimentConfig) -> dict[str, Any]:
    """``{'train.lr': 0.01, 'method.params.pretrain_iterations': '20%', ...}``: every leaf of
    the config (lists are leaves; an empty mapping has none)."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            out[prefix] = node

    walk(cfg.model_dump(mode="json"), "")
    return out


def changed_fields(before: ExperimentConfig, after: ExperimentConfig
                   ) -> dict[str, tuple[Any, Any]]:
    """Every config leaf whose value differs: field -> (before, after); None for absent."""
    a, b = flat_fields(before), flat_fields(after)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def plan_resume(run_dir: Path, overrides: list[str]) -> ResumePlan:
    """Check the overrides of a resume against the run's ``config.yaml`` (nothing written).

    Raises:
        SSMISError: no run folder, a bad override, or an override of a field a resume may
            not change (one line naming the field, the values and what a resume allows).
    """
    if not run_dir.is_dir():
        raise SSMISError(f"{run_dir}: run folder not found")
    source = str(run_dir / CONFIG_FILE)
    raw = read_yaml(run_dir / CONFIG_FILE)
    stored = validate_config(copy.deepcopy(raw), source=source)
    new_raw = apply_overrides(copy.deepcopy(raw), overrides)
    cfg = validate_config(new_raw, source=source)
    changes = changed_fields(stored, cfg)
    for name, (old, new) in changes.items():
        if name not in FREE and name not in RULED:
            raise SSMISError(
                f"{name}: cannot change when resuming {run_dir} ({old!r} -> {new!r}): it would "
                f"make another run; start a new one (--resume applies {', '.join(RULED)} by "
                "rule, and settings that do not change the training)")
    frozen: dict[str, tuple[Any, Any]] = {}
    if "train.iterations" in changes:
        cfg, frozen = _freeze_shares(new_raw, stored, source)
    check_paths(cfg)
    return ResumePlan(cfg, stored, list(overrides), changes, frozen, read_segments(run_dir))


def _freeze_shares(new_raw: dict[str, Any], stored: ExperimentConfig, source: str
                   ) -> tuple[ExperimentConfig, dict[str, tuple[Any, Any]]]:
    """The resumed config with every ``method.params`` value that depends on the run's length
    (a share ``"20%"``, or a null default that a method resolves from ``train.iterations``,
    such as the published pre-training share) replaced by its value for the iterations the run
    was started with, and the fields so frozen."""
    from ssmis.methods import get_method

    cls = get_method(stored.method.name)
    declared = cls.parse_params(stored.method.params, source)
    resolved = cls.run_params(stored, declared)
    frozen = {f"method.params.{name}": (getattr(declared, name), getattr(resolved, name))
              for name in type(declared).model_fields
              if getattr(declared, name) != getattr(resolved, name)}
    if not frozen:
        return validate_config(new_raw, source=source), {}
    params = new_raw.setdefault("method", {}).setdefault("params", {}) or {}
    new_raw["method"]["params"] = params
    for name, (_, value) in frozen.items():
        params[name.rsplit(".", 1)[1]] = value
    return validate_config(new_raw, source=source), frozen


def read_segments(run_dir: Path) -> list[dict[str, Any]]:
    """The entries of the run's ``segments.json``; [] when absent (runs written before it).

    Raises:
        SSMISError: the file exists but is not the JSON this module writes."""
    path = run_dir / SEGMENTS_FILE
    if not path.is_file():
        return []
    try:
        segments = json.loads(path.read_text())["segments"]
        if not isinstance(segments, list):
            raise TypeError
        for seg in segments:
            int(seg["start"])
    except (OSError, ValueError, KeyError, TypeError):
        raise SSMISError(f"{path}: damaged run history (expected {{'segments': [{{'start': "
                         "..., ...}]}} as written by ssmis train)") from None
    return segments


def write_segments(run_dir: Path, segments: list[dict[str, Any]]) -> None:
    """Write ``segments.json`` (one entry per training session)."""
    write_json(run_dir / SEGMENTS_FILE, {"segments": segments})


def restarts(segments: list[dict[str, Any]]) -> list[Restart]:
    """The poly restarts recorded in ``segments`` (``lr_restart`` entries)."""
    return [Restart(int(r["step"]), float(r["lr"]), int(r["end"]))
            for seg in segments if (r := seg.get("lr_restart"))]
