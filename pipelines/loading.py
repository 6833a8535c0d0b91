"""``load_pipeline``: the one way the project's tools load a saved pipeline, with the installed classes."""

from __future__ import annotations

import os

import diffusers
from diffusers import DiffusionPipeline

# Imported so that their model and scheduler classes can be found by the names in model_index.json.
import models  # noqa: F401
import schedulers  # noqa: F401

from .cold_diffusion import ColdDiffusionPipeline, imported_class, load_imported_components, local_folder


def load_pipeline(path_or_repo: str | os.PathLike) -> DiffusionPipeline:
    """Load any pipeline this project saves, from a folder or a Hub repository, without ``trust_remote_code``.

    Handles a stock ``DDPMPipeline`` (a ``UNet2DModel`` or ``CourseworkCNN`` unet, before or after
    :func:`~pipelines.make_portable`) and a ``ColdDiffusionPipeline``; components are built from the
    installed classes, not from code saved in the folder.

    Raises:
        ValueError: if the folder names a pipeline or component class that is not available.
    """
    folder = local_folder(path_or_repo)
    class_name = DiffusionPipeline.load_config(folder)["_class_name"]
    if isinstance(class_name, list):
        class_name = class_name[1]
    if class_name == ColdDiffusionPipeline.__name__:
        pipeline_class = ColdDiffusionPipeline
    else:
        pipeline_class = getattr(diffusers, class_name, None)
        if pipeline_class is None:
            raise ValueError(
                f"pipeline class {class_name!r} in {folder} is neither in diffusers nor in this project"
            )
    return pipeline_class(**load_imported_components(folder))


__all__ = ["imported_class", "load_pipeline"]
