"""The project's pipelines (cold diffusion; flow matching; DDPM with step callbacks) and the loader."""

from .cold_diffusion import ColdDiffusionPipeline, ColdDiffusionPipelineOutput, make_portable
from .ddpm import DDPMCallbackPipeline
from .flow_matching import FlowMatchingPipeline
from .loading import load_pipeline
from .saving import save_pipeline

__all__ = [
    "ColdDiffusionPipeline",
    "ColdDiffusionPipelineOutput",
    "DDPMCallbackPipeline",
    "FlowMatchingPipeline",
    "load_pipeline",
    "make_portable",
    "save_pipeline",
]
