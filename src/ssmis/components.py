"""The largest-connected-component (LCC) filter, the one post-processing step: per class, keep
only the largest connected component (full connectivity, as ``skimage.measure.label`` in the
UA-MT and BCP code).

* :func:`largest_connected_component`: one label map with scipy (``eval.lcc`` at evaluation);
* :func:`largest_component_per_class_torch`: a label batch on the tensor's device;
* :func:`largest_component_per_class`: the dispatcher the methods call on pseudo-labels
  (CUDA tensors on the GPU, CPU tensors through scipy; :data:`LCC_BACKEND`).

BCP and CVBM filter every teacher pseudo-label to its largest connected component per class.
Done with scipy (as the authors do with skimage) it costs a device-to-host copy and a Python
loop over the batch every step. Here the components are found on the device by label
propagation: each foreground pixel starts with its own id (linear index + 1), and a 3^d max
pooling restricted to the mask spreads the largest id through each component (full
connectivity, scipy's ``np.ones((3,) * d)`` structure), sped up by pointer jumping (a pixel
takes the current label of the pixel its label names). A few host syncs check convergence.

The kept component is the largest; among equally large ones, the one whose first pixel comes
first in raster order, which is the one scipy's ``ndimage.label`` numbers first and therefore
the one ``bincount(...).argmax()`` keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

#: Propagation steps between two convergence checks (each check is one host sync).
CHECK_EVERY = 4


def component_labels(mask: torch.Tensor) -> torch.Tensor:
    """Per sample of a B x spatial (2D or 3D) bool mask: the id of each pixel's connected
    component (the largest linear index + 1 in it), 0 outside the mask."""
    if mask.dim() not in (3, 4):
        raise ValueError(f"component_labels: expected B x H x W or B x D x H x W, got "
                         f"{tuple(mask.shape)}")
    b, n = mask.shape[0], mask[0].numel()
    pool = F.max_pool2d if mask.dim() == 3 else F.max_pool3d
    # float32 represents every id exactly up to 2**24 pixels per sample (e.g. 256^3)
    dtype = torch.float32 if n < 2**24 else torch.float64
    ids = torch.arange(1, n + 1, device=mask.device, dtype=dtype).expand(b, n)
    flat_mask = mask.reshape(b, n)
    labels = torch.where(flat_mask, ids, torch.zeros((), dtype=dtype, device=mask.device))
    maskf = flat_mask.to(dtype)
    while True:
        before = labels
        for _ in range(CHECK_EVERY):
            grid = labels.view(b, 1, *mask.shape[1:])
            labels = pool(grid, kernel_size=3, stride=1, padding=1).view(b, n) * maskf
            # pointer jumping: the pixel named by a label carries that label or a larger one
            pointer = (labels.long() - 1).clamp_min(0)
            labels = torch.maximum(labels, torch.gather(labels, 1, pointer) * maskf)
        if torch.equal(labels, before):
            return labels.long().view(mask.shape)


def largest_component_mask(mask: torch.Tensor) -> torch.Tensor:
    """Per sample of a B x spatial bool mask, the pixels of its largest connected component
    (ties: the component that starts first in raster order, as scipy)."""
    b, n = mask.shape[0], mask[0].numel()
    labels = component_labels(mask).reshape(b, n)
    offset = torch.arange(b, device=mask.device).unsqueeze(1) * (n + 1)
    keys = (labels + offset).reshape(-1)
    sizes = torch.bincount(keys, minlength=b * (n + 1)).view(b, n + 1)
    index = torch.arange(n, device=mask.device).expand(b, n).reshape(-1)
    first = torch.full((b * (n + 1),), n, device=mask.device, dtype=torch.long)
    first = first.scatter_reduce(0, keys, index, reduce="amin").view(b, n + 1)
    score = sizes * (n + 1) + (n - first)  # larger first, then earlier start
    score[:, 0] = -1  # background
    best = score.argmax(dim=1, keepdim=True)
    return ((labels == best) & (labels > 0)).view(mask.shape)


def largest_component_per_class_torch(labels: torch.Tensor,
                                      classes: Sequence[int]) -> torch.Tensor:
    """Keep, per sample and per class in ``classes``, only the largest connected component of
    that class; its other pixels become 0 (on the tensor's device)."""
    out = labels.clone()
    for c in classes:
        mask = labels == c
        out[mask & ~largest_component_mask(mask)] = 0
    return out


def largest_connected_component(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Keep, for each class in ``classes``, only its largest connected component (scipy)."""
    out = labels.copy()
    structure = np.ones((3,) * labels.ndim, dtype=bool)
    for c in classes:
        mask = labels == c
        if not mask.any():
            continue
        components, n = ndimage.label(mask, structure=structure)
        if n <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        out[mask & (components != int(sizes.argmax()))] = 0
    return out


#: ``"auto"``: CUDA tensors on the GPU, CPU tensors through scipy; ``"scipy"``: always scipy
#: (the authors' route: a host copy per call; kept for comparisons, see
#: ``benchmarks/method_throughput.py --lcc``).
LCC_BACKEND: Literal["auto", "scipy"] = "auto"


def largest_component_per_class(labels: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Per sample of a B x spatial label batch, keep only the largest connected component of
    each class in ``classes``; other pixels of those classes become 0 (BCP ``get_ACDC_masks``,
    ``LargestCC_pancreas``). CPU tensors go through scipy, as the originals (skimage) do; CUDA
    tensors stay on the GPU (:func:`largest_component_per_class_torch`, the same result, no
    host copy)."""
    if labels.is_cuda and LCC_BACKEND == "auto":
        return largest_component_per_class_torch(labels.detach().long(), classes)
    arr = labels.detach().to("cpu", torch.long).numpy()
    out = np.stack([largest_connected_component(a, classes) for a in arr])
    return torch.from_numpy(out).to(labels.device)
