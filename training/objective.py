"""The training objective, shared by the trainer and the benchmark: a forward process's examples and the loss.

Everything that depends on the forward process (how timesteps are drawn, the model input and target, the
default loss) is asked of the :class:`~schedulers.ForwardProcess`; this module only composes the answers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from schedulers import ForwardProcess
from training.data import to_model_range

Loss = Literal["l1", "l2"]


def training_batch(
    process: ForwardProcess, x0: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw timesteps and build ``(model_input, timesteps, target)`` for clean images in ``[-1, 1]``."""
    timesteps = process.training_timesteps(x0.shape[0], generator=generator, device=x0.device)
    model_input, target = process.training_example(x0, timesteps, generator=generator)
    return model_input, timesteps, target


def per_image_loss(prediction: torch.Tensor, target: torch.Tensor, kind: Loss) -> torch.Tensor:
    """L1 or L2 loss of each image, ``(batch,)``, in float32."""
    loss_fn = F.l1_loss if kind == "l1" else F.mse_loss
    return loss_fn(prediction.float(), target.float(), reduction="none").flatten(1).mean(1)


def compute_loss(prediction: torch.Tensor, target: torch.Tensor, kind: Loss) -> torch.Tensor:
    """Mean L1 or L2 loss in float32 (the training objective)."""
    return per_image_loss(prediction, target, kind).mean()


@torch.inference_mode()
def held_out_losses(
    model: torch.nn.Module,
    process: ForwardProcess,
    images: torch.Tensor,
    kind: Loss,
    batch_size: int = 512,
    seed: int = 0,
    device: torch.device | str = "cpu",
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """Per-image losses on ``uint8`` images, noise and timesteps fixed by ``seed`` (comparable across runs).

    Args:
        model: the network, in the mode the caller chose (``eval`` for validation).
        process: the forward process that builds the examples.
        images: ``uint8`` images ``(N, H, W)``.
        kind: ``l1`` or ``l2``.
        batch_size: images per network call.
        seed: seed of the noise and timestep draws.
        device: where the model runs.
        autocast: context manager factory for mixed precision (e.g. ``accelerator.autocast``).
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    losses = []
    for batch in images.split(batch_size):
        model_input, timesteps, target = training_batch(process, to_model_range(batch).to(device), generator)
        with autocast():
            prediction = model(model_input, timesteps).sample
        losses.append(per_image_loss(prediction, target, kind))
    return torch.cat(losses)
