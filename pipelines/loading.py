"""``load_pipeline``: the one way the project's tools load a saved pipeline, with the installed classes."""

from __future__ import annotations

import os

import diffusers
from diffusers import DiffusionPipeline

# Imported so that their model and scheduler classes can be found by the names in model_index.json.
from mnist_diffusion import (
    models,  # noqa: F401
    schedulers,  # noqa: F401
)

from .cold_diffusion import ColdDiffusionPipeline, imported_class, load_imported_components, local_folder
from .ddpm import DDPMCallbackPipeline
from .edm import EDMPipeline
from .flow_matching import FlowMatchingPipeline

# The project's own pipeline classes, by the name a saved model_index.json gives them.
PIPELINE_CLASSES = {
    cls.__name__: cls
    for cls in (ColdDiffusionPipeline, DDPMCallbackPipeline, EDMPipeline, FlowMatchingPipeline)
}


def load_pipeline(path_or_repo: str | os.PathLike) -> DiffusionPipeline:
    """Load any pipeline this project saves, from a folder or a Hub repository, without ``trust_remote_code``.

    Handles a stock ``DDPMPipeline`` (a ``UNet2DModel`` or ``CourseworkCNN`` unet, before or after
    :func:`~mnist_diffusion.pipelines.make_portable`), a class-conditional Gaussian ``DDPMCallbackPipeline``,
    a ``ColdDiffusionPipeline``, a ``FlowMatchingPipeline`` and an ``EDMPipeline``; components are built from
    the installed classes, not from code saved in the folder.

    Raises:
        ValueError: if the folder is missing, is not a readable pipeline (a garbled ``model_index.json``, a
            missing config, truncated weights), or names a class that is not available.
    """
    folder = local_folder(path_or_repo)
    try:
        return _load(folder)
    except ValueError:
        raise
    except Exception as error:  # diffusers, safetensors and json raise many error types for a broken folder
        reason = " ".join(str(error).split())[:300]
        raise ValueError(f"pipeline folder {str(path_or_repo)!r} could not be loaded: {reason}") from error


def _load(folder: str) -> DiffusionPipeline:
    class_name = DiffusionPipeline.load_config(folder)["_class_name"]
    if isinstance(class_name, list):
        class_name = class_name[1]
    if class_name in PIPELINE_CLASSES:
        pipeline_class = PIPELINE_CLASSES[class_name]
    else:
        pipeline_class = getattr(diffusers, class_name, None)
        if pipeline_class is None:
            raise ValueError(
                f"pipeline class {class_name!r} in {folder} is neither in diffusers nor in this project"
            )
    return pipeline_class(**load_imported_components(folder))


__all__ = ["imported_class", "load_pipeline"]
