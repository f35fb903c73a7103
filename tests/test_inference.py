"""Slice-wise and sliding-window inference, and connected-component filtering."""

from __future__ import annotations

import numpy as np
import torch

from ssmis.components import largest_connected_component
from ssmis.eval.inference import (
    predict_slicewise,
    predict_sliding_window,
    window_starts,
)


def _threshold_net(batch: torch.Tensor) -> torch.Tensor:
    """Two-class 'network': class 1 where the intensity is above 0.5."""
    return torch.cat([0.5 - batch, batch - 0.5], dim=1) * 10


def test_slicewise_resizes_and_restores_shape() -> None:
    volume = np.zeros((3, 30, 22), np.float32)
    volume[:, 10:20, 5:15] = 1.0
    seen: list[tuple[int, ...]] = []

    def net(batch: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(batch.shape))
        return _threshold_net(batch)

    pred = predict_slicewise(net, volume, (32, 32), batch_size=2)
    assert pred.shape == volume.shape
    assert seen == [(2, 1, 32, 32), (1, 1, 32, 32)]
    assert (pred == (volume > 0.5)).mean() > 0.97


def test_window_starts_follow_ua_mt() -> None:
    assert window_starts(112, 112, 18) == [0]
    assert window_starts(130, 112, 18) == [0, 18]
    assert window_starts(131, 112, 18) == [0, 18, 19]
    assert window_starts(88, 80, 4) == [0, 4, 8]


def test_sliding_window_pads_covers_and_averages() -> None:
    rng = np.random.default_rng(0)
    volume = rng.random((20, 13, 9)).astype(np.float32)  # smaller than the patch on two axes
    calls: list[tuple[int, ...]] = []

    def net(batch: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(batch.shape))
        return _threshold_net(batch)

    pred = predict_sliding_window(net, volume, (16, 16, 12), (4, 4, 4), 2, batch_size=2)
    assert pred.shape == volume.shape
    np.testing.assert_array_equal(pred, (volume > 0.5).astype(np.uint8))
    assert calls[0] == (2, 1, 16, 16, 12)
    assert sum(c[0] for c in calls) == len(window_starts(20, 16, 4))
    probs = predict_sliding_window(net, volume, (16, 16, 12), (4, 4, 4), 2,
                                   return_probabilities=True)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)


def test_largest_connected_component_per_class() -> None:
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[1:4, 1:4, 1:4] = 1  # 27 voxels: kept
    labels[7:9, 7:9, 7:9] = 1  # 8 voxels: removed
    labels[5, 5, 5] = 2  # single voxel, only component of class 2: kept
    labels[4, 4, 4] = 1  # touches the big cube by a corner: full connectivity keeps it
    out = largest_connected_component(labels, [1, 2])
    assert out[8, 8, 8] == 0 and out[2, 2, 2] == 1 and out[5, 5, 5] == 2 and out[4, 4, 4] == 1
    assert int((out == 1).sum()) == 28
