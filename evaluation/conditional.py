"""Class-conditional generation, measured: does a sample show the digit it was asked for, and at what cost in
quality, for each classifier-free guidance scale.

A class-conditional pipeline (``training/train.py --class_conditional``; see
:mod:`mnist_diffusion.pipelines.guidance`) is asked for every digit equally often. The evaluator's MNIST
classifier (the one behind FID's features, :mod:`mnist_diffusion.models.mnist_classifier`) reads each
sample; the *conditional accuracy* is the fraction it reads as the requested digit (per digit too). The same
samples get FID against the test split with its floor, KID and the normalised entropy of the predicted
digits, as ``scripts/evaluate.py`` scores any samples
(:class:`~mnist_diffusion.evaluation.metrics.SampleQuality`).

The guidance curve repeats this for several guidance scales ``w`` with the same seed, so every scale starts
each image from the same noise: ``w = 0`` is the model's unconditional prediction (whatever was asked for, so
its accuracy is near chance, about 0.1), ``w = 1`` the conditional model as trained, and a larger ``w``
pushes each sample harder towards its digit, usually at some cost in diversity and FID.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline
from matplotlib.figure import Figure

from mnist_diffusion.evaluation.metrics import SampleEvaluation, SampleQuality
from mnist_diffusion.pipelines.guidance import balanced_labels, num_classes
from mnist_diffusion.pipelines.sampling import generate
from mnist_diffusion.training.files import atomic_output

# The scales of a guidance curve unless told otherwise: unconditional, as trained, and three guided ones.
DEFAULT_GUIDANCE_SCALES: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 5.0)
# What a curve reports per scale (besides the scale, the per-digit accuracies and the timings).
CURVE_KEYS = ("conditional_accuracy", "fid", "fid_floor", "class_entropy")


def requested_digits(pipeline: DiffusionPipeline, num_images: int) -> list[int]:
    """``num_images`` class labels, every class equally often, in turn: ``0, 1, ..., 9, 0, 1, ...``.

    Raises:
        ValueError: if the pipeline is not class-conditional, or ``num_images`` is not a positive multiple of
            its number of classes (10 for MNIST), which equal numbers per class need.
    """
    classes = num_classes(pipeline)
    if classes is None:
        raise ValueError(
            "conditional accuracy needs a class-conditional model (trained with --class_conditional); this "
            "one is unconditional"
        )
    if num_images < classes or num_images % classes:
        lower = max(classes, num_images // classes * classes)
        upper = math.ceil(num_images / classes) * classes
        suggestion = f"{lower} or {upper}" if lower != upper else str(upper)
        raise ValueError(
            f"num_images={num_images} must be a multiple of the {classes} classes, so that every digit is "
            f"asked for equally often; use {suggestion}"
        )
    return balanced_labels(pipeline, num_images)


def check_guidance_scales(scales: Iterable[float]) -> tuple[float, ...]:
    """The scales of a guidance curve as floats, checked: at least one, each finite and >= 0, no repeats.

    Raises:
        ValueError: naming the bad value.
    """
    checked = []
    for scale in scales:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise ValueError(f"guidance scales must be numbers >= 0, got {scale!r}")
        if not (math.isfinite(scale) and scale >= 0):
            raise ValueError(f"guidance scales must be finite numbers >= 0, got {scale!r}")
        if float(scale) in checked:
            raise ValueError(f"guidance scale {scale!r} is given twice")
        checked.append(float(scale))
    if not checked:
        raise ValueError("a guidance curve needs at least one guidance scale")
    return tuple(checked)


@dataclass
class ConditionalResult:
    """Samples of a class-conditional pipeline asked for every digit equally often, at one guidance scale.

    Attributes:
        guidance_scale: ``w`` of the samples.
        labels: the requested digit of each sample, ``(N,)``.
        images: the samples ``(N, 1, 28, 28)`` in ``[0, 1]``.
        evaluation: their scores (``conditional_accuracy`` among its metrics) and classifier readings.
        sampling_seconds: the time the samples took.
    """

    guidance_scale: float
    labels: torch.Tensor
    images: torch.Tensor = field(repr=False)
    evaluation: SampleEvaluation = field(repr=False)
    sampling_seconds: float

    @property
    def accuracy(self) -> float:
        """The fraction of samples the classifier reads as their requested digit."""
        return self.evaluation.metrics["conditional_accuracy"]

    @property
    def per_digit_accuracy(self) -> list[float]:
        """The conditional accuracy of each requested digit, ``0 .. num_classes - 1``."""
        predictions = self.evaluation.predictions
        return [
            (predictions[self.labels == digit] == digit).double().mean().item()
            for digit in range(int(self.labels.max()) + 1)
        ]

    def row(self) -> dict[str, Any]:
        """The JSON-ready scores: the scale, :data:`CURVE_KEYS`, the per-digit accuracy, KID, timing."""
        metrics = self.evaluation.metrics
        return {
            "guidance_scale": self.guidance_scale,
            **{key: metrics[key] for key in CURVE_KEYS if key in metrics},
            "per_digit_accuracy": self.per_digit_accuracy,
            "kid_mean": metrics["kid_mean"],
            "mean_confidence": metrics["mean_confidence"],
            "num_images": len(self.images),
            "sampling_seconds": self.sampling_seconds,
        }


def evaluate_conditional(
    pipeline: DiffusionPipeline,
    quality: SampleQuality,
    num_images: int,
    guidance_scale: float = 1.0,
    sampler: str | None = None,
    num_inference_steps: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    show_progress: bool = False,
) -> ConditionalResult:
    """Ask a class-conditional pipeline for every digit equally often and score what it draws.

    Args:
        pipeline: a class-conditional pipeline of this project.
        quality: the scorer (test split reference, training split for the floor); its classifier reads the
            digits.
        num_images: samples in all, a multiple of the number of classes (see :func:`requested_digits`).
        guidance_scale: the classifier-free guidance weight ``w`` (0: unconditional, 1: as trained).
        sampler: a sampler of the pipeline's forward process (default: its own).
        num_inference_steps: network calls (default: the sampler's usual count).
        seed: the samples' seed (:func:`~mnist_diffusion.pipelines.sampling.generate`).
        batch_size: images per network call (a guided call doubles it).
        show_progress: show the pipeline's progress bar.

    Raises:
        ValueError: for an unconditional pipeline, a count that is not a multiple of the classes, a bad scale,
            sampler or step count.

    Example:
        >>> from mnist_diffusion.evaluation.conditional import evaluate_conditional
        >>> from mnist_diffusion.evaluation.metrics import SampleQuality
        >>> from mnist_diffusion.pipelines import load_pipeline
        >>> from mnist_diffusion.training.data import load_split
        >>> pipeline = load_pipeline("outputs/quickstart_conditional")  # doctest: +SKIP
        >>> test = load_split("ylecun/mnist", "test")  # doctest: +SKIP
        >>> train = load_split("ylecun/mnist", "train")  # doctest: +SKIP
        >>> quality = SampleQuality(test, train)  # doctest: +SKIP
        >>> result = evaluate_conditional(pipeline, quality, 1000, guidance_scale=3.0)  # doctest: +SKIP
        >>> result.accuracy, result.row()["fid"]  # doctest: +SKIP
        (0.97, 14.2)
    """
    labels = requested_digits(pipeline, num_images)
    began = time.perf_counter()
    images = generate(
        pipeline, num_images, sampler, num_inference_steps, seed, batch_size, show_progress,
        class_labels=labels, guidance_scale=guidance_scale,
    )  # fmt: skip
    seconds = time.perf_counter() - began
    labels = torch.tensor(labels)
    evaluation = quality.evaluate(images, labels=labels)
    return ConditionalResult(float(guidance_scale), labels, images, evaluation, seconds)


def guidance_curve(
    pipeline: DiffusionPipeline,
    quality: SampleQuality,
    num_images: int,
    scales: Sequence[float] = DEFAULT_GUIDANCE_SCALES,
    sampler: str | None = None,
    num_inference_steps: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    show_progress: bool = False,
    done: Sequence[ConditionalResult] = (),
    on_result: Callable[[ConditionalResult], None] | None = None,
) -> list[dict[str, Any]]:
    """Conditional accuracy, FID (with floor) and class entropy at each guidance scale, one row per scale.

    Every scale samples the same seed, so each image starts from the same noise and asks for the same digit.

    Args:
        pipeline, quality, num_images, sampler, num_inference_steps, seed, batch_size, show_progress: as for
            :func:`evaluate_conditional`.
        scales: the guidance scales, in the order of the rows (checked by :func:`check_guidance_scales`).
        done: results already computed with the same settings (a scale of the main evaluation), reused.
        on_result: called with each new result as soon as it is scored (progress, partial saves).

    Returns:
        :meth:`ConditionalResult.row` of each scale.

    Raises:
        ValueError: as :func:`evaluate_conditional`, or for bad scales (before any sampling).

    Example:
        >>> from mnist_diffusion.evaluation.conditional import guidance_curve, plot_guidance_curve
        >>> rows = guidance_curve(pipeline, quality, 1000, scales=(0, 1, 2, 3, 5))  # doctest: +SKIP
        >>> plot_guidance_curve(rows, "outputs/guidance_curve.png")  # doctest: +SKIP
    """
    scales = check_guidance_scales(scales)
    requested_digits(pipeline, num_images)  # bad counts before any sampling
    known = {result.guidance_scale: result for result in done}
    rows = []
    for scale in scales:
        result = known.get(scale)
        if result is None:
            result = evaluate_conditional(
                pipeline, quality, num_images, scale, sampler, num_inference_steps, seed, batch_size,
                show_progress,
            )  # fmt: skip
            if on_result is not None:
                on_result(result)
        rows.append(result.row())
    return rows


def recommended_guidance_scale(rows: Sequence[dict[str, Any]]) -> float | None:
    """The guidance scale of a curve's lowest FID among the guided scales (``w > 0``); ``None`` if none.

    A lower FID means samples closer to real digits in distribution; at or beyond that scale accuracy keeps
    rising while diversity falls, so it is the scale to sample with unless adherence matters more.
    """
    guided = [row for row in rows if row.get("guidance_scale", 0) > 0 and _finite(row.get("fid"))]
    return min(guided, key=lambda row: row["fid"])["guidance_scale"] if guided else None


def plot_guidance_curve(rows: Sequence[dict[str, Any]], path: str | Path, title: str | None = None) -> None:
    """Conditional accuracy and FID (its floor dashed) against the guidance scale, side by side; atomic PNG.

    Args:
        rows: the curve (:func:`guidance_curve`), in any order.
        path: the ``.png`` to write.
        title: the figure's title (default: the number of samples per scale).
    """
    rows = sorted(rows, key=lambda row: row["guidance_scale"])
    scales = [row["guidance_scale"] for row in rows]
    figure = Figure(figsize=(10, 3.8))
    accuracy_axis, fid_axis = figure.subplots(1, 2)
    accuracy_axis.plot(scales, [row["conditional_accuracy"] for row in rows], marker="o")
    accuracy_axis.axhline(0.1, color="gray", linestyle=":", label="chance (1 in 10)")
    accuracy_axis.set(
        xlabel="guidance scale w", ylabel="conditional accuracy", title="classifier agrees with the digit"
    )
    accuracy_axis.set_ylim(0, 1.02)
    accuracy_axis.legend(loc="best")
    fid_axis.plot(scales, [row["fid"] for row in rows], marker="o", color="tab:orange", label="FID")
    floors = [row["fid_floor"] for row in rows if _finite(row.get("fid_floor"))]
    if floors:
        floor = sum(floors) / len(floors)
        fid_axis.axhline(floor, color="gray", linestyle="--", label=f"floor (real images), {floor:.2f}")
    fid_axis.set(xlabel="guidance scale w", ylabel="FID (MNIST classifier features)", title="FID ↓")
    fid_axis.legend(loc="best")
    for axis in (accuracy_axis, fid_axis):
        axis.set_xticks(scales, [f"{scale:g}" for scale in scales])
    count = rows[0].get("num_images") if rows else None
    figure.suptitle(title or f"Classifier-free guidance ({count} samples per scale)")
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=120)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
