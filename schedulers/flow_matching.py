"""Flow matching (rectified flow) as a forward process, around a stock ``FlowMatchEulerDiscreteScheduler``.

``x_s = (1 - s) x0 + s * noise`` for ``s = t / T`` in ``[0, 1]``; the network predicts the velocity
``noise - x0`` (Lipman et al., 2023; Liu et al., 2023, as in Stable Diffusion 3), and sampling integrates
``dx/ds = v(x, s)`` from pure noise at ``s = 1`` down to ``s = 0`` with Diffusers' flow-match Euler or Heun
scheduler. Training draws ``s`` from a uniform or logit-normal density
(``diffusers.training_utils.compute_density_for_timestep_sampling``).

The saved scheduler is Diffusers' own, so the folder needs custom code only for the pipeline
(:class:`~mnist_diffusion.pipelines.flow_matching.FlowMatchingPipeline`); the training density is recorded in
the scheduler config under private keys (``_timestep_density``, ...), which Diffusers keeps through save and
load.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

from .forward_process import DEFAULT_STEPS_KEY, ForwardProcess, Loss, Sampler, register_process_type

TimestepDensity = Literal["uniform", "logit_normal"]
FLOW_NAME = "flow"


def flow_matching_scheduler(
    num_train_timesteps: int = 1000,
    shift: float = 1.0,
    timestep_density: TimestepDensity = "logit_normal",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> FlowMatchEulerDiscreteScheduler:
    """The trained scheduler of a flow-matching model: Diffusers' Euler one, with the training density.

    Args:
        num_train_timesteps: ``T``: the network sees ``t = s * T`` for the noise level ``s`` in ``[0, 1]``.
        shift: time shift of training and sampling, ``s -> shift s / (1 + (shift - 1) s)`` (1: none; SD3
            uses 3 for large images).
        timestep_density: how training draws ``s``: uniform, or logit-normal (the sigmoid of a normal
            draw, which favours the middle noise levels, as in SD3).
        logit_mean: mean of the normal draw of the logit-normal density.
        logit_std: standard deviation of the normal draw of the logit-normal density.

    Raises:
        ValueError: on a bad ``T``, shift, density or standard deviation.

    Example:
        >>> from mnist_diffusion.schedulers import flow_matching_scheduler, forward_process
        >>> process = forward_process(flow_matching_scheduler(timestep_density="uniform"))
        >>> process.name, process.default_loss, process.default_sampler
        ('flow', 'l2', 'flow_euler')
    """
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps={num_train_timesteps} must be >= 1")
    if shift <= 0:
        raise ValueError(f"shift={shift} must be positive")
    if timestep_density not in get_args(TimestepDensity):
        raise ValueError(
            f"timestep_density={timestep_density!r} is not one of {', '.join(get_args(TimestepDensity))}"
        )
    if logit_std <= 0:
        raise ValueError(f"logit_std={logit_std} must be positive")
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)
    # Private keys: from_config and from_pretrained keep them silently (ConfigMixin's hidden config).
    scheduler.register_to_config(
        _degradation=FLOW_NAME,
        _timestep_density=timestep_density,
        _logit_mean=logit_mean,
        _logit_std=logit_std,
    )
    return scheduler


def _euler(scheduler: FlowMatchEulerDiscreteScheduler) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)


def _heun(scheduler: FlowMatchEulerDiscreteScheduler) -> FlowMatchHeunDiscreteScheduler:
    # Only the settings Heun has (from_config would warn about the Euler-only ones).
    config = scheduler.config
    return FlowMatchHeunDiscreteScheduler(num_train_timesteps=config.num_train_timesteps, shift=config.shift)


@register_process_type
class FlowMatchingProcess(ForwardProcess):
    """Rectified flow: ``x_s = (1 - s) x0 + s * noise``, the network predicts the velocity ``noise - x0``.

    Timesteps are ``t = s * T`` (floats, as Diffusers' flow-match schedulers feed their networks), ``s`` drawn
    from the scheduler's training density and shifted by its ``shift``. Samplers: the flow ODE with Euler
    steps (``flow_euler``, the saved scheduler) or Heun's second-order steps (``flow_heun``, two network
    calls per step but the last), both from pure Gaussian noise.

    Example:
        >>> import torch
        >>> from mnist_diffusion.schedulers import flow_matching_scheduler, forward_process
        >>> process = forward_process(flow_matching_scheduler(num_train_timesteps=10))
        >>> x0, noise = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
        >>> model_input, target = process.training_example(x0, torch.tensor([5.0]), noise=noise)
        >>> model_input.flatten().tolist(), target.flatten().tolist()  # s = 0.5: halfway, velocity 1
        ([0.5, 0.5, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0])
    """

    scheduler_class = FlowMatchEulerDiscreteScheduler
    samplers = {
        "flow_euler": Sampler("Euler (flow ODE)", 25, _euler),
        "flow_heun": Sampler("Heun (flow ODE, 2 calls per step)", 13, _heun),
    }
    default_sampler = "flow_euler"
    family = "flow-matching"
    draws_gaussian_noise = True

    @property
    def name(self) -> str:
        return FLOW_NAME

    @property
    def default_loss(self) -> Loss:
        return "l2"

    @property
    def timestep_range(self) -> tuple[int, int]:
        return 0, self.num_train_timesteps

    def _setting(self, name: str, default):
        return self.scheduler.config.get(f"_{name}", default)

    def noise_level(self, timesteps: torch.Tensor | float) -> torch.Tensor:
        """``s = t / T``, the weight of the noise in ``x_t``."""
        return torch.as_tensor(timesteps, dtype=torch.float32) / self.num_train_timesteps

    def training_timesteps(self, batch_size, generator=None, device=None) -> torch.Tensor:
        """``t = s * T`` with ``s`` from the training density, then shifted (float32)."""
        from diffusers.training_utils import compute_density_for_timestep_sampling

        source = generator.device if generator is not None else (device or "cpu")
        u = compute_density_for_timestep_sampling(
            self._setting("timestep_density", "logit_normal"),
            batch_size,
            logit_mean=self._setting("logit_mean", 0.0),
            logit_std=self._setting("logit_std", 1.0),
            device=source,
            generator=generator,
        )
        shift = self.scheduler.config.shift
        s = shift * u / (1 + (shift - 1) * u)
        return (s * self.num_train_timesteps).float().to(device or "cpu")

    def training_example(
        self, x0, timesteps, generator=None, noise=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_s, noise - x0)``; ``noise`` is drawn with ``generator`` when not given."""
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, generator=generator, dtype=x0.dtype)
        s = self.noise_level(timesteps).to(x0.device, x0.dtype).reshape(-1, *[1] * (x0.ndim - 1))
        return (1 - s) * x0 + s * noise, noise - x0

    def loss_weights(self, timesteps: torch.Tensor, snr_gamma: float) -> torch.Tensor:
        """Min-SNR-gamma weights for the velocity target: ``min((1 - s)^2, gamma s^2)``.

        ``SNR = ((1 - s) / s)^2``, and the clean-image estimate ``x_s - s v`` errs by ``s`` times the
        velocity, so ``min(SNR, gamma)`` on the clean image's squared error is ``min(SNR, gamma) s^2`` on the
        velocity's.

        Example:
            >>> import torch
            >>> from mnist_diffusion.schedulers import flow_matching_scheduler, forward_process
            >>> process = forward_process(flow_matching_scheduler(num_train_timesteps=10))
            >>> weights = process.loss_weights(torch.tensor([1.0, 5.0, 9.0]), snr_gamma=1.0)
            >>> [round(w, 4) for w in weights.tolist()]  # gamma s^2 at s = 0.1, (1 - s)^2 at 0.9
            [0.01, 0.25, 0.01]
        """
        s = self.noise_level(timesteps).to(timesteps.device)
        return torch.minimum((1 - s) ** 2, snr_gamma * s**2)

    def degrade(self, x0, timesteps, generator=None) -> torch.Tensor:
        """``x_s`` with fresh noise (what ``FlowMatchEulerDiscreteScheduler.scale_noise`` computes)."""
        s = self.noise_level(timesteps).to(x0.device, x0.dtype).reshape(-1).expand(x0.shape[0])
        noise = torch.randn(x0.shape, generator=generator, device=generator.device if generator else None)
        s = s.reshape(-1, *[1] * (x0.ndim - 1))
        return (1 - s) * x0 + s * noise.to(x0.device, x0.dtype)

    def make_pipeline(self, unet: torch.nn.Module) -> DiffusionPipeline:
        """A :class:`~mnist_diffusion.pipelines.flow_matching.FlowMatchingPipeline` with the trained (Euler)
        scheduler."""
        from mnist_diffusion.pipelines.flow_matching import FlowMatchingPipeline

        return FlowMatchingPipeline(unet=unet, scheduler=self.scheduler)

    def describe(self) -> str:
        density = self._setting("timestep_density", "logit_normal").replace("_", "-")
        return f"flow matching (rectified flow), T = {self.num_train_timesteps}, {density} training timesteps"

    @property
    def label(self) -> str:
        return "Flow matching"

    @property
    def stochastic(self) -> bool:
        return True

    @property
    def objective(self) -> str:
        return "predict the velocity `noise - x0`"

    def summary(self) -> str:
        return (
            "A flow-matching model (rectified flow; Lipman et al., 2023, Liu et al., 2023): the forward "
            "process moves each image along a straight line to Gaussian noise, `x_s = (1 - s) x0 + s noise`, "
            "and from "
            f"`x_s` and `t = s T` (T = {self.num_train_timesteps}) the network learns to {self.objective}. "
            "Sampling integrates that velocity from pure noise at `s = 1` to `s = 0` with Diffusers' "
            "flow-match Euler or Heun scheduler."
            + (
                " This one is a few-step student (progressive distillation, Salimans & Ho, 2022) that "
                f"samples in {self.default_steps()} Euler steps on evenly spaced noise levels (its saved "
                "scheduler's)."
                if self.scheduler.config.get(DEFAULT_STEPS_KEY)
                else ""
            )
        )

    def check_sampler(self, sampler: str, num_inference_steps: int | None = None) -> None:
        """As the base class, and at least 2 Euler steps where the scheduler has a ``shift_terminal``.

        A few-step student's scheduler stretches its noise levels to end at ``shift_terminal`` (evenly spaced
        levels); Diffusers' stretch divides by zero for a single step.
        """
        super().check_sampler(sampler, num_inference_steps)
        terminal = self.scheduler.config.get("shift_terminal")
        if sampler == "flow_euler" and num_inference_steps == 1 and terminal:
            raise ValueError(
                "num_inference_steps=1 is not possible with this pipeline's flow_euler scheduler, whose "
                f"noise levels end at shift_terminal={terminal:g}; take 2 or more steps"
            )
