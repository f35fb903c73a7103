"""Weight schedules of the mean-teacher family (Laine & Aila 2017, as copied by SSL4MIS/UA-MT).

The SSL4MIS convention: a consistency weight ``w * sigmoid_rampup(iter // 150, rampup)``, where
the "epoch" fed to the ramp is the iteration divided by a constant 150 (not the real number of
iterations per epoch). :func:`ramped_weight` packages that convention with both numbers exposed.

Run shares: the published ramps and phase lengths are absolute (SSL4MIS ramps over 200 x 150 =
30,000 iterations; a 600-iteration run never reaches 2 % of the weight). Method parameters marked
with :func:`run_share` also take a percentage of ``train.iterations`` (``"40%"``), which
:func:`resolve_run_shares` turns into the absolute value when the method is built.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BaseModel, PlainValidator
from pydantic_core import PydanticCustomError


def sigmoid_rampup(current: float, rampup_length: float) -> float:
    """exp(-5 (1 - t/L)^2) with t clipped to [0, L]; 1.0 when L == 0 (SSL4MIS ``ramps``)."""
    if rampup_length == 0:
        return 1.0
    t = min(max(float(current), 0.0), float(rampup_length))
    phase = 1.0 - t / rampup_length
    return float(math.exp(-5.0 * phase * phase))


def linear_rampup(current: float, rampup_length: float) -> float:
    """t/L clipped to [0, 1]; 1.0 when L == 0."""
    if rampup_length == 0:
        return 1.0
    return min(max(float(current) / rampup_length, 0.0), 1.0)


def ramped_weight(
    step: int, weight: float, rampup: float, iters_per_epoch: int = 150, kind: str = "sigmoid"
) -> float:
    """``weight * ramp(step // iters_per_epoch, rampup)``: SSL4MIS's get_current_consistency_weight.

    ``step`` is the iteration counter the original script uses (0-based, before the increment);
    ``iters_per_epoch`` is SSL4MIS's hard-coded 150.
    """
    epoch = step // max(int(iters_per_epoch), 1)
    if kind == "sigmoid":
        return weight * sigmoid_rampup(epoch, rampup)
    if kind == "linear":
        return weight * linear_rampup(epoch, rampup)
    raise ValueError(f"unknown ramp kind {kind!r}; expected 'sigmoid' or 'linear'")


_SHARE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*%\s*$")


def share_fraction(value: Any) -> float | None:
    """``"40%"`` -> 0.4; None for anything that is not a percentage string."""
    if not isinstance(value, str):
        return None
    match = _SHARE.match(value)
    return float(match.group(1)) / 100.0 if match else None


def _check_share(value: str) -> str:
    fraction = share_fraction(value)
    if fraction is None or fraction > 1.0:
        raise PydanticCustomError("run_share", "expected a percentage of train.iterations "
                                  "between 0% and 100% (e.g. '40%')")
    return value.strip()


def _share_or_number(kind: type, minimum: float) -> Any:
    """A field type: a number ``>= minimum`` of type ``kind`` or a percentage string."""

    def check(value: Any) -> Any:
        if isinstance(value, str) and "%" in value:
            return _check_share(value)
        expected = PydanticCustomError(
            "run_share", f"expected {'an integer' if kind is int else 'a number'} >= "
            f"{minimum:g} or a percentage of train.iterations (e.g. '40%')")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise expected from None
        if isinstance(value, bool) or not math.isfinite(number) or number < minimum or (
                kind is int and not number.is_integer()):
            raise expected
        return kind(number)

    return Annotated[kind | str, PlainValidator(check)]


#: ``method.params`` types that take a percentage of ``train.iterations`` (``"40%"``) or a
#: number: a float >= 0, an integer >= 0, an integer >= 1.
ShareOrFloat = _share_or_number(float, 0)
ShareOrInt = _share_or_number(int, 0)
ShareOrPositiveInt = _share_or_number(int, 1)


def run_share(unit: str) -> dict[str, str]:
    """``json_schema_extra`` of a parameter that accepts a percentage (:data:`ShareOrFloat`,
    ...). ``unit``: ``"iterations"`` (a length in iterations: the share is rounded to whole
    iterations) or ``"epochs"`` (an SSL4MIS ramp length in 'epochs' of
    ``rampup_iters_per_epoch`` iterations: the share becomes a ramp over that many
    iterations, one 'epoch' per iteration, so that it rises smoothly even in a short run)."""
    if unit not in ("iterations", "epochs"):
        raise ValueError(f"unknown run share unit {unit!r}")
    return {"run_share": unit}


def resolve_run_shares(params: BaseModel, iterations: int) -> BaseModel:
    """A copy of ``params`` with every percentage (``"40%"``) replaced by its absolute
    value for a run of ``iterations`` (see :func:`run_share` for the units); values given as
    numbers are kept. ``params`` itself is left as the user wrote it (for ``config.yaml``)."""
    updates: dict[str, Any] = {}
    for name, field in type(params).model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        fraction = share_fraction(getattr(params, name))
        if fraction is None or "run_share" not in extra:
            continue
        length = fraction * iterations
        if extra["run_share"] == "iterations":
            updates[name] = int(round(length))
        else:
            updates[name] = length
            updates["rampup_iters_per_epoch"] = 1
    return params.model_copy(update=updates) if updates else params
