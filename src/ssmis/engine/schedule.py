"""Learning-rate schedules of the SSMIS literature (constant, poly, step)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Restart:
    """A point where a resumed run's poly schedule continues (``segments.json``): from ``lr``
    at global iteration ``step``, decaying to 0 at global iteration ``end`` (its phase's end)."""

    step: int
    lr: float
    end: int


def phase_lr(base_lr: float, step: int, start: int, length: int, schedule: ScheduleConfig,
             restarts: Sequence[Restart] = ()) -> float:
    """lr for global iteration ``step`` of the phase that starts at ``start`` and lasts
    ``length`` iterations (the schedule restarts at each phase).

    Without a restart in this phase at or before ``step`` it is :func:`learning_rate` of the
    step within the phase. A poly schedule with one (a resume changed ``train.iterations`` or
    ``train.lr`` inside the phase) continues from the latest: ``r.lr * (1 - (step - r.step) /
    (r.end - r.step)) ** power``, so the lr is continuous at the resume point and reaches 0 at
    the phase's (new) end. constant and step schedules do not depend on the length."""
    if schedule.kind == "poly":
        own = [r for r in restarts if start <= r.step <= step]
        if own:  # the latest point; of several at one step, the last recorded
            r = max(reversed(own), key=lambda x: x.step)
            left = max(r.end - r.step, 1)
            return r.lr * max(1.0 - (step - r.step) / left, 0.0) ** schedule.power
    return learning_rate(base_lr, step - start, length, schedule)
