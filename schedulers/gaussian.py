"""Gaussian DDPM as a forward process: a stock ``DDPMScheduler`` saved in a stock ``DDPMPipeline`` folder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import (
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
)

from .forward_process import ForwardProcess, Loss, Sampler, register_process_type, usage_snippet

# The private config key (as flow matching's) that marks a saved DDIMScheduler as a Gaussian model's own.
DEGRADATION_KEY = "_degradation"


def _dpm_solver(scheduler: DDPMScheduler) -> DPMSolverMultistepScheduler:
    # The SDE form of DPM-Solver++ stays closest to ancestral sampling at few steps; thresholding at 1 clips
    # each x0 estimate to the pixel range, without which few-step samples of a young model speckle.
    return DPMSolverMultistepScheduler.from_config(
        scheduler.config, algorithm_type="sde-dpmsolver++", thresholding=True, sample_max_value=1.0
    )


@register_process_type
class GaussianProcess(ForwardProcess):
    """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` for ``t = 0 .. T-1`` (Ho et al., 2020).

    The network predicts the scheduler's ``prediction_type`` (``epsilon``, ``sample`` or ``v_prediction``);
    every Diffusers scheduler built ``from_config`` of the trained one samples it, since the betas travel in
    the config.

    Example:
        >>> from mnist_diffusion.schedulers import forward_process, ddpm_scheduler
        >>> process = forward_process(ddpm_scheduler("cosine", num_train_timesteps=100))
        >>> process.name, process.default_sampler, process.default_steps()
        ('gaussian', 'dpmsolver', 25)
    """

    scheduler_class = DDPMScheduler
    samplers = {
        "ddpm": Sampler("DDPM (ancestral)", None, lambda s: DDPMScheduler.from_config(s.config)),
        "ddim": Sampler("DDIM", 50, lambda s: DDIMScheduler.from_config(s.config)),
        "dpmsolver": Sampler("DPM-Solver++", 25, _dpm_solver),
    }
    default_sampler = "dpmsolver"
    family = "ddpm"
    draws_gaussian_noise = True

    @property
    def name(self) -> str:
        return "gaussian"

    @property
    def default_loss(self) -> Loss:
        return "l2"

    @property
    def timestep_range(self) -> tuple[int, int]:
        return 0, self.num_train_timesteps - 1

    def training_timesteps(self, batch_size, generator=None, device=None) -> torch.Tensor:
        """Uniform in ``[0, T)``."""
        return torch.randint(0, self.num_train_timesteps, (batch_size,), generator=generator, device=device)

    def training_example(
        self, x0, timesteps, generator=None, noise=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_t, target)``: the target is the noise, ``x0`` or the velocity, per ``prediction_type``.

        ``noise`` is the Gaussian noise of ``x_t`` (drawn with ``generator`` when not given).
        """
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, generator=generator, dtype=x0.dtype)
        noisy = self.scheduler.add_noise(x0, noise, timesteps)
        prediction = self.scheduler.config.prediction_type
        if prediction == "epsilon":
            return noisy, noise
        if prediction == "sample":
            return noisy, x0
        return noisy, self.scheduler.get_velocity(x0, noise, timesteps)

    def loss_weights(self, timesteps: torch.Tensor, snr_gamma: float) -> torch.Tensor:
        """Min-SNR-gamma weights for the trained ``prediction_type``, as Diffusers' ``train_text_to_image``.

        With ``SNR = abar_t / (1 - abar_t)`` (``diffusers.training_utils.compute_snr``): ``min(SNR, gamma)``
        for ``sample``, ``min(SNR, gamma) / SNR`` for ``epsilon`` (the clean image's squared error is the
        noise's divided by ``SNR``) and ``min(SNR, gamma) / (SNR + 1)`` for ``v_prediction`` (divided by
        ``SNR + 1``).

        Example:
            >>> import torch
            >>> from mnist_diffusion.schedulers import ddpm_scheduler, forward_process
            >>> process = forward_process(ddpm_scheduler("linear", num_train_timesteps=100))
            >>> weights = process.loss_weights(torch.tensor([0, 99]), snr_gamma=5.0)
            >>> [round(w, 4) for w in weights.tolist()]  # a capped early t, an uncapped late one
            [0.0005, 1.0]
        """
        # Imported here: diffusers.training_utils imports transformers, seconds of start-up for every tool.
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self.scheduler, timesteps)
        capped = torch.minimum(snr, torch.full_like(snr, snr_gamma))
        prediction = self.scheduler.config.prediction_type
        if prediction == "epsilon":
            # SNR > 0 for every schedule here (betas < 1); the limit of min(SNR, gamma) / SNR at 0 is 1.
            return torch.where(snr > 0, capped / snr, torch.ones_like(snr))
        if prediction == "v_prediction":
            return capped / (snr + 1)
        return capped

    def degrade(self, x0, timesteps, generator=None) -> torch.Tensor:
        """``x_t`` with fresh noise."""
        timesteps = torch.as_tensor(timesteps, device=x0.device).long().reshape(-1).expand(x0.shape[0])
        noise = torch.randn(x0.shape, generator=generator, device=generator.device if generator else None)
        return self.scheduler.add_noise(x0, noise.to(x0.device, x0.dtype), timesteps)

    def make_pipeline(self, unet: torch.nn.Module) -> DDPMPipeline:
        """The stock ``DDPMPipeline`` that is saved (plain Diffusers loads the folder).

        A class-conditional ``unet`` (``num_class_embeds`` in its config) needs ``class_labels``, which the
        stock pipeline does not take: it gets a :class:`~mnist_diffusion.pipelines.ddpm.DDPMCallbackPipeline`,
        which saves itself with its code (``trust_remote_code=True`` loads it).
        """
        if unet.config.get("num_class_embeds"):
            from mnist_diffusion.pipelines.ddpm import DDPMCallbackPipeline

            return DDPMCallbackPipeline(unet=unet, scheduler=self.scheduler)
        return DDPMPipeline(unet=unet, scheduler=self.scheduler)

    def with_sampler(self, pipeline: DiffusionPipeline, sampler: str) -> DiffusionPipeline:
        """A :class:`~mnist_diffusion.pipelines.ddpm.DDPMCallbackPipeline` sampling with ``sampler``.

        It runs the stock ``DDPMPipeline`` loop plus ``callback_on_step_end``, with the ``sampler`` scheduler
        built from this (trained) scheduler.
        """
        from mnist_diffusion.pipelines.ddpm import DDPMCallbackPipeline

        return DDPMCallbackPipeline(**super().with_sampler(pipeline, sampler).components)

    def describe(self) -> str:
        return f"Gaussian DDPM, T = {self.num_train_timesteps} training timesteps"

    @property
    def label(self) -> str:
        return "Gaussian DDPM"

    @property
    def stochastic(self) -> bool:
        return True

    @property
    def objective(self) -> str:
        return f"predict `{self.scheduler.config.prediction_type}`"

    def summary(self) -> str:
        return (
            "A denoising diffusion probabilistic model (Ho et al., 2020): the forward process adds Gaussian "
            f"noise over T = {self.num_train_timesteps} steps, and from a noisy image and its timestep the "
            f"network learns to {self.objective}; sampling starts from pure Gaussian noise. Every sampler is "
            "a stock Diffusers scheduler built `from_config` of the trained one, so all share its noise "
            "schedule."
        )

    def usage(
        self, repo_id: str, class_labels: Sequence[int] | None = None, guidance_scale: float | None = None
    ) -> str:
        """Sampling with DPM-Solver++, built as ``_dpm_solver`` builds it (keep the two in step)."""
        return usage_snippet(
            repo_id,
            self.default_steps(),
            class_labels=class_labels,
            guidance_scale=guidance_scale,
            imports=", DPMSolverMultistepScheduler",
            setup=(
                f"# DDPM uses all {self.num_train_timesteps} steps; DPM-Solver++ from the same config needs "
                "far fewer.",
                "pipe.scheduler = DPMSolverMultistepScheduler.from_config(",
                '    pipe.scheduler.config, algorithm_type="sde-dpmsolver++",',
                "    thresholding=True, sample_max_value=1.0,  # keeps each x0 estimate in the pixel range",
                ")",
            ),
        )


@register_process_type
class GaussianDDIMProcess(GaussianProcess):
    """A Gaussian model saved with the deterministic DDIM sampler it was made for: a few-step student.

    ``training/distill.py`` saves its students (progressive distillation, Salimans & Ho, 2022) as stock
    ``DDPMPipeline`` folders whose scheduler is a stock ``DDIMScheduler`` (``v_prediction`` or ``sample``,
    trailing timesteps, no clipping), marked ``_degradation: gaussian`` and ``_default_steps: N`` in its
    config; so plain ``DiffusionPipeline.from_pretrained(folder)`` samples the student as it was distilled,
    and every tool takes its step count as the default. A ``DDIMScheduler`` without the mark (one built for
    sampling) is no process's.

    Example:
        >>> from diffusers import DDIMScheduler
        >>> from mnist_diffusion.schedulers import forward_process
        >>> scheduler = DDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing")
        >>> scheduler.register_to_config(_degradation="gaussian", _default_steps=4)
        >>> process = forward_process(scheduler)
        >>> process.name, list(process.samplers), process.default_steps()
        ('gaussian', ['ddim'], 4)
    """

    scheduler_class = DDIMScheduler
    samplers = {"ddim": Sampler("DDIM (deterministic)", 50, lambda s: DDIMScheduler.from_config(s.config))}
    default_sampler = "ddim"

    @classmethod
    def answers_for(cls, scheduler) -> bool:
        return scheduler.config.get(DEGRADATION_KEY) == "gaussian"

    def describe(self) -> str:
        return f"Gaussian DDPM, {self.default_steps()}-step DDIM student, T = {self.num_train_timesteps}"

    @property
    def label(self) -> str:
        return "Gaussian DDPM, few-step student"

    def summary(self) -> str:
        return (
            "A few-step student of a Gaussian denoising diffusion model (Ho et al., 2020), made by "
            "progressive distillation (Salimans & Ho, 2022): each round halves the steps of the "
            "deterministic DDIM sampler, training the student to match two of its teacher's steps with one "
            f"of its own. From a noisy image and its timestep (T = {self.num_train_timesteps}) the network "
            f"learns to {self.objective}; sampling starts from pure Gaussian noise and takes "
            f"{self.default_steps()} DDIM steps with the saved scheduler."
        )

    def usage(
        self, repo_id: str, class_labels: Sequence[int] | None = None, guidance_scale: float | None = None
    ) -> str:
        """Sampling with the saved DDIM scheduler in the student's own number of steps."""
        return usage_snippet(
            repo_id, self.default_steps(), class_labels=class_labels, guidance_scale=guidance_scale
        )
