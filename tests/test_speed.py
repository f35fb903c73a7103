"""The fast paths of the training step give what the plain paths give.

* foreach EMA (``teacher.EMA_FOREACH``) and foreach SGD (``train.foreach``): bitwise;
* ALHVR's low-resolution prototypes and similarities (``alhvr.FAST_PROTOTYPES``): the same
  loss and gradients to float tolerance on the same batch;
* channels-last networks and batches (``train.channels_last``): the same loss per method to
  float tolerance;
* ``torch.compile`` of the networks (``train.compile``) runs a training step (slow);
* ``benchmarks/gpu_check.py`` runs in its quick CPU mode.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssmis.engine.fast import batch_to_device, compile_networks
from ssmis.methods import METHODS, alhvr, build_method, teacher
from tests.conftest import REPO, tiny_method_config

pytestmark = pytest.mark.usefixtures("one_thread")

STEP_METHODS = ["supervised", "mean_teacher", "uamt", "cps", "bcp", "cvbm", "cml", "alhvr"]


def _batch(seed: int = 0, n: int = 2, size: int = 32) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        label = torch.randint(0, 4, (n, size, size), generator=g)
        image = label.unsqueeze(1).float() + 0.3 * torch.randn(n, 1, size, size, generator=g)
        out.append({"image": image, "label": label})
    return out[0], {"image": out[1]["image"]}


def _self_training_method(name: str) -> torch.nn.Module:
    cls = METHODS[name]
    params = {"pretrain_iterations": 1} if "pretrain_iterations" in cls.Params.model_fields else {}
    torch.manual_seed(0)
    method = build_method(tiny_method_config(name, params, iterations=6)).train()
    phases = method.phases()
    if len(phases) > 1:
        method.on_phase_start(phases[-1])
    return method


def _loss(method: torch.nn.Module, labeled: dict, unlabeled: dict, step: int = 3,
          seed: int = 5) -> torch.Tensor:
    torch.manual_seed(seed)
    return method.training_step(labeled, unlabeled, step)["loss"]


# -- EMA and optimizer ------------------------------------------------------------------------


@pytest.mark.parametrize("buffers", ["own", "ema"])
def test_foreach_ema_is_bitwise_the_plain_ema(buffers: str, monkeypatch) -> None:
    method = _self_training_method("mean_teacher")
    student, t0 = method.student, method.teacher
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
        for b in student.buffers():
            if b.is_floating_point():
                b.add_(torch.rand_like(b))
            else:
                b.add_(3)
    results = []
    for fast in (False, True):
        monkeypatch.setattr(teacher, "EMA_FOREACH", fast)
        t = copy.deepcopy(t0)
        teacher.ema_update(t, student, 0.99, step=7, buffers=buffers)
        results.append(t.state_dict())
    plain, fast_state = results
    assert plain.keys() == fast_state.keys()
    for k in plain:
        assert torch.equal(plain[k], fast_state[k]), k
    if buffers == "own":  # buffers untouched
        for (k, v), (_, v0) in zip(fast_state.items(), t0.state_dict().items(), strict=True):
            if "running" in k or "num_batches" in k:
                assert torch.equal(v, v0), k


def test_ema_refuses_mismatched_networks() -> None:
    a = torch.nn.Linear(2, 2)
    b = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    with pytest.raises(ValueError):
        teacher.ema_update(a, b, 0.9)


def test_foreach_sgd_is_bitwise_the_loop() -> None:
    method = _self_training_method("bcp")
    labeled, unlabeled = _batch()
    states = []
    for foreach in (False, True):
        m = copy.deepcopy(method)
        opt = torch.optim.SGD(list(m.trainable_parameters()), lr=0.01, momentum=0.9,
                              weight_decay=1e-4, foreach=foreach)
        for step in range(3, 5):
            loss = _loss(m, labeled, unlabeled, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            m.on_step_end(step)
        states.append(m.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


# -- ALHVR ------------------------------------------------------------------------------------


def test_upsample_adjoint_is_the_transpose() -> None:
    g = torch.Generator().manual_seed(0)
    for low, full in (((2, 3, 4, 5), (16, 20)), ((1, 2, 3, 4, 2), (12, 16, 8))):
        h = torch.randn(*low, generator=g, dtype=torch.float64)
        grid = torch.randn(low[0], 2, *full, generator=g, dtype=torch.float64)
        up = alhvr.upsample(h, full)  # B x D x full
        lhs = torch.einsum("bd...,bk...->bdk", up, grid)
        adj = alhvr.upsample_adjoint(grid, h.shape)
        rhs = torch.einsum("bd...,bk...->bdk", h, adj)
        torch.testing.assert_close(lhs, rhs)


def test_lowres_prototypes_and_similarity_match_the_upsampled_ones() -> None:
    g = torch.Generator().manual_seed(1)
    h = torch.randn(3, 8, 4, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (3, 32, 32), generator=g)
    labels[0] = 0  # a sample without some classes: zero prototypes for them
    up = alhvr.upsample(h, (32, 32))
    torch.testing.assert_close(alhvr.masked_prototypes_lowres(h, labels, 4),
                               alhvr.masked_prototypes(up, labels, 4))
    protos = torch.randn(4, 8, generator=g, dtype=torch.float64)
    torch.testing.assert_close(alhvr.prototype_similarity_lowres(h, protos, (32, 32)),
                               alhvr.prototype_similarity(up, protos))


@pytest.mark.parametrize("ce_mode,cos_mode", [("broadcast", "all_classes"),
                                              ("per_pixel", "target_class")])
def test_alhvr_fast_prototypes_same_loss_and_gradients(ce_mode, cos_mode, monkeypatch) -> None:
    cfg = tiny_method_config("alhvr", {"ce_mode": ce_mode, "cos_mode": cos_mode,
                                       "rampup_iters_per_epoch": 1})
    torch.manual_seed(0)
    method = build_method(cfg).train()
    labeled, unlabeled = _batch(3)
    out = {}
    for fast in (False, True):
        monkeypatch.setattr(alhvr, "FAST_PROTOTYPES", fast)
        method.zero_grad(set_to_none=True)
        loss = _loss(method, labeled, unlabeled, step=400)
        loss.backward()
        out[fast] = (loss.detach(), [p.grad.clone() for p in method.parameters()])
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(out[True][1], out[False][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# -- channels-last ----------------------------------------------------------------------------


def _no_dropout(method: torch.nn.Module) -> torch.nn.Module:
    """Dropout off: its mask is drawn in memory order, so another layout draws another mask."""
    for mod in method.modules():
        if isinstance(mod, torch.nn.modules.dropout._DropoutNd):
            mod.p = 0.0
    return method


@pytest.mark.parametrize("name", STEP_METHODS)
def test_channels_last_same_loss(name: str) -> None:
    method = _no_dropout(_self_training_method(name))
    labeled, unlabeled = _batch(4)
    plain = _loss(method, labeled, unlabeled)
    fast = copy.deepcopy(method).to(memory_format=torch.channels_last)
    cpu = torch.device("cpu")
    lab = batch_to_device(labeled, cpu, channels_last=True)
    unl = batch_to_device(unlabeled, cpu, channels_last=True)
    assert lab["image"].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(_loss(fast, lab, unl), plain, rtol=1e-4, atol=1e-5)


# -- torch.compile ----------------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_networks_train_a_step() -> None:
    """Dynamo traces every encoder/decoder call of a method's step, forward and backward
    (``aot_eager``: the whole torch.compile pipeline but code generation, which on a 2-core CPU
    takes minutes; ``benchmarks/train_step_speed.py --set train.compile=true`` runs inductor)."""
    method = _no_dropout(_self_training_method("mean_teacher"))
    reference = copy.deepcopy(method)
    assert compile_networks(method, backend="aot_eager") == 4  # student and teacher: 1 + 1 each
    labeled, unlabeled = _batch(6)
    loss = _loss(method, labeled, unlabeled)
    loss.backward()
    torch.testing.assert_close(loss, _loss(reference, labeled, unlabeled), rtol=1e-5,
                               atol=1e-6)
    assert all(p.grad is not None for p in method.student.parameters())
    assert set(method.state_dict()) == set(reference.state_dict())  # keys unchanged


# -- batched sliding windows -----------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [2, 3, 64])
def test_batched_sliding_windows_match_one_at_a_time(batch_size: int) -> None:
    from ssmis.eval.inference import predict_sliding_window
    from ssmis.models import build_model

    torch.manual_seed(0)
    net = build_model("vnet3d", 1, 2, n_filters=2, normalization="batchnorm").eval()
    for m in net.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    rng = torch.Generator().manual_seed(1)
    volume = torch.randn(40, 36, 20, generator=rng).numpy()
    args = (net, volume, (32, 32, 16), (8, 8, 4), 2)
    one = predict_sliding_window(*args, batch_size=1, return_probabilities=True)
    many = predict_sliding_window(*args, batch_size=batch_size, return_probabilities=True)
    assert one.shape == (2, 40, 36, 20)
    torch.testing.assert_close(torch.from_numpy(many), torch.from_numpy(one), rtol=1e-5,
                               atol=1e-6)
    assert (one.argmax(0) == many.argmax(0)).mean() > 0.999


def test_evaluation_passes_window_batch_size(monkeypatch) -> None:
    import numpy as np

    from ssmis.eval import segment

    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        return np.zeros(args[1].shape, np.uint8)

    monkeypatch.setattr(segment, "predict_sliding_window", fake)
    cfg = tiny_method_config("supervised", {}, kind="3d")
    cfg.eval.window_batch_size = 5
    segment.segment(lambda x: x, np.zeros((40, 40, 20), np.float32), 3, cfg,
                     torch.device("cpu"))
    assert seen["batch_size"] == 5


# -- the GPU check's quick CPU mode -----------------------------------------------------------


def test_gpu_check_quick_cpu_mode(tmp_path: Path, phantom_root: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--quick",
         "--variants", "plain", "fast",
         "--data", str(tmp_path / "packed"), "--phantom-root", str(phantom_root),
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "| bcp |" in out.stdout and "whole loop" in out.stdout
    assert "| on the device (data.on_device) |" in out.stdout


def test_class_argmax_is_argmax_ties_included() -> None:
    from ssmis.losses import class_argmax

    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 3, (3, 4, 9, 7), generator=g).float()  # many ties
    x[0, :, 0, 0] = 1.0  # all equal: the first index
    assert torch.equal(class_argmax(x), x.argmax(dim=1))
    assert class_argmax(x)[0, 0, 0] == 0
    y = torch.softmax(torch.randn(2, 4, 8, 8, 4, generator=g), 1)
    assert torch.equal(class_argmax(y), y.argmax(1))
