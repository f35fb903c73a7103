"""The API both backbones share: one encoder, several decoders, features on request.

Methods with extra decoders (CVBM's background branch, CML's second view, ALHVR's perturbed
decode) call :meth:`encode` once and :meth:`decode` per decoder instead of copying a network.
Subclasses call ``super().__init__`` with the sizes (it checks ``num_decoders`` and resolves
``up_types``, one per decoder), then set ``self.encoder`` (returns the list of 5 features,
shallow to deep, and exposes ``widths``) and ``self.decoders`` (an ``nn.ModuleList``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ssmis.errors import SSMISError


def expand_up_types(up_types: Sequence[str] | str, num_decoders: int) -> list[str]:
    """One entry per decoder; a single entry is shared by all, so configs can give just one."""
    types = [up_types] if isinstance(up_types, str) else list(up_types)
    if len(types) == 1:
        types = types * num_decoders
    if len(types) != num_decoders:
        raise SSMISError(
            f"model.options.up_types: got {len(types)} entries for {num_decoders} decoders "
            "(give one per decoder, or a single one for all)"
        )
    return types


class SharedEncoderNet(nn.Module):
    """One encoder, ``num_decoders`` decoders (``up_types``: their upsampling, one each)."""

    encoder: nn.Module
    decoders: nn.ModuleList

    def __init__(self, in_channels: int, num_classes: int, num_decoders: int,
                 up_types: Sequence[str] | str) -> None:
        super().__init__()
        if num_decoders < 1:
            raise SSMISError(f"model.options.num_decoders: expected >= 1, got {num_decoders}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.up_types = tuple(expand_up_types(up_types, num_decoders))

    @property
    def feature_channels(self) -> tuple[int, ...]:
        """Channels of the 5 encoder features, shallow to deep."""
        return self.encoder.widths

    def encode(self, x: Tensor) -> list[Tensor]:
        return self.encoder(x)

    def decode(
        self, feats: Sequence[Tensor], index: int = 0, return_features: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        return self.decoders[index](feats, return_features=return_features)

    def decode_all(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """Logits of every decoder from one shared encoding."""
        return [dec(feats) for dec in self.decoders]

    def forward(self, x: Tensor) -> Tensor:
        return self.decoders[0](self.encoder(x))
