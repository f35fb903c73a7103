"""The training loop: iterations, optimizer and schedule, validation, checkpoints, resume.

Everything that can fail on the user's input (config, split, data files, method options) is
checked in :func:`prepare` before the run folder is created, so a failed start writes nothing.
A run resumed from its last checkpoint continues the same data stream and random state, so it
ends with the same weights as an uninterrupted run (on the CPU; GPU kernels may differ).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ssmis.atomic import write_json, write_text
from ssmis.config import ExperimentConfig, to_yaml
from ssmis.data.datasets import EvalCase
from ssmis.data.layouts import Layout
from ssmis.data.sampler import check_batch_split
from ssmis.data.splits import Split
from ssmis.engine import distributed as dist
from ssmis.engine.checkpoint import (
    clean_temporary,
    find_resumable,
    load_into,
    non_finite_tensor,
    save_resumable,
    save_weights,
)
from ssmis.engine.data import (
    build_layout,
    build_split,
    check_data,
    eval_cases,
    resolve_normalisation,
    train_batches,
)
from ssmis.engine.evaluate import (
    ValidationScore,
    summarize_validation,
    validation_cases,
    validation_score,
)
from ssmis.engine.fast import apply_speed_settings, batch_to_device
from ssmis.engine.resume import ResumePlan, restarts, write_segments
from ssmis.engine.runfolder import (
    CKPT_DIR,
    CONFIG_FILE,
    SCALARS_FILE,
    SELECTED,
    SPLIT_FILE,
    SUMMARY_FILE,
    TENSORBOARD_DIR,
    VAL_FILE,
    best_name,
    state_of,
    weights_file,
)
from ssmis.engine.runlog import (
    LOGGER_NAME,
    JsonlWriter,
    Progress,
    TensorBoard,
    truncate_jsonl,
)
from ssmis.engine.schedule import Restart, phase_lr
from ssmis.engine.seed import capture_rng_state, restore_rng_state, seed_everything
from ssmis.engine.threads import ThreadChoice, apply_threads
from ssmis.errors import RunInterrupted, SSMISError
from ssmis.experiment import check_method
from ssmis.methods import Method, Phase, build_method
from ssmis.models import input_problem
from ssmis.ramps import share_fraction

#: validation cases up to this many bytes are read once per run and kept in memory
VAL_CACHE_BYTES = 1 << 30


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SSMISError("train.device: 'cuda' requested but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Prepared:
    """What :func:`prepare` validated: everything a run needs before touching the disk."""

    cfg: ExperimentConfig
    split: Split
    method: Method
    device: torch.device
    #: torch CPU threads set for the run and why (``train.threads`` or the automatic pick)
    threads: ThreadChoice | None = None
    #: lines the data checks want in the run log (e.g. labels resampled onto their image)
    data_notes: list[str] = field(default_factory=list)
    #: how the data are read: normalisation per channel, folder entries not read
    data_info: list[str] = field(default_factory=list)
    #: input batches in channels-last layout (``train.channels_last``)
    channels_last: bool = False
    #: the dataset's layout (``data.layout``), built once: listing, reading, evaluation cases
    layout: Layout | None = None


def prepare(cfg: ExperimentConfig, split: Split | None = None) -> Prepared:
    """Everything a run needs, checked before anything is written. Under DDP every process
    builds the same method (same seed); the data files are checked by rank 0 only."""
    threads = apply_threads(cfg.train.threads)
    device = dist.device_for(resolve_device(cfg.train.device))
    check_method(cfg, source="config")
    seed_everything(cfg.seed, cfg.train.deterministic)
    layout = build_layout(cfg)
    split = split or build_split(cfg, layout)
    method = build_method(cfg)
    method.phases()  # phase lengths against train.iterations, before a run folder exists
    per_process = check_process_batch(cfg, method, dist.world_size())
    notes = dist.on_main(check_data, cfg, split, need_unlabeled=method.uses_unlabeled,
                         layout=layout) or []
    cfg, info = resolve_normalisation(cfg, layout)
    if dist.use_sync_bn(cfg.train.sync_bn, device, sum(per_process), method):
        dist.convert_sync_bn(method)
    if dist.world_size() > 1:  # same initial weights everywhere, own random stream per process
        seed_everything(dist.rank_seed(cfg.seed, dist.rank()), cfg.train.deterministic)
    method = method.to(device)
    channels_last = apply_speed_settings(method, cfg.train, device, cfg.data.spatial_dims)
    return Prepared(cfg, split, method, device, threads=threads, data_notes=notes, data_info=info,
                    channels_last=channels_last, layout=layout)


def check_process_batch(cfg: ExperimentConfig, method: Method, world: int) -> tuple[int, int]:
    """(labeled, unlabeled) samples per process: the global ``train.batch_size`` /
    ``unlabeled_batch_size`` split over ``world`` processes. Refused (one line) when it does not
    divide, or when the per-process batch breaks the method's batch rule
    (:meth:`Method.batch_problem`, e.g. BCP's two equal halves)."""
    unlabeled = cfg.train.unlabeled_batch_size if method.uses_unlabeled else 0
    check_batch_split(cfg.train.batch_size, unlabeled, world)
    per = (cfg.train.batch_size // world, unlabeled // world)
    if world > 1:
        problem = method.batch_problem(*per) if method.uses_unlabeled else None
        if problem is None:
            problem = input_problem(cfg.model.name, cfg.model.options, cfg.data.patch_size,
                                    method.forward_batch(*per))
        if problem is not None:
            raise SSMISError(f"{problem} (per process: the global batch split over {world} "
                             "processes)")
    return per


class Trainer:
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

    def write_segments(self) -> None:
        """Only ``segments.json`` (a resume without overrides: the config is unchanged)."""
        write_segments(self.run_dir, self.segments)

    def _segment(self, start: int, overrides: list[str], changes: dict[str, Any],
                 lr: dict[str, Any]) -> dict[str, Any]:
        """One entry of ``segments.json``: a training session from iteration ``start``."""
        return {"start": start, "end": self.total, "overrides": list(overrides),
                "changes": changes, "lr_schedule": self.cfg.train.schedule.kind,
                "lr_rule": lr.pop("rule", f"{self.cfg.train.schedule.kind} from train.lr "
                                              f"{self.cfg.train.lr:g}, restarted at each phase"),
                **lr}

    def lr_at(self, step: int, phases: list[Phase] | None = None, base: float | None = None,
              restarts: list[Restart] | None = None) -> float:
        """The scheduled lr of global iteration ``step`` (before the optimizer's per-group
        ``lr_scale``); by default with this run's phases, ``train.lr`` and restarts."""
        phases = self.phases if phases is None else phases
        start = 0
        for phase in phases:
            if step < start + phase.iterations or phase is phases[-1]:
                break
            start += phase.iterations
        return phase_lr(self.cfg.train.lr if base is None else base, step, start,
                        phase.iterations, self.cfg.train.schedule,
                        self.restarts if restarts is None else restarts)

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

    def load_last(self) -> dict[str, Any]:
        """Restore the newest consistent checkpoint; returns its random states."""
        if dist.on_main(clean_temporary, self.ckpt_dir):  # DDP: rank 0 cleans, then all read
            self.log.info(f"{self.ckpt_dir}: removed temporary files of an interrupted write")
        found = find_resumable(self.ckpt_dir, self.total)
        for problem in found.skipped:
            self.log.warning(f"warning: {problem}; resuming from the previous consistent "
                             f"checkpoint (iteration {found.step})")
        state = found.state
        self.step = found.step
        if self.plan is not None:
            self._begin_segment()
        self._load(found.weights)
        phase, _ = self.phase_at(self.step)
        if not (phase.reset_optimizer and self._phase_start(phase) == self.step):
            try:
                self.optimizer.load_state_dict(state["optimizer"])
            except (ValueError, KeyError, RuntimeError):
                raise SSMISError(f"{state_of(found.weights)}: "
                                 "optimizer state does not fit this run's parameters") from None
        self.best = {k: float(v) for k, v in state["best"].items()}
        self.best_iter = {k: int(v) for k, v in state["best_iter"].items()}
        self.val_history = [(int(i), str(p), float(d)) for i, p, d in
                            state.get("val_history", [])]
        self._resume_threads(state.get("threads"))
        if self.main:
            truncate_jsonl(self.run_dir / SCALARS_FILE, self.step)
            truncate_jsonl(self.run_dir / VAL_FILE, self.step)
        return self._rank_rng(state)

    def _begin_segment(self) -> None:
        """Apply the resume plan at ``self.step`` (README, "Resume"): refuse an extension that
        would change phases or loss weights of iterations already trained, or continue a poly
        schedule that already reached 0; record the poly restart; log one warning with the lr
        before/after; append this session to ``self.segments``. Writes nothing.

        Raises:
            SSMISError: naming the field and the iteration."""
        plan, step, cfg = self.plan, self.step, self.cfg
        assert plan is not None
        old = plan.stored
        old_phases = self.phases
        if "train.iterations" in plan.changes:
            old_phases = self._check_past_unchanged(old)
        before = self.lr_at(step, old_phases, old.train.lr)
        phase, local = self.phase_at(step)
        restart = None
        poly = cfg.train.schedule.kind == "poly"
        if plan.ruled and poly and local > 0:
            if before == 0.0 and "train.iterations" in plan.changes:
                raise SSMISError(
                    f"train.iterations: the poly schedule of {self.run_dir} reached lr 0 at "
                    f"iteration {step} (the end of its phase '{phase.name}'); continuing it "
                    "would train at lr 0: start a new run with the longer train.iterations")
            end = self._phase_start(phase) + phase.iterations
            restart = Restart(step, before * cfg.train.lr / old.train.lr, end)
        after = self.lr_at(step, restarts=self.restarts + ([restart] if restart else []))
        lr: dict[str, Any] = {"lr_before": before, "lr_after": after}
        if restart is not None:
            lr["rule"] = (f"poly continued from {restart.lr:.6g} at iteration {step} to 0 at "
                          f"iteration {restart.end}: lr = {restart.lr:.6g} * (1 - (t - {step}) "
                          f"/ {restart.end - step}) ** {cfg.train.schedule.power:g}")
            lr["lr_restart"] = {"step": step, "lr": restart.lr, "end": restart.end}
            self.restarts = [*self.restarts, restart]
        elif poly:
            lr["rule"] = (f"poly of phase '{phase.name}' from iteration {step - local} over "
                          f"its {phase.iterations} iterations")
        else:
            lr["rule"] = f"{cfg.train.schedule.kind} schedule from train.lr {cfg.train.lr:g}"
        changes = {k: list(v) for k, v in plan.changes.items()}
        if plan.frozen:
            lr["frozen"] = {k: list(v) for k, v in plan.frozen.items()}
        if not self.segments:  # a run written before segments.json: its start, reconstructed
            self.segments = [{"start": 0, "end": old.train.iterations, "overrides": [],
                              "changes": {}, "lr_schedule": old.train.schedule.kind,
                              "lr_rule": "reconstructed from config.yaml at the first resume"}]
        self.segments = [*self.segments, self._segment(step, plan.overrides, changes, lr)]
        if plan.ruled:
            shown = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in plan.ruled.items())
            self.log.warning(f"warning: resumed at iteration {step} with {shown}: lr "
                             f"{before:.6g} -> {after:.6g} at the resume point "
                             f"({self.segments[-1]['lr_rule']})")
        for name, (given, kept) in plan.frozen.items():
            how = "unset (a default from the run's length)" if given is None else given
            self.log.info(f"{name}: {how} of the {old.train.iterations} iterations the run "
                          f"started with, kept as {kept} (a phase or ramp does not move at "
                          "--resume)")

    def _check_past_unchanged(self, old: ExperimentConfig) -> list[Phase]:
        """The phases of the run as configured before the resume; refuses (SSMISError naming
        the field) when the resumed config moves a phase boundary at or before ``self.step``
        or changes an unsupervised weight of an iteration already trained."""
        with torch.random.fork_rng(devices=[]):
            before = build_method(old)
        old_phases = before.phases()

        def starts(phases: list[Phase]) -> list[tuple[str, int]]:
            out, start = [], 0
            for p in phases:
                out.append((p.name, start))
                start += p.iterations
            return out

        old_starts, new_starts = starts(old_phases), starts(self.phases)
        for (name, a), (_, b) in zip(old_starts, new_starts, strict=False):
            if a != b and min(a, b) <= self.step:
                raise SSMISError(
                    f"train.iterations: phase '{name}' started at iteration {a}; the resumed "
                    f"config starts it at {b}, before iteration {self.step} already trained: "
                    "start a new run (or give the phase length in iterations)")
        new_terms = {t.name: t for t in self.method.unsupervised_terms()}
        for term in before.unsupervised_terms():
            other = new_terms.get(term.name)
            if other is None:
                continue
            for k in range(self.step):
                if term.weight(k) != other.weight(k):
                    fields = ", ".join(f"method.params.{p}" for p in term.params)
                    raise SSMISError(
                        f"train.iterations: the weight of '{term.name}' at iteration {k}, "
                        f"already trained, would change ({term.weight(k):g} -> "
                        f"{other.weight(k):g}; set by {fields or 'train.iterations'}): start "
                        "a new run")
        return old_phases

    def _resume_threads(self, saved: int | None) -> None:
        """With automatic threads, continue with the count the run was saved with when it is
        not more than picked now (another count sums in another order: the resumed run would
        not end with the uninterrupted run's weights)."""
        if self.cfg.train.threads or not saved:
            return
        now = torch.get_num_threads()
        if saved < now:
            torch.set_num_threads(int(saved))
            self.threads = ThreadChoice(int(saved), "the count the run was saved with")
        elif saved > now:
            self.log.info(f"torch threads: {now} (the run was saved with {saved}; the resumed "
                          "iterations may differ in the last bits from an uninterrupted run)")

    def _rank_rng(self, state: dict[str, Any]) -> dict[str, Any] | None:
        """This process's saved random state; None (fresh per-process streams, seeded from
        the run seed, the step and the rank) when the run was saved by another number of
        processes."""
        if self.world == 1:
            return state["rng"]
        ranks = state.get("rng_ranks")
        if ranks is not None and len(ranks) == self.world:
            return ranks[dist.rank()]
        self.log.info(f"resuming on {self.world} processes (saved by "
                      f"{len(ranks) if ranks else 1}): each process's random stream is "
                      "re-seeded from the seed, the step and its rank")
        return None

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
        stop = _StopRequest()
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
                    means = dist.mean_over_ranks(_window_means(window), self.device)
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

    def _selection_pool(self, phase: Phase) -> bool:
        """Whether ``phase``'s checkpoints compete for ``best`` under ``eval.selection``."""
        return self.cfg.eval.selection == "best_overall" or phase is self.phases[-1]

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
                scores[name] = self._val_score(ids, amp)
            choice = max(candidates, key=lambda n: scores[n].dice)
            self.method.set_predictor(choice)
            result = scores[choice]
            extra = {"predictor": choice, **{f"val_dice_{n}": v.dice for n, v in scores.items()}}
        else:
            result = self._val_score(ids, amp)
        score = result.dice
        if result.absent and not getattr(self, "_absent_warned", False):
            self._absent_warned = True
            names = self.cfg.data.names()
            shown = [k if self.cfg.eval.regions else names[int(k)] for k in result.absent]
            self.log.warning(f"warning: {', '.join(shown)} never occur(s) in any validation "
                             "reference: left out of the validation Dice (check "
                             "data.num_classes)")
        self.val_history.append((self.step, phase.name, score))
        names = [best_name(self.phases, phase)]
        if len(self.phases) > 1 and self._selection_pool(phase):
            names.append(SELECTED)
        improved = [n for n in names if score > self.best.get(n, float("-inf"))]
        for name in improved:
            self.best[name] = score
            self.best_iter[name] = self.step
            if self.main:
                save_weights(weights_file(self.ckpt_dir, name), self.method.state_dict(),
                             self._metadata())
        val_log.write({"iter": self.step, "phase": phase.name, "val_dice": score,
                       "best": SELECTED in improved, "empty_predictions": result.empty_predictions,
                       **extra})
        tboard.write(self.step, {"val_dice": score})
        shown = names[-1]
        note = ""
        if result.cases and result.empty_predictions == result.cases:
            note = (f" warning: no foreground predicted on any of the {result.cases} validation "
                    "cases (collapsed model?)")
        elif result.empty_predictions:
            note = (f" ({result.empty_predictions}/{result.cases} validation cases without "
                    "foreground)")
        best_text = (f"best {self.best[shown]:.4f} at {self.best_iter[shown]}"
                     if shown in self.best else "not selectable in this phase")
        self.log.info(f"iter {self.step}: val Dice {score:.4f} ({best_text}) "
                      f"{'[' + extra['predictor'] + '] ' if extra else ''}"
                      f"[{time.perf_counter() - t0:.1f} s]{note}")

    def _val_score(self, ids: list[str], amp: bool) -> ValidationScore:
        """Validation score of the current weights; under DDP each process scores its shard
        of the cases and the per-case results are gathered (same cases, same order, same
        mean on every process, so all agree on the best checkpoint)."""
        if self.world == 1:
            return validation_score(self.method, self._val_cases(ids), self.cfg, self.device,
                                    amp)
        local = validation_cases(self.method, self._val_cases(dist.shard(ids)), self.cfg,
                                 self.device, amp)
        return summarize_validation(dist.unshard(local), self.cfg)

    def _val_cases(self, ids: list[str]) -> Iterator[EvalCase]:
        """The validation cases ``ids``: read from disk the first time, then from memory when
        they took at most :data:`VAL_CACHE_BYTES` in this process (a validation every few
        hundred iterations would otherwise read the same files hundreds of times)."""
        key = tuple(ids)
        cached = self._val_cache.get(key)
        if cached is not None:
            return iter(cached)
        return self._read_and_keep(key, eval_cases(self.cfg, ids, self.layout))

    def _read_and_keep(self, key: tuple[str, ...],
                       cases: Iterator[EvalCase]) -> Iterator[EvalCase]:
        kept: list[EvalCase] | None = []
        size = 0
        for case in cases:
            size += sum(a.nbytes for a in (case.image, case.label, case.roi) if a is not None)
            if kept is not None and size <= VAL_CACHE_BYTES:
                kept.append(case)
            else:
                kept = None
            yield case
        if kept is not None:
            self._val_cache[key] = kept

    def _per_process(self) -> tuple[int, int]:
        return (self.cfg.train.batch_size // self.world, self.unlabeled_bs // self.world)

    def _sync_bn(self) -> bool:
        return any(isinstance(m, torch.nn.SyncBatchNorm) for m in self.method.modules())

    def _ties(self) -> list[int]:
        """Iterations whose validation Dice equals the selected one (more than one: a tie)."""
        if SELECTED not in self.best:
            return []
        pool = {p.name for p in self.phases if self._selection_pool(p)}
        return [i for i, phase, d in self.val_history
                if phase in pool and d == self.best[SELECTED]]

    def summary(self) -> dict[str, Any]:
        ties = self._ties()
        info = {"iterations": self.step, "selection": self.cfg.eval.selection,
                "best_val_dice": self.best.get(SELECTED),
                "best_iteration": self.best_iter.get(SELECTED), "best_checkpoint": SELECTED,
                "best_phase": next((p for i, p, _ in self.val_history
                                    if i == self.best_iter.get(SELECTED)), None),
                "val_ties": ties if len(ties) > 1 else []}
        if len(self.phases) > 1:
            info["best_per_phase"] = {p.name: {"val_dice": self.best.get(best_name(self.phases, p)),
                                               "iteration": self.best_iter.get(
                                                   best_name(self.phases, p))}
                                      for p in self.phases}
        if len(ties) > 1:
            self.log.warning(
                f"warning: validation Dice {self.best[SELECTED]:.4f} was reached at iterations "
                f"{', '.join(map(str, ties))}: the earliest ({ties[0]}) is kept as '{SELECTED}'"
                + (" (every validation considered for selection scored the same: check the "
                   "validation cases)"
                   if len(ties) == len([v for v in self.val_history if v[1] in
                                        {p.name for p in self.phases if self._selection_pool(p)}])
                   else ""))
        labeled, unlabeled = self._per_process()
        info["world_size"] = self.world  # processes of this session (DDP)
        info["batch_per_process"] = {"labeled": labeled, "unlabeled": unlabeled}
        info["global_batch"] = {"labeled": self.cfg.train.batch_size,
                                "unlabeled": self.unlabeled_bs}
        info["sync_bn"] = self._sync_bn()
        info["threads"] = torch.get_num_threads()
        if self.timing:  # this session's iterations; validation and checkpoints included
            info["timing"] = self.timing
        if self.main:
            write_json(self.run_dir / SUMMARY_FILE, info)
        return info


class _StopRequest:
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


def _window_means(window: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Mean of each logged value over the steps that reported it (keys change between phases)."""
    keys = window[-1].keys()
    return {k: torch.stack([w[k].float() for w in window if k in w]).mean().item() for k in keys}


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return batch_to_device(batch, device)
