"""Validation and checkpoint selection of a run (a part of :class:`~ssmis.engine.trainer.Trainer`):
validation passes, the validation cases kept in memory, the selection pool of
``eval.selection``, ties and the run's summary."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch

from ssmis.atomic import write_json
from ssmis.data.datasets import EvalCase
from ssmis.engine import distributed as dist
from ssmis.engine.checkpoint import (
    save_weights,
)
from ssmis.engine.data import (
    eval_cases,
)
from ssmis.engine.evaluate import (
    ValidationScore,
    summarize_validation,
    validation_cases,
    validation_score,
)
from ssmis.engine.runfolder import (
    SELECTED,
    SUMMARY_FILE,
    best_name,
    weights_file,
)
from ssmis.engine.runlog import (
    JsonlWriter,
    TensorBoard,
)
from ssmis.methods import Phase

#: validation cases up to this many bytes are read once per run and kept in memory
VAL_CACHE_BYTES = 1 << 30

class ValidationMixin:
    """The :class:`~ssmis.engine.trainer.Trainer` methods that validate and select the
    checkpoint (they use its state: config, method, layout, history)."""


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
