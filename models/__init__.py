"""Denoising networks: the coursework CNN and ``UNet2DModel`` presets."""

from .coursework_cnn import CourseworkCNN, CourseworkCNNOutput
from .unet import UNET_PRESETS, unet_preset

__all__ = ["UNET_PRESETS", "CourseworkCNN", "CourseworkCNNOutput", "unet_preset"]
