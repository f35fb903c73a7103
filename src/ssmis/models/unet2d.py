"""The SSL4MIS / PyMIC 2D U-Net, split into an encoder and interchangeable decoders.

This is the backbone of every ACDC table in the field (UA-MT, CPS, BCP, CVBM, CML, ALHVR), so the
layer sequence, widths, dropout rates and output conv are those of the reference code; parameter
counts are pinned in the tests (C=4, 1 input channel: encoder 1,180,464, bilinear decoder 633,300,
transpose decoder 763,860, encoder + one bilinear decoder 1,813,764).

Methods differ only in how many decoders they hang on the shared encoder, how those decoders
upsample, and which intermediate features they read. Hence :class:`UNetEncoder` returns all five
feature maps, :class:`UNetDecoder` can return named intermediate features, and :class:`UNet2D`
holds one encoder plus ``num_decoders`` decoders.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmis.errors import SSMISError
from ssmis.models.shared import SharedEncoderNet

WIDTHS: tuple[int, ...] = (16, 32, 64, 128, 256)
ENCODER_DROPOUT: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)
UP_TYPES: tuple[str, ...] = ("bilinear", "nearest", "transpose")
DOWNSAMPLE_FACTOR = 16  # four 2x max-pools


def _check_up_type(up_type: str) -> str:
    if up_type not in UP_TYPES:
        raise SSMISError(
            f"model.options.up_types: unknown 2D upsampling {up_type!r}; "
            f"expected one of: {', '.join(UP_TYPES)}"
        )
    return up_type


def patch_problem(patch: Sequence[int], batch: int, batchnorm: bool,
                  factor: int = DOWNSAMPLE_FACTOR) -> str | None:
    """Why a (B, C, *patch) training input cannot go through a U-Net/V-Net-style encoder, or
    None: each axis must be divisible by ``factor``, and a BatchNorm bottleneck needs more than
    one value per channel (``batch`` x bottleneck voxels > 1) in training mode."""
    size = [int(p) for p in patch]
    if any(s % factor for s in size):
        return (f"data.patch_size {size}: every axis must be divisible by {factor} (the network "
                f"downsamples {factor}x)")
    voxels = 1
    for s in size:
        voxels *= s // factor
    if batchnorm and batch * voxels <= 1:
        return (f"data.patch_size {size}: the bottleneck is one voxel per channel and the "
                f"smallest training forward batch is {batch}, which BatchNorm cannot normalise; "
                f"use a patch of at least {2 * factor} on one axis or a larger batch")
    return None


def check_input_size(x: Tensor, spatial_dims: int, factor: int = DOWNSAMPLE_FACTOR) -> None:
    """Fail early with a readable message instead of a shape mismatch deep in the decoder."""
    if x.dim() != spatial_dims + 2:
        raise SSMISError(
            f"model input: expected a {spatial_dims + 2}-D tensor B x C x spatial, "
            f"got shape {tuple(x.shape)}"
        )
    size = tuple(x.shape[2:])
    if any(s % factor for s in size):
        raise SSMISError(
            f"model input: spatial size {size} must be divisible by {factor} "
            f"(the network downsamples {factor}x); check data.patch_size"
        )


class ConvBlock(nn.Module):
    """Two (conv3x3 -> BN -> LeakyReLU) with dropout between them, as in SSL4MIS."""

    def __init__(self, in_channels: int, out_channels: int, dropout_p: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.01),
            nn.Dropout(dropout_p) if dropout_p > 0 else nn.Identity(),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.01),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class UNetEncoder(nn.Module):
    """in_conv + 4 x (MaxPool2d(2) -> ConvBlock); returns all 5 levels, shallow to deep.

    All levels are returned because the decoder needs them as skips and because methods perturb
    (ALHVR) or compare (CML) them.
    """

    def __init__(
        self,
        in_channels: int = 1,
        widths: Sequence[int] = WIDTHS,
        dropout: bool = True,
        dropout_p: Sequence[float] = ENCODER_DROPOUT,
    ) -> None:
        super().__init__()
        if len(widths) != 5 or len(dropout_p) != 5:
            raise SSMISError("model.options: unet2d needs 5 widths and 5 dropout rates")
        self.widths = tuple(int(w) for w in widths)
        rates = [float(p) if dropout else 0.0 for p in dropout_p]
        self.in_conv = ConvBlock(in_channels, self.widths[0], rates[0])
        self.downs = nn.ModuleList(
            nn.Sequential(
                nn.MaxPool2d(2), ConvBlock(self.widths[i], self.widths[i + 1], rates[i + 1])
            )
            for i in range(4)
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        check_input_size(x, spatial_dims=2)
        feats = [self.in_conv(x)]
        for down in self.downs:
            feats.append(down(feats[-1]))
        return feats


class UpBlock(nn.Module):
    """Upsample the deeper map to the skip's width and size, concatenate, ConvBlock (p=0).

    Interpolating types project first (1x1 conv c_low -> c_skip) and then resize, as SSL4MIS does;
    "transpose" does both in one ConvTranspose2d(k=2, s=2).
    """

    def __init__(self, low_channels: int, skip_channels: int, out_channels: int, up_type: str):
        super().__init__()
        self.up_type = _check_up_type(up_type)
        if up_type == "transpose":
            self.proj: nn.Module = nn.ConvTranspose2d(
                low_channels, skip_channels, kernel_size=2, stride=2
            )
        else:
            self.proj = nn.Conv2d(low_channels, skip_channels, kernel_size=1)
        self.conv = ConvBlock(2 * skip_channels, out_channels, 0.0)

    def forward(self, low: Tensor, skip: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (output, projection before resizing, upsampled map) so taps cost nothing."""
        proj = self.proj(low)
        if self.up_type == "bilinear":
            up = F.interpolate(proj, scale_factor=2.0, mode="bilinear", align_corners=True)
        elif self.up_type == "nearest":
            up = F.interpolate(proj, scale_factor=2.0, mode="nearest")
        else:
            up = proj
        return self.conv(torch.cat([skip, up], dim=1)), proj, up


class UNetDecoder(nn.Module):
    """Four UpBlocks (256->128->64->32->16) and a 3x3 output conv (16 -> C) giving logits.

    ``forward(feats, return_features=True)`` also returns a dict of named features, for methods
    that read inside the decoder (i = 1..4, deepest block first):

    * ``proj{i}``: input of block i after its 1x1 projection, before upsampling (for "transpose"
      this is the transposed-conv output, i.e. already upsampled). ALHVR's prototype feature is
      ``proj2``: 64 channels at 1/8 resolution.
    * ``up{i}``: the upsampled map concatenated with the skip (c_skip channels).
    * ``dec{i}``: output of block i (128, 64, 32, 16 channels at 1/8, 1/4, 1/2, 1).
    * ``last``: the 16-channel full-resolution map fed to the output conv (= ``dec4``).
    """

    def __init__(
        self, num_classes: int = 4, widths: Sequence[int] = WIDTHS, up_type: str = "bilinear"
    ) -> None:
        super().__init__()
        w = tuple(int(c) for c in widths)
        self.up_type = _check_up_type(up_type)
        self.ups = nn.ModuleList(UpBlock(w[4 - i], w[3 - i], w[3 - i], up_type) for i in range(4))
        self.out_conv = nn.Conv2d(w[0], num_classes, kernel_size=3, padding=1)

    def forward(
        self, feats: Sequence[Tensor], return_features: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        if len(feats) != 5:
            raise ValueError(f"UNetDecoder expects 5 encoder features, got {len(feats)}")
        x = feats[4]
        named: dict[str, Tensor] = {}
        for i, up in enumerate(self.ups, start=1):
            x, named[f"proj{i}"], named[f"up{i}"] = up(x, feats[4 - i])
            named[f"dec{i}"] = x
        logits = self.out_conv(x)
        if not return_features:
            return logits
        named["last"] = x
        return logits, named


class UNet2D(SharedEncoderNet):
    """One U-Net encoder and ``num_decoders`` decoders; ``forward`` = logits of decoder 0.

    With the defaults it is exactly the SSL4MIS ``UNet`` (1,813,764 parameters for 1 -> 4), a
    drop-in segmentation network. Multi-decoder methods call :meth:`encode` once and
    :meth:`decode` per decoder (or :meth:`decode_all`).
    """

    spatial_dims = 2

    @staticmethod
    def input_problem(patch: Sequence[int], batch: int, options: dict) -> str | None:
        """See :func:`patch_problem` (the SSL4MIS U-Net always uses BatchNorm)."""
        return patch_problem(patch, batch, batchnorm=True)

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 4,
        num_decoders: int = 1,
        up_types: Sequence[str] | str = ("bilinear",),
        dropout: bool = True,
        widths: Sequence[int] = WIDTHS,
        dropout_p: Sequence[float] = ENCODER_DROPOUT,
    ) -> None:
        super().__init__(in_channels, num_classes, num_decoders, up_types)
        self.encoder = UNetEncoder(in_channels, widths, dropout, dropout_p)
        self.decoders = nn.ModuleList(UNetDecoder(num_classes, widths, t) for t in self.up_types)
