"""The one interface every method meets (see docs/methods.md for the methods themselves).

A method is an ``nn.Module`` that builds its networks from the config. The engine owns devices,
AMP, the optimizer, checkpoints, logging and validation; the method only says how to compute
its losses for one batch and which network(s) predict at inference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from ssmis.errors import SSMISError
from ssmis.models import build_model
from ssmis.ramps import resolve_run_shares
from ssmis.validation import format_validation_error

if TYPE_CHECKING:  # the config asks this registry; the registry never imports the config
    from ssmis.config import ExperimentConfig, TrainConfig

Batch = dict[str, Any]


class MethodParams(BaseModel):
    """Method-specific options (``method.params`` in the config); unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Phase:
    """A stretch of training with its own length (e.g. supervised pre-training, self-training)."""

    name: str
    iterations: int
    reset_optimizer: bool = False
    #: start from the previous phase's best-by-validation weights (BCP: self-training begins
    #: from the best pre-trained model, not the last one)
    init_from_best: bool = False


@dataclass(frozen=True)
class UnsupervisedTerm:
    """A loss term on unlabeled data and its weight schedule, for the start-of-run check that
    it switches on within ``train.iterations`` (:meth:`Method.schedule_warnings`).

    ``weight(step)``: the weight at the 0-based global iteration ``step`` (0 while the term is
    off, e.g. during pre-training); ``maximum``: the weight it ramps towards; ``params``: the
    ``method.params`` fields that set its schedule (named in the warning)."""

    name: str
    weight: Callable[[int], float]
    maximum: float
    params: tuple[str, ...]



class ChoosablePredictor:
    """For methods with several networks that can each predict alone (``predictors``) and a
    ``params.predict_mode``: with ``predict_mode: best`` the engine scores each on validation
    and the choice is kept in the ``chosen_net`` buffer, so it is saved with the weights.
    Subclasses list ``predictors`` and call :meth:`_init_choice` in ``__init__``; put the
    mixin before :class:`Method` in the bases."""

    predictors: ClassVar[tuple[str, ...]] = ()
    name: ClassVar[str]
    params: Any
    chosen_net: torch.Tensor

    def _init_choice(self) -> None:
        self.register_buffer("chosen_net", torch.zeros((), dtype=torch.long))  # type: ignore[attr-defined]

    def predictor_candidates(self) -> tuple[str, ...]:
        return self.predictors if self.params.predict_mode == "best" else ()

    def set_predictor(self, name: str) -> None:
        if name not in self.predictors:
            raise SSMISError(f"method {self.name}: unknown predictor {name!r}; expected one of "
                             f"{', '.join(self.predictors)}")
        self.chosen_net.fill_(self.predictors.index(name))

    @property
    def inference_mode(self) -> str:
        """The predictor in use: ``predict_mode``, or the validated choice for 'best'."""
        mode = self.params.predict_mode
        return self.predictors[int(self.chosen_net)] if mode == "best" else mode

ParamsT = TypeVar("ParamsT", bound=MethodParams)


class Method(nn.Module, Generic[ParamsT]):
    """Base class: subclasses set ``name`` and ``Params`` and implement ``training_step``;
    ``Method[XParams]`` types ``self.params`` as the method's ``Params`` class."""

    name: ClassVar[str] = ""
    #: one line for ``ssmis methods`` (falls back to the first sentence of the docstring)
    summary: ClassVar[str] = ""
    Params: ClassVar[type[MethodParams]] = MethodParams
    uses_unlabeled: ClassVar[bool] = True
    #: spatial dimensionalities the method supports (2D-only methods set ``(2,)``)
    spatial_dims: ClassVar[tuple[int, ...]] = (2, 3)
    #: DDP: some trainable parameter gets no gradient in some step (e.g. a layer used only in
    #: one phase), so DDP must look for unused parameters after each forward
    ddp_find_unused_parameters: ClassVar[bool] = False

    def __init__(self, cfg: ExperimentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        #: ``method.params`` as given, every default filled in and percentages kept (what
        #: the run's config.yaml records)
        self.declared_params = self.parse_params(cfg.method.params)
        #: the same with every value that depends on the run's length resolved
        self.params: ParamsT = self.run_params(cfg, self.declared_params)
        if cfg.data.spatial_dims not in self.spatial_dims:
            dims = " or ".join(f"{d}D" for d in self.spatial_dims)
            raise SSMISError(f"method.name: {self.name} supports {dims} data only; "
                             f"data.patch_size {cfg.data.patch_size} is "
                             f"{cfg.data.spatial_dims}D")

    @classmethod
    def run_params(cls, cfg: ExperimentConfig, declared: ParamsT) -> ParamsT:
        """``declared`` with every value that depends on ``train.iterations`` resolved: shares
        of the run (``"40%"``); subclasses add defaults derived from the run's length (the
        published pre-training share, SynFoC's ramp). No network is built, so a resume can
        freeze these values cheaply (:mod:`ssmis.engine.resume`)."""
        return cast(ParamsT, resolve_run_shares(declared, cfg.train.iterations))

    @classmethod
    def batch_problem(cls, labeled: int, unlabeled: int) -> str | None:
        """Why ``train.batch_size`` = ``labeled`` and ``train.unlabeled_batch_size`` =
        ``unlabeled`` cannot work for this method, or None (checked with the config)."""
        return None

    @classmethod
    def forward_batch(cls, labeled: int, unlabeled: int) -> int:
        """The smallest batch one training forward pass sees (BatchNorm needs > 1 value per
        channel): by default the smaller of the two streams."""
        return min(b for b in (labeled, unlabeled) if b > 0) if labeled or unlabeled else 1

    @classmethod
    def parse_params(cls, raw: dict[str, Any], source: str = "config") -> MethodParams:
        """``method.params`` validated; errors name ``source`` (the YAML file) and the field."""
        try:
            return cls.Params.model_validate(raw)
        except ValidationError as err:
            line = format_validation_error(err, cls.Params, source)
            raise SSMISError(line.replace(f"{source}: ", f"{source}: method.params.", 1)) from None

    # -- helpers for subclasses --------------------------------------------------------------
    def build_network(self, **options: Any) -> nn.Module:
        """The configured backbone, with per-method extra options (decoders, features)."""
        merged = {**self.cfg.model.options, **options}
        return build_model(
            self.cfg.model.name, self.cfg.data.in_channels, self.cfg.data.num_classes, **merged
        )

    # -- the interface -----------------------------------------------------------------------
    def training_step(
        self, labeled: Batch, unlabeled: Batch | None, step: int
    ) -> dict[str, torch.Tensor]:
        """Losses for one batch; the engine back-propagates ``loss`` and logs every entry."""
        raise NotImplementedError

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits B x C x spatial of the network(s) used at inference."""
        raise NotImplementedError

    def on_step_end(self, step: int) -> None:
        """Called after each optimizer step (EMA updates live here)."""

    def on_phase_start(self, phase: Phase) -> None:
        """Called when a phase after the first begins (after any ``init_from_best`` load), e.g.
        to copy the pre-trained student into the EMA teacher."""

    def phases(self) -> list[Phase]:
        return [Phase("train", self.cfg.train.iterations)]

    def phase_summary(self) -> str:
        """One line for the start of the run log: each phase's iterations (0-based, inclusive)
        and share of ``train.iterations``, e.g. ``phases: pretrain 0..199 (200 it, 20% of
        1000), self_train 200..999 (800 it, 80% of 1000)``, then :meth:`phase_note`."""
        total = self.cfg.train.iterations
        parts, start = [], 0
        for phase in self.phases():
            parts.append(f"{phase.name} {start}..{start + phase.iterations - 1} "
                         f"({phase.iterations} it, {100 * phase.iterations / total:.3g}% of "
                         f"{total})")
            start += phase.iterations
        return "phases: " + ", ".join(parts) + self.phase_note()

    def phase_note(self) -> str:
        """Where the phase lengths come from, when a default chose them (default: nothing)."""
        return ""

    def unsupervised_terms(self) -> list[UnsupervisedTerm]:
        """The method's loss terms on unlabeled data with their weight schedules (default:
        none); used by :meth:`schedule_warnings`."""
        return []

    def schedule_warnings(self, threshold: float = 0.1) -> list[str]:
        """One line per unsupervised term that never reaches ``threshold`` x its maximum
        weight within ``train.iterations`` (e.g. SSL4MIS's mean-teacher ramp over 30,000
        iterations in a 600-iteration run: the unlabeled data are never used). Terms whose
        maximum is 0 (switched off on purpose) are not reported."""
        total = self.cfg.train.iterations
        stride = max(1, total // 20000)
        lines = []
        for term in self.unsupervised_terms():
            if term.maximum <= 0:
                continue
            steps = [*range(0, total, stride), total - 1]
            peak = max(term.weight(s) for s in steps)
            if peak >= threshold * term.maximum:
                continue
            onset = next((s for s in range(total, 50 * total + 1, max(1, total // 10))
                          if term.weight(s) >= threshold * term.maximum), None)
            later = (f"; it reaches {threshold:.0%} of it at iteration {onset}" if onset
                     else "")
            fields = " / ".join(f"method.params.{p}" for p in term.params)
            lines.append(
                f"warning: {self.name}'s {term.name} weight stays at most {peak:.3g} "
                f"({peak / term.maximum:.1%} of its maximum {term.maximum:g}) within "
                f"train.iterations = {total}{later}: the unlabeled data barely count; set "
                f"{fields} as a share of the run (e.g. '40%') or train longer")
        return lines

    def predictor_candidates(self) -> tuple[str, ...]:
        """Names of alternative predictors the engine should score at each validation.

        Empty (the default): validation scores :meth:`predict` as it is. Otherwise the engine
        calls :meth:`set_predictor` with each name, scores it, and finally sets the best one
        (ties: the first), so that the choice is saved with the weights (e.g. ALHVR picks the
        better of its two networks by validation Dice instead of by hand)."""
        return ()

    def set_predictor(self, name: str) -> None:
        """Make :meth:`predict` use the candidate ``name`` (see :meth:`predictor_candidates`)."""
        raise NotImplementedError(f"{type(self).__name__} has no predictor candidates")

    def make_optimizer(self, train: TrainConfig) -> Any:
        """An optimizer of the method's own (e.g. a :class:`ssmis.optim.CombinedOptimizer`),
        or None (the default): the engine's SGD over :meth:`trainable_parameters`. Parameter
        groups may carry ``lr_scale``: the engine sets their lr to ``scale x`` the scheduled
        ``train.lr``."""
        return None

    def ddp_networks(self) -> list[str]:
        """Attribute names of the networks the optimizer trains (e.g. ``['student']``,
        ``['net1', 'net2']``): under DDP their gradients are averaged over the processes.
        EMA teachers and frozen modules are not listed; they stay unwrapped and are updated
        from the synchronised students. Default: every child module with a parameter that
        requires a gradient (the engine checks that no trainable parameter is left out)."""
        return [name for name, child in self.named_children()
                if any(p.requires_grad for p in child.parameters())]

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters the optimizer updates; methods with EMA teachers exclude them."""
        return (p for p in self.parameters() if p.requires_grad)
