"""Grad-CAM (Selvaraju et al. 2017): channel weights are the spatially averaged gradients."""

from __future__ import annotations

import torch

from weakseg.cams.base import BaseCAM


class GradCAM(BaseCAM):
    """Grad-CAM: ``ReLU(sum_c mean_hw(dY/dA_c) * A_c)``."""

    def cam_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """Mean gradient per channel."""
        return gradients.mean(dim=(2, 3))
