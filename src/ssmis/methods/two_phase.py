"""Supervised pre-training then teacher-student self-training (BCP, CVBM), as one schedule.

``train.iterations`` is the *total*; ``method.params.pretrain_iterations`` of them are the first
phase (null, the default: the authors' share of their total, :data:`PUBLISHED_PRETRAIN`, scaled to
the run). The self-training phase starts from the best pre-trained weights (``init_from_best``),
where :meth:`TwoPhaseMethod.on_phase_start` copies the student into the teacher. The ramps of the
second phase count from its own start (the originals restart ``iter_num`` at 0).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, TypeVar

import torch
from pydantic import BaseModel, Field

from ssmis.errors import SSMISError
from ssmis.methods.base import Batch, Method, Phase
from ssmis.methods.teacher import (
    BufferPolicy,
    EMAParams,
    buffer_policy,
    copy_weights,
    ema_update,
    make_teacher,
)
from ssmis.ramps import ShareOrInt, run_share, share_fraction

P = TypeVar("P", bound=BaseModel)

PRETRAIN = "pretrain"
SELF_TRAIN = "self_train"


class TwoPhaseParams(EMAParams):
    recipe: Literal["auto", "acdc", "la"] = Field(
        default="auto",
        description="which of the authors' scripts to follow: 'acdc' (2D losses, batch "
        "layout, no 1/2 factors), 'la' (3D); auto = by the model's dimensionality",
    )
    ema_warmup: bool = Field(default=False, description="BCP/CVBM use a constant alpha")
    ema_buffers: BufferPolicy | None = Field(
        default=None,
        description="null = as the authors: 'ema' (state_dict EMA) for the acdc recipe, "
        "'own' (parameters only) for la; 'ema' for both with teacher_train_mode false",
    )
    pretrain_iterations: ShareOrInt | None = Field(
        default=None, description="first phase length, carved from train.iterations; or a "
        "share of it ('25%'); null = the published share (ACDC 10,000 of 40,000 = 25%, LA "
        "2,000 of 17,000 = 11.8%) of train.iterations", json_schema_extra=run_share("iterations"))
    reset_optimizer: bool | None = Field(
        default=None,
        description="fresh SGD state for self-training; null = as the authors: ACDC (2D) keeps "
        "the optimizer state (approximated by the state at the end of pre-training, not the one "
        "saved with the best checkpoint), LA (3D) starts a fresh optimizer",
    )


#: the authors' pre-training length and total per recipe (BCP, CVBM and CML scripts: ACDC 10,000
#: pre-training + 30,000 self-training, LA 2,000 + 15,000); a null ``pretrain_iterations`` is
#: this share of ``train.iterations``
PUBLISHED_PRETRAIN: dict[str, tuple[int, int]] = {"acdc": (10000, 40000), "la": (2000, 17000)}


def with_published_pretrain(params: P, recipe: str, total: int, declared: Any = None) -> P:
    """``params`` with a null ``pretrain_iterations`` set to the published share of ``total``
    (:data:`PUBLISHED_PRETRAIN` of ``recipe``), rounded to whole iterations. A share (the
    default or a ``'20%'`` given as ``declared``) of a run so short that it rounds to 0 keeps
    one pre-training iteration (``total >= 2``): a share never silently drops the phase."""
    value = params.pretrain_iterations  # type: ignore[attr-defined]
    if value is None:
        pre, of = PUBLISHED_PRETRAIN[recipe]
        value = int(round(total * pre / of))
    as_share = declared is None or (isinstance(declared, str) and share_fraction(declared) > 0)
    if as_share and value == 0 and total >= 2:
        value = 1
    return params.model_copy(update={"pretrain_iterations": value})


def published_share(recipe: str) -> str:
    """The published pre-training share of ``recipe`` as a percentage string (``'25%'``)."""
    pre, of = PUBLISHED_PRETRAIN[recipe]
    return f"{100 * pre / of:.3g}%"


def pretrain_note(declared: Any, recipe: str) -> str:
    """What the phase line adds when ``pretrain_iterations`` was left unset (the default)."""
    if declared.pretrain_iterations is not None:
        return ""
    return (f"; method.params.pretrain_iterations unset: the published share "
            f"{published_share(recipe)}")


def two_phases(total: int, pretrain: int, reset_optimizer: bool, recipe: str = "acdc"
               ) -> list[Phase]:
    """[pretrain (when > 0), self_train]; ``pretrain >= total`` is refused with the fix (a
    share of the run, by default the published one of ``recipe``)."""
    if pretrain >= total:
        raise SSMISError(
            f"method.params.pretrain_iterations: {pretrain} leaves no self-training within "
            f"train.iterations = {total}; give it as a share of the run, e.g. "
            f"method.params.pretrain_iterations={published_share(recipe)} (the published "
            f"share, also the default when unset)"
        )
    phases = []
    if pretrain > 0:
        phases.append(Phase(PRETRAIN, pretrain))
    phases.append(Phase(SELF_TRAIN, total - pretrain, reset_optimizer=reset_optimizer and
                        pretrain > 0, init_from_best=pretrain > 0))
    return phases


def local_step(step: int, pretrain: int) -> tuple[bool, int]:
    """(in pre-training?, iteration counted from the start of the current phase)."""
    if step < pretrain:
        return True, step
    return False, step - pretrain


class HalvedBatches:
    """Mixin (before :class:`Method` in the bases) for methods that split each batch into two
    halves (BCP, CVBM, CML): their batch rule and smallest forward batch. ``paired_halves``:
    labeled and unlabeled halves are mixed pairwise (BCP, CVBM), so both sizes must match."""

    name: ClassVar[str]
    paired_halves: ClassVar[bool] = True

    @classmethod
    def batch_problem(cls, labeled: int, unlabeled: int) -> str | None:
        return halves_problem(cls.name, labeled, unlabeled, paired=cls.paired_halves)

    @classmethod
    def forward_batch(cls, labeled: int, unlabeled: int) -> int:
        return max(min(labeled, unlabeled) // 2, 1)


TwoPhaseParamsT = TypeVar("TwoPhaseParamsT", bound=TwoPhaseParams)


class TwoPhaseMethod(HalvedBatches, Method[TwoPhaseParamsT]):
    """Base of BCP and CVBM: a student, its EMA teacher and the two-phase schedule.

    Subclasses build ``self.student`` (then call :meth:`_init_teacher`) and implement
    :meth:`pretrain_step` and :meth:`self_train_step` with the *local* iteration.
    """

    Params = TwoPhaseParams

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        p = self.params
        self.recipe = recipe = self.recipe_of(p, cfg)
        self.ema_buffers: BufferPolicy = buffer_policy(p.ema_buffers, p.teacher_train_mode,
                                                    "ema" if recipe == "acdc" else "own")
        self.reset_opt = p.reset_optimizer if p.reset_optimizer is not None else recipe == "la"

    @staticmethod
    def recipe_of(params: Any, cfg: Any) -> str:
        """``params.recipe``, ``auto`` resolved by the data's dimensionality (2D: acdc)."""
        if params.recipe != "auto":
            return str(params.recipe)
        return "acdc" if cfg.data.spatial_dims == 2 else "la"

    @classmethod
    def run_params(cls, cfg: Any, declared: Any) -> Any:
        """Shares resolved, and an unset ``pretrain_iterations`` the recipe's published share
        (:func:`with_published_pretrain`)."""
        p = super().run_params(cfg, declared)
        return with_published_pretrain(p, cls.recipe_of(p, cfg), cfg.train.iterations,
                                       declared.pretrain_iterations)

    def _init_teacher(self) -> None:
        self.teacher = make_teacher(self.student)

    def phases(self) -> list[Phase]:
        p = self.params
        return two_phases(self.cfg.train.iterations, p.pretrain_iterations, self.reset_opt,
                          self.recipe)

    def phase_note(self) -> str:
        return pretrain_note(self.declared_params, self.recipe)

    def on_phase_start(self, phase: Phase) -> None:
        if phase.name == SELF_TRAIN:
            copy_weights(self.teacher, self.student)

    def on_step_end(self, step: int) -> None:
        p = self.params
        pre, local = local_step(step, p.pretrain_iterations)
        if not pre:
            ema_update(self.teacher, self.student, p.ema_decay,
                       step=local if p.ema_warmup else None, buffers=self.ema_buffers)

    def training_step(
        self, labeled: Batch, unlabeled: Batch | None, step: int
    ) -> dict[str, torch.Tensor]:
        p = self.params
        pre, local = local_step(step, p.pretrain_iterations)
        if pre:
            return self.pretrain_step(labeled, local)
        if unlabeled is None:
            raise SSMISError(f"method {self.name}: self-training needs an unlabeled batch")
        return self.self_train_step(labeled, unlabeled, local)

    def pretrain_step(self, labeled: Batch, step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def self_train_step(
        self, labeled: Batch, unlabeled: Batch, step: int
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def halves_problem(name: str, labeled: int, unlabeled: int, paired: bool) -> str | None:
    """The batch rule of methods that split each batch into two halves (BCP, CVBM, CML): even
    sizes >= 2; ``paired`` (copy-paste between labeled and unlabeled halves, BCP/CVBM): equal
    labeled and unlabeled sizes."""
    for field, size in (("batch_size", labeled), ("unlabeled_batch_size", unlabeled)):
        if size < 2 or size % 2:
            return (f"train.{field}: {name} splits each batch into two equal halves; expected an "
                    f"even number >= 2, got {size}")
    if paired and labeled != unlabeled:
        return (f"train.unlabeled_batch_size: {name} pastes unlabeled halves into labeled ones "
                f"pairwise; expected it equal to train.batch_size ({labeled}), got {unlabeled}")
    return None


def halves(batch: Batch) -> tuple[Any, Any, Any, Any]:
    """(image_a, image_b, label_a, label_b): the two halves of a batch (BCP's sub-batches).

    Labels are None when the batch has none (unlabeled batches from the engine)."""
    image, label = batch["image"], batch.get("label")
    n = image.shape[0]
    if n < 2:
        raise SSMISError(f"copy-paste methods need at least 2 samples per half-batch, got {n}")
    h = n // 2
    if label is None:
        return image[:h], image[h:2 * h], None, None
    return image[:h], image[h:2 * h], label[:h], label[h:2 * h]
