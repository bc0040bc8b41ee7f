"""One shared encoder-decoder, one light head per supervision source (full masks, CAM maps, boxes, SAM, points).

``forward`` returns the primary head's logits (the full-mask head by default), so training, evaluation and
prediction code that knows one head works unchanged; ``forward_heads`` returns every head's logits by name.
"""

from __future__ import annotations

import copy

import torch
from segmentation_models_pytorch.base.initialization import initialize_head
from torch import nn

from weakseg.errors import ConfigError
from weakseg.models.segmenter import Segmenter


class MultiHeadSegmenter(Segmenter):
    """A :class:`Segmenter` whose smp network keeps its encoder and decoder and gets one head per source.

    Every head has the structure of the architecture's own segmentation head (convolution to the mode's
    channels, then its upsampling), with its own weights; ``primary`` names the head that ``forward`` and
    prediction use.
    """

    def __init__(self, base: Segmenter, heads: list[str], primary: str | None = None):
        if not heads or len(set(heads)) != len(heads):
            raise ConfigError(f"heads must be distinct names, got {heads}")
        primary = primary or heads[0]
        if primary not in heads:
            raise ConfigError(f"primary head '{primary}' is not one of {heads}")
        spec = {**base.spec, "heads": list(heads), "primary": primary}
        super().__init__(base.net, tuple(base.mean.flatten().tolist()), tuple(base.std.flatten().tolist()), spec)
        template = base.net.segmentation_head
        self.heads = nn.ModuleDict({name: template if name == primary else _fresh_copy(template) for name in heads})
        self.primary = primary

    def forward_heads(self, images: torch.Tensor, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Logits of the named heads (all by default) from one pass through the shared encoder-decoder."""
        features = self.net.encoder(self.normalize(images))
        decoded = self.net.decoder(features)
        return {name: self.heads[name](decoded) for name in (names or list(self.heads))}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_heads(images, [self.primary])[self.primary]


def _fresh_copy(head: nn.Module) -> nn.Module:
    """The same head structure (convolution, upsampling) with new weights, initialised as smp does."""
    clone = copy.deepcopy(head)
    initialize_head(clone)
    return clone
