"""HiResCAM (Draelos & Carin 2020): element-wise gradient × activation, summed over channels."""

from __future__ import annotations

import torch

from weakseg.cams.base import BaseCAM


class HiResCAM(BaseCAM):
    """HiResCAM: ``ReLU(sum_c dY/dA_c * A_c)`` (no spatial averaging of the gradients)."""

    def cam_image(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """Channel sum of gradient × activation."""
        return (gradients * activations).sum(dim=1)
