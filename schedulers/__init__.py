"""Gaussian noise schedules for ``DDPMScheduler`` and one cold-diffusion scheduler per degradation."""

from .noise_schedules import NOISE_SCHEDULES, ddpm_scheduler, make_betas

__all__ = ["NOISE_SCHEDULES", "ddpm_scheduler", "make_betas"]
