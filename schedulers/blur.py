"""Gaussian blur as a cold-diffusion degradation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import register_to_config

from .cold import ColdDiffusionScheduler, Sampling


class GaussianBlurScheduler(ColdDiffusionScheduler):
    """Gaussian blur whose width grows linearly from ``sigma_start`` (t = 1) to ``sigma_end`` (t = T).

    The image borders are replicated, so the blur keeps the image's mean level near the edges. The prior is
    fitted on the blurred images, projected on their principal axes.

    Args:
        num_train_timesteps: ``T``.
        sigma_start: blur standard deviation in pixels at ``t = 1``, positive.
        sigma_end: blur standard deviation at ``t = T``, at least ``sigma_start``.
        sampling: default sampler, ``improved`` or ``naive`` (or ``direct``).
        start_noise: standard deviation of Gaussian noise added to prior samples.
        train_noise: standard deviation of Gaussian noise added to degraded training inputs (t >= 1).
        sample_noise: standard deviation of Gaussian noise added after every sampling step but the last.
    """

    degradation_name = "blur"

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 20,
        sigma_start: float = 0.5,
        sigma_end: float = 6.0,
        sampling: Sampling = "improved",
        start_noise: float = 0.0,
        train_noise: float = 0.0,
        sample_noise: float = 0.0,
    ):
        if not 0.0 < sigma_start <= sigma_end:
            raise ValueError(
                f"sigma_start={sigma_start} and sigma_end={sigma_end} must satisfy 0 < start <= end"
            )
        super().__init__()

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """The blur standard deviation at ``t`` (0 at ``t = 0``)."""
        progress = (t.float() - 1) / max(self.config.num_train_timesteps - 1, 1)
        sigma = self.config.sigma_start + (self.config.sigma_end - self.config.sigma_start) * progress
        return torch.where(t > 0, sigma, torch.zeros_like(sigma))

    def _degrade(self, x0: torch.Tensor, t: torch.Tensor, draw: None) -> torch.Tensor:
        batch, channels, height, width = x0.shape
        radius = math.ceil(3 * self.config.sigma_end)
        offsets = torch.arange(-radius, radius + 1, device=x0.device, dtype=x0.dtype)
        sigma = self.sigma(t).to(x0.device, x0.dtype)[:, None]
        # sigma = 0 gives the identity kernel (a one at offset 0).
        kernel = torch.exp(-(offsets**2) / (2 * sigma.clamp_min(1e-6) ** 2))
        kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(channels, 0)
        # One group per image and channel, so each image gets its own kernel; the blur is separable.
        x = F.pad(x0.reshape(1, batch * channels, height, width), (radius,) * 4, mode="replicate")
        x = F.conv2d(x, kernel[:, None, None, :], groups=batch * channels)
        x = F.conv2d(x, kernel[:, None, :, None], groups=batch * channels)
        return x.reshape_as(x0)
