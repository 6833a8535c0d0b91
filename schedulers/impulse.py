"""Impulse (salt-and-pepper) noise as a cold-diffusion degradation."""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import register_to_config

from .cold import ColdDiffusionScheduler, Sampling, uniform_tensor


class ImpulseNoiseScheduler(ColdDiffusionScheduler):
    """Salt-and-pepper noise, density ``rho_start`` (t = 1) to ``rho_end`` (t = T) on a cosine schedule.

    A corrupted pixel becomes the data maximum (salt, 1) or minimum (pepper, -1) with equal probability. One
    uniform draw per pixel decides whether it is corrupted (``u < rho_t``), so the corrupted sets are nested
    and severity grows monotonically in ``t``; a second decides salt or pepper.

    Args:
        num_train_timesteps: ``T``.
        rho_start: corrupted fraction at ``t = 1``, in ``(0, 0.5)``.
        rho_end: corrupted fraction at ``t = T``, in ``[rho_start, 0.5)``.
        sampling: default sampler, ``improved`` or ``naive`` (or ``direct``).
        start_noise: standard deviation of Gaussian noise added to prior samples.
        train_noise: standard deviation of Gaussian noise added to degraded training inputs (t >= 1).
        sample_noise: standard deviation of Gaussian noise added after every sampling step but the last.
    """

    degradation_name = "impulse"
    # A Gaussian mixture cannot draw salt-and-pepper pixels: starts are drawn clean digits, corrupted.
    prior_of_clean_images = True

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 150,
        rho_start: float = 0.05,
        rho_end: float = 0.25,
        sampling: Sampling = "improved",
        start_noise: float = 0.0,
        train_noise: float = 0.0,
        sample_noise: float = 0.0,
    ):
        if not 0.0 < rho_start <= rho_end < 0.5:
            raise ValueError(
                f"rho_start={rho_start} and rho_end={rho_end} must satisfy 0 < rho_start <= rho_end < 0.5"
            )
        super().__init__()

    def density(self, t: torch.Tensor) -> torch.Tensor:
        """The corrupted fraction ``rho_t`` (0 at ``t = 0``)."""
        progress = (t.double() - 1) / max(self.config.num_train_timesteps - 1, 1)
        cosine = (1 - torch.cos(math.pi * progress)) / 2
        rho = self.config.rho_start + (self.config.rho_end - self.config.rho_start) * cosine
        return torch.where(t > 0, rho, torch.zeros_like(rho)).float()

    def draw(self, shape, generator=None, device=None) -> torch.Tensor:
        """Two uniforms per pixel, ``(batch, 2, ...)``: is it corrupted, and does it become salt."""
        return uniform_tensor((shape[0], 2, *shape[1:]), generator, device)

    def _degrade(self, x0: torch.Tensor, t: torch.Tensor, draw: torch.Tensor) -> torch.Tensor:
        corrupted = draw[:, 0] < self.density(t).to(x0.device).view(-1, 1, 1, 1)
        salt_or_pepper = torch.where(draw[:, 1] < 0.5, 1.0, -1.0).to(x0.dtype)
        return torch.where(corrupted, salt_or_pepper, x0)
