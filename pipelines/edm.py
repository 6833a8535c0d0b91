"""``EDMPipeline``: sample an EDM model (Karras et al., 2022) with Diffusers' stock EDM schedulers.

The loop is the flow-matching pipeline's (Gaussian noise in, one scheduler step per timestep), with EDM's
preconditioning around the network: the start is noise of standard deviation ``sigma_max``, the network sees
``c_in(sigma) x`` and the noise level as a timestep in ``[0, T]`` (:func:`network_timestep`), and the
scheduler turns its output ``F`` into the clean image ``c_skip x + c_out F``.

This file imports only torch, diffusers, the standard library and its sibling modules ``flow_matching``,
``guidance`` and ``pipeline_utils`` (shipped with it), so that a saved pipeline ships it as custom code.
"""

from __future__ import annotations

import math

import torch

from .flow_matching import FlowMatchingPipeline
from .guidance import ClassLabelGuidance
from .pipeline_utils import ship_code

__all__ = ["EDMPipeline", "network_timestep", "ship_code"]


def network_timestep(sigma: torch.Tensor | float, config) -> torch.Tensor:
    """The timestep the network sees at noise level ``sigma``: ``log sigma`` mapped onto ``[0, T]``.

    ``t = T (log sigma - log sigma_min) / (log sigma_max - log sigma_min)``: EDM's noise conditioning
    ``c_noise`` is any increasing function of ``sigma`` (Karras et al. use ``log(sigma) / 4``); this one puts
    it on the scale every other process of the project feeds its networks, which the coursework CNN's
    ``t / T`` embedding needs.

    Args:
        sigma: noise levels (a tensor or a number).
        config: the scheduler's config (``sigma_min``, ``sigma_max``, ``num_train_timesteps``).

    Example:
        >>> from diffusers import EDMEulerScheduler
        >>> from mnist_diffusion.pipelines.edm import network_timestep
        >>> config = EDMEulerScheduler(sigma_min=0.01, sigma_max=100.0, num_train_timesteps=1000).config
        >>> network_timestep(torch.tensor([0.01, 1.0, 100.0]), config).tolist()
        [0.0, 500.0, 1000.0]
    """
    log_min, log_max = math.log(config.sigma_min), math.log(config.sigma_max)
    log_sigma = torch.as_tensor(sigma).double().log()
    return (config.num_train_timesteps * (log_sigma - log_min) / (log_max - log_min)).float()


class EDMPipeline(FlowMatchingPipeline):
    """Generate images with an EDM-preconditioned network and ``EDMEulerScheduler`` or
    ``EDMDPMSolverMultistepScheduler``, from Gaussian noise.

    Args:
        unet: a model called as ``unet(c_in x, t).sample`` that predicts EDM's ``F`` (the scheduler's
            ``epsilon`` prediction type): the clean image is ``c_skip x + c_out F``. E.g. a ``UNet2DModel``
            or the coursework CNN.
        scheduler: ``EDMEulerScheduler`` (the trained one) or ``EDMDPMSolverMultistepScheduler``.

    It is called like :class:`~mnist_diffusion.pipelines.flow_matching.FlowMatchingPipeline` (the same
    arguments, callback tensors, class labels and guidance); ``latents``, when given, are standard Gaussian
    noise, scaled here to the scheduler's start.

    Example:
        >>> import torch
        >>> from diffusers import DiffusionPipeline
        >>> pipeline = DiffusionPipeline.from_pretrained(  # doctest: +SKIP
        ...     "outputs/edm", trust_remote_code=True
        ... )
        >>> images = pipeline(  # doctest: +SKIP
        ...     batch_size=16, num_inference_steps=25, generator=torch.Generator().manual_seed(0)
        ... ).images
    """

    def prepare_latents(
        self,
        batch_size: int,
        generator: torch.Generator | list[torch.Generator] | None,
        device: torch.device,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The start of a run: Gaussian noise (or ``latents``) times the scheduler's ``init_noise_sigma``."""
        noise = super().prepare_latents(batch_size, generator, device, latents)
        return noise * self.scheduler.init_noise_sigma

    def denoising_step(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        guidance: ClassLabelGuidance,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One scheduler step at ``timestep`` (the scheduler's own, ``log(sigma) / 4``), preconditioned."""
        model_input = self.scheduler.scale_model_input(latents, timestep)
        sigma = self.scheduler.sigmas[self.scheduler.step_index].to(latents.device)
        network_time = network_timestep(sigma, self.scheduler.config).to(latents.device)
        model_output = guidance.predict(self.unet, model_input, network_time.expand(latents.shape[0]))
        pred_original_sample = self.scheduler.precondition_outputs(latents, model_output, sigma)
        step = self.scheduler.step(model_output, timestep, latents, generator=generator, return_dict=False)
        latents = step[0]
        # The EDM schedulers step in float32; the next network call takes the network's dtype.
        return latents.to(model_output.dtype), pred_original_sample
