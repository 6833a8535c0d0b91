"""``DDPMCallbackPipeline``: the stock ``DDPMPipeline`` loop with Diffusers' ``callback_on_step_end`` and
class labels with classifier-free guidance.

Unconditional Gaussian pipelines are saved as stock ``DDPMPipeline`` folders; ``GaussianProcess.with_sampler``
hands the tools this subclass (same components, same samples) so that every sampling pipeline of the project
takes a step callback, and saving it still writes a stock ``DDPMPipeline`` folder. A class-conditional one
(a ``unet`` with ``num_class_embeds``) needs ``class_labels``, which the stock pipeline does not take: it is
saved as this class, with its code, so that ``DiffusionPipeline.from_pretrained(folder,
trust_remote_code=True)`` loads it without this project.

This file imports only torch, diffusers, the standard library and its sibling modules ``guidance`` and
``pipeline_utils`` (shipped with it), so that a saved conditional pipeline ships it as custom code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from diffusers import DDPMPipeline, DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from .guidance import ClassLabelGuidance, ClassLabels, is_class_conditional
from .pipeline_utils import StepCallbackMixin, StepEndCallback, ship_code


class DDPMCallbackPipeline(StepCallbackMixin, DDPMPipeline):
    """``DDPMPipeline`` plus ``callback_on_step_end`` and class labels; samples exactly as the stock pipeline.

    Args:
        unet: the noise (or ``x0``, or velocity) prediction network, as in ``DDPMPipeline``; with
            ``num_class_embeds`` in its config, a class-conditional one (see
            :mod:`mnist_diffusion.pipelines.guidance`).
        scheduler: a Diffusers scheduler built from the trained ``DDPMScheduler`` (DDPM, DDIM, DPM-Solver++).
    """

    def check_inputs(self, callback_on_step_end_tensor_inputs: Sequence[str] | None) -> None:
        """Raise ``ValueError`` if the callback asks for a tensor the pipeline does not offer."""
        self.check_callback_inputs(callback_on_step_end_tensor_inputs)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 1000,
        output_type: str | None = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepEndCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        class_labels: ClassLabels | None = None,
        guidance_scale: float = 1.0,
    ) -> ImagePipelineOutput | tuple:
        """Sample Gaussian noise and denoise it with the scheduler, as ``DDPMPipeline.__call__``.

        Args:
            batch_size: the number of images to generate.
            generator: makes generation deterministic.
            num_inference_steps: the number of denoising steps (network calls).
            output_type: ``pil``, ``np`` or ``pt``.
            return_dict: return an ``ImagePipelineOutput`` instead of the tuple ``(images,)``.
            callback_on_step_end: called after every step as ``callback_on_step_end(pipeline, step_index,
                timestep, callback_kwargs)``, where ``callback_kwargs`` holds the tensors named in
                ``callback_on_step_end_tensor_inputs``; it returns ``callback_kwargs``, and a ``latents`` it
                returns replaces the sample. A Diffusers ``PipelineCallback`` brings its own tensor inputs.
            callback_on_step_end_tensor_inputs: tensors the callback gets, from ``_callback_tensor_inputs``:
                ``latents`` (the sample after the step, in model space, about ``[-1, 1]``).
            class_labels: for a class-conditional ``unet``: the digit of every image (a list of
                ``batch_size`` ints in ``0..9``) or one for all (an int); ``None`` samples unconditionally
                (with the null label). An unconditional ``unet`` takes none.
            guidance_scale: the classifier-free guidance weight ``w`` of ``uncond + w * (cond - uncond)``:
                1 samples the conditional model as it is (one network call per step), 0 the unconditional
                one, above 1 guides more strongly towards the labels (one call on a doubled batch). Other
                values than 1 need ``class_labels``.

        Returns:
            An ``ImagePipelineOutput``, or ``(images,)`` if not ``return_dict``.

        Raises:
            ValueError: on an unknown callback tensor input, bad ``class_labels`` (not ints in range, not
                one per image, or given to an unconditional model) or a bad ``guidance_scale``.

        Example:
            >>> import torch
            >>> from mnist_diffusion.pipelines import load_pipeline
            >>> from mnist_diffusion.schedulers import forward_process
            >>> saved = load_pipeline("outputs/quickstart")  # doctest: +SKIP
            >>> process = forward_process(saved)  # doctest: +SKIP
            >>> pipeline = process.with_sampler(saved, "dpmsolver")  # doctest: +SKIP
            >>> frames = []
            >>> def record(pipeline, step_index, timestep, callback_kwargs):
            ...     frames.append(callback_kwargs["latents"].cpu())
            ...     return callback_kwargs
            >>> images = pipeline(  # doctest: +SKIP
            ...     batch_size=16, num_inference_steps=25, generator=torch.Generator().manual_seed(0),
            ...     callback_on_step_end=record,
            ... ).images
            >>> # With a class-conditional model: two of each digit, guided with w = 3.
            >>> images = pipeline(  # doctest: +SKIP
            ...     batch_size=20, class_labels=[d for d in range(10) for _ in range(2)], guidance_scale=3.0,
            ...     num_inference_steps=25,
            ... ).images
        """
        callback_on_step_end_tensor_inputs = self.callback_tensor_inputs(
            callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        self.check_inputs(callback_on_step_end_tensor_inputs)
        device = self._execution_device
        guidance = ClassLabelGuidance.prepare(self, class_labels, guidance_scale, batch_size, device)
        self._interrupt = False
        # From here to the end, DDPMPipeline.__call__ (diffusers 0.42) with the callback after each step.
        if isinstance(self.unet.config.sample_size, int):
            image_shape = (
                batch_size,
                self.unet.config.in_channels,
                self.unet.config.sample_size,
                self.unet.config.sample_size,
            )
        else:
            image_shape = (batch_size, self.unet.config.in_channels, *self.unet.config.sample_size)

        if device.type == "mps":
            # randn does not work reproducibly on mps
            latents = randn_tensor(image_shape, generator=generator, dtype=self.unet.dtype).to(device)
        else:
            latents = randn_tensor(image_shape, generator=generator, device=device, dtype=self.unet.dtype)

        self.scheduler.set_timesteps(num_inference_steps)
        timesteps = self.scheduler.timesteps
        self.start_steps(len(timesteps))
        for i, t in enumerate(self.progress_bar(timesteps)):
            if self.interrupt:
                continue
            model_output = guidance.predict(self.unet, latents, t)
            latents = self.scheduler.step(model_output, t, latents, generator=generator).prev_sample
            latents = self.step_end(callback_on_step_end, i, t, callback_on_step_end_tensor_inputs, latents)

        image = (latents / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(image)

        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Save a stock ``DDPMPipeline`` folder, which plain Diffusers loads; a conditional one as this class.

        The folder of a class-conditional pipeline gets this class's code (and its non-Diffusers
        components'), for ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``.
        """
        if not is_class_conditional(self):
            DDPMPipeline(**self.components).save_pretrained(save_directory, **kwargs)
            return
        DiffusionPipeline.save_pretrained(self, save_directory, **kwargs)
        ship_code(self, save_directory)
