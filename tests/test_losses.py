from __future__ import annotations

import pytest
import torch

from ssmis.config import ScheduleConfig
from ssmis.engine.schedule import learning_rate
from ssmis.losses import cross_entropy, dice_loss


def test_dice_loss_hand_computed() -> None:
    # one image, two classes, 4 pixels; class-1 probabilities 0.8, 0.6, 0.2, 0.0; label 1,1,0,0
    p1 = torch.tensor([0.8, 0.6, 0.2, 0.0])
    probs = torch.stack([1 - p1, p1]).reshape(1, 2, 2, 2)
    label = torch.tensor([1, 1, 0, 0]).reshape(1, 2, 2)
    eps = 1e-5
    fg = 1 - (2 * 1.4 + eps) / ((0.64 + 0.36 + 0.04) + 2 + eps)
    bg = 1 - (2 * 1.8 + eps) / ((0.04 + 0.16 + 0.64 + 1.0) + 2 + eps)
    assert dice_loss(probs, label).item() == pytest.approx((fg + bg) / 2, abs=1e-6)
    assert dice_loss(probs, label, include_background=False).item() == pytest.approx(fg, abs=1e-6)
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0]).reshape(1, 2, 2)
    fg_masked = 1 - (2 * 1.4 + eps) / ((0.64 + 0.36) + 2 + eps)
    got = dice_loss(probs, label, include_background=False, mask=mask).item()
    assert got == pytest.approx(fg_masked, abs=1e-6)


def test_dice_loss_perfect_prediction_is_zero() -> None:
    label = torch.randint(0, 3, (2, 8, 8))
    probs = torch.nn.functional.one_hot(label, 3).movedim(-1, 1).float()
    assert dice_loss(probs, label).item() == pytest.approx(0.0, abs=1e-6)


def test_masked_cross_entropy_matches_subset() -> None:
    logits = torch.randn(1, 3, 4, 4)
    label = torch.randint(0, 3, (1, 4, 4))
    mask = torch.zeros(1, 4, 4)
    mask[0, :2] = 1
    full = torch.nn.functional.cross_entropy(logits[..., :2, :], label[..., :2, :])
    assert cross_entropy(logits, label, mask).item() == pytest.approx(full.item(), rel=1e-6)


def test_learning_rate_schedules() -> None:
    assert learning_rate(0.01, 500, 1000, ScheduleConfig(kind="constant")) == 0.01
    assert learning_rate(0.01, 500, 1000, ScheduleConfig(kind="poly")) == pytest.approx(
        0.01 * 0.5**0.9)
    step = ScheduleConfig(kind="step", step_size=2500, gamma=0.1)
    assert learning_rate(0.01, 2499, 15000, step) == pytest.approx(0.01)
    assert learning_rate(0.01, 2500, 15000, step) == pytest.approx(0.001)
    assert learning_rate(0.01, 5000, 15000, step) == pytest.approx(0.0001)
