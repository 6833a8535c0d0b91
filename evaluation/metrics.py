"""Sample-quality metrics for MNIST-sized images, built on torchmetrics and the shipped MNIST classifier.

Samples are float tensors of shape ``(N, 1, 28, 28)`` in ``[0, 1]`` (the range of saved images; see
:mod:`mnist_diffusion.training.data`); real image sets may also be given as an
:class:`~mnist_diffusion.training.data.ImageSplit`. Bad input raises ``ValueError``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from scipy import stats
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from mnist_diffusion.models.mnist_classifier import (
    MNISTClassifier,
    MNISTClassifierOutput,
    load_mnist_classifier,
)
from mnist_diffusion.schedulers import ForwardProcess, forward_process
from mnist_diffusion.training.data import ImageSplit, to_model_range, to_unit_range, uint8_to_unit_range

FEATURE_NETWORKS = ("mnist", "inception")


def check_images01(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Check that ``images`` is a non-empty float batch ``(N, 1, H, W)`` of finite values in ``[0, 1]``.

    Returns:
        ``images`` as float32.

    Raises:
        ValueError: naming the first problem found.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"{name} must have shape (N, 1, H, W), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if not images.is_floating_point():
        raise ValueError(f"{name} must be a float tensor in [0, 1], got dtype {images.dtype}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    low, high = images.min().item(), images.max().item()
    if low < 0.0 or high > 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]")
    return images.float()


def images01_from_array(array: np.ndarray) -> torch.Tensor:
    """Turn saved images into a float batch ``(N, 1, H, W)`` in ``[0, 1]``.

    Args:
        array: ``(N, H, W)``, ``(N, 1, H, W)`` or ``(N, H, W, 1)``; ``uint8`` in ``[0, 255]`` or float in
            ``[0, 1]``.

    Raises:
        ValueError: on another shape or dtype, no images, NaN, or floats outside ``[0, 1]``.
    """
    if array.ndim == 4 and array.shape[-1] == 1 and array.shape[1] != 1:
        array = array[..., 0]
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4 or array.shape[1] != 1:
        raise ValueError(f"images must have shape (N, H, W) or (N, 1, H, W), got {array.shape}")
    if array.dtype == np.uint8:
        return uint8_to_unit_range(torch.from_numpy(array))
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"images must be uint8 in [0, 255] or float in [0, 1], got dtype {array.dtype}")
    return check_images01(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)))


def split_to_unit_range(split: ImageSplit) -> torch.Tensor:
    """The ``uint8`` images of a split as float ``(N, 1, 28, 28)`` in ``[0, 1]``."""
    return uint8_to_unit_range(split.images)


@torch.no_grad()
def classify(
    classifier: MNISTClassifier, images01: torch.Tensor, batch_size: int = 1000
) -> MNISTClassifierOutput:
    """Run the classifier over ``images01`` in batches (in eval mode).

    Returns:
        The concatenated logits and penultimate features, on the CPU.
    """
    images01 = check_images01(images01)
    device = classifier.device
    outputs = [classifier(batch.to(device)) for batch in images01.split(batch_size)]
    return MNISTClassifierOutput(
        logits=torch.cat([output.logits for output in outputs]).cpu(),
        features=torch.cat([output.features for output in outputs]).cpu(),
    )


class ClassifierFeatures(nn.Module):
    """The classifier's penultimate features, as a torchmetrics ``feature`` module (``(N, D)`` out)."""

    def __init__(self, classifier: MNISTClassifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.config.feature_dim

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        return self.classifier(images01).features


class ClassifierLogits(nn.Module):
    """The classifier's logits, as the ``feature`` module of torchmetrics' ``InceptionScore``."""

    def __init__(self, classifier: MNISTClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        return self.classifier(images01).logits


@dataclass
class SampleEvaluation:
    """The result of :meth:`SampleQuality.evaluate`.

    Attributes:
        metrics: scalar metrics by name (``fid``, ``kid_mean``, ``inception_score_mean``, ...).
        class_counts: how many samples the classifier assigns to each class.
        confidences: the classifier's top softmax probability for each sample, shape ``(N,)``.
        predictions: the class the classifier assigns to each sample, shape ``(N,)``.
    """

    metrics: dict[str, float]
    class_counts: list[int]
    confidences: torch.Tensor = field(repr=False)
    predictions: torch.Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, float | list[int]]:
        """The scalar metrics and the class histogram, ready for JSON."""
        return {**self.metrics, "class_histogram": self.class_counts}


class SampleQuality:
    """FID, KID, Inception-style score and class balance of samples against a fixed reference set.

    The reference features are computed once, here, and kept across evaluations (torchmetrics'
    ``reset_real_features=False``), so evaluating a few hundred samples during training is cheap.

    Args:
        reference: the real images FID and KID compare against (usually the MNIST test split), as an
            :class:`~mnist_diffusion.training.data.ImageSplit` or a float tensor ``(N, 1, 28, 28)`` in
            ``[0, 1]``.
        floor_reference: real images (usually the training split) from which ``N`` are drawn to report
            ``fid_floor``, the FID that real images reach against ``reference`` at the same ``N``.
        features: ``mnist`` (the shipped classifier's penultimate features) or ``inception``
            (Inception-v3 pool features; needs ``torch-fidelity`` and its downloadable weights).
        classifier: the classifier for features, the Inception-style score and the class histogram;
            defaults to the shipped one.
        kid_subsets: number of random subsets KID averages over.
        kid_subset_size: size of each KID subset (capped at the number of samples).
        inception_splits: number of splits the Inception-style score is averaged over.
        batch_size: images per network call.
        seed: seed of the random subsets of KID, the Inception-style score and the floor sample.
        device: where the networks run.

    Raises:
        ValueError: on an unknown ``features`` name, unavailable Inception weights, or bad images.
    """

    def __init__(
        self,
        reference: ImageSplit | torch.Tensor,
        floor_reference: ImageSplit | torch.Tensor | None = None,
        features: str = "mnist",
        classifier: MNISTClassifier | None = None,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        inception_splits: int = 10,
        batch_size: int = 1000,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ):
        if features not in FEATURE_NETWORKS:
            raise ValueError(f"unknown feature network {features!r}; choose one of {FEATURE_NETWORKS}")
        self.reference, self.floor_reference = reference, floor_reference
        self.features, self.kid_subset_size = features, kid_subset_size
        self.batch_size, self.seed, self.device = batch_size, seed, torch.device(device)
        self.classifier = classifier or load_mnist_classifier(device=device)
        if features == "mnist":
            feature_kwargs = {"feature": ClassifierFeatures(self.classifier)}
        else:
            feature_kwargs = {"feature": 2048, "normalize": True}
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*will save all extracted features")
                self.inception_score = InceptionScore(
                    feature=ClassifierLogits(self.classifier), splits=inception_splits
                )
                self.fid = FrechetInceptionDistance(reset_real_features=False, **feature_kwargs)
                self.kid = KernelInceptionDistance(
                    subsets=kid_subsets,
                    subset_size=kid_subset_size,
                    reset_real_features=False,
                    **feature_kwargs,
                )
        except (ModuleNotFoundError, OSError, RuntimeError) as error:
            raise ValueError(
                "Inception-v3 features are not available here (they need the torch-fidelity package and "
                f"its downloadable weights): {error}; use the MNIST classifier features (--features mnist)"
            ) from error
        for metric in (self.inception_score, self.fid, self.kid):
            metric.to(self.device)
        reference01 = self._as_images01(reference, "reference")
        self._num_reference = len(reference01)
        self._update(reference01, real=True)
        self._floors: dict[int, float] = {}

    @staticmethod
    def _as_images01(images: ImageSplit | torch.Tensor, name: str) -> torch.Tensor:
        return split_to_unit_range(images) if isinstance(images, ImageSplit) else check_images01(images, name)

    def _update(self, images01: torch.Tensor, real: bool) -> None:
        """Feed images to FID and KID (as RGB for Inception, which expects three channels)."""
        for batch in images01.split(self.batch_size):
            batch = batch.to(self.device)
            if self.features == "inception":
                batch = batch.expand(-1, 3, -1, -1)
            self.fid.update(batch, real=real)
            self.kid.update(batch, real=real)

    def _distances(self, images01: torch.Tensor) -> tuple[float, float, float]:
        """FID, KID mean and KID std of ``images01`` against the reference."""
        self.fid.reset()
        self.kid.reset()
        self._update(images01, real=False)
        # KID draws subsets without replacement, so they cannot be larger than either set.
        self.kid.subset_size = min(self.kid_subset_size, len(images01), self._num_reference)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            kid_mean, kid_std = self.kid.compute()
        return self.fid.compute().item(), kid_mean.item(), kid_std.item()

    def fid_floor(self, num_images: int) -> float:
        """FID of ``num_images`` real images from ``floor_reference`` against the reference (cached per N).

        Raises:
            ValueError: if there is no ``floor_reference`` or it has fewer than ``num_images`` images.
        """
        if self.floor_reference is None:
            raise ValueError("fid_floor needs a floor_reference (real images, e.g. the training split)")
        if num_images not in self._floors:
            real = self._as_images01(self.floor_reference, "floor_reference")
            if num_images > len(real):
                raise ValueError(f"the floor needs {num_images} real images, floor_reference has {len(real)}")
            generator = torch.Generator().manual_seed(self.seed)
            indices = torch.randperm(len(real), generator=generator)[:num_images]
            self._floors[num_images] = self._distances(real[indices])[0]
        return self._floors[num_images]

    @torch.no_grad()
    def evaluate(
        self, images01: torch.Tensor, labels: torch.Tensor | list[int] | None = None
    ) -> SampleEvaluation:
        """Score samples.

        Args:
            images01: float samples ``(N, 1, 28, 28)`` in ``[0, 1]``, ``N >= 2``.
            labels: for samples of a class-conditional model, the class each one was asked for (``N`` ints);
                adds ``conditional_accuracy``, the fraction the classifier assigns to their requested class.

        Returns:
            ``fid`` (and ``fid_floor`` with a ``floor_reference``), ``kid_mean``, ``kid_std``,
            ``inception_score_mean``, ``inception_score_std`` (over the splits), ``class_entropy`` (entropy
            of the predicted-class histogram over ``log(num_classes)``: 1 is perfectly balanced),
            ``mean_confidence`` (mean top softmax probability), ``num_images`` and, with ``labels``,
            ``conditional_accuracy``; with the histogram and the per-sample confidences and predictions.

        Raises:
            ValueError: if ``images01`` is not a valid batch of at least two images, or ``labels`` are not
                one class index per sample.
        """
        images01 = check_images01(images01, "samples")
        if len(images01) < 2:
            raise ValueError(f"at least 2 samples are needed for FID and KID, got {len(images01)}")
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.shape != (len(images01),) or labels.is_floating_point():
                raise ValueError(
                    f"labels must be one class index per sample ({len(images01)}), got shape "
                    f"{tuple(labels.shape)} and dtype {labels.dtype}"
                )
        fid, kid_mean, kid_std = self._distances(images01)
        metrics = {"num_images": float(len(images01)), "fid": fid}
        if self.floor_reference is not None:
            metrics["fid_floor"] = self.fid_floor(len(images01))
        metrics |= {"kid_mean": kid_mean, "kid_std": kid_std}

        self.inception_score.reset()
        for batch in images01.split(self.batch_size):
            self.inception_score.update(batch.to(self.device))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            is_mean, is_std = self.inception_score.compute()

        probabilities = classify(self.classifier, images01, self.batch_size).logits.softmax(dim=1)
        confidences, predictions = probabilities.max(dim=1)
        num_classes = probabilities.shape[1]
        counts = torch.bincount(predictions, minlength=num_classes)
        frequencies = counts[counts > 0].double() / len(predictions)
        metrics |= {
            "inception_score_mean": is_mean.item(),
            "inception_score_std": is_std.item(),
            "class_entropy": (
                (frequencies * frequencies.reciprocal().log()).sum() / math.log(num_classes)
            ).item(),
            "mean_confidence": confidences.mean().item(),
        }
        if labels is not None:
            metrics["conditional_accuracy"] = (predictions == labels).double().mean().item()
        return SampleEvaluation(metrics, counts.tolist(), confidences, predictions)


def evaluate_samples(
    images01: torch.Tensor,
    reference: ImageSplit | torch.Tensor,
    floor_reference: ImageSplit | torch.Tensor | None = None,
    **kwargs,
) -> dict[str, float | list[int]]:
    """One-off evaluation of samples: :meth:`SampleQuality.evaluate` as a JSON-ready dict.

    Args:
        images01: float samples ``(N, 1, 28, 28)`` in ``[0, 1]``.
        reference: the real images to compare against (e.g. the MNIST test split).
        floor_reference: real images for ``fid_floor`` (e.g. the training split).
        **kwargs: further arguments of :class:`SampleQuality`.
    """
    return SampleQuality(reference, floor_reference, **kwargs).evaluate(images01).to_dict()


def forward_process_normality(
    process: ForwardProcess | DiffusionPipeline | SchedulerMixin,
    reference: ImageSplit,
    num_images: int = 32,
    seed: int = 0,
) -> dict[str, list[float] | int | None]:
    """How Gaussian the forward process ``x_t = D(x_0, t)`` is, for every ``t`` of its range.

    For each ``t`` the pixels of ``D(x_0, t)`` (for Gaussian DDPM ``sqrt(alpha_bar_t) x_0 + sqrt(1 -
    alpha_bar_t) eps``) are tested against ``N(0, 1)`` with the Kolmogorov-Smirnov test. Each ``t`` gets its
    own draw: one draw shared by all ``t`` would carry its own chance departure from ``N(0, 1)`` into every
    late ``t``. With tens of thousands of pixels the test detects small departures, so ``p > 0.05`` means the
    process really has destroyed the digits; once it has, ``p`` is uniform on ``[0, 1]`` and dips below 0.05
    now and then. Only processes that end in Gaussian noise ever pass.

    Args:
        process: a forward process, or a trained pipeline or scheduler of one (see
            :func:`mnist_diffusion.schedulers.forward_process`).
        reference: real images ``x_0`` (e.g. the MNIST test split); the first ``num_images`` are used.
        num_images: how many images' pixels enter each test.
        seed: seed of the draws.

    Returns:
        ``timesteps``, ``ks_pvalue`` (one per timestep) and ``first_t_p_above_0.05`` (``None`` if never).

    Raises:
        ValueError: if ``num_images`` is not between 1 and the number of reference images, or no forward
            process answers for ``process``.
    """
    if not isinstance(process, ForwardProcess):
        process = forward_process(process)
    if not 1 <= num_images <= len(reference):
        raise ValueError(f"num_images={num_images} must be between 1 and {len(reference)}")
    x0 = to_model_range(reference.images[:num_images])
    generator = torch.Generator().manual_seed(seed)
    first_t, last_t = process.timestep_range
    timesteps = list(range(first_t, last_t + 1))
    p_values = []
    for t in timesteps:
        pixels = process.degrade(x0, t, generator).flatten().numpy()
        p_values.append(float(stats.kstest(pixels, "norm").pvalue))
    first = next((t for t, p in zip(timesteps, p_values, strict=True) if p > 0.05), None)
    return {"timesteps": timesteps, "ks_pvalue": p_values, "first_t_p_above_0.05": first}


class FirstEstimate:
    """A ``callback_on_step_end`` that keeps the clean-image estimate of a run's first step."""

    tensor_inputs = ["pred_original_sample"]

    def __init__(self) -> None:
        self.estimate: torch.Tensor | None = None

    def __call__(self, pipeline, step_index: int, timestep, callback_kwargs: dict) -> dict:
        if step_index == 0:
            self.estimate = callback_kwargs["pred_original_sample"]
        return callback_kwargs


@torch.no_grad()
def restoration_quality(
    pipeline: DiffusionPipeline,
    reference: ImageSplit,
    timesteps: list[int],
    num_inference_steps: int | None = None,
    sampler: str = "improved",
    num_images: int = 64,
    seed: int = 0,
) -> dict[str, list[float]]:
    """PSNR and SSIM of restorations of ``D(x, t)`` against ``x`` for several severities ``t``.

    Each severity is one run of the pipeline from its start timestep: ``start_images=x, start_timestep=t``
    degrades the images to ``t`` with the run's random draw, then steps from ``t`` and from each timestep of
    the ``num_inference_steps`` grid below ``t``, reusing the draw. ``iterative`` is the run's result;
    ``direct`` is the clean-image estimate of its first step, one network call ``R(D(x, t), t)``.

    Args:
        pipeline: a trained pipeline whose forward process restores images (``process.restores``), e.g. a
            ``ColdDiffusionPipeline``.
        reference: real images ``x`` (e.g. the MNIST test split); the first ``num_images`` are used.
        timesteps: the severities ``t``, after the first timestep of the process (``[1, T]`` for cold ones).
        num_inference_steps: the reverse-run grid (``None``: the sampler's usual count).
        sampler: a sampler of the pipeline's forward process (the iterative update).
        num_images: how many images are restored at each ``t``.
        seed: seed of each run's generator (the degradation's random draw).

    Returns:
        ``timesteps``, ``severity`` (``t / T``) and, per timestep, ``psnr_direct``, ``ssim_direct``,
        ``psnr_iterative``, ``ssim_iterative`` (PSNR in dB on ``[0, 1]`` images).

    Raises:
        ValueError: if the process does not restore images, or on bad timesteps, sampler, step count or
            ``num_images``.
    """
    process = forward_process(pipeline)
    if not process.restores:
        raise ValueError(f"restoration needs a process that restores images; {process.name} does not")
    first, last = process.timestep_range
    if not timesteps or min(timesteps) <= first or max(timesteps) > last:
        raise ValueError(f"timesteps must be a non-empty list in [{first + 1}, {last}], got {timesteps}")
    if not 1 <= num_images <= len(reference):
        raise ValueError(f"num_images={num_images} must be between 1 and {len(reference)}")
    process.check_sampler(sampler, num_inference_steps)
    steps = num_inference_steps or process.default_steps(sampler)
    restorer = process.with_sampler(pipeline, sampler)
    restorer.set_progress_bar_config(disable=True)
    target = uint8_to_unit_range(reference.images[:num_images]).to(pipeline.device)
    # Severity t / T puts degradations with different T on one axis.
    result = {"timesteps": list(timesteps), "severity": [t / process.num_train_timesteps for t in timesteps]}
    first_estimate = FirstEstimate()
    for t in timesteps:
        iterative = restorer(
            start_images=target,
            start_timestep=int(t),
            num_inference_steps=steps,
            generator=torch.Generator(device=pipeline.device).manual_seed(seed),
            output_type="pt",
            callback_on_step_end=first_estimate,
            callback_on_step_end_tensor_inputs=FirstEstimate.tensor_inputs,
        ).images
        restored = {"direct": to_unit_range(first_estimate.estimate.float()), "iterative": iterative.float()}
        for name, images in restored.items():
            psnr = peak_signal_noise_ratio(images, target, data_range=1.0)
            ssim = structural_similarity_index_measure(images, target, data_range=1.0)
            result.setdefault(f"psnr_{name}", []).append(psnr.item())
            result.setdefault(f"ssim_{name}", []).append(ssim.item())
    return result
