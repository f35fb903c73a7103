"""Registry of methods by name. A new method is one module plus one line in ``_BUILTIN``."""

from __future__ import annotations

from typing import Any

from ssmis.errors import SSMISError
from ssmis.methods.alhvr import ALHVR
from ssmis.methods.base import Batch, Method, MethodParams, Phase, UnsupervisedTerm
from ssmis.methods.bcp import BCP
from ssmis.methods.cml import CML
from ssmis.methods.cps import CPS
from ssmis.methods.cvbm import CVBM
from ssmis.methods.mean_teacher import MeanTeacher
from ssmis.methods.supervised import Supervised
from ssmis.methods.synfoc import SynFoC
from ssmis.methods.uamt import UAMT

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Add a method class under its ``name`` (usable as a decorator by plug-ins)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    METHODS[cls.name] = cls
    return cls


_BUILTIN: tuple[type[Method], ...] = (Supervised, MeanTeacher, UAMT, BCP, CVBM, CPS, CML,
                                      ALHVR, SynFoC)
for _cls in _BUILTIN:
    register(_cls)


def get_method(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        valid = ", ".join(sorted(METHODS))
        raise SSMISError(
            f"method.name: unknown method '{name}'; expected one of: {valid}"
        ) from None


def declared_params(cfg) -> dict[str, Any]:
    """``cfg.method.params`` with every default of the method filled in, as JSON values
    (percentages of the run kept as written): what a run's config.yaml records. Raises
    SSMISError for an unknown method or invalid params."""
    return get_method(cfg.method.name).parse_params(cfg.method.params).model_dump(mode="json")


def build_method(cfg) -> Method:
    return get_method(cfg.method.name)(cfg)


__all__ = ["METHODS", "Batch", "Method", "MethodParams", "Phase", "UnsupervisedTerm",
           "build_method", "declared_params", "get_method", "register"]
