"""One optimisation step and what the loop needs around it: the step itself
(:func:`optimization_step`), the stop request of SIGINT/SIGTERM, the logged window means and
the batch's move to the device."""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import torch

from ssmis.engine.fast import batch_to_device
from ssmis.engine.runlog import (
    LOGGER_NAME,
)


class StopRequest:
    """SIGINT/SIGTERM during training: remember the signal so the loop can save a resumable
    checkpoint at the end of the current iteration and stop. A second signal acts at once (the
    default handlers are back after the first)."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is signal.SIG_IGN:
                    continue  # nohup / a background job: the caller chose to ignore it
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: signals stay with the caller
            self.restore()

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        self.restore()
        logging.getLogger(LOGGER_NAME).warning(
            f"{signal.Signals(signum).name} received (pid {os.getpid()}): saving a checkpoint "
            "after this iteration; send it again to stop at once")

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def optimization_step(method: Any, optimizer: torch.optim.Optimizer, labeled: dict[str, Any],
                      unlabeled: dict[str, Any] | None, step: int,
                      amp: bool) -> dict[str, torch.Tensor]:
    """One training iteration: the method's losses (bf16 autocast when ``amp``), backward, the
    optimizer step and the method's end-of-step hook (EMA). The benchmarks time this too.
    ``method``: the method, or under DDP its :class:`~ssmis.engine.distributed.DDPStep`."""
    with torch.autocast(labeled["image"].device.type, dtype=torch.bfloat16, enabled=amp):
        losses = method.training_step(labeled, unlabeled, step)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    optimizer.step()
    method.on_step_end(step)
    return losses


def window_means(window: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Mean of each logged value over the steps that reported it (keys change between phases)."""
    keys = window[-1].keys()
    return {k: torch.stack([w[k].float() for w in window if k in w]).mean().item() for k in keys}


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return batch_to_device(batch, device)
