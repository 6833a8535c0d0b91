"""The training objective, shared by the trainer and the benchmark: a forward process's examples and the loss.

Everything that depends on the forward process (how timesteps are drawn, the model input and target, the
default loss, min-SNR weights, whether it draws Gaussian noise) is asked of the
:class:`~mnist_diffusion.schedulers.ForwardProcess`; this module only composes the answers. Two options act on
any process
that supports them:

- min-SNR-gamma weighting (Hang et al., 2023): :func:`loss_weights`, passed to :func:`compute_loss`;
- immiscible diffusion (Li et al., 2024): ``training_batch(..., immiscible=True)`` assigns the batch's noise
  to its images by linear assignment (:func:`assign_noise`) before the process noises them.

Class-conditional training (classifier-free guidance, Ho & Salimans, 2022) also acts on every process: the
network is called with ``class_labels`` (:func:`model_prediction`), of which :func:`drop_labels` replaces a
fraction by the "no class" label.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from mnist_diffusion.schedulers import ForwardProcess
from mnist_diffusion.training.data import to_model_range

Loss = Literal["l1", "l2"]


def training_batch(
    process: ForwardProcess,
    x0: torch.Tensor,
    generator: torch.Generator | None = None,
    immiscible: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw timesteps and build ``(model_input, timesteps, target)`` for clean images in ``[-1, 1]``.

    Args:
        process: the forward process.
        x0: clean images ``(batch, channels, H, W)`` in ``[-1, 1]``.
        generator: drives the timesteps and the noise.
        immiscible: draw the batch's Gaussian noise here and give each image the noise that
            :func:`assign_noise` assigns it (Li et al., 2024), instead of the process's own draw.

    Raises:
        ValueError: if ``immiscible`` and the process draws no Gaussian noise to assign.

    Example:
        >>> import torch
        >>> from mnist_diffusion.schedulers import ddpm_scheduler, forward_process
        >>> from mnist_diffusion.training.objective import training_batch
        >>> process = forward_process(ddpm_scheduler(num_train_timesteps=100))
        >>> x0 = torch.rand(8, 1, 28, 28) * 2 - 1
        >>> model_input, timesteps, target = training_batch(process, x0, immiscible=True)
        >>> model_input.shape, timesteps.shape, target.shape
        (torch.Size([8, 1, 28, 28]), torch.Size([8]), torch.Size([8, 1, 28, 28]))
    """
    if immiscible and not process.draws_gaussian_noise:
        raise ValueError(immiscible_refusal(process))
    timesteps = process.training_timesteps(x0.shape[0], generator=generator, device=x0.device)
    if not immiscible:
        model_input, target = process.training_example(x0, timesteps, generator=generator)
        return model_input, timesteps, target
    noise = torch.randn(x0.shape, device=x0.device, generator=generator, dtype=x0.dtype)
    model_input, target = process.training_example(
        x0, timesteps, generator=generator, noise=assign_noise(x0, noise)
    )
    return model_input, timesteps, target


def drop_labels(
    labels: torch.Tensor, probability: float, null_label: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``labels`` with each one replaced by ``null_label`` with probability ``probability`` (label dropout).

    Classifier-free guidance (Ho & Salimans, 2022) trains one network for both predictions: the conditional
    one on the labels kept, the unconditional one on the "no class" label.

    Args:
        labels: the batch's class labels ``(batch,)``.
        probability: the dropout probability, in ``[0, 1)``.
        null_label: the "no class" label (``num_class_embeds - 1``).
        generator: drives the draw (on its own device), so that a resumed run draws the same.

    Example:
        >>> import torch
        >>> from mnist_diffusion.training.objective import drop_labels
        >>> labels = torch.arange(10)
        >>> drop_labels(labels, 0.0, 10).tolist() == labels.tolist()  # nothing dropped
        True
        >>> dropped = drop_labels(labels, 0.5, 10, torch.Generator().manual_seed(0))
        >>> set(dropped.tolist()) <= set(range(11))
        True
    """
    device = generator.device if generator is not None else labels.device
    dropped = torch.rand(labels.shape, generator=generator, device=device) < probability
    return torch.where(dropped.to(labels.device), torch.full_like(labels, null_label), labels)


def model_prediction(
    model: torch.nn.Module,
    model_input: torch.Tensor,
    timesteps: torch.Tensor,
    class_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """The network's output for a batch: ``model(x_t, t).sample``, with ``class_labels=`` when given."""
    if class_labels is None:
        return model(model_input, timesteps).sample
    return model(model_input, timesteps, class_labels=class_labels).sample


def immiscible_refusal(process: ForwardProcess) -> str:
    """Why ``--immiscible`` does not apply to ``process`` (one line)."""
    return (
        f"--immiscible assigns Gaussian noise to images, but the {process.name} process draws no Gaussian "
        "noise to assign; leave --immiscible out for it"
    )


def assign_noise(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``noise`` reordered so that image ``i`` gets the noise that a linear assignment gives it.

    Immiscible diffusion (Li et al., 2024): the batch's noise samples are assigned to its images so that the
    sum of the pixel-space L2 distances between each image and its noise is smallest
    (``scipy.optimize.linear_sum_assignment`` on the ``batch x batch`` distance matrix). Every noise sample
    is still used once, so the batch's noise keeps its distribution; each image only gets a nearer one.

    Args:
        x0: images ``(batch, ...)``.
        noise: noise of the same shape.

    Returns:
        A permutation of ``noise`` along the batch.

    Example:
        >>> import torch
        >>> from mnist_diffusion.training.objective import assign_noise
        >>> x0 = torch.tensor([[0.0], [10.0]])
        >>> assign_noise(x0, torch.tensor([[9.0], [1.0]])).flatten().tolist()
        [1.0, 9.0]
    """
    from scipy.optimize import linear_sum_assignment

    distances = torch.cdist(x0.flatten(1).float(), noise.flatten(1).float())
    _, columns = linear_sum_assignment(distances.cpu().numpy())
    return noise[torch.as_tensor(columns, device=noise.device)]


def loss_weights(
    process: ForwardProcess, timesteps: torch.Tensor, snr_gamma: float | None
) -> torch.Tensor | None:
    """The per-example weights of ``--snr_gamma`` (``None`` when it is not set).

    Raises:
        ValueError: if ``snr_gamma`` is set and the process has no signal-to-noise ratio.

    Example:
        >>> import torch
        >>> from mnist_diffusion.schedulers import ddpm_scheduler, forward_process
        >>> from mnist_diffusion.training.objective import compute_loss, loss_weights
        >>> process = forward_process(ddpm_scheduler(num_train_timesteps=100))
        >>> weights = loss_weights(process, torch.tensor([5, 95]), snr_gamma=5.0)
        >>> loss = compute_loss(torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4), "l2", weights)
    """
    if snr_gamma is None:
        return None
    weights = process.loss_weights(timesteps, snr_gamma)
    if weights is None:
        raise ValueError(snr_refusal(process))
    return weights


def snr_refusal(process: ForwardProcess) -> str:
    """Why ``--snr_gamma`` does not apply to ``process`` (one line)."""
    return (
        f"--snr_gamma weights the loss by the signal-to-noise ratio of x_t, which the {process.name} process "
        "does not have; leave --snr_gamma out for it"
    )


def per_image_loss(prediction: torch.Tensor, target: torch.Tensor, kind: Loss) -> torch.Tensor:
    """L1 or L2 loss of each image, ``(batch,)``, in float32."""
    loss_fn = F.l1_loss if kind == "l1" else F.mse_loss
    return loss_fn(prediction.float(), target.float(), reduction="none").flatten(1).mean(1)


def compute_loss(
    prediction: torch.Tensor, target: torch.Tensor, kind: Loss, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean L1 or L2 loss in float32 (the training objective), each image weighted by ``weights`` if given.

    As Diffusers' training scripts, the weighted per-image losses are averaged (not normalised by the
    weights' sum).

    Example:
        >>> import torch
        >>> from mnist_diffusion.training.objective import compute_loss
        >>> prediction, target = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
        >>> compute_loss(prediction, target, "l2", weights=torch.tensor([1.0, 0.0])).item()
        0.5
    """
    losses = per_image_loss(prediction, target, kind)
    if weights is not None:
        losses = losses * weights.to(losses.device, losses.dtype)
    return losses.mean()


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
    labels: torch.Tensor | None = None,
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
        labels: a class-conditional model's labels of ``images`` ``(N,)`` (the conditional loss; none
            dropped); ``None`` for an unconditional model.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    losses = []
    label_batches = labels.split(batch_size) if labels is not None else [None] * len(images.split(batch_size))
    for batch, batch_labels in zip(images.split(batch_size), label_batches, strict=True):
        model_input, timesteps, target = training_batch(process, to_model_range(batch).to(device), generator)
        class_labels = batch_labels.to(device) if batch_labels is not None else None
        with autocast():
            prediction = model_prediction(model, model_input, timesteps, class_labels)
        losses.append(per_image_loss(prediction, target, kind))
    return torch.cat(losses)
