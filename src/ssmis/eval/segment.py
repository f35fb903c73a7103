"""One case segmented the way the config says: the routing between the whole-volume
predictors of :mod:`ssmis.eval.inference` (slice-wise, 2D or 3D sliding window), the zoom-back
rule, the optional LCC filter (:mod:`ssmis.components`) and the region of interest.

Shared by validation, the final evaluation (:mod:`ssmis.engine.evaluate`), ``ssmis predict``
and the reproduction protocols.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ssmis.components import largest_connected_component
from ssmis.config import ExperimentConfig
from ssmis.data.datasets import EvalCase
from ssmis.eval.inference import (
    PredictFn,
    predict_slicewise,
    predict_sliding_window,
    predict_windows_2d,
)

if TYPE_CHECKING:
    from ssmis.methods.base import Method


def predict_case(method: Method, case: EvalCase, cfg: ExperimentConfig,
                 device: torch.device, amp: bool = False) -> np.ndarray:
    """Integer label map for one evaluation case, with the network(s) ``method.predict`` uses."""

    def predict_fn(batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            return method.predict(batch).float()

    return segment(predict_fn, case.image, case.label.ndim, cfg, device)


def segment(predict_fn: PredictFn, image: np.ndarray, ndim: int, cfg: ExperimentConfig,
            device: torch.device) -> np.ndarray:
    """Label map of ``image`` ((*spatial) or (C, *spatial), ``ndim`` spatial axes).

    2D models: a volume is segmented slice by slice along its first axis, a 2D image as one
    slice, each resized to the patch (``data.resize: true``; zoomed back as ``eval.zoom_back``)
    or by a 2D sliding window at native resolution (``data.resize: false``); 3D models: the
    sliding window.
    """
    patch = tuple(cfg.data.patch_size)
    if cfg.data.spatial_dims == 2:
        if image.ndim == ndim:  # one channel: the historical (D, H, W) route
            volume = image if ndim == 3 else image[None]
        else:
            volume = np.moveaxis(image, 0, 1) if ndim == 3 else image[None]
        if not cfg.data.resize:  # native resolution: a 2D sliding window over each image
            pred = predict_windows_2d(predict_fn, volume, patch, cfg.eval.stride,
                                      batch_size=cfg.eval.slice_batch_size, device=device)
        else:
            pred = predict_slicewise(predict_fn, volume, patch,
                                     batch_size=cfg.eval.slice_batch_size, device=device,
                                     zoom_back=zoom_back_of(cfg))
        if ndim == 2:
            pred = pred[0]
    else:
        stride = tuple(cfg.eval.stride) if cfg.eval.stride else tuple(max(p // 2, 1) for p in patch)
        pred = predict_sliding_window(predict_fn, image, patch, stride,
                                      cfg.data.num_classes, device=device,
                                      batch_size=cfg.eval.window_batch_size)
    if cfg.eval.lcc:
        pred = largest_connected_component(pred, list(range(1, cfg.data.num_classes)))
    return pred


def within_roi(pred: np.ndarray, case: EvalCase) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, reference) with every pixel outside ``case.roi`` set to background, so the
    metrics count only the region of interest (DRIVE's field of view); unchanged without ROI."""
    if case.roi is None:
        return pred, case.label
    return np.where(case.roi, pred, 0), np.where(case.roi, case.label, 0)


def zoom_back_of(cfg: ExperimentConfig) -> str:
    """``eval.zoom_back`` resolved: ``auto`` is the layout's rule (``Layout.zoom_back``: labels
    for acdc_h5, the SSL4MIS protocol the published ACDC numbers use; probabilities for the
    others)."""
    if cfg.eval.zoom_back != "auto":
        return cfg.eval.zoom_back
    from ssmis.data.layouts import get_layout

    return get_layout(cfg.data.layout).zoom_back


def inference_note(cfg: ExperimentConfig) -> str:
    """How predictions were made, stored with the metrics (resizing changes the numbers)."""
    patch = "x".join(str(p) for p in cfg.data.patch_size)
    if cfg.data.spatial_dims == 3:
        return f"3D sliding window {patch}"
    if not cfg.data.resize:
        return f"2D sliding window {patch} at native resolution"
    return f"2D, resized to {patch}, {zoom_back_of(cfg)} zoomed back"
