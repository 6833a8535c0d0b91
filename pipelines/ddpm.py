"""``DDPMCallbackPipeline``: the stock ``DDPMPipeline`` loop with Diffusers' ``callback_on_step_end``.

Gaussian pipelines are saved as stock ``DDPMPipeline`` folders; ``GaussianProcess.with_sampler`` hands the
tools this subclass (same components, same samples) so that every sampling pipeline of the project
takes a step callback. Saving it still writes a stock ``DDPMPipeline`` folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from diffusers import DDPMPipeline, ImagePipelineOutput
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils.torch_utils import randn_tensor

from .cold_diffusion import StepEndCallback


class DDPMCallbackPipeline(DDPMPipeline):
    """``DDPMPipeline`` plus ``callback_on_step_end``; samples exactly as the stock pipeline does.

    Args:
        unet: the noise (or ``x0``, or velocity) prediction network, as in ``DDPMPipeline``.
        scheduler: a Diffusers scheduler built from the trained ``DDPMScheduler`` (DDPM, DDIM, DPM-Solver++).
    """

    # What `callback_on_step_end` may ask for: the sample after each step (`latents`, as Diffusers names it).
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet: torch.nn.Module, scheduler):
        super().__init__(unet=unet, scheduler=scheduler)
        self._num_timesteps = 0
        self._interrupt = False

    @property
    def num_timesteps(self) -> int:
        """The number of reverse steps (network calls) of the current or last run."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set ``pipeline._interrupt = True`` in a callback to skip the remaining steps of the run."""
        return self._interrupt

    def check_inputs(self, callback_on_step_end_tensor_inputs: Sequence[str] | None) -> None:
        """Raise ``ValueError`` if the callback asks for a tensor the pipeline does not offer."""
        if callback_on_step_end_tensor_inputs is not None:
            unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            if unknown:
                raise ValueError(
                    f"`callback_on_step_end_tensor_inputs` has to be in {self._callback_tensor_inputs}, but "
                    f"found {unknown}"
                )

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

        Returns:
            An ``ImagePipelineOutput``, or ``(images,)`` if not ``return_dict``.

        Raises:
            ValueError: on an unknown callback tensor input.

        Example:
            >>> import torch
            >>> from pipelines import load_pipeline
            >>> from schedulers import forward_process
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
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        self.check_inputs(callback_on_step_end_tensor_inputs)
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

        device = self._execution_device
        if device.type == "mps":
            # randn does not work reproducibly on mps
            latents = randn_tensor(image_shape, generator=generator, dtype=self.unet.dtype).to(device)
        else:
            latents = randn_tensor(image_shape, generator=generator, device=device, dtype=self.unet.dtype)

        self.scheduler.set_timesteps(num_inference_steps)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        for i, t in enumerate(self.progress_bar(timesteps)):
            if self.interrupt:
                continue
            model_output = self.unet(latents, t).sample
            latents = self.scheduler.step(model_output, t, latents, generator=generator).prev_sample
            if callback_on_step_end is not None:
                callback_kwargs = {}
                for k in callback_on_step_end_tensor_inputs:
                    callback_kwargs[k] = locals()[k]
                callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                latents = callback_outputs.pop("latents", latents)

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
        """Save a stock ``DDPMPipeline`` folder, which plain Diffusers loads."""
        DDPMPipeline(**self.components).save_pretrained(save_directory, **kwargs)
