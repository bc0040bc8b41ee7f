"""Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19), as pytorch-grad-cam computes it."""

from __future__ import annotations

import torch

from weakseg.cams.base import BaseCAM


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++: positive gradients weighted by the closed-form alphas."""

    def cam_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """``sum_hw relu(g) * g^2 / (2 g^2 + sum_hw(A) g^3 + 1e-6)``, alphas zeroed where ``g == 0``."""
        g2 = gradients * gradients
        g3 = g2 * gradients
        sum_activations = activations.sum(dim=(2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + sum_activations * g3 + 1e-6)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        return (gradients.clamp_min(0) * alpha).sum(dim=(2, 3))
