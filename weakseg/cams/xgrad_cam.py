"""XGrad-CAM (Fu et al. 2020): gradients weighted by the normalised activations."""

from __future__ import annotations

import torch

from weakseg.cams.base import BaseCAM


class XGradCAM(BaseCAM):
    """XGrad-CAM: weights ``sum_hw g * A / (sum_hw A + 1e-7)``."""

    def cam_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """Activation-normalised gradient sum per channel."""
        sum_activations = activations.sum(dim=(2, 3), keepdim=True)
        return (gradients * activations / (sum_activations + 1e-7)).sum(dim=(2, 3))
