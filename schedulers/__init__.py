"""Gaussian noise schedules for ``DDPMScheduler`` and one cold-diffusion scheduler per degradation."""

from functools import partial

from .averaging import AveragingScheduler
from .blur import GaussianBlurScheduler
from .cold import SAMPLING_METHODS, ColdDiffusionScheduler, ColdSchedulerOutput
from .des import EntropyScaledNoiseScheduler
from .impulse import ImpulseNoiseScheduler
from .mask import MaskScheduler
from .morph import MorphScheduler
from .noise_schedules import NOISE_SCHEDULES, ddpm_scheduler, make_betas
from .pixelate import PixelateScheduler

# Command-line name -> scheduler factory; train.py builds its flags from each factory's signature.
DEGRADATIONS = {
    "impulse": ImpulseNoiseScheduler,
    "morph": MorphScheduler,
    "rows": partial(AveragingScheduler, axis="rows"),
    "columns": partial(AveragingScheduler, axis="columns"),
    "des": EntropyScaledNoiseScheduler,
    "blur": GaussianBlurScheduler,
    "mask": MaskScheduler,
    "pixelate": PixelateScheduler,
}

__all__ = [
    "DEGRADATIONS",
    "NOISE_SCHEDULES",
    "SAMPLING_METHODS",
    "AveragingScheduler",
    "ColdDiffusionScheduler",
    "ColdSchedulerOutput",
    "EntropyScaledNoiseScheduler",
    "GaussianBlurScheduler",
    "ImpulseNoiseScheduler",
    "MaskScheduler",
    "MorphScheduler",
    "PixelateScheduler",
    "ddpm_scheduler",
    "make_betas",
]
