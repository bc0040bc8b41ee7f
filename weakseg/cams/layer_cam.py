"""LayerCAM (Jiang et al. 2021): positive gradients as per-location weights."""

from __future__ import annotations

import torch

from weakseg.cams.base import BaseCAM


class LayerCAM(BaseCAM):
    """LayerCAM: ``ReLU(sum_c relu(dY/dA_c) * A_c)``; meant for shallower layers too."""

    def cam_image(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """Channel sum of positive gradient × activation."""
        return (gradients.clamp_min(0) * activations).sum(dim=1)
