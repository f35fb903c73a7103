"""The resume side of a run (a part of :class:`~ssmis.engine.trainer.Trainer`): loading the
last checkpoint, the session entries of ``segments.json``, the lr rule of a resume that
changes ``train.iterations`` or ``train.lr`` (:mod:`ssmis.engine.resume`), the thread count
and random state of a resumed process."""

from __future__ import annotations

from typing import Any

import torch

from ssmis.config import ExperimentConfig
from ssmis.engine import distributed as dist
from ssmis.engine.checkpoint import (
    clean_temporary,
    find_resumable,
)
from ssmis.engine.resume import write_segments
from ssmis.engine.runfolder import (
    SCALARS_FILE,
    VAL_FILE,
    state_of,
)
from ssmis.engine.runlog import (
    truncate_jsonl,
)
from ssmis.engine.schedule import Restart, phase_lr
from ssmis.engine.threads import ThreadChoice
from ssmis.errors import SSMISError
from ssmis.methods import Phase, build_method


class ResumeMixin:
    """The :class:`~ssmis.engine.trainer.Trainer` methods of a resumed run (they use its
    state: config, method, optimizer, phases, segments)."""

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
        # the session before stopped here (its "end" is the end it planned)
        self.segments[-1] = {**self.segments[-1], "reached": step}
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
