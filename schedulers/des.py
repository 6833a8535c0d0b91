"""Entropy-scaled Gaussian noise (DES): a Gaussian forward process whose noise scale follows image entropy."""

from __future__ import annotations

from typing import ClassVar, Literal, get_args

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.utils.torch_utils import randn_tensor

from .cold import ColdDiffusionScheduler, ColdSchedulerOutput, Sampling, check_choice, generator_device
from .noise_schedules import NoiseSchedule, PredictionType, make_betas, original_sample

EntropyScope = Literal["image", "batch"]
ENTROPY_SCOPES: tuple[str, ...] = get_args(EntropyScope)


def histogram_entropy(x: torch.Tensor, per_image: bool = True) -> torch.Tensor:
    """Shannon entropy (bits) of the 256-bin pixel histogram of images in ``[-1, 1]``.

    Returns:
        Shape ``(batch,)``: each image's entropy, or the whole batch's repeated when ``per_image`` is false.
    """
    bins = ((x.clamp(-1, 1) + 1) * 127.5).round().long().flatten(1)
    if not per_image:
        bins = bins.reshape(1, -1)
    counts = torch.zeros(bins.shape[0], 256, device=x.device).scatter_add_(
        1, bins, torch.ones_like(bins, dtype=torch.float32)
    )
    p = counts / counts.sum(1, keepdim=True)
    entropy = -(p * torch.log2(p.clamp_min(1e-12))).sum(1)
    return entropy.expand(x.shape[0])


class EntropyScaledNoiseScheduler(ColdDiffusionScheduler):
    """DDPM-style Gaussian noise scaled by ``s(x_0) = sigmoid(H(x_0))``, ``H`` the pixel-histogram entropy.

    ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) s(x_0) eps`` for ``t = 1 .. T`` (``abar_0 = 1``), with ``s``
    per image or per batch. The model predicts the scaled noise ``s(x_0) eps``. Bansal et al.'s Algorithm 2
    (``improved``), ``x_s - D(x0_hat, s) + D(x0_hat, s')`` with the noise ``x_s`` holds by the prediction,
    is DDIM's deterministic step for Gaussian noise; ``naive`` runs DDPM's ancestral sampler, whose posterior
    noise is scaled by ``s(x0_hat)``: it needs its full ``T`` steps, where DDIM keeps its quality at a few
    dozen. Starts are ``N(0, (1 - abar_T) s^2)`` with ``s`` the mean scale of the training set
    (:meth:`fit_prior`).

    Args:
        num_train_timesteps: ``T``.
        noise_schedule: a schedule name of :func:`~mnist_diffusion.schedulers.noise_schedules.make_betas`.
        beta_start: first beta of interpolated schedules.
        beta_end: last beta of interpolated schedules.
        entropy_scope: ``image`` (one entropy per image) or ``batch`` (one for the batch).
        prediction_type: what the network predicts: the scaled noise ``epsilon``, the clean image ``sample``
            or the velocity ``v_prediction``.
        sample_size: image height and width of sampling starts.
        sampling: ``improved`` (DDIM's deterministic step), ``naive`` (the ancestral sampler) or ``direct``
            (``x0_hat``).
        start_noise: standard deviation of Gaussian noise added to prior samples.
        train_noise: standard deviation of Gaussian noise added to degraded training inputs (t >= 1).
        sample_noise: standard deviation of Gaussian noise added after every sampling step but the last.
    """

    degradation_name = "des"
    default_loss = "l2"
    # What each prediction_type is, in words (model cards).
    prediction_targets: ClassVar[dict[str, str]] = {
        "epsilon": "the entropy-scaled noise `s(x0) eps`",
        "sample": "the clean image `x0`",
        "v_prediction": "the velocity `sqrt(abar_t) s(x0) eps - sqrt(1 - abar_t) x0`",
    }

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        noise_schedule: NoiseSchedule = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        entropy_scope: EntropyScope = "image",
        prediction_type: PredictionType = "epsilon",
        sample_size: int = 28,
        sampling: Sampling = "improved",
        start_noise: float = 0.0,
        train_noise: float = 0.0,
        sample_noise: float = 0.0,
    ):
        check_choice("entropy_scope", entropy_scope, ENTROPY_SCOPES)
        check_choice("prediction_type", prediction_type, get_args(PredictionType))
        betas = make_betas(noise_schedule, num_train_timesteps, beta_start, beta_end)
        self.alphas_cumprod = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])
        super().__init__()

    @property
    def prediction_target(self) -> str:
        return self.prediction_targets[self.config.prediction_type]

    def noise_scale(self, x0: torch.Tensor) -> torch.Tensor:
        """``sigmoid(H(x0))`` per image (or per batch), shape ``(batch, 1, 1, 1)``."""
        entropy = histogram_entropy(x0, per_image=self.config.entropy_scope == "image")
        return torch.sigmoid(entropy).to(x0.dtype).view(-1, 1, 1, 1)

    def _abar(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t).long().reshape(-1).cpu()
        return self.alphas_cumprod[t].to(like.device, like.dtype).view(-1, 1, 1, 1)

    def draw(self, shape, generator=None, device=None) -> torch.Tensor:
        """Standard Gaussian noise ``eps``."""
        return randn_tensor(shape, generator=generator, device=device)

    def _degrade(self, x0: torch.Tensor, t: torch.Tensor, draw: torch.Tensor) -> torch.Tensor:
        abar = self._abar(t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * self.noise_scale(x0) * draw

    def training_example(self, x0, timesteps, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_t, target)``: the noisy images and the ``prediction_type``'s target (``s(x0) eps``, ``x0`` or
        the velocity).

        With ``train_noise > 0`` the images also get the shared injected noise (see
        :meth:`~mnist_diffusion.schedulers.ColdDiffusionScheduler.add_training_noise`), which is not part of
        the target.
        """
        eps = self.draw(tuple(x0.shape), generator, x0.device)
        x_t = self.add_training_noise(self.degrade(x0, timesteps, draw=eps), timesteps, generator)
        noise = self.noise_scale(x0) * eps
        prediction = self.config.prediction_type
        if prediction == "epsilon":
            return x_t, noise
        if prediction == "sample":
            return x_t, x0
        abar = self._abar(timesteps, x0)
        return x_t, abar.sqrt() * noise - (1 - abar).sqrt() * x0

    def predicted_original_sample(self, model_output, timestep, sample) -> torch.Tensor:
        """``x0_hat`` (clipped to ``[-1, 1]``) from the network's output at ``timestep`` and ``x_t``."""
        abar = self._abar(timestep, sample)
        x0_hat = original_sample(
            self.config.prediction_type, model_output, sample, abar.sqrt(), (1 - abar).sqrt()
        )
        return x0_hat.clamp(-1, 1)

    def step(self, model_output, timestep, sample, generator=None, sampling=None, return_dict=True):
        """One step from ``timestep`` to the run's next timestep, from the network's prediction.

        Args:
            model_output: the network's prediction (per ``prediction_type``).
            timestep: the current timestep ``t``.
            sample: the current sample ``x_t``.
            generator: drives the posterior noise (and the injected ``sample_noise``, when set).
            sampling: ``improved`` DDIM's deterministic step, ``naive`` DDPM's ancestral step, ``direct``
                ``x0_hat``; ``None`` uses the config.
            return_dict: return a :class:`ColdSchedulerOutput` instead of a tuple.
        """
        sampling = self._resolve_sampling(sampling)
        previous = self.previous_timestep(timestep)
        abar, abar_prev = self._abar(timestep, sample), self._abar(previous, sample)
        x0_hat = self.predicted_original_sample(model_output, timestep, sample)
        if sampling == "direct":
            prev_sample = x0_hat
        elif sampling == "improved":
            # The noise x_s holds given the clipped x0_hat (as Diffusers' DDIM recomputes it), carried to s'.
            noise = (sample - abar.sqrt() * x0_hat) / (1 - abar).sqrt()
            prev_sample = abar_prev.sqrt() * x0_hat + (1 - abar_prev).sqrt() * noise
        else:
            beta = 1 - abar / abar_prev
            mean = (
                abar_prev.sqrt() * beta * x0_hat + (abar / abar_prev).sqrt() * (1 - abar_prev) * sample
            ) / (1 - abar)
            prev_sample = mean
            if previous > 0:
                std = ((1 - abar_prev) / (1 - abar) * beta).sqrt() * self.noise_scale(x0_hat)
                prev_sample = mean + std * randn_tensor(
                    sample.shape, generator=generator, device=sample.device
                )
        if sampling != "direct":
            prev_sample = self.add_sampling_noise(prev_sample, previous, generator)
        if not return_dict:
            return (prev_sample, x0_hat)
        return ColdSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0_hat)

    def fit_prior(
        self,
        x0_train: torch.Tensor,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
    ) -> None:
        """Store the training set's mean noise scale, the scale of sampling starts."""
        subset = torch.randperm(len(x0_train), generator=generator)[: self.prior_fit_images]
        self.prior = {"noise_scale": self.noise_scale(x0_train[subset].float()).mean().reshape(1)}

    def _prior_sample(self, batch_size, generator, device, start_noise, class_labels=None) -> torch.Tensor:
        """Starts ``x_T ~ N(0, (1 - abar_T) s^2)``, ``s`` the mean training noise scale."""
        if "noise_scale" not in self.prior:
            raise ValueError(
                "EntropyScaledNoiseScheduler has no noise scale; call fit_prior(train_images) first"
            )
        size = self.config.sample_size
        eps = randn_tensor(
            (batch_size, 1, size, size), generator=generator, device=generator_device(generator)
        )
        std = (1 - self.alphas_cumprod[-1]).sqrt().float() * self.prior["noise_scale"]
        return self._add_start_noise(std * eps, generator, start_noise).to(device or "cpu")
