"""The torch connected-component filter gives exactly scipy's result (the CPU reference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from ssmis.components import (
    component_labels,
    largest_component_per_class_torch,
    largest_connected_component,
)


def _blobs(shape: tuple[int, ...], classes: int, seed: int) -> np.ndarray:
    """Random label maps with many components per class (smoothed noise, thresholded)."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=shape), sigma=1.5)
    edges = np.quantile(noise, np.linspace(0.3, 1.0, classes + 1))
    return np.digitize(noise, edges[1:-1]).astype(np.int64) * (noise > edges[0])


@pytest.mark.parametrize("shape", [(4, 48, 40), (2, 20, 24, 16)])
def test_matches_scipy(shape: tuple[int, ...]) -> None:
    labels = np.stack([_blobs(shape[1:], 3, seed) for seed in range(shape[0])])
    expected = np.stack([largest_connected_component(a, [1, 2, 3]) for a in labels])
    got = largest_component_per_class_torch(torch.from_numpy(labels), [1, 2, 3]).numpy()
    np.testing.assert_array_equal(got, expected)
    assert (labels != expected).any()  # the filter removed something


def test_components_and_ties() -> None:
    mask = torch.zeros(1, 7, 9, dtype=torch.bool)
    mask[0, 0, 0] = mask[0, 1, 1] = True  # diagonal neighbours: one component (full connectivity)
    mask[0, 4:6, 6:8] = True  # 4 pixels
    mask[0, 5:7, 0:2] = True  # 4 pixels, starts later in raster order than the one above
    labels = component_labels(mask)[0]
    assert len(torch.unique(labels[labels > 0])) == 3
    assert labels[0, 0] == labels[1, 1]
    out = largest_component_per_class_torch(mask.long(), [1])[0]
    assert out[4:6, 6:8].all() and not out[5:7, 0:2].any() and not out[0, 0]
    ref = largest_connected_component(mask.long().numpy()[0], [1])
    np.testing.assert_array_equal(out.numpy(), ref)


def test_spiral_converges() -> None:
    """A long winding component (many propagation steps) is found whole."""
    grid = np.zeros((41, 41), dtype=np.int64)
    grid[1::4, 1:40] = 1
    for row in range(1, 37, 4):
        col = 39 if (row // 4) % 2 == 0 else 1
        grid[row:row + 5, col] = 1
    labels = torch.from_numpy(grid[None])
    assert len(torch.unique(component_labels(labels == 1))) == 2  # background + one snake
    empty = torch.zeros(2, 5, 5, dtype=torch.long)
    assert torch.equal(largest_component_per_class_torch(empty, [1]), empty)
