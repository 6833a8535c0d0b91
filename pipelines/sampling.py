"""One way to draw samples from any pipeline of this project, shared by training, scripts and the demo.

The sampler is a name of the pipeline's forward process
(:attr:`mnist_diffusion.schedulers.ForwardProcess.samplers`): its scheduler is built from the trained one, so
every tool offers exactly the samplers the process registers.
"""

from __future__ import annotations

import math
import os

import torch
from diffusers import DiffusionPipeline
from torchvision.utils import make_grid, save_image

from mnist_diffusion.schedulers import forward_process
from mnist_diffusion.training.files import atomic_output

from .guidance import ClassLabels, check_class_labels, check_guidance_scale


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
    class_labels: ClassLabels | None = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """Draw ``num_images`` samples as a float tensor ``(N, 1, H, W)`` in ``[0, 1]``.

    The same ``seed`` gives the same images, whatever ``batch_size``: each image has its own generator
    (:func:`image_generators`).

    Args:
        pipeline: a trained pipeline of this project (``DDPMPipeline``, ``ColdDiffusionPipeline``, ...).
        num_images: how many images to draw (>= 1).
        sampler: a sampler of the pipeline's forward process; defaults to the process's default.
        num_inference_steps: network calls; defaults to the sampler's usual count.
        seed: seed of the ``torch.Generator`` on the pipeline's device.
        batch_size: images per network call.
        show_progress: show the pipeline's progress bar.
        start_images: for processes that restore: restore these ``(N, 1, H, W)`` images in ``[0, 1]``,
            degraded to ``t = T``, instead of sampling starts (a conditional start); ``num_images`` must be
            ``N``.
        class_labels: for a class-conditional pipeline: one label for all images (an int) or one per image
            (``num_images`` ints in ``0..9``); ``None`` samples unconditionally. See
            :mod:`mnist_diffusion.pipelines.guidance`.
        guidance_scale: the classifier-free guidance weight (1: the conditional model as it is); other
            values than 1 need ``class_labels``.

    Raises:
        ValueError: if ``num_images`` < 1, or the sampler, step count, start images, class labels or
            guidance scale are not allowed.

    Example:
        >>> from mnist_diffusion.pipelines import load_pipeline
        >>> from mnist_diffusion.pipelines.sampling import generate, save_grid
        >>> pipeline = load_pipeline("outputs/quickstart")  # doctest: +SKIP
        >>> save_grid(generate(pipeline, 16, "dpmsolver", 25, seed=0), "samples.png")  # doctest: +SKIP
        >>> # A class-conditional pipeline: the digits 0-9 twice, guided with w = 2.
        >>> digits = generate(  # doctest: +SKIP
        ...     pipeline, 20, class_labels=[i % 10 for i in range(20)], guidance_scale=2.0
        ... )
    """
    if num_images < 1:
        raise ValueError(f"num_images={num_images} must be at least 1")
    process = forward_process(pipeline)
    if start_images is not None:
        if not process.restores:
            raise ValueError(f"start_images need a process that restores images; {process.name} does not")
        if len(start_images) != num_images:
            raise ValueError(f"{len(start_images)} start_images given for num_images={num_images}")
    check_guidance_scale(guidance_scale, class_labels, pipeline)
    labels = check_class_labels(class_labels, num_images, pipeline)
    sampler = sampler or process.default_sampler
    process.check_sampler(sampler, num_inference_steps)
    steps = num_inference_steps or process.default_steps(sampler)
    generators = image_generators(seed, num_images, pipeline.device)
    pipeline = process.with_sampler(pipeline, sampler)
    pipeline.set_progress_bar_config(disable=not show_progress)
    batches = []
    for start in range(0, num_images, batch_size):
        count = min(batch_size, num_images - start)
        extra = {} if start_images is None else {"start_images": start_images[start : start + count]}
        if labels is not None:
            extra |= {
                "class_labels": labels[start : start + count].tolist(),
                "guidance_scale": guidance_scale,
            }
        generator = generators[start : start + count]
        output = pipeline(
            batch_size=count, generator=generator, num_inference_steps=steps, output_type="np", **extra
        )
        batches.append(torch.from_numpy(output.images).permute(0, 3, 1, 2))
    return torch.cat(batches).float()


def image_generators(seed: int, num_images: int, device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per image, seeded from ``seed`` and the image's index (a list, as Diffusers pipelines
    take it): image ``i`` of a seed is the same whatever batch it is drawn in."""
    seeds = torch.randint(0, 2**62, (num_images,), generator=torch.Generator().manual_seed(seed))
    return [torch.Generator(device=device).manual_seed(int(value)) for value in seeds]


def image_grid(images01: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """A grid of a ``(N, 1, H, W)`` batch in ``[0, 1]``, with 2-pixel white gutters.

    Args:
        images01: the images, filling the grid row by row.
        nrow: images per row; by default a near-square grid.
    """
    nrow = nrow or math.ceil(math.sqrt(len(images01)))
    return make_grid(images01, nrow=nrow, padding=2, pad_value=1.0)


def save_grid(images01: torch.Tensor, path: str | os.PathLike, nrow: int | None = None) -> None:
    """Save :func:`image_grid` of ``images01`` (``nrow`` images per row) as a PNG, atomically, creating the
    folder if needed."""
    with atomic_output(path) as temporary:
        save_image(image_grid(images01, nrow), temporary)
