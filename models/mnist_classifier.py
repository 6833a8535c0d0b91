"""A small MNIST digit classifier whose penultimate features and softmax drive the sample metrics.

Inception-v3 is trained on 299x299 colour photographs and judges 28x28 grayscale digits poorly, and its
weights cannot be downloaded everywhere; this network is trained once by ``scripts/train_classifier.py``
and shipped with the repository (``models/mnist_classifier/``) so that scores are identical on every
machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

#: The folder of the shipped, trained weights (``config.json`` and ``diffusion_pytorch_model.safetensors``).
PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist_classifier")


@dataclass
class MNISTClassifierOutput(BaseOutput):
    """Output of :class:`MNISTClassifier`.

    Args:
        logits: unnormalized class scores, shape ``(batch, num_classes)``.
        features: the penultimate activations, shape ``(batch, feature_dim)``.
    """

    logits: torch.Tensor
    features: torch.Tensor


class MNISTClassifier(ModelMixin, ConfigMixin):
    """``Conv -> BatchNorm -> ReLU -> MaxPool`` stages, then a hidden linear layer (the features).

    Args:
        in_channels: image channels.
        channels: output channels of the convolutional stages; each stage halves the image size.
        feature_dim: width of the penultimate (feature) layer.
        num_classes: number of classes.
        dropout: dropout probability before the classification layer (training only).
        sample_size: image height and width.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        channels: tuple[int, ...] = (24, 48, 96),
        feature_dim: int = 128,
        num_classes: int = 10,
        dropout: float = 0.25,
        sample_size: int = 28,
    ):
        super().__init__()
        stages = []
        size = sample_size
        for c_in, c_out in zip((in_channels, *channels[:-1]), channels, strict=True):
            stages += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            size //= 2
        self.stages = nn.Sequential(*stages, nn.Flatten())
        self.feature_head = nn.Sequential(
            nn.Linear(channels[-1] * size * size, feature_dim, bias=False),
            nn.BatchNorm1d(feature_dim),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def forward(
        self, images: torch.Tensor, return_dict: bool = True
    ) -> MNISTClassifierOutput | tuple[torch.Tensor, torch.Tensor]:
        """Classify images.

        Args:
            images: float images in ``[0, 1]``, shape ``(batch, in_channels, sample_size, sample_size)``.
            return_dict: return a :class:`MNISTClassifierOutput` instead of a ``(logits, features)`` tuple.

        Returns:
            The logits and the penultimate features.
        """
        features = self.feature_head(self.stages(images))
        logits = self.classifier(features)
        if not return_dict:
            return logits, features
        return MNISTClassifierOutput(logits=logits, features=features)


def load_mnist_classifier(path: str = PRETRAINED_DIR, device: str | torch.device = "cpu") -> MNISTClassifier:
    """Load a trained classifier (by default the shipped one) in eval mode, with gradients disabled."""
    model = MNISTClassifier.from_pretrained(path).to(device).eval()
    model.requires_grad_(False)
    return model
