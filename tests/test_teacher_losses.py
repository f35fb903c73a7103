"""Hand-checked values of the shared teacher-student pieces: box masks, region-weighted loss,
CVBM's bidirectional consistency, ramps, EMA arithmetic, LCC pseudo-labels."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ssmis.losses import dice_loss, linear_dice_loss, soft_cross_entropy
from ssmis.methods.copy_paste import pseudo_labels, region_loss_2d, region_loss_3d
from ssmis.methods.cvbm import bidirectional_consistency, reverse_target
from ssmis.methods.teacher import ema_alpha, ema_update, make_teacher
from ssmis.mixing import box_mask, box_size, mix
from ssmis.ramps import ramped_weight, sigmoid_rampup

# -- copy-paste masks -------------------------------------------------------------------------


def test_box_mask_size_and_position() -> None:
    assert box_size((112, 112, 80), 2 / 3) == (74, 74, 53)  # BCP LA
    assert box_size((256, 256), 2 / 3) == (170, 170)  # BCP ACDC
    g = torch.Generator().manual_seed(0)
    starts = []
    for _ in range(200):
        m = box_mask((30, 24), 2 / 3, generator=g)
        assert m.shape == (30, 24) and int((m == 0).sum()) == 20 * 16
        rows = torch.nonzero((m == 0).any(1)).flatten()
        cols = torch.nonzero((m == 0).any(0)).flatten()
        assert len(rows) == 20 and len(cols) == 16
        starts.append((int(rows[0]), int(cols[0])))
    xs, ys = zip(*starts, strict=True)
    assert min(xs) == 0 and max(xs) == 30 - 20 - 1  # randint(0, 10): upper bound exclusive
    assert min(ys) == 0 and max(ys) == 24 - 16 - 1


def test_box_mask_origin_extent_reproduces_clipping() -> None:
    g = torch.Generator().manual_seed(1)
    sizes = [int((box_mask((96, 96, 96), 2 / 3, origin_extent=(112, 112, 80),
                           generator=g) == 0).sum()) for _ in range(50)]
    assert max(sizes) == 64**3 and min(sizes) < 64**3  # clipped at the border sometimes


def test_mix_images_and_labels() -> None:
    m = torch.tensor([[1.0, 0.0]])
    a, b = torch.ones(2, 1, 1, 2), torch.zeros(2, 1, 1, 2)
    assert mix(a, b, m)[:, 0].tolist() == [[[1.0, 0.0]], [[1.0, 0.0]]]
    la, lb = torch.full((2, 1, 2), 3), torch.full((2, 1, 2), 1)
    out = mix(la, lb, m)
    assert out.dtype == torch.long and out[0].tolist() == [[3, 1]]


# -- region-weighted losses -------------------------------------------------------------------


def _two_pixels() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # pixel 0 (outside the box, M=1): p = (.5, .5), target_out 1;
    # pixel 1 (box, M=0): p = (.75, .25), target_in 0
    logits = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]])  # 1 x 2 x 1 x 2
    mask = torch.tensor([[1.0, 0.0]])
    return logits, torch.tensor([[[1, 1]]]), torch.tensor([[[0, 0]]]), mask


def test_region_loss_3d_hand_value() -> None:
    logits, t_out, t_in, mask = _two_pixels()
    s = 1e-5
    dice_out = 1 - ((0 + s) / (0.5 + s) + (1.0 + s) / (1.5 + s)) / 2
    dice_in = 1 - ((1.5 + s) / (1.75 + s) + (0 + s) / (0.25 + s)) / 2
    ce_out, ce_in = math.log(2), -math.log(0.75)
    expected = 0.5 * (1.0 * (dice_out + ce_out) + 0.5 * (dice_in + ce_in))
    got = region_loss_3d(logits, t_out, t_in, mask, 1.0, 0.5)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_region_loss_2d_hand_value_and_background_mask_bug() -> None:
    logits, t_out, t_in, mask = _two_pixels()
    s = 1e-10
    # squared denominators; class 0 of the "out" term: faithful = unmasked (both pixels)
    d_out_c1 = 1 - (2 * 0.5) / (0.25 + 1)
    d_out_c0_fixed = 1 - (0 + s) / (0.25 + s)
    d_out_c0_bug = 1 - (0 + s) / (0.25 + 0.5625 + s)  # both pixels counted, no class 0 there
    d_in_c0 = 1 - (2 * 0.75) / (0.5625 + 1)
    d_in_c1 = 1 - (0 + s) / (0.0625 + s)
    ce = math.log(2) + 0.5 * -math.log(0.75)
    dice, got_ce = region_loss_2d(logits, t_out, t_in, mask, 1.0, 0.5, mask_background=True)
    assert float(got_ce) == pytest.approx(ce, rel=1e-6)
    fixed = (d_out_c0_fixed + d_out_c1) / 2 + 0.5 * (d_in_c0 + d_in_c1) / 2
    assert float(dice) == pytest.approx(fixed, rel=1e-5)
    dice_bug, _ = region_loss_2d(logits, t_out, t_in, mask, 1.0, 0.5)
    # t_in = 0 at pixel 0 too: unmasked class-0 Dice of the in-term uses both pixels
    d_in_c0_bug = 1 - (2 * (0.5 + 0.75)) / ((0.25 + 0.5625) + 2)
    bug = (d_out_c0_bug + d_out_c1) / 2 + 0.5 * (d_in_c0_bug + d_in_c1) / 2
    assert float(dice_bug) == pytest.approx(bug, rel=1e-5)


def test_dice_without_mask_unchanged_by_background_flag() -> None:
    probs = torch.softmax(torch.randn(2, 4, 8, 8), 1)
    target = torch.randint(0, 4, (2, 8, 8))
    assert torch.equal(dice_loss(probs, target), dice_loss(probs, target, mask_background=False))


def test_linear_dice_is_per_sample() -> None:
    # both samples predict class 0; sample 0 is class 0 (both class Dices 1, the empty class by
    # smoothing), sample 1 is class 1 (both 0): mean over batch x classes = 0.5
    probs = torch.tensor([[[1.0], [0.0]], [[1.0], [0.0]]])  # B x C x N = 2 x 2 x 1
    target = torch.tensor([[0], [1]])
    assert float(linear_dice_loss(probs, target)) == pytest.approx(0.5, abs=1e-4)


def test_soft_cross_entropy_double_softmax_bounds() -> None:
    z = torch.tensor([[[100.0], [-100.0], [-100.0], [-100.0]]])  # 1 x 4 x 1
    t = torch.tensor([[[1.0], [0.0], [0.0], [0.0]]])
    m = torch.ones_like(t)
    once = soft_cross_entropy(z, t, m)
    twice = soft_cross_entropy(torch.softmax(z, 1), t, m)
    assert float(once) == pytest.approx(0.0, abs=1e-6)
    e = math.e
    assert float(twice) == pytest.approx(-math.log(e / (e + 3)) / 4, rel=1e-5)


# -- CVBM bidirectional consistency -----------------------------------------------------------


def test_bidirectional_consistency_two_classes() -> None:
    z_fg = torch.zeros(1, 2, 1)
    z_bg = torch.tensor([[[math.log(3.0)], [0.0]]])
    z_m = z_bg.clone()
    assert torch.allclose(reverse_target(z_bg), torch.tensor([[[0.25], [0.75]]]))
    assert torch.allclose(reverse_target(z_bg, "complement"), reverse_target(z_bg))
    for mode in ("softmax_neg", "complement"):
        got = bidirectional_consistency(z_fg, z_m, z_bg, mode)
        assert float(got) == pytest.approx(0.0625 + 0.0625, rel=1e-6)


def test_bidirectional_consistency_four_classes() -> None:
    z_fg = torch.zeros(1, 4, 1)
    z_m = torch.zeros(1, 4, 1)
    z_bg = torch.tensor([math.log(3.0), 0.0, 0.0, 0.0]).reshape(1, 4, 1)
    # code: softmax(1 - z_bg) = softmax(-z_bg) = (0.1, 0.3, 0.3, 0.3)
    assert float(bidirectional_consistency(z_fg, z_m, z_bg)) == pytest.approx(0.0075, rel=1e-5)
    # fix: (1 - softmax(z_bg)) / 3 = (1/6, 5/18, 5/18, 5/18)
    got = bidirectional_consistency(z_fg, z_m, z_bg, "complement")
    assert float(got) == pytest.approx(1 / 432, rel=1e-5)
    assert torch.allclose(reverse_target(z_bg, "complement").sum(1), torch.ones(1, 1))


def test_consistency_gradients_flow_into_both_sides() -> None:
    z_fg, z_m, z_bg = (torch.randn(1, 4, 3, requires_grad=True) for _ in range(3))
    bidirectional_consistency(z_fg, z_m, z_bg).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (z_fg, z_m, z_bg))


# -- ramps --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("step", "expected"), [
    (0, 0.0067), (1500, 0.060), (3000, 0.2865), (4500, 0.7316), (6000, 1.0), (9000, 1.0)])
def test_cvbm_la_ramp(step: int, expected: float) -> None:
    assert ramped_weight(step, 1.0, 40, 150) == pytest.approx(expected, abs=6e-4)


@pytest.mark.parametrize(("step", "expected"), [
    (0, 0.0034), (10_000, 0.053), (20_000, 0.285), (30_000, 0.5)])
def test_cvbm_acdc_ramp(step: int, expected: float) -> None:
    assert ramped_weight(step, 5 * 0.1, 200, 150) == pytest.approx(expected, abs=6e-4)


def test_sigmoid_rampup_edges() -> None:
    assert sigmoid_rampup(0, 0) == 1.0
    assert sigmoid_rampup(-5, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(10, 10) == 1.0


# -- EMA --------------------------------------------------------------------------------------


def _pair() -> tuple[nn.Module, nn.Module]:
    student = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    teacher = make_teacher(student)
    with torch.no_grad():
        teacher[0].weight.fill_(1.0)
        student[0].weight.fill_(0.0)
        teacher[1].running_mean.fill_(1.0)
        student[1].running_mean.fill_(0.0)
    return student, teacher


def test_ema_arithmetic() -> None:
    assert ema_alpha(0.99) == 0.99
    assert ema_alpha(0.99, step=0) == 0.0 and ema_alpha(0.99, step=9) == pytest.approx(0.9)
    assert ema_alpha(0.99, step=10_000) == 0.99
    student, teacher = _pair()
    assert all(not p.requires_grad for p in teacher.parameters())
    ema_update(teacher, student, 0.99)
    assert float(teacher[0].weight) == pytest.approx(0.99)
    assert float(teacher[1].running_mean) == 1.0  # 'own': buffers untouched
    ema_update(teacher, student, 0.99, step=9, buffers="ema")
    assert float(teacher[0].weight) == pytest.approx(0.99 * 0.9)
    assert float(teacher[1].running_mean) == pytest.approx(0.9)
    student, teacher = _pair()
    ema_update(teacher, student, 0.99, step=0)  # SSL4MIS: the first update copies the student
    assert float(teacher[0].weight) == 0.0


# -- pseudo-labels ----------------------------------------------------------------------------


def test_pseudo_labels_keep_largest_component_per_class() -> None:
    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[0, :2, :2] = 1  # big blob of class 1
    labels[0, 5, 5] = 1  # isolated voxel of class 1 -> removed
    labels[0, 4, 0] = 2
    logits = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).float() * 10
    out = pseudo_labels(logits)
    assert int((out == 1).sum()) == 4 and int(out[0, 5, 5]) == 0 and int(out[0, 4, 0]) == 2
    binary = torch.nn.functional.one_hot(labels.clamp(max=1), 2).movedim(-1, 1).float() * 10
    assert int(pseudo_labels(binary).sum()) == 4
    assert int(pseudo_labels(binary, lcc=False).sum()) == 6
