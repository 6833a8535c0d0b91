"""``FlowMatchingPipeline``: sample a flow-matching (rectified-flow) model with a flow-match scheduler.

This file imports only torch, diffusers, the standard library and its sibling modules ``guidance`` and
``pipeline_utils`` (shipped with it), so that a saved pipeline ships it as custom code:
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` then works without this project.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from diffusers import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from .guidance import ClassLabelGuidance, ClassLabels
from .pipeline_utils import GrayscaleImagePipeline, StepEndCallback, ship_code

OUTPUT_TYPES = ("pil", "np", "pt")

__all__ = ["FlowMatchingPipeline", "ship_code"]


class FlowMatchingPipeline(GrayscaleImagePipeline):
    """Generate images with a velocity model and a flow-match scheduler (Euler or Heun), from Gaussian noise.

    The loop of Diffusers' Stable Diffusion 3 pipeline without its text encoders: start from ``noise`` at
    ``s = 1``, and at each timestep ``t = s * T`` of the scheduler call the network for the velocity
    ``noise - x0`` and let the scheduler step towards ``s = 0``.

    Args:
        unet: a model called as ``unet(x_t, t).sample`` that predicts the velocity ``noise - x0``, e.g. a
            ``UNet2DModel`` or the coursework CNN.
        scheduler: ``FlowMatchEulerDiscreteScheduler`` (the trained one) or
            ``FlowMatchHeunDiscreteScheduler``.

    A ``unet`` with ``num_class_embeds`` in its config is class-conditional: :meth:`__call__` takes
    ``class_labels`` and ``guidance_scale`` (see :mod:`mnist_diffusion.pipelines.guidance`).
    """

    # What `callback_on_step_end` may ask for: the sample after the step (`latents`) and the clean image the
    # step's velocity points at, `latents - s * velocity`.
    _callback_tensor_inputs = ["latents", "pred_original_sample"]

    def check_inputs(
        self,
        num_inference_steps: int,
        output_type: str,
        callback_on_step_end_tensor_inputs: Sequence[str] | None,
    ) -> None:
        """Raise ``ValueError`` naming the first bad argument of :meth:`__call__`."""
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int):
            raise ValueError(f"num_inference_steps must be an int, got {num_inference_steps!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps={num_inference_steps} must be at least 1")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(
                f"output_type={output_type!r} is not supported; choose one of {', '.join(OUTPUT_TYPES)}"
            )
        self.check_callback_inputs(callback_on_step_end_tensor_inputs)

    def prepare_latents(
        self,
        batch_size: int,
        generator: torch.Generator | list[torch.Generator] | None,
        device: torch.device,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The start of a run, ``x_1``: Gaussian noise of the network's image shape (or ``latents``)."""
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, self.unet.config.in_channels, *size)
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents of shape {tuple(latents.shape)} do not match {shape}")
            return latents.to(device, self.unet.dtype)
        return randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)

    def denoising_step(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        guidance: ClassLabelGuidance,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One scheduler step at ``timestep``: ``(the sample after it, the clean image it points at)``."""
        model_output = guidance.predict(self.unet, latents, timestep.expand(latents.shape[0]))
        # The clean image this velocity points at: x_s - s v, with s = t / T.
        pred_original_sample = latents - (timestep / self.scheduler.config.num_train_timesteps) * model_output
        step = self.scheduler.step(model_output, timestep, latents, generator=generator, return_dict=False)
        latents = step[0]
        return latents, pred_original_sample

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int = 25,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepEndCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        class_labels: ClassLabels | None = None,
        guidance_scale: float = 1.0,
    ) -> ImagePipelineOutput | tuple:
        """Integrate the learned velocity from Gaussian noise (``s = 1``) to images (``s = 0``).

        Args:
            batch_size: the number of images to generate.
            num_inference_steps: the scheduler's steps; Euler calls the network once per step, Heun twice
                (but for the last step).
            generator: makes generation deterministic.
            latents: the starting noise ``(batch, channels, H, W)``; drawn with ``generator`` when not given.
            output_type: ``pil``, ``np`` (``(batch, H, W, 1)``) or ``pt`` (``(batch, 1, H, W)``), in
                ``[0, 1]``.
            return_dict: return an ``ImagePipelineOutput`` instead of the tuple ``(images,)``.
            callback_on_step_end: called after every network call as ``callback_on_step_end(pipeline,
                step_index, timestep, callback_kwargs)``, where ``callback_kwargs`` holds the tensors named in
                ``callback_on_step_end_tensor_inputs``; it returns ``callback_kwargs``, and a ``latents`` it
                returns replaces the sample. A Diffusers ``PipelineCallback`` brings its own tensor inputs.
            callback_on_step_end_tensor_inputs: tensors the callback gets, from ``_callback_tensor_inputs``:
                ``latents`` (the sample after the step, about ``[-1, 1]``) and ``pred_original_sample``.
            class_labels: for a class-conditional ``unet``: the digit of every image (a list of
                ``batch_size`` ints in ``0..9``) or one for all (an int); ``None`` samples unconditionally
                (with the null label). An unconditional ``unet`` takes none.
            guidance_scale: the classifier-free guidance weight ``w`` of ``uncond + w * (cond - uncond)``
                on the velocity: 1 samples the conditional model as it is (one network call per step), 0
                the unconditional one, above 1 guides more strongly towards the labels (one call on a
                doubled batch). Other values than 1 need ``class_labels``.

        Returns:
            An ``ImagePipelineOutput``, or ``(images,)`` if not ``return_dict``.

        Raises:
            ValueError: on a bad ``num_inference_steps``, ``output_type``, ``latents`` or callback input,
                bad ``class_labels`` or a bad ``guidance_scale``.

        Example:
            >>> import torch
            >>> from diffusers import DiffusionPipeline, FlowMatchHeunDiscreteScheduler
            >>> pipeline = DiffusionPipeline.from_pretrained(  # doctest: +SKIP
            ...     "outputs/flow", trust_remote_code=True
            ... )
            >>> frames = []
            >>> def record(pipeline, step_index, timestep, callback_kwargs):
            ...     frames.append(callback_kwargs["latents"].cpu())
            ...     return callback_kwargs
            >>> images = pipeline(  # doctest: +SKIP
            ...     batch_size=16, num_inference_steps=25, generator=torch.Generator().manual_seed(0),
            ...     callback_on_step_end=record,
            ... ).images
            >>> # Heun's second-order steps: 13 steps are 25 network calls.
            >>> pipeline.scheduler = FlowMatchHeunDiscreteScheduler(  # doctest: +SKIP
            ...     num_train_timesteps=pipeline.scheduler.config.num_train_timesteps
            ... )
            >>> images = pipeline(batch_size=16, num_inference_steps=13).images  # doctest: +SKIP
        """
        callback_on_step_end_tensor_inputs = self.callback_tensor_inputs(
            callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        self.check_inputs(num_inference_steps, output_type, callback_on_step_end_tensor_inputs)
        device = self._execution_device
        guidance = ClassLabelGuidance.prepare(self, class_labels, guidance_scale, batch_size, device)
        latents = self.prepare_latents(batch_size, generator, device, latents)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self.start_steps(len(timesteps))
        for i, t in enumerate(self.progress_bar(timesteps)):
            if self.interrupt:
                continue
            latents, pred_original_sample = self.denoising_step(latents, t, guidance, generator)
            latents = self.step_end(
                callback_on_step_end, i, t, callback_on_step_end_tensor_inputs, latents,
                pred_original_sample=pred_original_sample,
            )  # fmt: skip

        images = self.image_processor.postprocess(latents.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Save like any pipeline, plus the code of the pipeline and custom components (:func:`ship_code`)."""
        super().save_pretrained(save_directory, **kwargs)
        ship_code(self, save_directory)
