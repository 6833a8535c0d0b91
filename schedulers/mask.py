"""Masking (the degradation behind cold-diffusion inpainting)."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from diffusers.configuration_utils import register_to_config

from .cold import ColdDiffusionScheduler, Sampling, check_choice, uniform_tensor

MaskOrder = Literal["gaussian", "random"]
MASK_ORDERS: tuple[str, ...] = get_args(MaskOrder)


class MaskScheduler(ColdDiffusionScheduler):
    """Zero a growing fraction ``t / T`` of the pixels.

    Each pixel has a priority in ``[0, 1)`` and is zeroed once ``priority < t / T``, so masks are nested.
    With ``order="gaussian"`` the priority ranks pixels by their Gaussian distance from the centre (a
    disc grows from the middle; deterministic); with ``order="random"`` it is one uniform draw per pixel.

    Args:
        num_train_timesteps: ``T``.
        order: ``gaussian`` or ``random``.
        sample_size: image height and width.
        sampling: default sampler, ``improved`` or ``naive`` (or ``direct``).
        start_noise: standard deviation of Gaussian noise added to prior samples.
    """

    degradation_name = "mask"

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 28,
        order: MaskOrder = "gaussian",
        sample_size: int = 28,
        sampling: Sampling = "improved",
        start_noise: float = 0.0,
    ):
        check_choice("order", order, MASK_ORDERS)
        super().__init__()

    def centre_priority(self, device: torch.device | None = None) -> torch.Tensor:
        """Priorities of the ``gaussian`` order: distance rank from the centre, scaled into ``[0, 1)``."""
        size = self.config.sample_size
        coordinates = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        distance = (coordinates[:, None] ** 2 + coordinates[None, :] ** 2).flatten()
        rank = torch.empty(size * size, dtype=torch.float64)
        rank[torch.argsort(distance, stable=True)] = torch.arange(size * size, dtype=torch.float64)
        return ((rank + 0.5) / (size * size)).reshape(1, 1, size, size).float().to(device)

    def draw(self, shape, generator=None, device=None) -> torch.Tensor | None:
        """One uniform priority per pixel for the ``random`` order; ``None`` for ``gaussian``."""
        return uniform_tensor(shape, generator, device) if self.config.order == "random" else None

    def _degrade(self, x0: torch.Tensor, t: torch.Tensor, draw: torch.Tensor | None) -> torch.Tensor:
        priority = self.centre_priority(x0.device) if draw is None else draw
        fraction = (t.float() / self.config.num_train_timesteps).to(x0.device).view(-1, 1, 1, 1)
        return torch.where(priority < fraction, torch.zeros_like(x0), x0)
