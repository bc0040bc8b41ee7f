"""What a training head learns from: one supervision source's labels for the images of a split."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from weakseg.data.store import Rows, known_per_row


@dataclass
class Target:
    """Labels of one source, learned by the model head of the same ``name``.

    labels:   (N, S, S) uint8: class indices with ``IGNORE_INDEX`` for unknown pixels (masks, boxes, SAM, points),
              or, when ``soft``, a foreground probability scaled to 0..255 (CAM maps); a tensor, or the
              :class:`~weakseg.data.store.Rows` of a prepared split's masks (read a batch at a time).
    labelled: (N,) bool, which images this source labels; by default the images with a known pixel (every image
              for a soft target).
    weight:   the weight of this head's loss in the sum over heads.
    """

    name: str
    labels: torch.Tensor | Rows
    soft: bool = False
    weight: float = 1.0
    labelled: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.labels.dtype != torch.uint8 or self.labels.ndim != 3:
            raise ValueError(f"target '{self.name}' labels must be (N, S, S) uint8, got {tuple(self.labels.shape)}")
        if self.labelled is None:
            n = len(self.labels)
            self.labelled = torch.ones(n, dtype=torch.bool) if self.soft else known_per_row(self.labels) > 0

    def __len__(self) -> int:
        return len(self.labels)

    def ident(self) -> dict:
        """What identifies this target in a training run's digest."""
        return {"name": self.name, "soft": self.soft, "weight": self.weight, "labelled": int(self.labelled.sum())}
