"""Whole-volume prediction the way the published protocols do it.

* 2D methods (ACDC): every axial slice is resized to the training size with nearest-neighbour
  zoom, segmented, and the label map zoomed back with nearest neighbour (SSL4MIS
  ``test_single_volume``), or (``eval.zoom_back: probabilities``, the default outside ACDC) the
  class probabilities zoomed back bilinearly. With ``data.resize: false`` a 2D model instead
  sees the image at native resolution through a 2D sliding window (MONAI, Gaussian-weighted).
* 3D methods (LA, Pancreas): a sliding window with the UA-MT window positions — the volume is
  zero-padded up to the patch size, windows start every ``stride`` voxels with the last one
  flush against the far edge, softmax probabilities are averaged where windows overlap
  (UA-MT ``test_single_case``). MONAI's ``sliding_window_inference`` places windows by a
  fractional overlap and cannot express the published stride 18/18/4 exactly, so the positions
  are computed here.

The optional largest-connected-component filter is :mod:`ssmis.components`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ssmis.data.device_aug import zoom_nearest
from ssmis.losses import class_argmax

__all__ = [
    "flip_tta",
    "predict_slicewise",
    "predict_sliding_window",
    "predict_windows_2d",
    "window_starts",
]

PredictFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def predict_slicewise(predict_fn: PredictFn, volume: np.ndarray, input_size: Sequence[int],
                      batch_size: int = 16, device: torch.device | str = "cpu",
                      zoom_back: str = "labels") -> np.ndarray:
    """Label map (D, H, W) of a volume segmented slice by slice by a 2D network.

    ``volume`` is (D, H, W), or (D, C, H, W) for multi-channel input. ``predict_fn`` maps a
    (B, C, h, w) float tensor to (B, K, h, w) logits or probabilities. Each slice is zoomed to
    ``input_size`` (nearest); ``zoom_back``: ``labels`` zooms the predicted label map back with
    nearest neighbour (SSL4MIS), ``probabilities`` the softmax probabilities bilinearly, then
    takes the argmax (no staircases, thin structures kept).
    """
    if zoom_back not in ("labels", "probabilities"):
        raise ValueError(f"zoom_back: '{zoom_back}', expected labels or probabilities")
    if volume.ndim not in (3, 4):
        raise ValueError("slice-wise inference expects a (D, H, W) or (D, C, H, W) volume, "
                         f"got {volume.shape}")
    size = tuple(int(s) for s in input_size)
    out = np.zeros((volume.shape[0], *volume.shape[-2:]), dtype=np.uint8)
    for start in range(0, volume.shape[0], batch_size):
        # a copy: the network never sees (or could change) the caller's array, which the
        # trainer keeps across validations
        chunk = torch.from_numpy(np.array(volume[start:start + batch_size], dtype=np.float32,
                                          copy=True)).to(device)
        batch = zoom_nearest(chunk, size)  # scipy's order-0 zoom, on the device
        logits = predict_fn(batch if volume.ndim == 4 else batch.unsqueeze(1))
        if zoom_back == "probabilities" and tuple(logits.shape[-2:]) != volume.shape[-2:]:
            for i in range(logits.shape[0]):  # one slice at a time: full-size maps are large
                prob = torch.softmax(logits[i:i + 1].float(), dim=1)
                prob = torch.nn.functional.interpolate(prob, size=volume.shape[-2:],
                                                       mode="bilinear", align_corners=True)
                out[start + i] = class_argmax(prob)[0].to(torch.uint8).cpu().numpy()
            continue
        labels = zoom_nearest(class_argmax(logits).to(torch.uint8), volume.shape[-2:])
        out[start:start + len(labels)] = labels.cpu().numpy()
    return out


@torch.no_grad()
def predict_windows_2d(predict_fn: PredictFn, volume: np.ndarray, patch: Sequence[int],
                       stride: Sequence[int] | None = None, batch_size: int = 16,
                       device: torch.device | str = "cpu") -> np.ndarray:
    """Label map (D, H, W) of 2D images segmented at native resolution by a 2D sliding window
    (``data.resize: false``), slice by slice.

    ``volume`` is (D, H, W), or (D, C, H, W) for multi-channel input; ``patch`` (h, w) the
    window in pixels, ``stride`` its step (default half the window). MONAI's
    ``sliding_window_inference`` places the windows (overlap ``1 - stride / patch``), pads an
    image smaller than the window, and averages the softmax probabilities of overlapping
    windows with Gaussian weights; ``batch_size`` windows go through ``predict_fn`` at once on
    ``device`` while the whole-image maps stay on the CPU.

    Raises:
        ValueError: ``volume`` is not 3D/4D, or ``patch``/``stride`` are not two sizes.
    """
    from monai.inferers import sliding_window_inference

    if volume.ndim not in (3, 4):
        raise ValueError("2D sliding-window inference expects a (D, H, W) or (D, C, H, W) "
                         f"volume, got {volume.shape}")
    size = tuple(int(p) for p in patch)
    step = tuple(int(s) for s in stride) if stride else tuple(max(p // 2, 1) for p in size)
    if len(size) != 2 or len(step) != 2:
        raise ValueError(f"patch {list(size)} and stride {list(step)}: expected 2 sizes each")
    overlap = [1.0 - s / p for s, p in zip(step, size, strict=True)]

    def probabilities(batch: torch.Tensor) -> torch.Tensor:
        return torch.softmax(predict_fn(batch).float(), dim=1)

    out = np.zeros((volume.shape[0], *volume.shape[-2:]), dtype=np.uint8)
    for k in range(volume.shape[0]):
        image = volume[k] if volume.ndim == 4 else volume[k][None]
        inputs = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        prob = sliding_window_inference(inputs, size, batch_size, probabilities, overlap=overlap,
                                        mode="gaussian", sw_device=device, device="cpu")
        out[k] = class_argmax(prob)[0].numpy().astype(np.uint8)
    return out


def window_starts(length: int, patch: int, stride: int) -> list[int]:
    """UA-MT window origins along one axis: every ``stride``, the last flush with the end."""
    steps = math.ceil((length - patch) / stride) + 1
    return [min(stride * i, length - patch) for i in range(steps)]


@torch.no_grad()
def predict_sliding_window(
    predict_fn: PredictFn, volume: np.ndarray, patch: Sequence[int], stride: Sequence[int],
    num_classes: int, device: torch.device | str = "cpu", batch_size: int = 1,
    return_probabilities: bool = False,
) -> np.ndarray:
    """Label map (or class probabilities) of a 3D volume from overlapping patch predictions.

    ``volume`` is spatial only, or (C, *spatial) for multi-channel input. ``batch_size``
    windows go through ``predict_fn`` at once (``eval.window_batch_size``; the same result as
    one at a time, to float rounding of the network); the overlapping scores are summed on
    ``device``, in window order as one at a time, and copied back once.
    """
    channels = volume.ndim == len(patch) + 1
    if not channels and volume.ndim != len(patch) or len(stride) != len(patch):
        raise ValueError(f"volume {volume.shape}, patch {tuple(patch)} and stride {tuple(stride)} "
                         "must have the same number of axes")
    spatial = volume.shape[1:] if channels else volume.shape
    pads = [max(p - s, 0) for p, s in zip(patch, spatial, strict=True)]
    pad_width = [(p // 2, p - p // 2) for p in pads]
    lead = [(0, 0)] if channels else []
    padded = np.pad(volume.astype(np.float32), lead + pad_width, mode="constant",
                    constant_values=0)
    image = padded[0] if channels else padded
    score = torch.zeros((num_classes, *image.shape), dtype=torch.float32, device=device)
    count = torch.zeros(image.shape, dtype=torch.float32, device=device)
    axes = [window_starts(n, p, s) for n, p, s in zip(image.shape, patch, stride, strict=True)]
    corners = [(a, b, c) for a in axes[0] for b in axes[1] for c in axes[2]] if len(patch) == 3 \
        else [(a, b) for a in axes[0] for b in axes[1]]
    source = torch.from_numpy(padded if channels else padded[None])
    for start in range(0, len(corners), batch_size):
        group = corners[start:start + batch_size]
        boxes = [tuple(slice(o, o + p) for o, p in zip(corner, patch, strict=True))
                 for corner in group]
        batch = torch.stack([source[(slice(None), *box)] for box in boxes]).to(device)
        probs = torch.softmax(predict_fn(batch).float(), dim=1)
        for box, prob in zip(boxes, probs, strict=True):
            score[(slice(None), *box)] += prob
            count[box] += 1
    score = (score / count.unsqueeze(0)).cpu()
    crop = tuple(slice(lo, n - hi) for (lo, hi), n in zip(pad_width, image.shape, strict=True))
    score = score[(slice(None), *crop)]
    if return_probabilities:
        return score.numpy()
    return class_argmax(score[None])[0].numpy().astype(np.uint8)


def flip_tta(predict_fn: PredictFn, spatial_dims: int) -> PredictFn:
    """Test-time augmentation: softmax averaged over all flips of the spatial axes.

    Returns log-probabilities, so a softmax afterwards (sliding window) gives the average back.
    """
    import itertools

    axes = list(range(2, 2 + spatial_dims))
    combos = [list(c) for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]

    def wrapped(batch: torch.Tensor) -> torch.Tensor:
        total = None
        for dims in combos:
            x = torch.flip(batch, dims) if dims else batch
            prob = torch.softmax(predict_fn(x).float(), dim=1)
            prob = torch.flip(prob, dims) if dims else prob
            total = prob if total is None else total + prob
        assert total is not None
        return torch.log(total / len(combos) + 1e-8)

    return wrapped

