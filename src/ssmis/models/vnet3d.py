"""The UA-MT 3D V-Net (as reused by MC-Net, BCP, CVBM, CML, ALHVR), split into encoder/decoders.

Layer sequence and widths follow the reference code so parameter counts match the published
ones (C=2, 1 input channel, n_filters 16, no auxiliary heads):

* instancenorm (CVBM, affine=False so norms have no parameters): encoder 7,373,088 + transpose
  decoder 2,070,178 = 9,443,266;
* batchnorm (UA-MT, CML, ALHVR): encoder 7,376,896 + transpose decoder 2,071,970 = 9,448,866;
  a trilinear / nearest decoder (conv 3x3x3 after resizing) has 2,898,850.

Methods differ in how many decoders they use, how those upsample and which features they read,
so the encoder returns all five levels and the decoder can return named intermediate features.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ssmis.errors import SSMISError
from ssmis.models.shared import SharedEncoderNet
from ssmis.models.unet2d import check_input_size, patch_problem

NORMALIZATIONS: tuple[str, ...] = ("batchnorm", "instancenorm", "groupnorm", "none")
UP_TYPES: tuple[str, ...] = ("transpose", "trilinear", "nearest")
ENCODER_STAGES: tuple[int, ...] = (1, 2, 3, 3, 3)
DECODER_STAGES: tuple[int, ...] = (3, 3, 2, 1)  # deepest first
DOWNSAMPLE_FACTOR = 16


def _check(value: str, valid: tuple[str, ...], field: str) -> str:
    if value not in valid:
        raise SSMISError(
            f"model.options.{field}: unknown value {value!r}; expected one of: {', '.join(valid)}"
        )
    return value


def _norm(normalization: str, channels: int) -> list[nn.Module]:
    """The reference choices; instancenorm keeps PyTorch defaults (no affine, no running stats)."""
    if normalization == "batchnorm":
        return [nn.BatchNorm3d(channels)]
    if normalization == "instancenorm":
        return [nn.InstanceNorm3d(channels)]
    if normalization == "groupnorm":
        return [nn.GroupNorm(num_groups=16, num_channels=channels)]
    return []


def _conv_norm_relu(conv: nn.Module, normalization: str, channels: int) -> list[nn.Module]:
    return [conv, *_norm(normalization, channels), nn.ReLU(inplace=True)]


class ConvStage(nn.Sequential):
    """n x (Conv3d 3x3x3 -> norm -> ReLU); the first conv changes the width."""

    def __init__(self, n: int, in_channels: int, out_channels: int, normalization: str) -> None:
        layers: list[nn.Module] = []
        for i in range(n):
            cin = in_channels if i == 0 else out_channels
            conv = nn.Conv3d(cin, out_channels, kernel_size=3, padding=1)
            layers += _conv_norm_relu(conv, normalization, out_channels)
        super().__init__(*layers)


class Down(nn.Sequential):
    """Strided Conv3d(k=2, s=2) -> norm -> ReLU: V-Net learns its downsampling (no pooling)."""

    def __init__(self, in_channels: int, out_channels: int, normalization: str) -> None:
        conv = nn.Conv3d(in_channels, out_channels, kernel_size=2, stride=2)
        super().__init__(*_conv_norm_relu(conv, normalization, out_channels))


class Up(nn.Sequential):
    """x2 upsampling -> norm -> ReLU, by transposed conv or by resizing + Conv3d 3x3x3.

    "transpose" is UA-MT's default, "trilinear" (align_corners=True) CML's second decoder,
    "nearest" CVBM's background decoder.
    """

    def __init__(
        self, in_channels: int, out_channels: int, normalization: str, up_type: str
    ) -> None:
        _check(up_type, UP_TYPES, "up_types")
        if up_type == "transpose":
            layers = _conv_norm_relu(
                nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2),
                normalization,
                out_channels,
            )
        else:
            resize = (
                nn.Upsample(scale_factor=2, mode="trilinear", align_corners=True)
                if up_type == "trilinear"
                else nn.Upsample(scale_factor=2, mode="nearest")
            )
            conv = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
            layers = [resize, *_conv_norm_relu(conv, normalization, out_channels)]
        super().__init__(*layers)


class VNetEncoder(nn.Module):
    """Stages of 1,2,3,3,3 convs at widths n, 2n, 4n, 8n, 16n; returns [x1..x5], shallow first.

    With ``dropout`` the bottleneck x5 goes through Dropout3d(0.5) (train mode only) before it is
    returned, so both the decoder and methods reading x5 (CML's discrepancy loss) see it dropped.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_filters: int = 16,
        normalization: str = "batchnorm",
        dropout: bool = True,
    ) -> None:
        super().__init__()
        _check(normalization, NORMALIZATIONS, "normalization")
        self.widths = tuple(n_filters * 2**i for i in range(5))
        w = self.widths
        self.stages = nn.ModuleList(
            ConvStage(n, in_channels if i == 0 else w[i], w[i], normalization)
            for i, n in enumerate(ENCODER_STAGES)
        )
        self.downs = nn.ModuleList(Down(w[i], w[i + 1], normalization) for i in range(4))
        self.dropout = nn.Dropout3d(0.5) if dropout else nn.Identity()

    def forward(self, x: Tensor) -> list[Tensor]:
        check_input_size(x, spatial_dims=3, factor=DOWNSAMPLE_FACTOR)
        feats = [self.stages[0](x)]
        for down, stage in zip(self.downs, self.stages[1:], strict=True):
            feats.append(stage(down(feats[-1])))
        feats[4] = self.dropout(feats[4])
        return feats


class VNetDecoder(nn.Module):
    """Up -> add skip -> ConvStage, four times (3,3,2,1 convs), then Conv3d 1x1x1 (n -> C).

    Skips are *added* (V-Net style), not concatenated. With ``dropout`` the last n-channel map
    goes through Dropout3d(0.5) (train mode only) before the output conv.

    ``forward(feats, return_features=True)`` also returns named features (i = 1..4, deepest
    first; UA-MT names x6..x9 = dec1..dec4):

    * ``up{i}``: the upsampled map before the skip is added;
    * ``dec{i}``: output of stage i (8n, 4n, 2n, n channels at 1/8, 1/4, 1/2, 1 resolution).
      ALHVR's prototype feature is ``dec1`` (UA-MT's ``block_six``, 128 channels at 1/8);
    * ``last``: the n-channel full-resolution map *before* dropout (= ``dec4``; what CVBM's
      unused tanh head reads).
    """

    def __init__(
        self,
        num_classes: int = 2,
        n_filters: int = 16,
        normalization: str = "batchnorm",
        up_type: str = "transpose",
        dropout: bool = True,
    ) -> None:
        super().__init__()
        _check(normalization, NORMALIZATIONS, "normalization")
        self.up_type = _check(up_type, UP_TYPES, "up_types")
        w = tuple(n_filters * 2**i for i in range(5))
        self.ups = nn.ModuleList(Up(w[4 - i], w[3 - i], normalization, up_type) for i in range(4))
        self.stages = nn.ModuleList(
            ConvStage(n, w[3 - i], w[3 - i], normalization) for i, n in enumerate(DECODER_STAGES)
        )
        self.dropout = nn.Dropout3d(0.5) if dropout else nn.Identity()
        self.out_conv = nn.Conv3d(w[0], num_classes, kernel_size=1)

    def forward(
        self, feats: Sequence[Tensor], return_features: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        if len(feats) != 5:
            raise ValueError(f"VNetDecoder expects 5 encoder features, got {len(feats)}")
        x = feats[4]
        named: dict[str, Tensor] = {}
        for i, (up, stage) in enumerate(zip(self.ups, self.stages, strict=True), start=1):
            u = up(x)
            named[f"up{i}"] = u
            x = stage(u + feats[4 - i])
            named[f"dec{i}"] = x
        logits = self.out_conv(self.dropout(x))
        if not return_features:
            return logits
        named["last"] = x
        return logits, named


class VNet3D(SharedEncoderNet):
    """One V-Net encoder and ``num_decoders`` decoders; ``forward`` = logits of decoder 0.

    With the defaults it is exactly UA-MT's ``VNet`` (batchnorm, dropout, transposed-conv
    upsampling; 9,448,866 parameters for 1 -> 2). Multi-decoder methods call :meth:`encode` once
    and :meth:`decode` per decoder (or :meth:`decode_all`).
    """

    spatial_dims = 3

    @staticmethod
    def input_problem(patch: Sequence[int], batch: int, options: dict) -> str | None:
        """See :func:`ssmis.models.unet2d.patch_problem` (BatchNorm unless
        ``normalization`` says otherwise)."""
        return patch_problem(patch, batch,
                             batchnorm=options.get("normalization", "batchnorm") == "batchnorm")

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        n_filters: int = 16,
        normalization: str = "batchnorm",
        dropout: bool = True,
        num_decoders: int = 1,
        up_types: Sequence[str] | str = ("transpose",),
    ) -> None:
        super().__init__(in_channels, num_classes, num_decoders, up_types)
        self.encoder = VNetEncoder(in_channels, n_filters, normalization, dropout)
        self.decoders = nn.ModuleList(
            VNetDecoder(num_classes, n_filters, normalization, t, dropout) for t in self.up_types
        )
