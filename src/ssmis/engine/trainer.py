"""The training loop: iterations, optimizer and schedule, validation, checkpoints, resume.

Everything that can fail on the user's input (config, split, data files, method options) is
checked in :func:`prepare` before the run folder is created, so a failed start writes nothing.
A run resumed from its last checkpoint continues the same data stream and random state, so it
ends with the same weights as an uninterrupted run (on the CPU; GPU kernels may differ).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from ssmis.config import ExperimentConfig, to_yaml
from ssmis.data.splits import Split
from ssmis.engine.checkpoint import load_state, load_weights, save_state, save_weights
from ssmis.engine.data import build_split, check_data, eval_cases, train_batches
from ssmis.engine.evaluate import validation_dice
from ssmis.engine.runlog import (
    LOGGER_NAME,
    JsonlWriter,
    Progress,
    TensorBoard,
    truncate_jsonl,
)
from ssmis.engine.schedule import learning_rate
from ssmis.engine.seed import capture_rng_state, restore_rng_state, seed_everything
from ssmis.errors import SSMISError
from ssmis.methods import Method, Phase, build_method

CONFIG_FILE = "config.yaml"
SPLIT_FILE = "splits.json"
CKPT_DIR = "checkpoints"


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SSMISError("train.device: 'cuda' requested but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def best_name(phases: list[Phase], phase: Phase) -> str:
    return "best" if len(phases) == 1 else f"best_{phase.name}"


def new_run_dir(cfg: ExperimentConfig, requested: Path | None) -> Path:
    """A fresh folder; an existing non-empty one is refused so nothing gets overwritten."""
    if requested is not None:
        if requested.exists() and any(requested.iterdir()):
            raise SSMISError(f"{requested}: run folder exists and is not empty "
                             "(use --resume to continue it, or choose another --run-dir)")
        return requested
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = cfg.output_dir / cfg.name / f"{stamp}-seed{cfg.seed}"
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


@dataclass
class Prepared:
    """What :func:`prepare` validated: everything a run needs before touching the disk."""

    cfg: ExperimentConfig
    split: Split
    method: Method
    device: torch.device


def prepare(cfg: ExperimentConfig, split: Split | None = None) -> Prepared:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.seed, cfg.train.deterministic)
    split = split or build_split(cfg)
    method = build_method(cfg)
    if method.uses_unlabeled and cfg.train.unlabeled_batch_size == 0:
        raise SSMISError(f"train.unlabeled_batch_size: method '{cfg.method.name}' trains on "
                         "unlabeled samples; expected a value >= 1")
    check_data(cfg, split, need_unlabeled=method.uses_unlabeled)
    return Prepared(cfg, split, method.to(device), device)


class Trainer:
    """Runs the phases of a method and keeps best-by-validation and last checkpoints."""

    def __init__(self, prepared: Prepared, run_dir: Path) -> None:
        self.cfg = prepared.cfg
        self.split = prepared.split
        self.method = prepared.method
        self.device = prepared.device
        self.run_dir = run_dir
        self.ckpt_dir = run_dir / CKPT_DIR
        self.phases = self.method.phases()
        self.total = sum(p.iterations for p in self.phases)
        self.log = logging.getLogger(LOGGER_NAME)
        self.step = 0
        self.best: dict[str, float] = {}
        self.best_iter: dict[str, int] = {}
        self.timing: dict[str, float] = {}
        self.optimizer = self._make_optimizer()
        self.unlabeled_bs = self.cfg.train.unlabeled_batch_size if self.method.uses_unlabeled else 0

    # -- set-up -----------------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        t = self.cfg.train
        own = self.method.make_optimizer(t)
        if own is not None:
            return own
        return torch.optim.SGD(list(self.method.trainable_parameters()), lr=t.lr,
                               momentum=t.momentum, weight_decay=t.weight_decay,
                               nesterov=t.nesterov)

    def write_start_files(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / CONFIG_FILE).write_text(to_yaml(self.cfg))
        self.split.save(self.run_dir / SPLIT_FILE)

    def phase_at(self, step: int) -> tuple[Phase, int]:
        """The phase that iteration ``step`` belongs to and the step within it."""
        start = 0
        for phase in self.phases:
            if step < start + phase.iterations:
                return phase, step - start
            start += phase.iterations
        return self.phases[-1], self.phases[-1].iterations

    # -- checkpoints ------------------------------------------------------------------------
    def _metadata(self) -> dict[str, str]:
        return {"step": str(self.step), "method": self.cfg.method.name,
                "model": self.cfg.model.name, "format": "ssmis-1"}

    def save_last(self, rng: dict[str, Any]) -> None:
        save_weights(self.ckpt_dir / "last.safetensors", self.method.state_dict(),
                     self._metadata())
        save_state(self.ckpt_dir / "last_state.pt", {
            "step": self.step, "optimizer": self.optimizer.state_dict(), "rng": rng,
            "best": dict(self.best), "best_iter": dict(self.best_iter),
        })

    def load_last(self) -> dict[str, Any]:
        state = load_state(self.ckpt_dir / "last_state.pt")
        weights = load_weights(self.ckpt_dir / "last.safetensors")
        self.method.load_state_dict(weights)
        self.step = int(state["step"])
        phase, _ = self.phase_at(self.step)
        if not (phase.reset_optimizer and self._phase_start(phase) == self.step):
            self.optimizer.load_state_dict(state["optimizer"])
        self.best = dict(state["best"])
        self.best_iter = {k: int(v) for k, v in state["best_iter"].items()}
        truncate_jsonl(self.run_dir / "scalars.jsonl", self.step)
        truncate_jsonl(self.run_dir / "val.jsonl", self.step)
        return state["rng"]

    def _phase_start(self, phase: Phase) -> int:
        start = 0
        for p in self.phases:
            if p is phase:
                return start
            start += p.iterations
        return start

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, Any]:
        cfg = self.cfg
        rng = self.load_last() if resume else None
        if self.step >= self.total:
            self.log.info(f"run already finished ({self.step}/{self.total} iterations)")
            return self.summary()
        batches = train_batches(cfg, self.split, self.unlabeled_bs, start_batch=self.step)
        first_step = self.step
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        if rng is not None:
            restore_rng_state(rng)  # after the loader drew its base seed, as in a fresh run
        scalars = JsonlWriter(self.run_dir / "scalars.jsonl")
        val_log = JsonlWriter(self.run_dir / "val.jsonl")
        tboard = TensorBoard(self.run_dir / "tensorboard")
        progress = Progress(self.total, self.step, desc=f"{cfg.method.name}")
        amp = cfg.train.amp and self.device.type == "cuda"
        self.log.info(f"training {cfg.method.name} / {cfg.model.name} on {self.device} for "
                      f"{self.total} iterations (from {self.step}); run folder {self.run_dir}")
        self.method.train()
        # Step losses stay on the device until a log or validation boundary: one host sync per
        # interval instead of one per iteration.
        window: list[dict[str, torch.Tensor]] = []
        shown_loss = float("nan")
        t_start = time.perf_counter()
        try:
            while self.step < self.total:
                phase, local = self.phase_at(self.step)
                if local == 0 and self.step > 0:
                    self._start_phase(phase)
                lr = learning_rate(cfg.train.lr, local, phase.iterations, cfg.train.schedule)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                labeled, unlabeled = next(batches)
                labeled = _to_device(labeled, self.device)
                unlabeled = _to_device(unlabeled, self.device) if unlabeled else None
                losses = optimization_step(self.method, self.optimizer, labeled, unlabeled,
                                           self.step, amp)
                self.step += 1
                window.append({k: v.detach() for k, v in losses.items()})
                end_of_phase = local + 1 == phase.iterations
                log_now = self.step % cfg.train.log_every == 0 or self.step == self.total
                validate_now = self.step % cfg.train.val_every == 0 or end_of_phase
                if log_now or validate_now:
                    means = _window_means(window)
                    if not math.isfinite(means["loss"]):
                        raise SSMISError(f"training diverged: mean loss is {means['loss']} over "
                                         f"iterations {self.step - len(window) + 1}-{self.step} "
                                         "(lower train.lr?)")
                    shown_loss = means["loss"]
                rate = progress.update(self.step, shown_loss, lr, fresh=log_now or validate_now)
                if log_now:
                    row = {"iter": self.step, "phase": phase.name, **means, "lr": lr, "it_s": rate}
                    scalars.write(row)
                    tboard.write(self.step, {k: v for k, v in row.items()
                                             if isinstance(v, float)})
                    window = []
                if validate_now:
                    self._validate(phase, val_log, tboard)
                    self.save_last(capture_rng_state())
        finally:
            progress.close()
            scalars.close()
            val_log.close()
            tboard.close()
        elapsed = time.perf_counter() - t_start
        self.timing = {"wall_s": round(elapsed, 1),
                       "s_per_iteration": round(elapsed / max(self.step - first_step, 1), 4)}
        if self.device.type == "cuda":
            self.timing["peak_gpu_memory_gib"] = round(
                torch.cuda.max_memory_allocated(self.device) / 2**30, 2)
        self.log.info(f"finished {self.total} iterations in {elapsed:.1f} s"
                      + (f", peak GPU memory {self.timing['peak_gpu_memory_gib']} GiB"
                         if "peak_gpu_memory_gib" in self.timing else ""))
        return self.summary()

    def _start_phase(self, phase: Phase) -> None:
        """Phase boundary: optionally restart from the previous phase's best weights."""
        if phase.init_from_best:
            previous = self.phases[self.phases.index(phase) - 1]
            path = self.ckpt_dir / f"{best_name(self.phases, previous)}.safetensors"
            if path.is_file():
                self.method.load_state_dict(load_weights(path))
                self.log.info(f"phase {phase.name}: starting from {path.name}")
        self.method.on_phase_start(phase)
        if phase.reset_optimizer:
            self.optimizer = self._make_optimizer()

    def _validate(self, phase: Phase, val_log: JsonlWriter, tboard: TensorBoard) -> None:
        cfg = self.cfg
        ids = self.split.val[: cfg.eval.val_max_cases] if cfg.eval.val_max_cases else self.split.val
        t0 = time.perf_counter()
        amp = cfg.train.amp and self.device.type == "cuda"
        extra: dict[str, Any] = {}
        candidates = self.method.predictor_candidates()
        if candidates:  # score every candidate predictor, keep the best (saved with the weights)
            scores = {}
            for name in candidates:
                self.method.set_predictor(name)
                scores[name] = validation_dice(self.method, eval_cases(cfg, ids), cfg,
                                               self.device, amp)
            choice = max(candidates, key=lambda n: scores[n])
            self.method.set_predictor(choice)
            score = scores[choice]
            extra = {"predictor": choice, **{f"val_dice_{n}": v for n, v in scores.items()}}
        else:
            score = validation_dice(self.method, eval_cases(cfg, ids), cfg, self.device, amp)
        key = best_name(self.phases, phase)
        improved = score > self.best.get(key, float("-inf"))
        if improved:
            self.best[key] = score
            self.best_iter[key] = self.step
            save_weights(self.ckpt_dir / f"{key}.safetensors", self.method.state_dict(),
                         self._metadata())
        val_log.write({"iter": self.step, "phase": phase.name, "val_dice": score,
                       "best": improved, **extra})
        tboard.write(self.step, {"val_dice": score})
        self.log.info(f"iter {self.step}: val Dice {score:.4f} "
                      f"(best {self.best[key]:.4f} at {self.best_iter[key]}) "
                      f"{'[' + extra['predictor'] + '] ' if extra else ''}"
                      f"[{time.perf_counter() - t0:.1f} s]")

    def summary(self) -> dict[str, Any]:
        final = best_name(self.phases, self.phases[-1])
        info = {"iterations": self.step, "best_val_dice": self.best.get(final),
                "best_iteration": self.best_iter.get(final), "best_checkpoint": final}
        if self.timing:  # this session's iterations; validation and checkpoints included
            info["timing"] = self.timing
        (self.run_dir / "train_summary.json").write_text(json.dumps(info, indent=2) + "\n")
        return info


def optimization_step(method: Any, optimizer: torch.optim.Optimizer, labeled: dict[str, Any],
                      unlabeled: dict[str, Any] | None, step: int,
                      amp: bool) -> dict[str, torch.Tensor]:
    """One training iteration: the method's losses (bf16 autocast when ``amp``), backward, the
    optimizer step and the method's end-of-step hook (EMA). The benchmarks time this too."""
    with torch.autocast(labeled["image"].device.type, dtype=torch.bfloat16, enabled=amp):
        losses = method.training_step(labeled, unlabeled, step)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    optimizer.step()
    method.on_step_end(step)
    return losses


def _window_means(window: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Mean of each logged value over the steps that reported it (keys change between phases)."""
    keys = window[-1].keys()
    return {k: torch.stack([w[k].float() for w in window if k in w]).mean().item() for k in keys}


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v
            for k, v in batch.items()}
