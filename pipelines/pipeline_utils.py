"""What every sampling pipeline of the project shares: the step callback, and shipping its own code.

:class:`StepCallbackMixin` is Diffusers' ``callback_on_step_end`` convention written once (the checked tensor
inputs, the ``num_timesteps`` and ``interrupt`` properties, the call after each step);
:class:`GrayscaleImagePipeline` is the network-and-scheduler pipeline it serves; :func:`ship_code` copies a
pipeline's code into its saved folder.

This file imports only torch, diffusers and the standard library, and no sibling module: the pipeline
modules import it relatively, and a saved pipeline ships it beside them, so that
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` works without this project. (Diffusers
copies only the relative imports of the pipeline's own module into its module cache, so a shared module must
not import further siblings.)
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.modeling_utils import ModelMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.dynamic_modules_utils import get_relative_import_files

# `callback_on_step_end(pipeline, step_index, timestep, callback_kwargs) -> callback_kwargs`, as in Diffusers.
StepEndCallback = Callable[[DiffusionPipeline, int, torch.Tensor, dict[str, Any]], dict[str, Any]] | (
    PipelineCallback | MultiPipelineCallbacks
)


class StepCallbackMixin:
    """Diffusers' ``callback_on_step_end`` for a pipeline's denoising loop, as its own pipelines implement it.

    A pipeline lists the tensors a callback may ask for in ``_callback_tensor_inputs`` and, in ``__call__``:
    resolves the tensor inputs with :meth:`callback_tensor_inputs`, checks them with
    :meth:`check_callback_inputs` before any work, calls :meth:`start_steps` once the run's timesteps are
    known, skips the remaining steps while :attr:`interrupt` is set, and ends each step with
    :meth:`step_end`.
    """

    # What `callback_on_step_end` may ask for; `latents` (the sample after the step) in every pipeline.
    _callback_tensor_inputs: list[str] = ["latents"]
    _num_timesteps = 0
    _interrupt = False

    @property
    def num_timesteps(self) -> int:
        """The number of reverse steps (network calls) of the current or last run."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set ``pipeline._interrupt = True`` in a callback to skip the remaining steps of the run."""
        return self._interrupt

    @staticmethod
    def callback_tensor_inputs(
        callback_on_step_end: StepEndCallback | None, callback_on_step_end_tensor_inputs: Sequence[str]
    ) -> Sequence[str]:
        """The tensors the callback gets: a Diffusers ``PipelineCallback`` brings its own."""
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            return callback_on_step_end.tensor_inputs
        return callback_on_step_end_tensor_inputs

    def check_callback_inputs(self, callback_on_step_end_tensor_inputs: Sequence[str] | None) -> None:
        """Raise ``ValueError`` if the callback asks for a tensor the pipeline does not offer."""
        if callback_on_step_end_tensor_inputs is not None:
            unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            if unknown:
                raise ValueError(
                    f"`callback_on_step_end_tensor_inputs` has to be in {self._callback_tensor_inputs}, but "
                    f"found {unknown}"
                )

    def start_steps(self, num_timesteps: int) -> None:
        """A run of ``num_timesteps`` steps begins: not interrupted, :attr:`num_timesteps` set."""
        self._interrupt = False
        self._num_timesteps = num_timesteps

    def step_end(
        self,
        callback_on_step_end: StepEndCallback | None,
        step_index: int,
        timestep: torch.Tensor,
        callback_on_step_end_tensor_inputs: Sequence[str],
        latents: torch.Tensor,
        **tensors: torch.Tensor,
    ) -> torch.Tensor:
        """Call the callback after a step; return the sample the run goes on with.

        Args:
            callback_on_step_end: the callback (``None``: nothing to call).
            step_index: the step's index in the run.
            timestep: the step's timestep.
            callback_on_step_end_tensor_inputs: the names of the tensors the callback gets.
            latents: the sample after the step; a ``latents`` the callback returns replaces it.
            tensors: the step's other tensors a callback may ask for (``pred_original_sample``).
        """
        if callback_on_step_end is None:
            return latents
        available = {"latents": latents, **tensors}
        callback_kwargs = {k: available[k] for k in callback_on_step_end_tensor_inputs}
        callback_outputs = callback_on_step_end(self, step_index, timestep, callback_kwargs)
        return callback_outputs.pop("latents", latents)


class GrayscaleImagePipeline(StepCallbackMixin, DiffusionPipeline):
    """One network (``unet``) and one scheduler that generate grey-scale images, with Diffusers' step
    callback: the base of the project's own (non-DDPM) pipelines.

    Args:
        unet: the network the scheduler's steps call.
        scheduler: the scheduler of the reverse process.
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: ModelMixin, scheduler: SchedulerMixin):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.image_processor = VaeImageProcessor(do_resize=False, do_convert_grayscale=True)


def ship_code(pipeline: DiffusionPipeline, folder: str | os.PathLike) -> None:
    """Copy the code of ``pipeline``'s class and of its non-Diffusers components into a saved ``folder``.

    The pipeline's module (with the sibling modules it imports relatively) goes to the folder's root and
    ``_class_name`` becomes ``[module, class]``; each custom component's module goes to its subfolder, and its
    ``model_index.json`` entry becomes ``[module, class]``. ``DiffusionPipeline.from_pretrained(folder,
    trust_remote_code=True)`` then loads the folder without this project. Running it again changes nothing.

    Example:
        >>> from mnist_diffusion.pipelines.pipeline_utils import ship_code
        >>> pipeline.save_pretrained("outputs/flow")  # doctest: +SKIP
        >>> ship_code(pipeline, "outputs/flow")  # what save_pretrained has just done  # doctest: +SKIP
    """
    index_file = os.path.join(folder, "model_index.json")
    with open(index_file, encoding="utf-8") as file:
        index = json.load(file)
    for name, component in pipeline.components.items():
        entry = index.get(name)
        if component is None or not isinstance(entry, list) or _is_diffusers(type(component)):
            continue
        module = copy_module_code(type(component), os.path.join(folder, name))
        index[name] = [module, type(component).__name__]
    index["_class_name"] = [copy_module_code(type(pipeline), str(folder)), type(pipeline).__name__]
    with open(index_file, "w", encoding="utf-8") as file:
        json.dump(index, file, indent=2, sort_keys=True)
        file.write("\n")


def _is_diffusers(cls: type) -> bool:
    return cls.__module__.split(".")[0] == "diffusers"


def copy_module_code(cls: type, target_folder: str) -> str:
    """Copy the module defining ``cls`` and its relative imports into ``target_folder``; return its name."""
    source = inspect.getsourcefile(cls)
    for path in [source, *get_relative_import_files(source)]:
        target = os.path.join(target_folder, os.path.basename(path))
        if os.path.abspath(path) != os.path.abspath(target):
            shutil.copyfile(path, target)
    return os.path.splitext(os.path.basename(source))[0]
