"""Learning-rate schedules of the SSMIS literature (constant, poly, step)."""

from __future__ import annotations

from ssmis.config import ScheduleConfig


def learning_rate(base_lr: float, step: int, total: int, schedule: ScheduleConfig) -> float:
    """lr for iteration ``step`` (0-based) of ``total``.

    poly is SSL4MIS's ``lr0 * (1 - t / T) ** 0.9``; step is BCP/CML's ``lr0 * 0.1 ** (t // 2500)``.
    """
    if schedule.kind == "constant":
        return base_lr
    if schedule.kind == "poly":
        return base_lr * (1.0 - step / max(total, 1)) ** schedule.power
    return base_lr * schedule.gamma ** (step // schedule.step_size)
