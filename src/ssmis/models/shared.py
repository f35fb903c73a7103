"""The API both backbones share: one encoder, several decoders, features on request.

Methods with extra decoders (CVBM's background branch, CML's second view, ALHVR's perturbed
decode) call :meth:`encode` once and :meth:`decode` per decoder instead of copying a network.
Subclasses set ``self.encoder`` (returns the list of 5 features, shallow to deep, and exposes
``widths``) and ``self.decoders`` (an ``nn.ModuleList``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class SharedEncoderNet(nn.Module):
    encoder: nn.Module
    decoders: nn.ModuleList

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
