"""Every cold degradation as a forward process: one adapter around any ``ColdDiffusionScheduler``."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from functools import partial

import torch
from diffusers import DiffusionPipeline

from .cold import ColdDiffusionScheduler
from .forward_process import ForwardProcess, Loss, Sampler, register_process_type, usage_snippet


def _with_sampling(sampling: str, scheduler: ColdDiffusionScheduler) -> ColdDiffusionScheduler:
    """The trained scheduler with another ``sampling`` in its config, keeping its fitted prior."""
    sampler = type(scheduler).from_config(scheduler.config, sampling=sampling)
    sampler.prior = scheduler.prior
    return sampler


@register_process_type
class ColdProcess(ForwardProcess):
    """A cold degradation ``D(x0, t)``, ``t = 0 .. T``, restored by a network that predicts ``x0``.

    The samplers are Bansal et al.'s Algorithm 2 (``improved``), Algorithm 1 (``naive``) and one restoration
    step (``direct``); the choice is the scheduler's ``sampling`` config value, so a pipeline samples with
    the one it was saved with.

    Example:
        >>> from mnist_diffusion.schedulers import GaussianBlurScheduler, forward_process
        >>> process = forward_process(GaussianBlurScheduler())
        >>> process.name, process.default_loss, list(process.samplers)
        ('blur', 'l1', ['improved', 'naive', 'direct'])
    """

    scheduler_class = ColdDiffusionScheduler
    samplers = {
        "improved": Sampler("Improved (Algorithm 2)", None, partial(_with_sampling, "improved")),
        "naive": Sampler("Naive (Algorithm 1)", None, partial(_with_sampling, "naive")),
        "direct": Sampler("Direct (one restoration step)", 1, partial(_with_sampling, "direct")),
    }
    default_sampler = "improved"
    restores = True
    family = "cold-diffusion"

    @property
    def name(self) -> str:
        return self.scheduler.degradation_name

    @property
    def default_loss(self) -> Loss:
        return self.scheduler.default_loss

    @property
    def timestep_range(self) -> tuple[int, int]:
        return 0, self.num_train_timesteps

    def training_timesteps(self, batch_size, generator=None, device=None) -> torch.Tensor:
        return self.scheduler.training_timesteps(batch_size, generator, device)

    def training_example(self, x0, timesteps, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scheduler.training_example(x0, timesteps, generator)

    def degrade(self, x0, timesteps, generator=None) -> torch.Tensor:
        return self.scheduler.degrade(x0, timesteps, generator)

    def make_pipeline(self, unet: torch.nn.Module) -> DiffusionPipeline:
        from mnist_diffusion.pipelines.cold_diffusion import ColdDiffusionPipeline

        return ColdDiffusionPipeline(unet=unet, scheduler=self.scheduler)

    def fit(self, x0_train, generator=None, labels=None) -> None:
        """Fit the prior over ``D(x, T)`` that sampling starts from (with ``labels``, also per class)."""
        self.scheduler.fit_prior(x0_train, generator, labels)

    def describe(self) -> str:
        return (
            f"cold diffusion, {self.name} ({type(self.scheduler).__name__}), T = {self.num_train_timesteps}"
        )

    @property
    def label(self) -> str:
        return f"Cold diffusion ({self.name})"

    @property
    def stochastic(self) -> bool:
        """Asks the scheduler: its :meth:`~ColdDiffusionScheduler.draw` returns a tensor (``None``: none)."""
        return self.scheduler.draw(self._probe_images().shape, torch.Generator().manual_seed(0)) is not None

    @property
    def objective(self) -> str:
        return f"predict {self.scheduler.prediction_target}"

    def summary(self) -> str:
        kind = "stochastic (a fresh random draw per image)" if self.stochastic else "deterministic"
        doc = inspect.getdoc(type(self.scheduler)) or ""
        what = " ".join(doc.split("\n\n")[0].split()).replace("``", "`")
        return (
            "A cold-diffusion model (Bansal et al., 2022): instead of Gaussian noise, the forward process is "
            f"the {kind} **{self.name}** degradation over T = {self.num_train_timesteps} steps, and the "
            f"network learns to {self.objective}. "
            + (f"**{self.name}**: {what} " if what else "")
            + "Sampling starts from a fully degraded image drawn from a prior fitted to degraded training "
            "images and restores it step by step." + self._noise_injection()
        )

    def _noise_injection(self) -> str:
        """The summary's sentence on noise injection (Rissanen et al., 2023), when the run used it."""
        train, sample = (self.scheduler.noise_std(name) for name in ("train_noise", "sample_noise"))
        if train == 0 and sample == 0:
            return ""
        return (
            f" With noise injection (Rissanen et al., 2023): Gaussian noise of std {train:g} added to the "
            f"degraded training inputs and of std {sample:g} after every sampling step but the last."
        )

    def usage(
        self, repo_id: str, class_labels: Sequence[int] | None = None, guidance_scale: float | None = None
    ) -> str:
        """Sampling with :attr:`default_sampler`, chosen by the pipeline call's ``sampler`` argument."""
        choices = (f'#   "{name}": {sampler.label}' for name, sampler in self.samplers.items())
        return usage_snippet(
            repo_id,
            self.default_steps(),
            setup=("# sampler= picks one of", *choices),
            call=f', sampler="{self.default_sampler}"',
            class_labels=class_labels,
            guidance_scale=guidance_scale,
        )

    def _probe_images(self) -> torch.Tensor:
        """Two random images in ``[-1, 1]`` of the scheduler's size (else 28), to ask the scheduler about."""
        size = self.scheduler.config.get("sample_size", 28)
        return torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
