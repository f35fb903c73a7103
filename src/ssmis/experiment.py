"""An experiment file as a run takes it: the YAML read, overridden and validated
(:mod:`ssmis.config`), then checked against the method and model registries, so that every
error names the file before anything is built or written.

This module sits above both :mod:`ssmis.config` and :mod:`ssmis.methods`: the config schema
never imports the registries that read it.
"""

from __future__ import annotations

from pathlib import Path

from ssmis.config import (
    ExperimentConfig,
    apply_overrides,
    check_paths,
    read_yaml,
    validate_config,
)
from ssmis.errors import SSMISError
from ssmis.methods import get_method
from ssmis.methods.teacher import frozen_teacher_problem
from ssmis.models import input_problem


def load_config(path: Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment file, apply overrides, validate, and check the data paths exist."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    cfg = validate_config(raw, source=str(path))
    check_method(cfg, source=str(path))
    problem = frozen_teacher_problem(get_method(cfg.method.name).parse_params(cfg.method.params))
    if problem is not None:
        raise SSMISError(f"{path}: {problem}")
    check_paths(cfg)
    return cfg


def check_method(cfg: ExperimentConfig, source: str) -> None:
    """Validate ``method.name`` and ``method.params`` now, and the batch sizes and patch against
    the method's and the model's rules, so that their errors name the file (the method itself
    is built later, after the data are checked).

    Raises:
        SSMISError: one line naming ``source`` and the field.
    """
    try:
        method = get_method(cfg.method.name)
    except SSMISError as err:
        raise SSMISError(f"{source}: {err}") from None
    method.parse_params(cfg.method.params, source)
    t = cfg.train
    if method.uses_unlabeled and t.unlabeled_batch_size == 0:
        raise SSMISError(f"{source}: train.unlabeled_batch_size: method '{cfg.method.name}' "
                         "trains on unlabeled samples; expected a value >= 1")
    unlabeled = t.unlabeled_batch_size if method.uses_unlabeled else 0
    problem = method.batch_problem(t.batch_size, unlabeled) if method.uses_unlabeled else None
    if problem is None:
        problem = input_problem(cfg.model.name, cfg.model.options, cfg.data.patch_size,
                                method.forward_batch(t.batch_size, unlabeled))
    if problem is not None:
        raise SSMISError(f"{source}: {problem}")


