"""The project's pipelines (cold diffusion; flow matching; EDM; DDPM with step callbacks), class labels with
classifier-free guidance, and the loader."""

from .cold_diffusion import ColdDiffusionPipeline, ColdDiffusionPipelineOutput, make_portable
from .ddpm import DDPMCallbackPipeline
from .edm import EDMPipeline
from .flow_matching import FlowMatchingPipeline
from .guidance import ClassLabelGuidance, is_class_conditional
from .loading import load_pipeline
from .saving import save_pipeline

__all__ = [
    "ClassLabelGuidance",
    "ColdDiffusionPipeline",
    "ColdDiffusionPipelineOutput",
    "DDPMCallbackPipeline",
    "EDMPipeline",
    "FlowMatchingPipeline",
    "is_class_conditional",
    "load_pipeline",
    "make_portable",
    "save_pipeline",
]
