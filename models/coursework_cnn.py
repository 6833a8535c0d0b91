"""The classic coursework CNN denoiser as a Diffusers model.

A stack of full-resolution ``Conv2d -> LayerNorm -> activation`` blocks with a sinusoidal embedding of
``t / T`` added to the first block (or to every block). This file imports only torch and diffusers so
that a saved pipeline can ship it as custom component code for ``trust_remote_code=True``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU, "mish": nn.Mish}


@dataclass
class CourseworkCNNOutput(BaseOutput):
    """Output of :class:`CourseworkCNN`.

    Args:
        sample: the network's prediction, shape ``(batch, channels, height, width)``.
    """

    sample: torch.Tensor


class CourseworkCNN(ModelMixin, ConfigMixin):
    """Full-resolution CNN with a sinusoidal time embedding, as in the classic MNIST DDPM coursework.

    With the defaults it is exactly the coursework network (146,961 parameters).

    Args:
        sample_size: image height and width.
        in_channels: image channels (output has the same number).
        n_hidden: output channels of the hidden blocks.
        kernel_size: kernel of the hidden convolutions (padding keeps the size).
        last_kernel_size: kernel of the final convolution back to ``in_channels``.
        act_fn: activation, one of ``gelu``, ``silu``, ``relu``, ``mish``.
        time_embedding_frequencies: number of frequencies of ``t / T`` (features are twice that).
        time_embedding_dim: width of the time MLP.
        time_embedding_in_every_block: add the time embedding to every block, not only the first.
        dropout: spatial dropout (``Dropout2d``) probability after each block; 0 disables it.
        num_train_timesteps: ``T``, the timestep that maps to ``t / T = 1``.
        num_class_embeds: for a class-conditional network, the number of class labels including the
            "no class" label of classifier-free guidance (11 for MNIST: digits 0-9 and 10); a learned
            embedding of the label is added to the time embedding. ``None``: unconditional.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 28,
        in_channels: int = 1,
        n_hidden: tuple[int, ...] = (16, 32, 32, 16),
        kernel_size: int = 7,
        last_kernel_size: int = 3,
        act_fn: str = "gelu",
        time_embedding_frequencies: int = 16,
        time_embedding_dim: int = 128,
        time_embedding_in_every_block: bool = False,
        dropout: float = 0.0,
        num_train_timesteps: int = 1000,
        num_class_embeds: int | None = None,
    ):
        super().__init__()
        if act_fn not in ACTIVATIONS:
            raise ValueError(f"act_fn={act_fn!r} is not supported; choose one of {sorted(ACTIVATIONS)}")
        if not n_hidden or min(n_hidden) < 1:
            raise ValueError(f"n_hidden={n_hidden!r} must be a non-empty list of positive channel counts")
        if kernel_size % 2 == 0 or last_kernel_size % 2 == 0:
            raise ValueError(
                f"kernel sizes must be odd to keep the image size, got {kernel_size} and {last_kernel_size}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} must be in [0, 1)")
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps={num_train_timesteps} must be >= 1")
        if num_class_embeds is not None and num_class_embeds < 2:
            raise ValueError(f"num_class_embeds={num_class_embeds} must be >= 2 (or None: unconditional)")
        activation = ACTIVATIONS[act_fn]
        channels = (in_channels, *n_hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2),
                nn.LayerNorm((sample_size, sample_size)),
                activation(),
                nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
            )
            for c_in, c_out in zip(channels[:-1], channels[1:], strict=True)
        )
        self.conv_out = nn.Conv2d(n_hidden[-1], in_channels, last_kernel_size, padding=last_kernel_size // 2)

        frequencies = [0.0] + [2 * math.pi * 1.5**i for i in range(time_embedding_frequencies - 1)]
        self.register_buffer("frequencies", torch.tensor(frequencies), persistent=False)
        self.time_mlp = nn.Sequential(
            nn.Linear(2 * time_embedding_frequencies, time_embedding_dim),
            activation(),
            nn.Linear(time_embedding_dim, time_embedding_dim),
            activation(),
            nn.Linear(time_embedding_dim, time_embedding_dim),
            activation(),
        )
        # As UNet2DModel's class embedding: added to the time embedding, so every block that sees t sees it.
        self.class_embedding = (
            nn.Embedding(num_class_embeds, time_embedding_dim) if num_class_embeds is not None else None
        )
        embedded_blocks = n_hidden if time_embedding_in_every_block else n_hidden[:1]
        self.time_heads = nn.ModuleList(nn.Linear(time_embedding_dim, c) for c in embedded_blocks)

    def _time_features(self, timestep: torch.Tensor | float | int, batch_size: int) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=self.frequencies.device, dtype=torch.float32)
        t = t.reshape(-1).expand(batch_size) / self.config.num_train_timesteps
        phases = t[:, None] * self.frequencies[None, :]
        return self.time_mlp(torch.cat((torch.sin(phases), torch.cos(phases) - 1), dim=1))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> CourseworkCNNOutput | tuple[torch.Tensor]:
        """Predict noise (or the clean image) for ``sample`` at ``timestep``.

        Args:
            sample: noisy images, shape ``(batch, in_channels, sample_size, sample_size)``.
            timestep: a scalar or a ``(batch,)`` tensor of integer timesteps in ``[0, T]``.
            class_labels: a conditional network's ``(batch,)`` labels in ``[0, num_class_embeds)``, as for
                ``UNet2DModel``; required exactly when ``num_class_embeds`` is set.
            return_dict: return a :class:`CourseworkCNNOutput` instead of a tuple.

        Returns:
            The prediction, same shape as ``sample``.

        Raises:
            ValueError: if ``class_labels`` are missing for a conditional network or given to an
                unconditional one.
        """
        time_features = self._time_features(timestep, sample.shape[0])
        if (class_labels is None) != (self.class_embedding is None):
            needs = "needs class_labels" if class_labels is None else "takes no class_labels"
            raise ValueError(f"this CourseworkCNN (num_class_embeds={self.config.num_class_embeds}) {needs}")
        if self.class_embedding is not None:
            labels = (
                torch.as_tensor(class_labels, device=sample.device).long().reshape(-1).expand(sample.shape[0])
            )
            time_features = time_features + self.class_embedding(labels)
        time_features = time_features.to(sample.dtype)
        hidden = sample
        for index, block in enumerate(self.blocks):
            hidden = block(hidden)
            if index < len(self.time_heads):
                hidden = hidden + self.time_heads[index](time_features)[:, :, None, None]
        output = self.conv_out(hidden)
        if not return_dict:
            return (output,)
        return CourseworkCNNOutput(sample=output)
