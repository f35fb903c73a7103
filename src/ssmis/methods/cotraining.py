"""Pieces shared by the two-network co-training methods (CPS, CML, ALHVR).

* :class:`DualNetParams` / :class:`DualNetMethod`: two networks ``net1`` / ``net2`` trained by
  one optimizer (the originals' two SGD optimizers with equal settings over disjoint parameters
  take exactly the same steps as one SGD over their union) and the choice of the network(s) used
  at inference: ``predict_mode`` = 'net1', 'net2', 'average' (of logits or probabilities) or
  'best', which lets the engine score both networks at every validation and keep the better
  one; the choice is a buffer, so it is saved with the checkpoint it was made for.
* :func:`init_conv_weights`: SSL4MIS CPS's ``kaiming_normal_init_weight`` /
  ``xavier_normal_init_weight`` (conv weights only, BatchNorm weight 1 / bias 0).
* :func:`cosine_discrepancy`: CML's conflict loss ``1 + mean cos(e_a, stopgrad(e_b))``.
"""

from __future__ import annotations

from typing import Literal, TypeVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ssmis.methods.base import ChoosablePredictor, Method, MethodParams

PredictMode = Literal["net1", "net2", "average", "best"]


class DualNetParams(MethodParams):
    predict_mode: PredictMode = Field(
        default="net1",
        description="network(s) used at inference: net1, net2, average (of both), or best = "
        "the one with the higher Dice at each validation (chosen by the engine, saved with the "
        "checkpoint)")
    average_space: Literal["logits", "probs"] = Field(
        default="logits",
        description="'average': mean of the logits, or of the softmax probabilities (returned "
        "as their log, so that softmax/argmax downstream see the mean probability)")


DualParamsT = TypeVar("DualParamsT", bound=DualNetParams)


class DualNetMethod(ChoosablePredictor, Method[DualParamsT]):
    """Base of the co-training methods: subclasses build ``self.net1`` and ``self.net2``
    (plain backbones whose ``forward`` gives logits) and call :meth:`_init_choice`
    (``inference_mode``: 'net1', 'net2' or 'average')."""

    Params = DualNetParams
    predictors = ("net1", "net2")
    net1: nn.Module
    net2: nn.Module

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        p = self.params
        mode = self.inference_mode
        if mode == "net1":
            return self.net1(images)
        if mode == "net2":
            return self.net2(images)
        return average_logits(self.net1(images), self.net2(images), p.average_space)


def average_logits(z1: torch.Tensor, z2: torch.Tensor, space: str = "logits") -> torch.Tensor:
    """``(z1 + z2) / 2``, or ``log((softmax z1 + softmax z2) / 2)`` for ``space='probs'``."""
    if space == "logits":
        return 0.5 * (z1 + z2)
    probs = 0.5 * (torch.softmax(z1.float(), 1) + torch.softmax(z2.float(), 1))
    return torch.log(probs.clamp_min(1e-12))


@torch.no_grad()
def init_conv_weights(net: nn.Module, kind: str) -> nn.Module:
    """SSL4MIS CPS initialisation: 'kaiming' / 'xavier' normal on the weights of every (non-
    transposed) convolution, BatchNorm weight 1 and bias 0; conv biases keep their default.
    'default' leaves PyTorch's initialisation."""
    if kind == "default":
        return net
    init = {"kaiming": nn.init.kaiming_normal_, "xavier": nn.init.xavier_normal_}[kind]
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.Conv3d):
            init(m.weight)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d):
            m.weight.fill_(1.0)
            m.bias.zero_()
    return net


def cosine_discrepancy(e_a: torch.Tensor, e_b: torch.Tensor) -> torch.Tensor:
    """CML conflict loss ``1 + mean_{b, v} cos(e_a[b, :, v], stopgrad(e_b[b, :, v]))`` (cosine
    over the channel axis at every location; only ``e_a`` receives a gradient)."""
    return 1.0 + F.cosine_similarity(e_a, e_b.detach(), dim=1).mean()
