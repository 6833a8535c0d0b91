"""The project's pipelines (cold diffusion; DDPM with step callbacks) and the loader for saved ones."""

from .cold_diffusion import ColdDiffusionPipeline, ColdDiffusionPipelineOutput, make_portable
from .ddpm import DDPMCallbackPipeline
from .loading import load_pipeline
from .saving import save_pipeline

__all__ = [
    "ColdDiffusionPipeline",
    "ColdDiffusionPipelineOutput",
    "DDPMCallbackPipeline",
    "load_pipeline",
    "make_portable",
    "save_pipeline",
]
