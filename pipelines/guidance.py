"""Class labels and classifier-free guidance (Ho & Salimans, 2022), written once for every pipeline.

A class-conditional network is one whose config has ``num_class_embeds`` (``UNet2DModel`` and the coursework
CNN alike): it takes ``class_labels`` in ``0 .. num_class_embeds - 1``, and the last of them is the "no class"
label it was trained with by label dropout (``training/train.py --class_conditional``; for MNIST
``num_class_embeds = 11``: the digits 0-9 and the null label 10). A pipeline samples such a network

- for ``class_labels`` (an int, or one int per image), guided with weight ``w = guidance_scale``:
  ``uncond + w * (cond - uncond)``, the conditional and the unconditional (null-label) predictions computed
  in one network call on the batch doubled (``w = 1``: the conditional prediction alone, one call of the
  batch; ``w = 0``: the unconditional one, one call);
- without ``class_labels``: unconditionally, with the null label.

An unconditional network is called exactly as before, without ``class_labels``.

This file imports only torch, diffusers and the standard library, and no sibling module: the pipeline
modules import it relatively and a saved pipeline ships it beside them (see ``pipeline_utils.py``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# What `class_labels` may be: one label for the whole batch, or one per image.
ClassLabels = int | Sequence[int] | torch.Tensor


def num_class_embeds(pipeline_or_unet: object) -> int | None:
    """The ``num_class_embeds`` of a pipeline's ``unet`` (or of a network); ``None``: unconditional."""
    unet = getattr(pipeline_or_unet, "unet", pipeline_or_unet)
    config = getattr(unet, "config", None)
    value = config.get("num_class_embeds") if config is not None else None
    return int(value) if value else None


def is_class_conditional(pipeline_or_unet: object) -> bool:
    """Whether a pipeline's ``unet`` (or a network) takes class labels: its config has ``num_class_embeds``.

    Example:
        >>> from mnist_diffusion.models import CourseworkCNN
        >>> from mnist_diffusion.pipelines.guidance import is_class_conditional
        >>> is_class_conditional(CourseworkCNN(num_class_embeds=11)), is_class_conditional(CourseworkCNN())
        (True, False)
    """
    return num_class_embeds(pipeline_or_unet) is not None


def num_classes(pipeline_or_unet: object) -> int | None:
    """``n``: a conditional network samples the classes ``0 .. n - 1`` (10 for MNIST); else ``None``."""
    embeds = num_class_embeds(pipeline_or_unet)
    return embeds - 1 if embeds is not None else None


def null_class_label(pipeline_or_unet: object) -> int | None:
    """The "no class" label of a conditional network, ``num_class_embeds - 1``; ``None``: unconditional."""
    return num_classes(pipeline_or_unet)


def balanced_labels(pipeline_or_unet: object, count: int) -> list[int] | None:
    """``count`` labels cycling through every class (``0, 1, ..., 9, 0, ...``); ``None`` if unconditional."""
    classes = num_classes(pipeline_or_unet)
    return None if classes is None else [index % classes for index in range(count)]


def check_class_labels(
    class_labels: ClassLabels | None, batch_size: int, pipeline_or_unet: object
) -> torch.Tensor | None:
    """Check ``class_labels`` for a batch of ``batch_size`` images; return them as a ``(batch_size,)`` tensor.

    Args:
        class_labels: ``None`` (unconditional samples), one int for the whole batch, or a sequence (a list,
            a tuple, a 1-d integer tensor or array) of ints, one per image (or a single one, broadcast).
        batch_size: the number of images.
        pipeline_or_unet: the pipeline (or network) that will be called with them.

    Returns:
        ``None`` when ``class_labels`` is ``None``, else the labels (int64, on the CPU).

    Raises:
        ValueError: naming the bad value and what is allowed: a label that is not an int or outside
            ``0 .. num_classes - 1``, a count other than 1 or ``batch_size``, or labels for a network
            without class embeddings.
    """
    if class_labels is None:
        return None
    classes = num_classes(pipeline_or_unet)
    if classes is None:
        raise ValueError(
            f"class_labels={_shown(class_labels)} were given, but this model is unconditional (its unet has "
            "no num_class_embeds); leave class_labels out, or train with --class_conditional"
        )
    allowed = f"ints in 0..{classes - 1}"
    if isinstance(class_labels, torch.Tensor) or hasattr(class_labels, "__array__"):
        tensor = torch.as_tensor(class_labels)
        if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
            raise ValueError(f"class_labels must be {allowed}, got a tensor of dtype {tensor.dtype}")
        if tensor.ndim > 1:
            raise ValueError(f"class_labels must be one label per image, got shape {tuple(tensor.shape)}")
        labels = tensor.reshape(-1).tolist()
    elif _is_int(class_labels):
        labels = [class_labels]
    elif isinstance(class_labels, Sequence) and not isinstance(class_labels, (str, bytes)):
        labels = list(class_labels)
        bad = next((label for label in labels if not _is_int(label)), None)
        if bad is not None or not labels:
            got = "an empty sequence" if not labels else f"{bad!r} ({type(bad).__name__})"
            raise ValueError(f"class_labels must be {allowed}, one per image; got {got}")
    else:
        raise ValueError(
            f"class_labels must be an int or a sequence of {allowed}, got {_shown(class_labels)} "
            f"({type(class_labels).__name__})"
        )
    bad = next((label for label in labels if not 0 <= label < classes), None)
    if bad is not None:
        raise ValueError(
            f"class label {int(bad)} is out of range: this model takes {allowed} (num_class_embeds="
            f"{classes + 1}; {classes} is its no-class label, sampled by leaving class_labels out)"
        )
    if len(labels) not in (1, batch_size):
        raise ValueError(
            f"{len(labels)} class_labels given for {batch_size} images; give one label per image, or one "
            "for all"
        )
    return torch.tensor([int(label) for label in labels], dtype=torch.long).expand(batch_size).clone()


def check_guidance_scale(
    guidance_scale: float, class_labels: ClassLabels | None, pipeline_or_unet: object
) -> None:
    """Raise ``ValueError`` unless ``guidance_scale`` is a finite number >= 0 that applies here.

    A scale other than 1 guides towards ``class_labels``, so it needs them (and a conditional network).
    """
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real):
        raise ValueError(f"guidance_scale must be a number >= 0, got {guidance_scale!r}")
    if not (math.isfinite(guidance_scale) and guidance_scale >= 0):
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
    if guidance_scale != 1 and class_labels is None:
        reason = (
            "is unconditional (its unet has no num_class_embeds)"
            if not is_class_conditional(pipeline_or_unet)
            else "samples unconditionally without class_labels"
        )
        raise ValueError(
            f"guidance_scale={guidance_scale!r} guides towards class_labels, but this model {reason}; "
            "give class_labels or leave guidance_scale at 1"
        )


@dataclass(frozen=True)
class ClassLabelGuidance:
    """How a pipeline calls its network in a run: with which labels, guided how.

    Build it with :meth:`prepare`; then ``guidance.predict(unet, sample, timestep)`` replaces
    ``unet(sample, timestep).sample`` in the denoising loop.

    Attributes:
        labels: the ``(batch,)`` labels of the conditional prediction (the null label when sampling a
            conditional network without labels); ``None`` for an unconditional network.
        null_labels: the ``(batch,)`` null labels of the unconditional prediction, when it is combined
            with the conditional one (``guidance_scale`` not 1); else ``None``.
        guidance_scale: ``w`` of ``uncond + w * (cond - uncond)``.
    """

    labels: torch.Tensor | None
    null_labels: torch.Tensor | None
    guidance_scale: float

    @classmethod
    def prepare(
        cls,
        pipeline_or_unet: object,
        class_labels: ClassLabels | None,
        guidance_scale: float,
        batch_size: int,
        device: torch.device | str | None = None,
    ) -> ClassLabelGuidance:
        """Check ``class_labels`` and ``guidance_scale`` (see :func:`check_class_labels`) and plan the calls.

        Raises:
            ValueError: on bad labels or a bad scale.
        """
        check_guidance_scale(guidance_scale, class_labels, pipeline_or_unet)
        labels = check_class_labels(class_labels, batch_size, pipeline_or_unet)
        null = null_class_label(pipeline_or_unet)
        if null is None:
            return cls(None, None, float(guidance_scale))
        null_labels = torch.full((batch_size,), null, dtype=torch.long, device=device)
        if labels is None or guidance_scale == 0:
            return cls(null_labels, None, float(guidance_scale))  # the unconditional prediction alone
        labels = labels.to(device)
        return cls(labels, null_labels if guidance_scale != 1 else None, float(guidance_scale))

    @property
    def batch_multiplier(self) -> int:
        """The network's batch in each step's one call, in run batches: 2 when guiding, else 1."""
        return 2 if self.null_labels is not None else 1

    def predict(
        self, unet: torch.nn.Module, sample: torch.Tensor, timestep: torch.Tensor | float | int
    ) -> torch.Tensor:
        """The network's (guided) prediction for ``sample`` at ``timestep``: one network call.

        Guided, the call sees ``[sample, sample]`` with ``[labels, null labels]`` (and a per-image
        ``timestep`` repeated likewise) and returns ``uncond + w * (cond - uncond)``.
        """
        if self.labels is None:
            return unet(sample, timestep).sample
        if self.null_labels is None:
            return unet(sample, timestep, class_labels=self.labels).sample
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.ndim > 0:
            timestep = torch.cat([timestep, timestep])
        output = unet(
            torch.cat([sample, sample]), timestep, class_labels=torch.cat([self.labels, self.null_labels])
        ).sample
        cond, uncond = output.chunk(2)
        return uncond + self.guidance_scale * (cond - uncond)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _shown(value: object) -> str:
    """A short ``repr`` of a value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
