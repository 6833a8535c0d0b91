"""Forward processes: Gaussian DDPM, flow matching and one cold scheduler per degradation, one protocol.

:data:`FORWARD_PROCESSES` is the registry the trainer builds its ``--degradation`` choices and options from;
:func:`forward_process` answers the protocol's questions for any trained scheduler or pipeline.
"""

from functools import partial

from .averaging import AveragingScheduler
from .blur import GaussianBlurScheduler
from .cold import SAMPLING_METHODS, ColdDiffusionScheduler, ColdSchedulerOutput
from .cold_process import ColdProcess
from .des import EntropyScaledNoiseScheduler
from .edm import EDMProcess, edm_scheduler
from .flow_matching import FlowMatchingProcess, flow_matching_scheduler
from .forward_process import (
    PROCESS_TYPES,
    ForwardProcess,
    Option,
    Sampler,
    factory_options,
    forward_process,
    register_process_type,
)
from .gaussian import GaussianProcess
from .impulse import ImpulseNoiseScheduler
from .mask import MaskScheduler
from .morph import MorphScheduler
from .noise_schedules import NOISE_SCHEDULES, ddpm_scheduler, make_betas
from .pixelate import PixelateScheduler

# Command-line name -> the factory of its trained scheduler; its keyword options become the trainer's flags.
FORWARD_PROCESSES = {
    "gaussian": ddpm_scheduler,
    "impulse": ImpulseNoiseScheduler,
    "morph": MorphScheduler,
    "rows": partial(AveragingScheduler, axis="rows"),
    "columns": partial(AveragingScheduler, axis="columns"),
    "des": EntropyScaledNoiseScheduler,
    "blur": GaussianBlurScheduler,
    "mask": MaskScheduler,
    "pixelate": PixelateScheduler,
    "flow": flow_matching_scheduler,
    "edm": edm_scheduler,
}

__all__ = [
    "FORWARD_PROCESSES",
    "NOISE_SCHEDULES",
    "PROCESS_TYPES",
    "SAMPLING_METHODS",
    "AveragingScheduler",
    "ColdDiffusionScheduler",
    "ColdProcess",
    "ColdSchedulerOutput",
    "EDMProcess",
    "EntropyScaledNoiseScheduler",
    "FlowMatchingProcess",
    "ForwardProcess",
    "GaussianBlurScheduler",
    "GaussianProcess",
    "ImpulseNoiseScheduler",
    "MaskScheduler",
    "MorphScheduler",
    "Option",
    "PixelateScheduler",
    "Sampler",
    "ddpm_scheduler",
    "edm_scheduler",
    "factory_options",
    "flow_matching_scheduler",
    "forward_process",
    "make_betas",
    "register_process_type",
]
