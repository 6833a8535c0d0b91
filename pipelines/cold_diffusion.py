"""``ColdDiffusionPipeline``: the one sampling loop of every cold-diffusion scheduler (and of DES).

This file imports only torch, diffusers, numpy, PIL, the standard library and its sibling modules ``guidance``
and ``pipeline_utils`` (shipped with it), so that a saved pipeline ships it as custom code:
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` then works without this project.
"""

from __future__ import annotations

import importlib
import json
import numbers
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.models.modeling_utils import ModelMixin
from diffusers.pipelines.pipeline_loading_utils import LOADABLE_CLASSES
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from .guidance import ClassLabelGuidance, ClassLabels
from .pipeline_utils import GrayscaleImagePipeline, StepEndCallback, copy_module_code

SAMPLING_METHODS = ("improved", "naive", "direct")
OUTPUT_TYPES = ("pil", "np", "pt")


# What `start_images` may be: see `start_images_tensor`.
StartImages = torch.Tensor | np.ndarray | Sequence[PIL.Image.Image] | Sequence[np.ndarray] | PIL.Image.Image


def start_images_tensor(images: StartImages) -> torch.Tensor:
    """Grayscale images as a float tensor ``(N, 1, H, W)`` in ``[0, 1]`` (tensors stay on their device).

    Args:
        images: a PIL image, or any sequence of them (a list, a tuple, a ``datasets`` column such as
            ``load_dataset("ylecun/mnist", split="test[:8]")["image"]``; colour images are converted to
            grayscale), or a tensor or numpy array (or a sequence of per-image arrays) of shape ``(N, H, W)``,
            ``(N, H, W, 1)`` or ``(N, 1, H, W)``: uint8 in ``[0, 255]`` or float in ``[0, 1]``.

    Raises:
        ValueError: on an empty batch, another shape or dtype, or values outside the dtype's range.
    """
    if isinstance(images, PIL.Image.Image):
        images = [images]
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    elif not isinstance(images, torch.Tensor):
        if isinstance(images, (str, bytes)) or not isinstance(images, Iterable):
            raise ValueError(
                f"start_images must be images (PIL images, a tensor or an array), got {type(images).__name__}"
            )
        items = [_image_array(item) for item in images]
        if not items:
            raise ValueError("start_images is empty")
        if len({item.shape for item in items}) > 1:
            raise ValueError(f"start_images differ in shape: {sorted({item.shape for item in items})}")
        images = torch.from_numpy(np.stack(items))
    shape = tuple(images.shape)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    elif images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or 0 in images.shape:
        raise ValueError(
            f"start_images of shape {shape} are not a grayscale batch (N, H, W), (N, H, W, 1) or (N, 1, H, W)"
        )
    if images.dtype == torch.bool:
        return images.float().unsqueeze(1)
    if not images.is_floating_point():
        if images.dtype.is_complex or images.min() < 0 or images.max() > 255:
            raise ValueError(f"integer start_images must be uint8 in [0, 255], got dtype {images.dtype}")
        return (images.float() / 255.0).unsqueeze(1)
    low, high = images.min().item(), images.max().item()
    if not (low >= 0.0 and high <= 1.0):  # also catches NaN
        raise ValueError(
            f"float start_images must lie in [0, 1], got [{low:.3g}, {high:.3g}] (uint8 images are scaled by "
            "1/255; images in the model range [-1, 1] need (x + 1) / 2)"
        )
    return images.float().unsqueeze(1)


def _image_array(item: object) -> np.ndarray:
    """One image of a sequence as an array: PIL images in grayscale ("L"), tensors on the CPU."""
    if isinstance(item, PIL.Image.Image):
        return np.asarray(item.convert("L"))
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu()
        return (item.float() if item.dtype in (torch.bfloat16, torch.float16) else item).numpy()
    return np.asarray(item)


@dataclass
class ColdDiffusionPipelineOutput(BaseOutput):
    """Output of :class:`ColdDiffusionPipeline`.

    Args:
        images: the samples, as a list of PIL images, a ``(batch, H, W, 1)`` array or a ``(batch, 1, H, W)``
            tensor in ``[0, 1]``.
    """

    images: list[PIL.Image.Image] | object


class ColdDiffusionPipeline(GrayscaleImagePipeline):
    """Generate or restore images with a restoration model and a cold-diffusion scheduler.

    Args:
        unet: a model called as ``unet(x_t, t).sample`` that predicts ``x_0`` (for the DES scheduler, its
            scaled noise), e.g. the coursework CNN or a ``UNet2DModel``.
        scheduler: a ``ColdDiffusionScheduler`` (``degrade``, ``set_timesteps``, ``step``, ``prior_sample``).

    A ``unet`` with ``num_class_embeds`` in its config is class-conditional: :meth:`__call__` takes
    ``class_labels`` and ``guidance_scale`` (see :mod:`mnist_diffusion.pipelines.guidance`).
    """

    # What `callback_on_step_end` may ask for: the sample after the step (`latents`, as Diffusers names the
    # sample in every pipeline) and the step's estimate of the clean images.
    _callback_tensor_inputs = ["latents", "pred_original_sample"]

    def check_inputs(
        self,
        sampler: str,
        output_type: str,
        start_images: object,
        start_timestep: int | None,
        callback_on_step_end_tensor_inputs: Sequence[str] | None,
    ) -> None:
        """Raise ``ValueError`` naming the first bad argument of :meth:`__call__`."""
        if sampler not in SAMPLING_METHODS:
            raise ValueError(
                f"sampler={sampler!r} is not supported; choose one of {', '.join(SAMPLING_METHODS)}"
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(
                f"output_type={output_type!r} is not supported; choose one of {', '.join(OUTPUT_TYPES)}"
            )
        if start_timestep is not None:
            num_train_timesteps = self.scheduler.config.num_train_timesteps
            if isinstance(start_timestep, bool) or not isinstance(start_timestep, numbers.Integral):
                raise ValueError(
                    f"start_timestep must be an int in [1, {num_train_timesteps}], got {start_timestep!r}"
                )
            if not 1 <= start_timestep <= num_train_timesteps:
                raise ValueError(f"start_timestep={start_timestep} must lie in [1, {num_train_timesteps}]")
            if start_images is None:
                raise ValueError(
                    "start_timestep needs start_images to degrade to it; unconditional samples start at t = T"
                )
        self.check_callback_inputs(callback_on_step_end_tensor_inputs)

    def get_timesteps(self, start_timestep: int | None = None) -> torch.Tensor:
        """The timesteps of a run from ``start_timestep`` (``None``: ``T``), once ``set_timesteps`` has run.

        The run steps from ``start_timestep`` first, then from each timestep of the scheduler's grid below it,
        so a run from ``T`` is the grid itself.
        """
        grid = self.scheduler.timesteps
        if start_timestep is None:
            return grid
        start = torch.tensor([start_timestep], dtype=grid.dtype, device=grid.device)
        return torch.cat([start, grid[grid < start_timestep]])

    def prepare_latents(
        self,
        batch_size: int,
        start_images: StartImages | None,
        start_timestep: int,
        generator: torch.Generator | None,
        device: torch.device,
        start_noise: float | None = None,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The start of a run: a prior sample at ``T``, or ``start_images`` degraded to ``start_timestep``.

        The degradation uses the run's random draw (``scheduler.sampling_draw``, made here from
        ``generator`` after ``set_timesteps``), which the reverse steps then reuse. ``class_labels`` (the
        labels the network is asked for) pick each prior sample's class, where the prior has classes.
        """
        if start_images is None:
            sample = self.scheduler.prior_sample(
                batch_size, generator, device, start_noise=start_noise, class_labels=class_labels
            )
        else:
            clean = self.image_processor.normalize(start_images_tensor(start_images)).to(device)
            draw = self.scheduler.sampling_draw(tuple(clean.shape), generator, device)
            sample = self.scheduler.degrade(clean, start_timestep, draw=draw)
        return sample.to(device, self.unet.dtype)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int | None = None,
        generator: torch.Generator | None = None,
        start_images: StartImages | None = None,
        start_timestep: int | None = None,
        sampler: str | None = None,
        output_type: str = "pil",
        start_noise: float | None = None,
        return_dict: bool = True,
        callback_on_step_end: StepEndCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        class_labels: ClassLabels | None = None,
        guidance_scale: float = 1.0,
    ) -> ColdDiffusionPipelineOutput | tuple:
        """Sample from the scheduler's prior, or degrade ``start_images`` to a start timestep, and restore.

        Args:
            batch_size: number of images to generate; ignored when ``start_images`` is given.
            num_inference_steps: the run's grid of timesteps from ``T`` down to 1 (``None``: all ``T``);
                ``direct`` always uses one.
            generator: makes the run deterministic (prior sample, random draws, posterior noise).
            start_images: images to restore, any batch that :func:`start_images_tensor` reads: a sequence
                of PIL images (a list, or a ``datasets`` column such as ``dataset["image"]``), or a tensor
                or array ``(batch, H, W)``, ``(batch, H, W, 1)`` or ``(batch, 1, H, W)``, uint8 or float in
                [0, 1].
            start_timestep: the severity ``t`` in ``[1, T]`` that ``start_images`` are degraded to (``None``:
                ``T``); the run restores ``D(x0, t)`` by stepping from ``t``, then from each grid timestep
                below ``t``. Needs ``start_images``.
            sampler: ``improved`` (Bansal's Algorithm 2), ``naive`` (Algorithm 1) or ``direct``; ``None``
                uses the scheduler's ``sampling`` config (what the pipeline was saved with).
            output_type: ``pil``, ``np`` or ``pt``.
            start_noise: std of noise added to prior samples (``None``: the scheduler's config).
            return_dict: return a :class:`ColdDiffusionPipelineOutput` instead of a tuple.
            callback_on_step_end: called after every step as ``callback_on_step_end(pipeline, step_index,
                timestep, callback_kwargs)``, where ``callback_kwargs`` holds the tensors named in
                ``callback_on_step_end_tensor_inputs``; it returns ``callback_kwargs``, and a ``latents`` it
                returns replaces the sample. A Diffusers ``PipelineCallback`` brings its own tensor inputs.
            callback_on_step_end_tensor_inputs: tensors the callback gets, from ``_callback_tensor_inputs``:
                ``latents`` (the sample after the step, in ``[-1, 1]``) and ``pred_original_sample`` (the
                step's estimate of the clean images).
            class_labels: for a class-conditional ``unet``: the digit of every image (a list of ints in
                ``0..9``, one per image: ``batch_size`` or ``start_images``) or one for all (an int);
                ``None`` samples unconditionally (with the null label). An unconditional ``unet`` takes none.
            guidance_scale: the classifier-free guidance weight ``w`` of ``uncond + w * (cond - uncond)``:
                1 samples the conditional model as it is (one network call per step), 0 the unconditional
                one, above 1 guides more strongly towards the labels (one call on a doubled batch). Other
                values than 1 need ``class_labels``.

        Returns:
            A :class:`ColdDiffusionPipelineOutput`, or the tuple ``(images,)`` if not ``return_dict``.

        Raises:
            ValueError: on an unknown ``sampler``, ``output_type`` or callback tensor input, a bad
                ``num_inference_steps``, a ``start_timestep`` outside ``[1, T]`` or without
                ``start_images``, bad ``class_labels`` or a bad ``guidance_scale``.

        Example:
            >>> import torch
            >>> from diffusers import DiffusionPipeline
            >>> pipeline = DiffusionPipeline.from_pretrained(  # doctest: +SKIP
            ...     "outputs/cold_blur", trust_remote_code=True
            ... )
            >>> # Unconditional samples, recording the sample after every step.
            >>> frames = []
            >>> def record(pipeline, step_index, timestep, callback_kwargs):
            ...     frames.append(callback_kwargs["latents"].cpu())
            ...     return callback_kwargs
            >>> images = pipeline(  # doctest: +SKIP
            ...     batch_size=16, generator=torch.Generator().manual_seed(0), callback_on_step_end=record
            ... ).images
            >>> # Restore digits (in [0, 1], shape (N, 1, 28, 28)) from D(x0, 20): one call from t = 20, then
            >>> # one from each timestep of the 10-step grid below 20.
            >>> digits = torch.rand(4, 1, 28, 28)
            >>> restored = pipeline(  # doctest: +SKIP
            ...     start_images=digits, start_timestep=20, num_inference_steps=10, output_type="pt"
            ... ).images
        """
        sampler = sampler or self.scheduler.config.sampling
        callback_on_step_end_tensor_inputs = self.callback_tensor_inputs(
            callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        self.check_inputs(
            sampler, output_type, start_images, start_timestep, callback_on_step_end_tensor_inputs
        )
        device = self._execution_device
        if start_images is not None:
            start_images = start_images_tensor(start_images)
            batch_size = len(start_images)
        guidance = ClassLabelGuidance.prepare(self, class_labels, guidance_scale, batch_size, device)
        self.scheduler.set_timesteps(1 if sampler == "direct" else num_inference_steps, device=device)
        timesteps = self.get_timesteps(start_timestep)
        self.start_steps(len(timesteps))
        start = self.scheduler.config.num_train_timesteps if start_timestep is None else start_timestep
        latents = self.prepare_latents(
            batch_size, start_images, start, generator, device, start_noise, guidance.labels
        )

        for i, t in enumerate(self.progress_bar(timesteps)):
            if self.interrupt:
                continue
            model_output = guidance.predict(self.unet, latents, t)
            latents, pred_original_sample = self.scheduler.step(
                model_output, t, latents, generator=generator, sampling=sampler, return_dict=False
            )
            latents = self.step_end(
                callback_on_step_end, i, t, callback_on_step_end_tensor_inputs, latents,
                pred_original_sample=pred_original_sample,
            )  # fmt: skip

        images = self.image_processor.postprocess(latents.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ColdDiffusionPipelineOutput(images=images)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Save like any pipeline, plus the code of the custom classes (see :func:`make_portable`)."""
        super().save_pretrained(save_directory, **kwargs)
        make_portable(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> DiffusionPipeline:
        """Load a saved pipeline with the component classes already imported (no ``trust_remote_code``).

        Import the packages that define the components first (this project's ``mnist_diffusion.models`` and
        ``mnist_diffusion.schedulers``).
        With ``trust_remote_code=True`` the code saved in the folder is used instead, as by
        ``DiffusionPipeline.from_pretrained``.
        """
        if kwargs.get("trust_remote_code"):
            return DiffusionPipeline.from_pretrained(pretrained_model_name_or_path, **kwargs)
        if kwargs:
            raise ValueError(f"unsupported arguments {sorted(kwargs)}; only trust_remote_code is accepted")
        return cls(**load_imported_components(pretrained_model_name_or_path))


def local_folder(path_or_repo: str | os.PathLike) -> str:
    """A local folder of a saved pipeline: the path itself, or a Hub repository's downloaded snapshot."""
    if os.path.isdir(path_or_repo):
        return str(path_or_repo)
    name = str(path_or_repo)
    if os.path.isdir(os.path.expanduser(name)):
        return os.path.expanduser(name)
    if _looks_like_a_path(name):
        raise ValueError(f"pipeline folder {name!r} does not exist{_folders_beside(name)}")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name)
    except Exception as error:  # the Hub client raises many connection and lookup error types
        raise ValueError(
            f"could not download pipeline {name!r} from the Hugging Face Hub ({type(error).__name__}); "
            "pass a local pipeline folder or a reachable Hub id"
        ) from error


# A Hub repository id: "owner/name" of letters, digits, "-", "_" and ".", not starting with "-" or ".".
_HUB_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}")


def _looks_like_a_path(name: str) -> bool:
    """Whether ``name`` (no existing folder) is meant as a local folder rather than a Hub id.

    It is when it starts like a path (``./``, ``../``, ``/``, ``~``), has other than one slash, is no Hub id
    (``owner/name`` of letters, digits, ``-``, ``_``, ``.``), or its first part is a local folder
    (``outputs/nope`` when ``outputs/`` exists).
    """
    if name.startswith((".", "/", "~")) or name.count("/") != 1 or os.sep != "/" and os.sep in name:
        return True
    if not _HUB_ID.fullmatch(name) or ".." in name or "--" in name or name.endswith(".git"):
        return True
    return os.path.isdir(name.split("/")[0])


def _folders_beside(name: str) -> str:
    """What to say after "does not exist": the folders in the missing folder's parent, when that exists."""
    parent = os.path.dirname(os.path.expanduser(name).rstrip("/"))
    if not parent or not os.path.isdir(parent):
        return "; pass a saved pipeline folder or a Hub id (owner/name)"
    folders = sorted(e.name for e in os.scandir(parent) if e.is_dir() and not e.name.startswith((".", "_")))
    if not folders:
        return f" ({parent}/ holds no folder)"
    more = f", ... ({len(folders)} in all)" if len(folders) > 8 else ""
    return f" ({parent}/ holds {', '.join(folders[:8])}{more})"


def load_imported_components(path_or_repo: str | os.PathLike) -> dict[str, object]:
    """Load each component of a saved pipeline with the imported class of the name in ``model_index.json``.

    Raises:
        ValueError: if a component's class is neither in diffusers nor imported.
    """
    folder = local_folder(path_or_repo)
    index = DiffusionPipeline.load_config(folder)
    components = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        components[name] = imported_class(entry[1]).from_pretrained(folder, subfolder=name)
    return components


def imported_class(class_name: str) -> type:
    """The diffusers class, or else the imported model or scheduler class, called ``class_name``.

    Classes imported from installed packages win over copies loaded from saved folders' code.

    Raises:
        ValueError: if no such class is imported.
    """
    import diffusers

    found = getattr(diffusers, class_name, None)
    if found is not None:
        return found
    candidates = [
        c for base in (ModelMixin, SchedulerMixin) for c in _subclasses(base) if c.__name__ == class_name
    ]
    if not candidates:
        raise ValueError(
            f"component class {class_name!r} is not imported; import the package that defines it (for this "
            "project: `from mnist_diffusion import models, schedulers`) or load with trust_remote_code=True"
        )
    return min(candidates, key=lambda c: c.__module__.startswith("diffusers_modules"))


def _subclasses(base: type) -> list[type]:
    direct = base.__subclasses__()
    return direct + [c for sub in direct for c in _subclasses(sub)]


def make_portable(folder: str | os.PathLike) -> None:
    """Make a saved pipeline loadable with ``trust_remote_code=True`` where this project is not installed.

    Every component whose class is not from diffusers gets its module (and the sibling modules it imports
    relatively) copied into its subfolder, and its ``model_index.json`` entry rewritten to
    ``[module, class]``; a ``ColdDiffusionPipeline`` also gets this file at the root and
    ``_class_name = ["cold_diffusion", "ColdDiffusionPipeline"]``. Running it again changes nothing.

    Args:
        folder: a folder written by ``save_pretrained`` (e.g. a ``ColdDiffusionPipeline`` or a
            ``DDPMPipeline`` whose unet is a custom model).
    """
    index_file = os.path.join(folder, "model_index.json")
    with open(index_file, encoding="utf-8") as file:
        index = json.load(file)
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        library, class_name = entry
        if library in LOADABLE_CLASSES or os.path.isfile(os.path.join(folder, name, f"{library}.py")):
            continue
        component_class = getattr(_import_library(library), class_name)
        index[name] = [copy_module_code(component_class, os.path.join(folder, name)), class_name]
    if index["_class_name"] == ColdDiffusionPipeline.__name__:
        index["_class_name"] = [
            copy_module_code(ColdDiffusionPipeline, folder),
            ColdDiffusionPipeline.__name__,
        ]
    with open(index_file, "w", encoding="utf-8") as file:
        json.dump(index, file, indent=2, sort_keys=True)
        file.write("\n")


# The top-level names this project's packages had before they became ``mnist_diffusion.*``: a folder saved
# then with a plain ``save_pretrained`` names its custom components' modules by them (the library
# models.coursework_cnn for a CourseworkCNN).
_LEGACY_PACKAGES = ("models", "schedulers", "pipelines", "training", "evaluation", "publishing", "app")


def _import_library(library: str) -> Any:
    """The module that a ``model_index.json`` entry names; a pre-rename ``models.x`` is read as
    ``mnist_diffusion.models.x``, before any unrelated top-level ``models`` could be picked up.
    """
    if library.split(".")[0] in _LEGACY_PACKAGES:
        renamed = f"mnist_diffusion.{library}"
        try:
            return importlib.import_module(renamed)
        except ModuleNotFoundError as error:  # only a missing renamed module falls back, not its imports
            if error.name is None or not (renamed + ".").startswith(error.name + "."):
                raise
    return importlib.import_module(library)
