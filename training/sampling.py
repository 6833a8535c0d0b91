"""One way to draw samples from any pipeline of this project, shared by training, scripts and the demo.

Gaussian pipelines (``DDPMPipeline``) can be sampled with any Diffusers scheduler built ``from_config``
from the trained one, so the forward process (its ``trained_betas``) carries over; cold pipelines take
their sampling algorithm as an argument.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from diffusers import (
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
)
from torchvision.utils import make_grid, save_image

GAUSSIAN_SAMPLERS = ("ddpm", "ddim", "dpmsolver")
COLD_SAMPLERS = ("improved", "naive", "direct")
# The usual step counts of the few-step samplers; ancestral DDPM and the cold samplers take all T steps.
FAST_SAMPLER_STEPS = {"ddim": 50, "dpmsolver": 25}


def is_gaussian(pipeline: DiffusionPipeline) -> bool:
    """Whether ``pipeline`` is a stock Gaussian ``DDPMPipeline`` (as opposed to a cold-diffusion one)."""
    return isinstance(pipeline, DDPMPipeline)


def samplers_for(pipeline: DiffusionPipeline) -> tuple[str, ...]:
    """The sampler names that ``pipeline`` accepts."""
    return GAUSSIAN_SAMPLERS if is_gaussian(pipeline) else COLD_SAMPLERS


def with_gaussian_sampler(pipeline: DDPMPipeline, sampler: str) -> DDPMPipeline:
    """A copy of a Gaussian pipeline whose scheduler is ``sampler``, built from the trained config.

    Args:
        pipeline: a ``DDPMPipeline``.
        sampler: ``ddpm`` (ancestral), ``ddim`` (eta = 0) or ``dpmsolver`` (SDE DPM-Solver++ 2M).
    """
    config = pipeline.scheduler.config
    if sampler == "ddpm":
        scheduler = DDPMScheduler.from_config(config)
    elif sampler == "ddim":
        scheduler = DDIMScheduler.from_config(config)
    else:
        # The SDE form of DPM-Solver++ stays closest to ancestral sampling at few steps; thresholding at 1
        # clips each x0 estimate to the pixel range, without which few-step samples of a young model speckle.
        scheduler = DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="sde-dpmsolver++", thresholding=True, sample_max_value=1.0
        )
    return DDPMPipeline(unet=pipeline.unet, scheduler=scheduler)


def default_sampler(pipeline: DiffusionPipeline) -> str:
    """``dpmsolver`` for Gaussian pipelines (a laptop's sensible default), ``improved`` for cold ones."""
    return "dpmsolver" if is_gaussian(pipeline) else "improved"


def default_steps(pipeline: DiffusionPipeline, sampler: str) -> int:
    """A sensible number of steps for ``sampler``: few for DDIM and DPM-Solver++, otherwise all ``T``."""
    num_train_timesteps = pipeline.scheduler.config.num_train_timesteps
    return min(FAST_SAMPLER_STEPS.get(sampler, num_train_timesteps), num_train_timesteps)


def check_sampling_args(pipeline: DiffusionPipeline, sampler: str, num_inference_steps: int | None) -> None:
    """Raise ``ValueError`` naming the bad value if ``sampler`` or ``num_inference_steps`` is not allowed."""
    allowed = samplers_for(pipeline)
    if sampler not in allowed:
        kind = "Gaussian" if is_gaussian(pipeline) else "cold-diffusion"
        raise ValueError(
            f"sampler {sampler!r} is not available for a {kind} pipeline; choose one of {allowed}"
        )
    max_steps = pipeline.scheduler.config.num_train_timesteps
    if num_inference_steps is not None and not 1 <= num_inference_steps <= max_steps:
        raise ValueError(f"num_inference_steps={num_inference_steps} must be between 1 and {max_steps}")


@torch.inference_mode()
def generate(
    pipeline: DiffusionPipeline,
    num_images: int,
    sampler: str | None = None,
    num_inference_steps: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    show_progress: bool = False,
    start_images: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw ``num_images`` samples as a float tensor ``(N, 1, H, W)`` in ``[0, 1]``.

    The same ``seed`` gives the same images: one generator drives all batches in order.

    Args:
        pipeline: a ``DDPMPipeline`` or a ``ColdDiffusionPipeline``.
        num_images: how many images to draw (>= 1).
        sampler: one of :func:`samplers_for` the pipeline; defaults to :func:`default_sampler`.
        num_inference_steps: denoising steps; defaults to :func:`default_steps`.
        seed: seed of the ``torch.Generator`` on the pipeline's device.
        batch_size: images per network call.
        show_progress: show the pipeline's progress bar.
        start_images: cold pipelines only: restore these ``(N, 1, H, W)`` images in ``[0, 1]``, degraded to
            ``t = T``, instead of prior samples (a conditional start); ``num_images`` must be ``N``.

    Raises:
        ValueError: if ``num_images`` < 1, or the sampler, step count or start images are not allowed.
    """
    if num_images < 1:
        raise ValueError(f"num_images={num_images} must be at least 1")
    if start_images is not None:
        if is_gaussian(pipeline):
            raise ValueError("start_images are for cold-diffusion pipelines; Gaussian ones start from noise")
        if len(start_images) != num_images:
            raise ValueError(f"{len(start_images)} start_images given for num_images={num_images}")
    sampler = sampler or default_sampler(pipeline)
    check_sampling_args(pipeline, sampler, num_inference_steps)
    steps = num_inference_steps or default_steps(pipeline, sampler)
    generator = torch.Generator(device=pipeline.device).manual_seed(seed)
    if is_gaussian(pipeline):
        pipeline = with_gaussian_sampler(pipeline, sampler)
        extra = {}
    else:
        extra = {"sampling": sampler}
    pipeline.set_progress_bar_config(disable=not show_progress)
    batches = []
    for start in range(0, num_images, batch_size):
        count = min(batch_size, num_images - start)
        if start_images is not None:
            extra["start_images"] = start_images[start : start + count]
        output = pipeline(
            batch_size=count, generator=generator, num_inference_steps=steps, output_type="np", **extra
        )
        batches.append(torch.from_numpy(output.images).permute(0, 3, 1, 2))
    return torch.cat(batches).float()


def image_grid(images01: torch.Tensor) -> torch.Tensor:
    """A near-square grid of a ``(N, 1, H, W)`` batch in ``[0, 1]``, with 2-pixel white gutters."""
    return make_grid(images01, nrow=math.ceil(math.sqrt(len(images01))), padding=2, pad_value=1.0)


def save_grid(images01: torch.Tensor, path: str | os.PathLike) -> None:
    """Save :func:`image_grid` of ``images01`` as a PNG, creating the folder if needed."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(image_grid(images01), path)
