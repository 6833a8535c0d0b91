"""Morphing into Fashion-MNIST as a cold-diffusion degradation."""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.image_processor import VaeImageProcessor

from .cold import ColdDiffusionScheduler, Sampling, check_choice, generator_device

AlphaSchedule = Literal["linear", "cosine"]
ALPHA_SCHEDULES: tuple[str, ...] = get_args(AlphaSchedule)


class MorphScheduler(ColdDiffusionScheduler):
    """Blend into a target image: ``x_t = sqrt(a_t) x + sqrt(1 - a_t) z``, ``z`` a Fashion-MNIST image.

    ``a_t`` falls from 1 at ``t = 0`` to 0 at ``t = T`` (``linear``: ``1 - t / T``; ``cosine``:
    ``cos(pi t / 2T)^2``), so ``x_T = z``. The draw of a batch is its targets ``z``. Training draws from the
    whole target dataset (loaded on first use); :meth:`fit_prior` keeps a bank of ``bank_size`` of them,
    saved with the scheduler, from which sampling starts are drawn: a target, or the mean of ``start_mix``
    targets, plus ``start_noise * N(0, I)``, so there are more starts than stored images.

    Args:
        num_train_timesteps: ``T``.
        alpha_schedule: ``linear`` or ``cosine``.
        target_dataset: Hub id or local folder (Hub parquet layout) of the target images.
        bank_size: number of target images kept with the saved scheduler.
        start_mix: number of bank images averaged into one sampling start.
        sampling: default sampler, ``improved`` or ``naive`` (or ``direct``).
        start_noise: standard deviation ``lambda`` of Gaussian noise added to sampling starts.
        train_noise: standard deviation of Gaussian noise added to degraded training inputs (t >= 1).
        sample_noise: standard deviation of Gaussian noise added after every sampling step but the last.
    """

    degradation_name = "morph"

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 50,
        alpha_schedule: AlphaSchedule = "cosine",
        target_dataset: str = "zalando-datasets/fashion_mnist",
        bank_size: int = 1000,
        start_mix: int = 1,
        sampling: Sampling = "improved",
        start_noise: float = 0.0,
        train_noise: float = 0.0,
        sample_noise: float = 0.0,
    ):
        check_choice("alpha_schedule", alpha_schedule, ALPHA_SCHEDULES)
        if bank_size < 1 or start_mix < 1:
            raise ValueError(f"bank_size={bank_size} and start_mix={start_mix} must both be >= 1")
        super().__init__()
        self._dataset_targets: torch.Tensor | None = None

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """The weight ``a_t`` of the clean image (1 at ``t = 0``, 0 at ``t = T``)."""
        progress = t.double() / self.config.num_train_timesteps
        if self.config.alpha_schedule == "linear":
            return (1 - progress).float()
        return torch.cos(math.pi / 2 * progress).pow(2).where(progress < 1, 0.0).float()

    def targets(self) -> torch.Tensor:
        """Where draws come from: the whole target dataset once loaded (training), else the saved bank."""
        if self._dataset_targets is None and "targets" in self.prior:
            return self.prior["targets"]
        return self.dataset_targets()

    def dataset_targets(self) -> torch.Tensor:
        """The target dataset's training split, ``uint8`` ``(N, H, W)``, loaded on first use."""
        if self._dataset_targets is None:
            self._dataset_targets = _load_images(self.config.target_dataset)
        return self._dataset_targets

    @staticmethod
    def _to_model_range(images: torch.Tensor, device: torch.device | None) -> torch.Tensor:
        # The same scaling as the training data (training.data.to_model_range), which this file cannot import.
        return VaeImageProcessor.normalize(images.to(device).float().unsqueeze(-3) / 255.0)

    def draw(self, shape, generator=None, device=None) -> torch.Tensor:
        """One random target image per batch element, in ``[-1, 1]``."""
        targets = self.targets()
        indices = _bank_indices(len(targets), shape[0], generator)
        return self._to_model_range(targets[indices], device)

    def _degrade(self, x0: torch.Tensor, t: torch.Tensor, draw: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha(t).to(x0.device, x0.dtype).view(-1, 1, 1, 1)
        return alpha.sqrt() * x0 + (1 - alpha).sqrt() * draw.to(x0.dtype)

    def fit_prior(
        self,
        x0_train: torch.Tensor,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
    ) -> None:
        """Keep ``bank_size`` random target images (not the training images) as the start bank."""
        targets = self.dataset_targets()
        chosen = torch.randperm(len(targets), generator=generator, device=generator_device(generator))
        chosen = chosen[: self.config.bank_size].cpu()
        self.prior = {"targets": targets[chosen].clone()}

    def _prior_sample(self, batch_size, generator, device, start_noise, class_labels=None) -> torch.Tensor:
        """Starts ``x_T = z``, the mean of ``start_mix`` bank images plus noise; ``z`` is the run's draw."""
        if "targets" not in self.prior:
            raise ValueError("MorphScheduler has no target bank; call fit_prior(train_images) before saving")
        mix = self.config.start_mix
        bank = self.prior["targets"]
        indices = _bank_indices(len(bank), batch_size * mix, generator)
        starts = self._to_model_range(bank[indices], device).unflatten(0, (batch_size, mix)).mean(1)
        self._sampling_draw = self._add_start_noise(starts, generator, start_noise)
        self._sampling_shape = tuple(starts.shape)
        return self._sampling_draw


def _bank_indices(bank_size: int, count: int, generator: torch.Generator | None) -> torch.Tensor:
    # Drawn on the generator's device (deterministic there too), used on the CPU where the bank lives.
    return torch.randint(bank_size, (count,), generator=generator, device=generator_device(generator)).cpu()


def _load_images(dataset: str) -> torch.Tensor:
    # Not training.data.load_split: this file ships as standalone custom code beside saved weights.
    from datasets import load_dataset

    try:
        split = load_dataset(dataset, split="train")
    except Exception as error:  # the Hub client raises many connection and lookup error types
        raise ValueError(
            f"could not load target_dataset={dataset!r} ({type(error).__name__}); pass a reachable Hub id "
            "or a local folder in the Hub's parquet layout (e.g. ../shared/data/fashion_mnist)"
        ) from error
    column = "image" if "image" in split.column_names else "img"
    return torch.from_numpy(split.with_format("numpy")[:][column].astype("uint8"))
