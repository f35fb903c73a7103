"""Weight schedules of the mean-teacher family (Laine & Aila 2017, as copied by SSL4MIS/UA-MT).

The SSL4MIS convention: a consistency weight ``w * sigmoid_rampup(iter // 150, rampup)``, where
the "epoch" fed to the ramp is the iteration divided by a constant 150 (not the real number of
iterations per epoch). :func:`ramped_weight` packages that convention with both numbers exposed.
"""

from __future__ import annotations

import math


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


def cosine_rampdown(current: float, rampdown_length: float) -> float:
    """0.5 (cos(pi t / L) + 1) for t in [0, L] (Loshchilov & Hutter)."""
    t = min(max(float(current), 0.0), float(rampdown_length))
    return float(0.5 * (math.cos(math.pi * t / rampdown_length) + 1.0))


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
