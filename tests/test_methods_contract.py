"""Every registered method trains a few steps on tiny 2D and 3D tensors, changes its weights,
predicts logits of the input size, and resumes from a mid-run state_dict exactly.

The steps are driven like the engine does (phase starts, zero_grad, backward, step,
on_step_end), so a new method is covered by registering it.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from ssmis.methods import METHODS, Method, Phase
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


def _run(method: Method, opt: torch.optim.Optimizer, batches, start: int, stop: int):
    method.train()
    phases = method.phases()
    losses = []
    for step in range(start, stop):
        phase, local = _phase_at(phases, step)
        if local == 0 and step > 0:
            method.on_phase_start(phase)
            if phase.reset_optimizer:
                opt = _optimizer(method)
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
