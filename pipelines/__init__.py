"""The cold-diffusion pipeline and the loader every tool uses for saved pipelines."""

from .cold_diffusion import ColdDiffusionPipeline, ColdDiffusionPipelineOutput, make_portable
from .loading import load_pipeline

__all__ = ["ColdDiffusionPipeline", "ColdDiffusionPipelineOutput", "load_pipeline", "make_portable"]
