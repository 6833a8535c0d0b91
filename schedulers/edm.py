"""EDM (Karras et al., 2022, "Elucidating the Design Space of Diffusion-Based Generative Models") as a forward
process, around Diffusers' stock ``EDMEulerScheduler``.

``x = x0 + sigma * noise``, with ``log sigma`` drawn from a normal density in training (``p_mean``,
``p_std``). The network ``F`` is preconditioned: it sees ``c_in(sigma) x`` and the noise level as a timestep
``t`` in ``[0, T]`` (``log sigma`` mapped linearly from ``[log sigma_min, log sigma_max]``, see
:func:`~mnist_diffusion.pipelines.edm.network_timestep`), and the clean image is ``c_skip x + c_out F``; it
learns ``F = (x0 - c_skip x) / c_out``, whose plain squared error is EDM's weighted loss
(``lambda(sigma) = 1 / c_out^2``), so every noise level starts with a target of unit variance. Sampling
integrates the probability-flow ODE on the Karras noise levels with Diffusers' ``EDMEulerScheduler`` or
``EDMDPMSolverMultistepScheduler``, from Gaussian noise of standard deviation ``sigma_max``.

The saved scheduler is Diffusers' own; the training density is recorded in its config under private keys
(``_p_mean``, ``_p_std``), which Diffusers keeps through save and load.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, EDMDPMSolverMultistepScheduler, EDMEulerScheduler

from .forward_process import ForwardProcess, Loss, Sampler, register_process_type, usage_snippet
from .gaussian import DEGRADATION_KEY

EDM_NAME = "edm"


def edm_scheduler(
    num_train_timesteps: int = 1000,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    sigma_data: float = 0.5,
    rho: float = 7.0,
    p_mean: float = -1.2,
    p_std: float = 1.2,
) -> EDMEulerScheduler:
    """The trained scheduler of an EDM model: Diffusers' ``EDMEulerScheduler``, with the training density.

    Args:
        num_train_timesteps: ``T``: the network sees the noise level as a timestep in ``[0, T]``.
        sigma_min: the lowest noise level (training and sampling).
        sigma_max: the highest noise level, the standard deviation of sampling's start.
        sigma_data: the standard deviation of the data in EDM's preconditioning.
        rho: the Karras spacing of the sampling noise levels (7 in EDM).
        p_mean: mean of the normal density of ``log sigma`` in training.
        p_std: standard deviation of the normal density of ``log sigma`` in training.

    Raises:
        ValueError: on a bad ``T``, noise level range, ``sigma_data``, ``rho`` or ``p_std``.

    Example:
        >>> from mnist_diffusion.schedulers import edm_scheduler, forward_process
        >>> process = forward_process(edm_scheduler())
        >>> process.name, process.default_loss, process.default_sampler
        ('edm', 'l2', 'edm_dpmsolver')
    """
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps={num_train_timesteps} must be >= 1")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"sigma_min={sigma_min} and sigma_max={sigma_max} must be 0 < sigma_min < sigma_max")
    for name, value in (("sigma_data", sigma_data), ("rho", rho), ("p_std", p_std)):
        if value <= 0:
            raise ValueError(f"{name}={value} must be positive")
    scheduler = EDMEulerScheduler(
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        sigma_data=sigma_data,
        num_train_timesteps=num_train_timesteps,
        rho=rho,
    )
    # Private keys: from_config and from_pretrained keep them silently (ConfigMixin's hidden config).
    scheduler.register_to_config(**{DEGRADATION_KEY: EDM_NAME}, _p_mean=p_mean, _p_std=p_std)
    return scheduler


def _euler(scheduler: EDMEulerScheduler) -> EDMEulerScheduler:
    return EDMEulerScheduler.from_config(scheduler.config)


def _dpm_solver(scheduler: EDMEulerScheduler) -> EDMDPMSolverMultistepScheduler:
    # Second-order DPM-Solver++ on the same noise levels; thresholding at 1 clips each clean-image estimate to
    # the pixel range, as the Gaussian process's DPM-Solver++ does.
    config = scheduler.config
    return EDMDPMSolverMultistepScheduler(
        sigma_min=config.sigma_min,
        sigma_max=config.sigma_max,
        sigma_data=config.sigma_data,
        num_train_timesteps=config.num_train_timesteps,
        rho=config.rho,
        thresholding=True,
        sample_max_value=1.0,
    )


@register_process_type
class EDMProcess(ForwardProcess):
    """EDM: ``x = x0 + sigma noise``, a preconditioned network, log-normal training noise levels.

    Timesteps are floats ``t`` in ``[0, T]``, one per noise level ``sigma(t) = sigma_min (sigma_max /
    sigma_min)^(t / T)``: what the network sees, what :meth:`training_timesteps` draws (``log sigma`` normal,
    clipped to the range) and what :meth:`degrade` takes. Samplers: Euler (``edm_euler``, the saved
    scheduler) and second-order DPM-Solver++ (``edm_dpmsolver``), both on the Karras noise levels.

    Example:
        >>> import torch
        >>> from mnist_diffusion.schedulers import edm_scheduler, forward_process
        >>> process = forward_process(edm_scheduler(sigma_min=0.01, sigma_max=100.0, sigma_data=1.0))
        >>> x0, noise = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
        >>> model_input, target = process.training_example(x0, torch.tensor([500.0]), noise=noise)
        >>> round(process.noise_level(500.0).item(), 4)  # halfway between log sigma_min and log sigma_max
        1.0
        >>> [round(v, 4) for v in model_input.flatten().tolist()]  # c_in (x0 + noise) = 1 / sqrt(2)
        [0.7071, 0.7071, 0.7071, 0.7071]
        >>> [round(v, 4) for v in target.flatten().tolist()]  # (x0 - c_skip x) / c_out = -1 / sqrt(2)
        [-0.7071, -0.7071, -0.7071, -0.7071]
    """

    scheduler_class = EDMEulerScheduler
    samplers = {
        "edm_euler": Sampler("Euler (EDM, probability-flow ODE)", 25, _euler),
        "edm_dpmsolver": Sampler("DPM-Solver++ (EDM)", 25, _dpm_solver),
    }
    default_sampler = "edm_dpmsolver"
    family = "edm"
    draws_gaussian_noise = True

    @classmethod
    def answers_for(cls, scheduler) -> bool:
        return scheduler.config.get(DEGRADATION_KEY) == EDM_NAME

    @property
    def name(self) -> str:
        return EDM_NAME

    @property
    def default_loss(self) -> Loss:
        return "l2"

    @property
    def timestep_range(self) -> tuple[int, int]:
        return 0, self.num_train_timesteps

    def noise_level(self, timesteps: torch.Tensor | float) -> torch.Tensor:
        """``sigma(t)``, the noise level of timestep ``t``: log-linear from ``sigma_min`` to ``sigma_max``."""
        config = self.scheduler.config
        fraction = torch.as_tensor(timesteps, dtype=torch.float32) / self.num_train_timesteps
        return config.sigma_min * (config.sigma_max / config.sigma_min) ** fraction

    def _preconditioning(self, timesteps, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(sigma, c_in, c_skip, c_out)`` per image, shaped to broadcast against ``like``."""
        sigma = self.noise_level(timesteps).to(like.device, like.dtype).reshape(-1, *[1] * (like.ndim - 1))
        sigma_data = self.scheduler.config.sigma_data
        norm = (sigma**2 + sigma_data**2).sqrt()
        return sigma, 1 / norm, sigma_data**2 / norm**2, sigma * sigma_data / norm

    def training_timesteps(self, batch_size, generator=None, device=None) -> torch.Tensor:
        """``t`` of ``log sigma ~ N(p_mean, p_std^2)``, clipped to ``[0, T]`` (float32)."""
        from mnist_diffusion.pipelines.edm import network_timestep

        source = generator.device if generator is not None else (device or "cpu")
        config = self.scheduler.config
        normal = torch.randn(batch_size, generator=generator, device=source)
        log_sigma = config.get("_p_mean", -1.2) + config.get("_p_std", 1.2) * normal
        timesteps = network_timestep(log_sigma.exp(), config).clamp(0, self.num_train_timesteps)
        return timesteps.to(device or "cpu")

    def training_example(
        self, x0, timesteps, generator=None, noise=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c_in x, F)`` with ``x = x0 + sigma noise`` and ``F = (x0 - c_skip x) / c_out``.

        ``noise`` is drawn with ``generator`` when not given.
        """
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, generator=generator, dtype=x0.dtype)
        sigma, c_in, c_skip, c_out = self._preconditioning(timesteps, x0)
        noisy = x0 + sigma * noise
        return c_in * noisy, (x0 - c_skip * noisy) / c_out

    def loss_weights(self, timesteps: torch.Tensor, snr_gamma: float) -> torch.Tensor:
        """Min-SNR-gamma weights for the ``F`` target: ``min(SNR, gamma) / (SNR + 1)``, ``SNR =
        sigma_data^2 / sigma^2``.

        ``F``'s plain squared error is the clean image's weighted by ``(SNR + 1) / sigma_data^2`` (EDM's
        ``lambda(sigma)``), as a velocity's is; so, as for ``v_prediction``, ``min(SNR, gamma) / (SNR + 1)``
        on ``F`` is ``min(SNR, gamma)`` on the clean image (Hang et al., 2023), up to the constant
        ``1 / sigma_data^2``.

        Example:
            >>> import torch
            >>> from mnist_diffusion.schedulers import edm_scheduler, forward_process
            >>> process = forward_process(edm_scheduler(sigma_min=0.01, sigma_max=100.0, sigma_data=1.0))
            >>> weights = process.loss_weights(torch.tensor([0.0, 500.0, 1000.0]), snr_gamma=1.0)
            >>> [round(w, 4) for w in weights.tolist()]  # sigma = 0.01, 1 and 100
            [0.0001, 0.5, 0.0001]
        """
        snr = self.scheduler.config.sigma_data**2 / self.noise_level(timesteps).to(timesteps.device) ** 2
        return torch.minimum(snr, torch.full_like(snr, snr_gamma)) / (snr + 1)

    def degrade(self, x0, timesteps, generator=None) -> torch.Tensor:
        """``x`` with fresh noise, in its variance-preserving form ``(x0 + sigma noise) / sqrt(1 + sigma^2)``.

        The scale is EDM's ``s(t)`` that turns this process into a variance-preserving one, so pictures and
        normality tests see about ``x0`` at ``t = 0`` and about ``N(0, 1)`` at ``T``, as for the Gaussian
        process.
        """
        sigma = self.noise_level(timesteps).to(x0.device, x0.dtype).reshape(-1).expand(x0.shape[0])
        sigma = sigma.reshape(-1, *[1] * (x0.ndim - 1))
        noise = torch.randn(x0.shape, generator=generator, device=generator.device if generator else None)
        return (x0 + sigma * noise.to(x0.device, x0.dtype)) / (1 + sigma**2).sqrt()

    def make_pipeline(self, unet: torch.nn.Module) -> DiffusionPipeline:
        """An :class:`~mnist_diffusion.pipelines.edm.EDMPipeline` with the trained (Euler) scheduler."""
        from mnist_diffusion.pipelines.edm import EDMPipeline

        return EDMPipeline(unet=unet, scheduler=self.scheduler)

    def describe(self) -> str:
        config = self.scheduler.config
        return (
            f"EDM, sigma {config.sigma_min:g} to {config.sigma_max:g}, sigma_data {config.sigma_data:g}, "
            f"T = {self.num_train_timesteps}"
        )

    @property
    def label(self) -> str:
        return "EDM"

    @property
    def stochastic(self) -> bool:
        return True

    @property
    def objective(self) -> str:
        return "predict EDM's preconditioned target `F = (x0 - c_skip x) / c_out`"

    def summary(self) -> str:
        config = self.scheduler.config
        return (
            "An EDM model (Karras et al., 2022): the forward process adds Gaussian noise of standard "
            f"deviation sigma from {config.sigma_min:g} to {config.sigma_max:g}, and from the scaled noisy "
            f"image `c_in x` and the noise level the network learns to {self.objective}, so that the clean "
            "image is `c_skip x + c_out F`. Sampling integrates the probability-flow ODE over Karras noise "
            "levels from Gaussian noise of standard deviation sigma_max, with Diffusers' EDM DPM-Solver++ or "
            "Euler scheduler."
        )

    def usage(self, repo_id, class_labels=None, guidance_scale=None) -> str:
        """Sampling with DPM-Solver++, built as ``_dpm_solver`` builds it (keep the two in step)."""
        return usage_snippet(
            repo_id,
            self.default_steps(),
            class_labels=class_labels,
            guidance_scale=guidance_scale,
            imports=", EDMDPMSolverMultistepScheduler",
            setup=(
                "config = pipe.scheduler.config",
                "pipe.scheduler = EDMDPMSolverMultistepScheduler(",
                "    sigma_min=config.sigma_min, sigma_max=config.sigma_max, sigma_data=config.sigma_data,",
                "    num_train_timesteps=config.num_train_timesteps, rho=config.rho,",
                "    thresholding=True, sample_max_value=1.0,  # keeps each x0 estimate in the pixel range",
                ")",
            ),
        )
