"""Every registered method trains a few steps on tiny 2D and 3D tensors, changes its weights,
predicts logits of the input size, and resumes from a mid-run state_dict exactly.

The steps are driven like the engine does (phase starts, zero_grad, backward, step,
on_step_end), so a new method is covered by registering it.
"""

from __future__ import annotations

import copy
import itertools
import math
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ssmis.errors import SSMISError
from ssmis.methods import METHODS, Method, Phase
from ssmis.methods.teacher import frozen_teacher_problem
from tests.conftest import tiny_method_config

NUM_STEPS = 3

#: tiny SAM for synfoc (ViT of 2 blocks, 64 px input): seconds on a CPU
TINY_SAM = {"image_size": 64, "embed_dim": 16, "depth": 2, "num_heads": 2,
            "global_attn_indexes": [1], "window_size": 2, "prompt_embed_dim": 16,
            "decoder_mlp_dim": 32, "decoder_heads": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


def _require_sam() -> None:
    """Skip without the optional ``segment-anything`` package (``ssmis[sam]``)."""
    from ssmis.errors import SSMISError
    from ssmis.models.sam_lora import import_sam_modeling

    try:
        import_sam_modeling()
    except SSMISError:
        pytest.skip("segment-anything is not installed (pip install 'ssmis[sam]')")


def _config(kind: str, method: str, root: Path) -> Any:
    cls = METHODS[method]
    params: dict[str, Any] = {}
    if "pretrain_iterations" in cls.Params.model_fields:
        params["pretrain_iterations"] = 1  # both phases within the 3 steps
    if "sam" in cls.Params.model_fields:
        params["sam"] = dict(TINY_SAM)
    return tiny_method_config(method, params, kind, root, iterations=NUM_STEPS)


def _batches(kind: str, n: int) -> list[tuple[dict, dict]]:
    g = torch.Generator().manual_seed(0)
    shape, classes = ((32, 32), 4) if kind == "2d" else ((32, 32, 16), 2)
    out = []
    for _ in range(n):
        pair = []
        for _ in range(2):
            label = torch.randint(0, classes, (2, *shape), generator=g)
            image = label.unsqueeze(1).float() + 0.3 * torch.randn(2, 1, *shape, generator=g)
            pair.append({"image": image, "label": label})
        out.append((pair[0], pair[1]))
    return out


def _phase_at(phases: list[Phase], step: int) -> tuple[Phase, int]:
    start = 0
    for phase in phases:
        if step < start + phase.iterations:
            return phase, step - start
        start += phase.iterations
    return phases[-1], step - start


def _optimizer(method: Method) -> torch.optim.Optimizer:
    return torch.optim.SGD(list(method.trainable_parameters()), lr=0.01, momentum=0.9,
                           weight_decay=1e-4)


def _run(method: Method, opt: torch.optim.Optimizer, batches, start: int, stop: int,
         before_step: Callable[[int], None] | None = None):
    """Steps ``start..stop-1`` as the engine drives them; ``before_step(step)`` runs after any
    phase start and before the step."""
    method.train()
    phases = method.phases()
    losses = []
    for step in range(start, stop):
        phase, local = _phase_at(phases, step)
        if local == 0 and step > 0:
            method.on_phase_start(phase)
            if phase.reset_optimizer:
                opt = _optimizer(method)
        if before_step is not None:
            before_step(step)
        labeled, unlabeled = batches[step]
        out = method.training_step(labeled, unlabeled if method.uses_unlabeled else None, step)
        for key, value in out.items():
            if key != "loss":
                assert not value.requires_grad, f"logged entry {key} is not detached"
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        method.on_step_end(step)
        losses.append(float(out["loss"].detach()))
    return opt, losses


@pytest.mark.parametrize("kind", ["2d", "3d"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_contract(name: str, kind: str, tmp_path: Path) -> None:
    if int(kind[0]) not in METHODS[name].spatial_dims:
        pytest.skip(f"{name} is {'/'.join(f'{d}D' for d in METHODS[name].spatial_dims)} only")
    if name == "synfoc":
        _require_sam()
    cfg = _config(kind, name, tmp_path)
    torch.manual_seed(0)
    method = METHODS[name](cfg)
    assert sum(p.iterations for p in method.phases()) == NUM_STEPS
    trainable = {id(p) for p in method.trainable_parameters()}
    assert trainable, "no trainable parameters"
    assert all(p.requires_grad for p in method.trainable_parameters())
    before = {k: v.clone() for k, v in method.state_dict().items()}
    batches = _batches(kind, NUM_STEPS)

    # two steps, snapshot, one more step
    opt = _optimizer(method)
    opt, losses = _run(method, opt, batches, 0, 2)
    snapshot = copy.deepcopy(method.state_dict())
    opt_state = copy.deepcopy(opt.state_dict())
    torch.manual_seed(123)
    opt, more = _run(method, opt, batches, 2, NUM_STEPS)
    losses += more
    assert all(math.isfinite(v) for v in losses), losses
    changed = [k for k, v in method.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed, "no parameter changed"

    x = batches[0][0]["image"]
    method.eval()
    with torch.no_grad():
        logits = method.predict(x)
    assert logits.shape == (x.shape[0], cfg.data.num_classes, *x.shape[2:])
    assert torch.isfinite(logits).all()

    # a fresh instance loaded from the mid-run state continues identically
    torch.manual_seed(1)
    fresh = METHODS[name](cfg)
    fresh.load_state_dict(snapshot)
    fresh_opt = _optimizer(fresh)
    if _phase_at(fresh.phases(), 2)[1] == 0 and _phase_at(fresh.phases(), 2)[0].reset_optimizer:
        pass  # the phase start resets it anyway
    else:
        fresh_opt.load_state_dict(opt_state)
    torch.manual_seed(123)
    _, fresh_losses = _run(fresh, fresh_opt, batches, 2, NUM_STEPS)
    assert fresh_losses == losses[2:]
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh.predict(x), logits)


#: ``method.params`` that change how a teacher network is run or updated
TEACHER_OPTIONS = ("teacher_train_mode", "ema_buffers", "independent_teacher_init")


def _choices(cls: type[Method], field: str) -> list[Any]:
    """Every value a bool / Literal / optional teacher option can take."""
    annotation = cls.Params.model_fields[field].annotation
    values: list[Any] = []
    args = [annotation] if typing.get_origin(annotation) is typing.Literal else (
        typing.get_args(annotation) or [annotation])
    for arg in args:
        if arg is bool:
            values += [True, False]
        elif arg is type(None):
            values.append(None)
        elif typing.get_origin(arg) is typing.Literal:
            values += list(typing.get_args(arg))
    assert values, f"{cls.name}.{field}: cannot enumerate {annotation}"
    return values


def _teacher_combinations(cls: type[Method]) -> list[dict[str, Any]]:
    fields = [f for f in TEACHER_OPTIONS if f in cls.Params.model_fields]
    if not fields:
        return []
    return [dict(zip(fields, values, strict=True))
            for values in itertools.product(*(_choices(cls, f) for f in fields))]


def _teachers(method: Method) -> dict[str, torch.nn.Module]:
    """Child networks none of whose parameters the optimizer trains: the EMA teachers."""
    return {name: child for name, child in method.named_children()
            if any(True for _ in child.parameters())
            and not any(p.requires_grad for p in child.parameters())}


def _bn_buffers(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{name}.{b}": getattr(m, b).detach().clone()
            for name, m in net.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            for b in ("running_mean", "running_var")}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_teachers_move_under_every_option_combination(name: str, tmp_path: Path) -> None:
    """Each combination of a method's teacher options is refused at config time (its params,
    or ssmis.experiment.load_config: one line naming method.params) or trains a teacher whose
    parameters AND BatchNorm statistics move during the phase that uses it (an eval-mode
    teacher whose statistics stay at their initial values predicts nothing while validation of
    the student looks healthy)."""
    cls = METHODS[name]
    if name == "synfoc":
        _require_sam()
    combos = _teacher_combinations(cls)
    if not combos:
        method = cls(_config("2d" if 2 in cls.spatial_dims else "3d", name, tmp_path))
        assert not _teachers(method), f"{name} has a teacher but no teacher options"
        return
    kind = "2d" if 2 in cls.spatial_dims else "3d"
    accepted = 0
    for options in combos:
        base = _config(kind, name, tmp_path).method.params
        raw = {**base, **options}
        try:
            params = cls.parse_params(raw)
        except SSMISError as err:
            assert "method.params." in str(err) and "\n" not in str(err), str(err)
            continue
        problem = frozen_teacher_problem(params)  # refused by load_config for new runs
        if problem is not None:
            assert problem.startswith("method.params.") and "\n" not in problem, problem
            continue
        accepted += 1
        cfg = tiny_method_config(name, raw, kind, tmp_path, iterations=NUM_STEPS)
        torch.manual_seed(0)
        method = cls(cfg)
        teachers = _teachers(method)
        assert teachers, f"{name} {options}: no teacher network found"
        last_start = NUM_STEPS - method.phases()[-1].iterations
        start: dict[str, tuple[dict, dict]] = {}

        def snapshot(step: int, method: Method = method, teachers=teachers, start=start,
                     last_start: int = last_start) -> None:
            if step == last_start:
                for t, net in teachers.items():
                    start[t] = ({k: v.detach().clone() for k, v in net.named_parameters()},
                                _bn_buffers(net))

        _run(method, _optimizer(method), _batches(kind, NUM_STEPS), 0, NUM_STEPS,
             before_step=snapshot)
        for t, net in teachers.items():
            params, buffers = start[t]
            assert any(not torch.equal(v, params[k]) for k, v in net.named_parameters()), (
                f"{name} {options}: {t}'s parameters never moved")
            now = _bn_buffers(net)
            frozen = [k for k, v in buffers.items() if torch.equal(v, now[k])]
            assert not frozen, f"{name} {options}: {t}'s BatchNorm statistics never moved: {frozen}"
    assert accepted, f"{name}: every teacher option combination is refused"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_unset_pretraining_is_the_published_share_of_the_run(name: str, tmp_path: Path) -> None:
    """A phase length left unset is the authors' share of train.iterations (ACDC 10,000 of
    40,000, LA 2,000 of 17,000), not 0: `method.name=bcp` on an own-data config used to run
    BCP without its pre-training. The run log's phase line says so."""
    cls = METHODS[name]
    if "pretrain_iterations" not in cls.Params.model_fields:
        pytest.skip(f"{name} has one phase")
    for kind, total, pretrain, share in (("2d", 1000, 250, "25%"), ("3d", 1700, 200, "11.8%")):
        if int(kind[0]) not in cls.spatial_dims:
            continue
        method = cls(tiny_method_config(name, {}, kind, tmp_path, iterations=total))
        assert [(p.name, p.iterations) for p in method.phases()] == [
            ("pretrain", pretrain), ("self_train", total - pretrain)]
        assert method.phase_summary() == (
            f"phases: pretrain 0..{pretrain - 1} ({pretrain} it, {share} of {total}), "
            f"self_train {pretrain}..{total - 1} ({total - pretrain} it, "
            f"{100 * (total - pretrain) / total:.3g}% of {total}); "
            f"method.params.pretrain_iterations unset: the published share {share}")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_pretraining_as_long_as_the_run_names_the_share_fix(name: str, tmp_path: Path) -> None:
    """`ssmis train configs/acdc/bcp_cpu.yaml train.iterations=200` (pretrain 200): the error
    names the fix, a share of the run."""
    cls = METHODS[name]
    if "pretrain_iterations" not in cls.Params.model_fields:
        pytest.skip(f"{name} has one phase")
    kind = "2d" if 2 in cls.spatial_dims else "3d"
    cfg = tiny_method_config(name, {"pretrain_iterations": 200}, kind, tmp_path, iterations=200)
    with pytest.raises(SSMISError) as err:
        cls(cfg).phases()
    assert str(err.value).startswith("method.params.pretrain_iterations: 200 leaves no "
                                     "self-training within train.iterations = 200; ")
    assert "method.params.pretrain_iterations=25%" in str(err.value)
    fixed = tiny_method_config(name, {"pretrain_iterations": "25%"}, kind, tmp_path,
                               iterations=200)
    assert [p.iterations for p in cls(fixed).phases()] == [50, 150]


def test_single_phase_summary(tmp_path: Path) -> None:
    method = METHODS["mean_teacher"](tiny_method_config("mean_teacher", {}, "2d", tmp_path,
                                                        iterations=600))
    assert method.phase_summary() == "phases: train 0..599 (600 it, 100% of 600)"


def test_a_frozen_teacher_is_refused_for_new_runs_but_old_runs_still_load(tmp_path: Path
                                                                         ) -> None:
    """ssmis before this rule recorded ema_buffers: own for every mean teacher run: such a run
    with teacher_train_mode false still loads (resume, evaluate, predict) as it trained, while
    a new experiment file with that combination is refused in one line."""
    import yaml

    from ssmis.experiment import load_config

    params = METHODS["mean_teacher"].parse_params({"ema_buffers": "own",
                                                   "teacher_train_mode": False})
    assert params.ema_buffers == "own"
    assert METHODS["mean_teacher"].parse_params({"teacher_train_mode": False}).ema_buffers \
        == "ema"
    assert METHODS["mean_teacher"].parse_params({}).ema_buffers == "own"
    cfg = tiny_method_config("mean_teacher", {"ema_buffers": "own",
                                              "teacher_train_mode": False}, "2d", tmp_path)
    path = tmp_path / "mt.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    with pytest.raises(SSMISError, match=r"mt\.yaml: method\.params\.ema_buffers: 'own'"):
        load_config(path)
