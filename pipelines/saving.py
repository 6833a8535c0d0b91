"""``save_pipeline``: the one on-disk format of the project's pipelines, written so a crash leaves no half."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from diffusers import DiffusionPipeline

from .cold_diffusion import make_portable

INDEX_FILE = "model_index.json"


def save_pipeline(pipeline: DiffusionPipeline, folder: str | os.PathLike) -> None:
    """Save ``pipeline`` into ``folder`` in the portable format, atomically.

    The folder gets what ``save_pretrained`` writes plus the code of every component that is not part of
    Diffusers (:func:`~mnist_diffusion.pipelines.make_portable`), so
    ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` loads it where this project is not
    installed, and :func:`~mnist_diffusion.pipelines.load_pipeline` loads it with the installed classes.
    Everything is first written to a temporary folder beside it; the components are then moved in, and
    ``model_index.json`` last: a folder is a loadable pipeline only once all of it is there, and a failed save
    (a full disk, a kill) never leaves a config without its weights. Other files in ``folder`` (checkpoints,
    logs) are kept.

    Example:
        >>> from mnist_diffusion.models import CourseworkCNN
        >>> from mnist_diffusion.pipelines import save_pipeline
        >>> from mnist_diffusion.schedulers import FORWARD_PROCESSES, forward_process
        >>> process = forward_process(FORWARD_PROCESSES["gaussian"]())
        >>> save_pipeline(process.make_pipeline(CourseworkCNN()), "outputs/untrained")  # doctest: +SKIP
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-pipeline-", dir=folder))
    try:
        pipeline.save_pretrained(staging)
        make_portable(staging)
        # The old index goes first, so that the folder is never a pipeline with parts of two saves.
        (folder / INDEX_FILE).unlink(missing_ok=True)
        for part in sorted(staging.iterdir(), key=lambda path: path.name == INDEX_FILE):
            target = folder / part.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(part, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
