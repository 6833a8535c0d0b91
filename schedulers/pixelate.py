"""Pixelation (the degradation behind cold-diffusion super-resolution)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import register_to_config

from .cold import ColdDiffusionScheduler, Sampling


def pooling_factors(sample_size: int, max_factor: int) -> list[int]:
    """The divisors of ``sample_size`` in ``[2, max_factor]``, ascending: the factor at ``t = 1 .. T``."""
    return [factor for factor in range(2, max_factor + 1) if sample_size % factor == 0]


class PixelateScheduler(ColdDiffusionScheduler):
    """Average-pool by a factor growing with ``t``, then nearest-upsample back to full size.

    The factors are the divisors of ``sample_size`` up to ``max_factor`` (2, 4, 7 for 28 pixels and the
    default 7), so ``T`` is their count and every step is an exact block average. The prior is fitted on the
    pooled pixels at ``t = T`` (4 x 4 by default).

    Args:
        sample_size: image height and width.
        max_factor: largest pooling factor, ``sample_size / max_factor`` the resolution at ``t = T``; it and
            ``sample_size`` need a common divisor above 1.
        num_train_timesteps: ``T``; derived from ``sample_size`` (a given value must match).
        sampling: default sampler, ``improved`` or ``naive`` (or ``direct``).
        start_noise: standard deviation of Gaussian noise added to prior samples.
        train_noise: standard deviation of Gaussian noise added to degraded training inputs (t >= 1).
        sample_noise: standard deviation of Gaussian noise added after every sampling step but the last.
    """

    degradation_name = "pixelate"

    @register_to_config
    def __init__(
        self,
        sample_size: int = 28,
        max_factor: int = 7,
        num_train_timesteps: int | None = None,
        sampling: Sampling = "improved",
        start_noise: float = 0.0,
        train_noise: float = 0.0,
        sample_noise: float = 0.0,
    ):
        steps = len(pooling_factors(sample_size, max_factor))
        if steps == 0:
            raise ValueError(
                f"max_factor={max_factor} leaves no pooling factor: it must be at least the smallest "
                f"divisor above 1 of sample_size={sample_size}"
            )
        if num_train_timesteps not in (None, steps):
            raise ValueError(
                f"num_train_timesteps={num_train_timesteps} must equal the number of factors, {steps}"
            )
        self.register_to_config(num_train_timesteps=steps)
        super().__init__()

    def factors(self) -> list[int]:
        """The pooling factor at ``t = 1 .. T``."""
        return pooling_factors(self.config.sample_size, self.config.max_factor)

    def _degrade(self, x0: torch.Tensor, t: torch.Tensor, draw: None) -> torch.Tensor:
        result = x0.clone()
        for step, factor in enumerate(self.factors(), start=1):
            chosen = t == step
            if chosen.any():
                pooled = F.avg_pool2d(x0[chosen], factor)
                result[chosen] = F.interpolate(pooled, scale_factor=factor, mode="nearest")
        return result

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled pixels of ``D(x, T)``."""
        return F.avg_pool2d(x, self.factors()[-1]).flatten(1)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled pixels upsampled back to full size."""
        factor = self.factors()[-1]
        side = self.config.sample_size // factor
        return F.interpolate(features.reshape(-1, 1, side, side), scale_factor=factor, mode="nearest")
