"""Beta schedules for Gaussian DDPM, by name, as ``trained_betas`` for the stock ``DDPMScheduler``.

Passing the betas explicitly (rather than a Diffusers ``beta_schedule`` name) lets every schedule here
travel inside the scheduler config, so DDIM and DPM-Solver++ built with ``from_config`` use the same
forward process the model was trained on.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from diffusers import DDPMScheduler
from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar

NoiseSchedule = Literal["linear", "cosine", "constant", "inverse_linear", "geometric", "cosine_annealing"]
NOISE_SCHEDULES: tuple[str, ...] = get_args(NoiseSchedule)
PredictionType = Literal["epsilon", "sample", "v_prediction"]
# Schedules defined by interpolating from beta_start to beta_end; they need beta_start < beta_end.
_INTERPOLATED = ("linear", "inverse_linear", "geometric", "cosine_annealing")


def _check_beta(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name}={value} is outside the allowed open interval (0, 1)")


def make_betas(
    schedule: NoiseSchedule = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    max_beta: float = 0.999,
    constant_beta: float = 0.01,
) -> torch.Tensor:
    """Return the ``num_train_timesteps`` betas of a named schedule (float64).

    Interpolated schedules run over ``s = t / (T - 1)`` for ``t = 0 .. T-1``, so the first beta is
    ``beta_start`` and the last is ``beta_end``, matching Diffusers' ``linear`` schedule:

    - ``linear``: ``beta_start + (beta_end - beta_start) * s`` (the coursework default, 1e-4 -> 0.02);
    - ``inverse_linear``: the linear schedule reversed in time (large betas first);
    - ``geometric``: ``beta_start * (beta_end / beta_start) ** s``;
    - ``cosine_annealing``: ``beta_start + (beta_end - beta_start) * (1 - cos(pi * s)) / 2``;
    - ``cosine``: Nichol & Dhariwal (2021), offset ``s = 0.008``, betas clipped at ``max_beta``
      (0.999 as in the paper; e.g. 0.1 for a gentler end);
    - ``constant``: ``constant_beta`` at every step.

    Raises:
        ValueError: on an unknown name, ``num_train_timesteps < 1``, a beta outside (0, 1), or
            ``beta_start >= beta_end`` for an interpolated schedule.
    """
    if schedule not in NOISE_SCHEDULES:
        raise ValueError(f"unknown noise schedule {schedule!r}; choose one of {', '.join(NOISE_SCHEDULES)}")
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps={num_train_timesteps} must be >= 1")
    steps = num_train_timesteps
    if schedule == "cosine":
        _check_beta("max_beta", max_beta)
        return betas_for_alpha_bar(steps, max_beta=max_beta, alpha_transform_type="cosine").double()
    if schedule == "constant":
        _check_beta("constant_beta", constant_beta)
        return torch.full((steps,), constant_beta, dtype=torch.float64)

    _check_beta("beta_start", beta_start)
    _check_beta("beta_end", beta_end)
    if beta_start >= beta_end:
        raise ValueError(
            f"beta_start={beta_start} must be smaller than beta_end={beta_end} for the {schedule!r} schedule"
        )
    s = (
        torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
        if steps > 1
        else torch.zeros(1, dtype=torch.float64)
    )
    if schedule == "geometric":
        return beta_start * (beta_end / beta_start) ** s
    if schedule == "cosine_annealing":
        s = (1 - torch.cos(math.pi * s)) / 2
    betas = beta_start + (beta_end - beta_start) * s
    return betas.flip(0) if schedule == "inverse_linear" else betas


def ddpm_scheduler(
    noise_schedule: NoiseSchedule = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    max_beta: float = 0.999,
    constant_beta: float = 0.01,
    prediction_type: PredictionType = "epsilon",
) -> DDPMScheduler:
    """A stock ``DDPMScheduler`` whose ``trained_betas`` follow a named schedule (see :func:`make_betas`).

    Args:
        noise_schedule: the beta schedule, see :func:`make_betas`.
        num_train_timesteps: ``T``.
        beta_start: first beta of the interpolated schedules (default 1e-4).
        beta_end: last beta of the interpolated schedules (default 0.02).
        max_beta: clip of the cosine schedule's betas (default 0.999).
        constant_beta: beta of the constant schedule (default 0.01).
        prediction_type: what the network predicts: the noise, the clean image or the velocity.

    Raises:
        ValueError: on an unknown schedule or prediction type, or a bad ``T`` or beta.
    """
    allowed_predictions = get_args(PredictionType)
    if prediction_type not in allowed_predictions:
        raise ValueError(
            f"prediction_type={prediction_type!r} is not one of {', '.join(allowed_predictions)}"
        )
    betas = make_betas(noise_schedule, num_train_timesteps, beta_start, beta_end, max_beta, constant_beta)
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        trained_betas=betas.tolist(),
        prediction_type=prediction_type,
        clip_sample=True,
        # Saved with the config, so DDIM and DPM-Solver++ built from it start at t = T - 1 for any step count
        # (the default "leading" spacing starts lower, and collapses to t = 0 when steps approach T).
        timestep_spacing="trailing",
    )


def original_sample(
    prediction_type: PredictionType,
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
) -> torch.Tensor:
    """``x0_hat`` of ``sample = alpha x0 + sigma noise`` (``alpha^2 + sigma^2 = 1``) from a network's output.

    Args:
        prediction_type: what the network predicts: the noise (``epsilon``), ``x0`` (``sample``) or the
            velocity ``alpha noise - sigma x0`` (``v_prediction``).
        model_output: the network's output.
        sample: the noisy sample.
        alpha: the signal weight, broadcastable to ``sample``.
        sigma: the noise weight, broadcastable to ``sample``.

    Example:
        >>> import torch
        >>> x0, noise, alpha, sigma = torch.tensor([0.5]), torch.tensor([2.0]), 0.6, 0.8
        >>> sample = alpha * x0 + sigma * noise
        >>> original_sample("v_prediction", alpha * noise - sigma * x0, sample, alpha, sigma)
        tensor([0.5000])
    """
    if prediction_type == "epsilon":
        return (sample - sigma * model_output) / alpha
    if prediction_type == "sample":
        return model_output
    return alpha * sample - sigma * model_output
