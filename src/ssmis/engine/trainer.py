"""The training loop: iterations, optimizer and schedule, validation, checkpoints, resume.

Everything that can fail on the user's input (config, split, data files, method options) is
checked by :func:`ssmis.engine.prepare.prepare` before the run folder is created, so a failed
start writes nothing. Validation and selection (:mod:`ssmis.engine.selection`) and the resume
side (:mod:`ssmis.engine.session`) are mixins of :class:`Trainer`; one optimisation step is
:func:`ssmis.engine.step.optimization_step`.
A run resumed from its last checkpoint continues the same data stream and random state, so it
ends with the same weights as an uninterrupted run (on the CPU; GPU kernels may differ).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ssmis.atomic import write_text
from ssmis.config import to_yaml
from ssmis.data.datasets import EvalCase
from ssmis.engine import distributed as dist
from ssmis.engine.checkpoint import (
    load_into,
    non_finite_tensor,
    save_resumable,
)
from ssmis.engine.data import (
    build_layout,
    train_batches,
)
from ssmis.engine.fast import batch_to_device
from ssmis.engine.prepare import Prepared
from ssmis.engine.resume import ResumePlan, restarts, write_segments
from ssmis.engine.runfolder import (
    CKPT_DIR,
    CONFIG_FILE,
    SCALARS_FILE,
    SPLIT_FILE,
    TENSORBOARD_DIR,
    VAL_FILE,
    best_name,
    weights_file,
)
from ssmis.engine.runlog import (
    LOGGER_NAME,
    JsonlWriter,
    Progress,
    TensorBoard,
)
from ssmis.engine.schedule import Restart, phase_lr
from ssmis.engine.seed import capture_rng_state, restore_rng_state, seed_everything
from ssmis.engine.selection import ValidationMixin
from ssmis.engine.session import ResumeMixin
from ssmis.engine.step import StopRequest, optimization_step, window_means
from ssmis.errors import RunInterrupted, SSMISError
from ssmis.methods import Phase
from ssmis.ramps import share_fraction


class Trainer(ResumeMixin, ValidationMixin):
    """Runs the phases of a method and keeps best-by-validation and resumable checkpoints.

    Model selection (``eval.selection``): ``best_overall`` (default) keeps as ``best`` the
    checkpoint with the highest validation Dice over the whole run, pre-training included;
    ``last_phase`` keeps the best of the last phase only, as BCP's, CVBM's and CML's scripts do.
    Ties keep the earliest checkpoint and are reported.
    """

    def __init__(self, prepared: Prepared, run_dir: Path,
                 plan: ResumePlan | None = None) -> None:
        self.cfg = prepared.cfg
        #: the checked overrides of a resume (``--resume``), applied once the step is known
        self.plan = plan
        self.split = prepared.split
        self.method = prepared.method
        self.device = prepared.device
        self.threads = prepared.threads
        self.data_notes = prepared.data_notes
        self.data_info = prepared.data_info
        self.layout = prepared.layout or build_layout(self.cfg)
        self.channels_last = prepared.channels_last
        self.run_dir = run_dir
        self.ckpt_dir = run_dir / CKPT_DIR
        self.phases = self.method.phases()
        self.total = sum(p.iterations for p in self.phases)
        self.log = logging.getLogger(LOGGER_NAME)
        self.step = 0
        self.best: dict[str, float] = {}
        self.best_iter: dict[str, int] = {}
        #: (iteration, phase, validation Dice) of every validation, for the tie report
        self.val_history: list[tuple[int, str, float]] = []
        self.timing: dict[str, float] = {}
        #: validation cases kept in memory after their first reading (see ``_val_cases``)
        self._val_cache: dict[tuple[str, ...], list[EvalCase]] = {}
        self.optimizer = self._make_optimizer()
        self.unlabeled_bs = self.cfg.train.unlabeled_batch_size if self.method.uses_unlabeled else 0
        # DDP: rank 0 writes; the trainer steps the method through DDP (distributed.py)
        self.main = dist.is_main_process()
        self.world = dist.world_size()
        self.stepper = dist.wrap(self.method, self.device)
        #: the run's training sessions (``segments.json``) and its poly restarts
        self.segments: list[dict[str, Any]] = (
            plan.segments if plan is not None else [self._segment(0, [], {}, {})])
        self.restarts: list[Restart] = restarts(self.segments)

    # -- set-up -----------------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        t = self.cfg.train
        own = self.method.make_optimizer(t)
        if own is not None:
            return own
        return torch.optim.SGD(list(self.method.trainable_parameters()), lr=t.lr,
                               momentum=t.momentum, weight_decay=t.weight_decay,
                               nesterov=t.nesterov, foreach=t.foreach)

    def write_start_files(self) -> None:
        """``config.yaml`` (every method option with its default), ``splits.json`` and
        ``segments.json``; after a resume that changed the config, ``config.yaml`` starts with
        a comment saying that the run was trained in segments."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # every option of the method with its default, as declared (percentages kept)
        params = self.method.declared_params.model_dump(mode="json")
        method = self.cfg.method.model_copy(update={"params": params})
        changed = [s["start"] for s in self.segments if s.get("changes")]
        header = ("# resumed with overrides at iteration(s) "
                  f"{', '.join(map(str, changed))}: trained in segments (segments.json), with\n"
                  "# the lr schedule and phase lengths given there; training this file from "
                  "scratch would not repeat the run\n") if changed else ""
        write_text(self.run_dir / CONFIG_FILE,
                   header + to_yaml(self.cfg.model_copy(update={"method": method})))
        self.split.save(self.run_dir / SPLIT_FILE)
        write_segments(self.run_dir, self.segments)

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
                "model": self.cfg.model.name}

    def _load(self, path: Path) -> None:
        load_into(self.method, path, method_name=self.cfg.method.name,
                  model_name=self.cfg.model.name)

    def save_last(self, rng: dict[str, Any]) -> None:
        """One consistent resumable checkpoint (weights + state + manifest) at ``self.step``;
        under DDP every process's random state, written by rank 0."""
        rng_ranks = dist.all_gather(rng)
        self._last_save = time.monotonic()
        if not self.main:
            return
        save_resumable(self.ckpt_dir, self.step, self.method.state_dict(), self._metadata(), {
            "step": self.step, "optimizer": self.optimizer.state_dict(), "rng": rng,
            "best": dict(self.best), "best_iter": dict(self.best_iter),
            "val_history": [list(v) for v in self.val_history],
            "threads": torch.get_num_threads(),
            **({"rng_ranks": rng_ranks} if len(rng_ranks) > 1 else {}),
        })
        self._last_save = time.monotonic()

    def _phase_start(self, phase: Phase) -> int:
        start = 0
        for p in self.phases:
            if p is phase:
                return start
            start += p.iterations
        return start

    def _check_finite(self, window: list[dict[str, torch.Tensor]], state: bool) -> None:
        """Stop on a non-finite loss of any step in ``window`` and, with ``state``, on NaN/inf
        in the weights or buffers (BN statistics can overflow while the loss stays finite).
        One host sync per check; the loss check runs at every log/validation boundary. Under
        DDP the processes compare their findings, so all stop together, with rank 0's line
        (or the first process's that found one)."""
        try:
            self._check_finite_local(window, state)
            problem = None
        except SSMISError as err:
            problem = str(err)
        if self.world > 1:
            problem = next((p for p in dist.all_gather(problem) if p is not None), None)
            if problem is not None:
                raise dist.SharedError(problem)
        elif problem is not None:
            raise SSMISError(problem)

    def _check_finite_local(self, window: list[dict[str, torch.Tensor]], state: bool) -> None:
        losses = torch.stack([w["loss"].float() for w in window]) if window else None
        if losses is not None and not bool(torch.isfinite(losses).all()):
            first = int((~torch.isfinite(losses)).nonzero()[0])
            it = self.step - len(window) + first + 1
            raise SSMISError(f"training diverged: loss is {float(losses[first])} at iteration "
                             f"{it}; no checkpoint was written after it (lower train.lr?)")
        bad = non_finite_tensor(self.method.state_dict()) if state else None
        if bad is not None:
            raise SSMISError(f"training diverged: '{bad}' holds NaN/inf at iteration {self.step};"
                             " no checkpoint was written after it (lower train.lr?)")

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, resume: bool = False,
            after_resume: Callable[[], None] | None = None) -> dict[str, Any]:
        """Train to ``self.total`` iterations; with ``resume``, from the newest consistent
        checkpoint (``after_resume`` runs once it is verified and loaded)."""
        cfg = self.cfg
        rng = self.load_last() if resume else None
        if after_resume is not None:
            after_resume()
        if self.step >= self.total:
            self.log.info(f"run already finished ({self.step}/{self.total} iterations)")
            return self.summary()
        routes: list[str] = []
        batches = train_batches(cfg, self.split, self.unlabeled_bs, start_batch=self.step,
                                rank=dist.rank(), world_size=self.world, layout=self.layout,
                                device=self.device, log=routes.append)
        first_step = self.step
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        if rng is not None:
            restore_rng_state(rng)  # after the loader drew its base seed, as in a fresh run
        elif resume and self.world > 1:
            seed_everything(dist.rank_seed(cfg.seed, dist.rank(), self.step),
                            cfg.train.deterministic)
        scalars = JsonlWriter(self.run_dir / SCALARS_FILE, enabled=self.main)
        val_log = JsonlWriter(self.run_dir / VAL_FILE, enabled=self.main)
        tboard = TensorBoard(self.run_dir / TENSORBOARD_DIR, enabled=self.main)
        progress = Progress(self.total, self.step, desc=f"{cfg.method.name}", enabled=self.main)
        amp = cfg.train.amp and self.device.type == "cuda"
        interval = cfg.train.checkpoint_minutes * 60.0
        self._last_save = time.monotonic()
        self.log.info(f"training {cfg.method.name} / {cfg.model.name} on {self.device} for "
                      f"{self.total} iterations (from {self.step}); run folder {self.run_dir}")
        self._log_schedule()
        for note in routes:
            self.log.info(note)
        for line in self.data_info:
            self.log.info(line)
        for note in self.data_notes:
            self.log.warning(note)
        if self.threads is not None:
            choose = "" if self.cfg.train.threads else "; set train.threads to choose"
            self.log.info(f"torch threads: {self.threads.threads} ({self.threads.reason}"
                          f"{choose})")
        if self.world > 1:
            self.log.info(f"DDP: {self.world} processes ({dist.backend_for(cfg.train.device)}), "
                          f"per process {self._per_process()} (labeled, unlabeled) of the "
                          f"global batch, networks {self.stepper.networks}, SyncBatchNorm "
                          f"{self._sync_bn()}")
        self.method.train()
        # Step losses stay on the device until a log, validation or checkpoint boundary, where
        # every step's loss is checked: one host sync per interval instead of one per iteration.
        window: list[dict[str, torch.Tensor]] = []
        unchecked: list[dict[str, torch.Tensor]] = []
        shown_loss = float("nan")
        t_start = time.perf_counter()
        stop = StopRequest()
        try:
            while self.step < self.total:
                phase, local = self.phase_at(self.step)
                if local == 0 and self.step > 0:
                    self._start_phase(phase)
                lr = phase_lr(cfg.train.lr, self.step, self.step - local, phase.iterations,
                              cfg.train.schedule, self.restarts)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                labeled, unlabeled = next(batches)
                labeled = batch_to_device(labeled, self.device, self.channels_last)
                unlabeled = (batch_to_device(unlabeled, self.device, self.channels_last)
                             if unlabeled else None)
                losses = optimization_step(self.stepper, self.optimizer, labeled, unlabeled,
                                           self.step, amp)
                self.step += 1
                detached = {k: v.detach() for k, v in losses.items()}
                window.append(detached)
                unchecked.append(detached)
                end_of_phase = local + 1 == phase.iterations
                log_now = self.step % cfg.train.log_every == 0 or self.step == self.total
                validate_now = self.step % cfg.train.val_every == 0 or end_of_phase
                timed_save = interval > 0 and time.monotonic() - self._last_save >= interval
                if self.world > 1:  # DDP: a timer or a signal of any process stops all of them
                    timed_save, stop.signum = dist.any_flags(timed_save, stop.signum,
                                                             device=self.device)
                saving = validate_now or timed_save or bool(stop.signum)
                if log_now or saving:
                    self._check_finite(unchecked, state=saving)
                    unchecked = []
                if log_now or validate_now:
                    means = dist.mean_over_ranks(window_means(window), self.device)
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
                if saving:
                    self.save_last(capture_rng_state())
                if stop.signum:
                    interrupted = RunInterrupted(
                        f"{signal.Signals(stop.signum).name}: stopped at iteration {self.step}/"
                        f"{self.total}; checkpoint saved, continue with `ssmis train --resume "
                        f"{self.run_dir}`", 128 + stop.signum)
                    interrupted.all_processes = True  # type: ignore[attr-defined]
                    raise interrupted
        finally:
            stop.restore()
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

    def _log_schedule(self) -> None:
        """Each phase's length; the method params given as shares of the run, resolved; a
        warning for each unsupervised term that never switches on within ``train.iterations``."""
        self.log.info(self.method.phase_summary())
        declared = self.method.declared_params
        shares = [f"{name} {value} = {getattr(self.method.params, name):g} iterations"
                  for name, value in declared.model_dump().items()
                  if share_fraction(value) is not None]
        if shares:
            self.log.info(f"method.params as shares of train.iterations = "
                          f"{self.cfg.train.iterations}: {', '.join(shares)}")
        for line in self.method.schedule_warnings():
            self.log.warning(line)

    def _start_phase(self, phase: Phase) -> None:
        """Phase boundary: optionally restart from the previous phase's best weights."""
        if phase.init_from_best:
            previous = self.phases[self.phases.index(phase) - 1]
            path = weights_file(self.ckpt_dir, best_name(self.phases, previous))
            if dist.on_main(path.is_file):  # DDP: rank 0 reads it, the others receive it
                if self.main:
                    self._load(path)
                dist.broadcast_state(self.method)
                self.log.info(f"phase {phase.name}: starting from {path.name}")
        self.method.on_phase_start(phase)
        if phase.reset_optimizer:
            self.optimizer = self._make_optimizer()

    def _per_process(self) -> tuple[int, int]:
        return (self.cfg.train.batch_size // self.world, self.unlabeled_bs // self.world)

    def _sync_bn(self) -> bool:
        return any(isinstance(m, torch.nn.SyncBatchNorm) for m in self.method.modules())


