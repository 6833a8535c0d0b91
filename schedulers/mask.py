"""Masking (the degradation behind cold-diffusion inpainting)."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from diffusers.configuration_utils import register_to_config

from .cold import ColdDiffusionScheduler, Sampling, check_choice, normal_tensor, uniform_tensor

MaskOrder = Literal["gaussian", "random"]
MASK_ORDERS: tuple[str, ...] = get_args(MaskOrder)
MaskFill = Literal["zero", "noise"]
MASK_FILLS: tuple[str, ...] = get_args(MaskFill)


class MaskScheduler(ColdDiffusionScheduler):
    """Mask a growing fraction ``t / T`` of the pixels, filling them with zeros or with Gaussian noise.

    Each pixel has a priority in ``[0, 1)`` and is masked once ``priority < t / T``, so masks are nested.
    With ``order="gaussian"`` the priority ranks pixels by their Gaussian distance from the centre (a
    disc grows from the middle); with ``order="random"`` it is one uniform draw per pixel.

    At ``t = T`` every pixel is masked. With ``fill="zero"`` (Bansal et al.) ``D(x, T)`` is then the same
    grey image for every ``x``: the prior is a point (``fit_prior`` warns), every unconditional sample starts
    from it, and a deterministic sampler draws one image again and again unless noise is injected
    (``start_noise``, ``sample_noise``). With ``fill="noise"`` masked pixels show a standard Gaussian noise
    image drawn once per image and run (nested masks over one fixed noise image, so severity still grows with
    ``t``): ``D(x, T)`` is that noise, and unconditional starts are fresh Gaussian noise, which the run's
    steps then reuse (nothing is fitted).

    Args:
        num_train_timesteps: ``T``.
        order: ``gaussian`` or ``random``.
        fill: what masked pixels show: ``zero`` (a point start distribution) or ``noise`` (Gaussian starts).
        sample_size: image height and width.
        sampling: default sampler, ``improved`` or ``naive`` (or ``direct``).
        start_noise: standard deviation of Gaussian noise added to prior samples.
        train_noise: standard deviation of Gaussian noise added to degraded training inputs (t >= 1).
        sample_noise: standard deviation of Gaussian noise added after every sampling step but the last.
    """

    degradation_name = "mask"
    collapsed_prior_advice = (
        "use fill='noise' (--fill noise) for Gaussian starts, or give the starts and the sampling steps "
        "noise (start_noise or sample_noise > 0, with train_noise > 0 in training)"
    )

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 28,
        order: MaskOrder = "gaussian",
        fill: MaskFill = "zero",
        sample_size: int = 28,
        sampling: Sampling = "improved",
        start_noise: float = 0.0,
        train_noise: float = 0.0,
        sample_noise: float = 0.0,
    ):
        check_choice("order", order, MASK_ORDERS)
        check_choice("fill", fill, MASK_FILLS)
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
        """The randomness of a batch's masks.

        ``fill="zero"``: one uniform priority per pixel for the ``random`` order, ``None`` for ``gaussian``.
        ``fill="noise"``: the priorities (the centre ranks for ``gaussian``) stacked with the noise image,
        shape ``(2, *shape)``.
        """
        priority = uniform_tensor(shape, generator, device) if self.config.order == "random" else None
        if self.config.fill == "zero":
            return priority
        if priority is None:
            priority = self.centre_priority(device).expand(shape)
        return torch.stack([priority, normal_tensor(shape, generator, device)])

    def _degrade(self, x0: torch.Tensor, t: torch.Tensor, draw: torch.Tensor | None) -> torch.Tensor:
        if self.config.fill == "noise":
            priority, fill = draw[0], draw[1].to(x0.dtype)
        else:
            priority = self.centre_priority(x0.device) if draw is None else draw
            fill = torch.zeros_like(x0)
        fraction = (t.float() / self.config.num_train_timesteps).to(x0.device).view(-1, 1, 1, 1)
        return torch.where(priority < fraction, fill, x0)

    def fit_prior(
        self,
        x0_train: torch.Tensor,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
    ) -> None:
        """The prior over ``D(x, T)`` for ``fill="zero"`` (a point, so it warns); none for ``noise``."""
        if self.config.fill == "zero":
            super().fit_prior(x0_train, generator, labels)
        else:
            self.prior = {}

    def _prior_sample(self, batch_size, generator, device, start_noise, class_labels=None) -> torch.Tensor:
        """Starts ``x_T``: from the fitted prior (``fill="zero"``), or the run's noise image (``"noise"``).

        With ``fill="noise"`` the start is ``D(x, T)`` of a fresh draw, which becomes the run's draw (as a
        morph start does), so the reverse steps unmask over that same noise image; plus ``start_noise``.
        """
        if self.config.fill == "zero":
            return super()._prior_sample(batch_size, generator, device, start_noise, class_labels)
        size = self.config.sample_size
        shape = (batch_size, 1, size, size)
        self._sampling_draw = self.draw(shape, generator, device)
        self._sampling_shape = shape
        blank = torch.zeros(shape, device=self._sampling_draw.device)
        starts = self.degrade(blank, self.config.num_train_timesteps, draw=self._sampling_draw)
        return self._add_start_noise(starts, generator, start_noise).to(device or "cpu")
