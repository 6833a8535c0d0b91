"""Sample-quality metrics for MNIST-sized images, built on torchmetrics and the shipped MNIST classifier.

Samples are float tensors of shape ``(N, 1, 28, 28)`` in ``[0, 1]`` (the range of saved images; see
:mod:`training.data`); real image sets may also be given as an :class:`~training.data.ImageSplit`. Bad
input raises ``ValueError``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers.models.modeling_utils import ModelMixin
from scipy import stats
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from models.mnist_classifier import MNISTClassifier, MNISTClassifierOutput, load_mnist_classifier
from training.data import ImageSplit, to_model_range, to_unit_range, uint8_to_unit_range

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
    """

    metrics: dict[str, float]
    class_counts: list[int]
    confidences: torch.Tensor = field(repr=False)

    def to_dict(self) -> dict[str, float | list[int]]:
        """The scalar metrics and the class histogram, ready for JSON."""
        return {**self.metrics, "class_histogram": self.class_counts}


class SampleQuality:
    """FID, KID, Inception-style score and class balance of samples against a fixed reference set.

    The reference features are computed once, here, and kept across evaluations (torchmetrics'
    ``reset_real_features=False``), so evaluating a few hundred samples during training is cheap.

    Args:
        reference: the real images FID and KID compare against (usually the MNIST test split), as an
            :class:`~training.data.ImageSplit` or a float tensor ``(N, 1, 28, 28)`` in ``[0, 1]``.
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
    def evaluate(self, images01: torch.Tensor) -> SampleEvaluation:
        """Score samples.

        Args:
            images01: float samples ``(N, 1, 28, 28)`` in ``[0, 1]``, ``N >= 2``.

        Returns:
            ``fid`` (and ``fid_floor`` with a ``floor_reference``), ``kid_mean``, ``kid_std``,
            ``inception_score_mean``, ``inception_score_std`` (over the splits), ``class_entropy`` (entropy
            of the predicted-class histogram over ``log(num_classes)``: 1 is perfectly balanced),
            ``mean_confidence`` (mean top softmax probability) and ``num_images``, with the histogram and
            the per-sample confidences.

        Raises:
            ValueError: if ``images01`` is not a valid batch of at least two images.
        """
        images01 = check_images01(images01, "samples")
        if len(images01) < 2:
            raise ValueError(f"at least 2 samples are needed for FID and KID, got {len(images01)}")
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
        return SampleEvaluation(metrics, counts.tolist(), confidences)


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


_EVALUATORS: dict[tuple[int, int, str], SampleQuality] = {}


def sample_quality(
    images01: torch.Tensor,
    reference: ImageSplit | torch.Tensor,
    floor_reference: ImageSplit | torch.Tensor | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Scalar sample metrics for logging during training, with the reference features cached in memory.

    The first call for a given ``reference`` object computes its features; later calls with the same
    object (identity, not equality) only run the classifier over the samples, so a few hundred samples
    take about a second.

    Args:
        images01: float samples ``(N, 1, 28, 28)`` in ``[0, 1]``, ``N >= 2``.
        reference: the real images to compare against (e.g. the MNIST test split).
        floor_reference: real images for ``fid_floor`` (e.g. the training split); optional.
        device: where the classifier runs.

    Returns:
        ``fid``, ``fid_floor`` (with ``floor_reference``), ``kid_mean``, ``kid_std``,
        ``inception_score_mean``, ``inception_score_std``, ``class_entropy``, ``mean_confidence``,
        ``num_images``.
    """
    # The cached evaluator holds the reference objects, so their ids cannot be reused while it lives.
    key = (id(reference), id(floor_reference), str(device))
    if key not in _EVALUATORS:
        _EVALUATORS[key] = SampleQuality(reference, floor_reference, device=device)
    return _EVALUATORS[key].evaluate(images01).metrics


def forward_process_normality(
    scheduler, reference: ImageSplit, num_images: int = 32, seed: int = 0
) -> dict[str, list[float] | int | None]:
    """How Gaussian the forward process ``x_t`` of a Gaussian scheduler is, for every ``t``.

    For each ``t`` the pixels of ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps`` are tested
    against ``N(0, 1)`` with the Kolmogorov-Smirnov test. Each ``t`` gets its own noise: one draw shared by
    all ``t`` would carry its own chance departure from ``N(0, 1)`` into every late ``t``. With tens of
    thousands of pixels the test detects small departures, so ``p > 0.05`` means the schedule really has
    destroyed the digits; once it has, ``p`` is uniform on ``[0, 1]`` and dips below 0.05 now and then.

    Args:
        scheduler: a Diffusers scheduler with ``add_noise`` (e.g. ``DDPMScheduler``).
        reference: real images ``x_0`` (e.g. the MNIST test split); the first ``num_images`` are used.
        num_images: how many images' pixels enter each test.
        seed: seed of the noise.

    Returns:
        ``timesteps``, ``ks_pvalue`` (one per timestep) and ``first_t_p_above_0.05`` (``None`` if never).
    """
    if not 1 <= num_images <= len(reference):
        raise ValueError(f"num_images={num_images} must be between 1 and {len(reference)}")
    x0 = to_model_range(reference.images[:num_images])
    generator = torch.Generator().manual_seed(seed)
    timesteps = list(range(scheduler.config.num_train_timesteps))
    p_values = []
    for t in timesteps:
        noise = torch.randn(x0.shape, generator=generator)
        pixels = scheduler.add_noise(x0, noise, torch.tensor([t])).flatten().numpy()
        p_values.append(float(stats.kstest(pixels, "norm").pvalue))
    first = next((t for t, p in zip(timesteps, p_values, strict=True) if p > 0.05), None)
    return {"timesteps": timesteps, "ks_pvalue": p_values, "first_t_p_above_0.05": first}


@torch.no_grad()
def restoration_quality(
    model: ModelMixin,
    scheduler,
    reference: ImageSplit,
    timesteps: list[int],
    num_inference_steps: int | None = None,
    sampling: str = "improved",
    num_images: int = 64,
    seed: int = 0,
) -> dict[str, list[float]]:
    """PSNR and SSIM of the restoration ``R(D(x, t), t)`` against ``x`` for several severities ``t``.

    ``direct`` is one call of the model (its ``x_0`` prediction); ``iterative`` runs the scheduler's
    reverse steps from ``t`` down to 0 over the timesteps of a ``num_inference_steps`` run that lie below
    ``t``, reusing the degradation's random draw as sampling does.

    Args:
        model: the restoration network ``R(x_t, t) -> .sample`` (predicts ``x_0``).
        scheduler: a cold-diffusion scheduler (``degrade``, ``set_timesteps``, ``sampling_draw``, ``step``).
        reference: real images ``x`` (e.g. the MNIST test split); the first ``num_images`` are used.
        timesteps: the severities ``t`` in ``[1, T]``.
        num_inference_steps: the reverse-run grid (``None``: every timestep).
        sampling: the iterative update, ``improved`` or ``naive``.
        num_images: how many images are restored at each ``t``.
        seed: seed of the degradation's random draw.

    Returns:
        ``timesteps``, ``severity`` (``t / T``) and, per timestep, ``psnr_direct``, ``ssim_direct``,
        ``psnr_iterative``, ``ssim_iterative`` (PSNR in dB on ``[0, 1]`` images).
    """
    num_train_timesteps = scheduler.config.num_train_timesteps
    if not timesteps or min(timesteps) < 1 or max(timesteps) > num_train_timesteps:
        raise ValueError(f"timesteps must be a non-empty list in [1, {num_train_timesteps}], got {timesteps}")
    if not 1 <= num_images <= len(reference):
        raise ValueError(f"num_images={num_images} must be between 1 and {len(reference)}")
    device = model.device
    x0 = to_model_range(reference.images[:num_images]).to(device)
    target = to_unit_range(x0)
    # Severity t / T puts degradations with different T on one axis.
    result = {"timesteps": list(timesteps), "severity": [t / num_train_timesteps for t in timesteps]}
    for t in timesteps:
        scheduler.set_timesteps(num_inference_steps, device=device)
        generator = torch.Generator(device=device).manual_seed(seed)
        draw = scheduler.sampling_draw(tuple(x0.shape), generator, device)
        sample = scheduler.degrade(x0, t, draw=draw)
        restored = {"direct": model(sample, torch.tensor([t], device=device)).sample}
        for s in [t, *(int(s) for s in scheduler.timesteps if s < t)]:
            x0_hat = model(sample, torch.tensor([s], device=device)).sample
            sample = scheduler.step(x0_hat, s, sample, sampling=sampling).prev_sample
        restored["iterative"] = sample
        for name, images in restored.items():
            images = to_unit_range(images)
            psnr = peak_signal_noise_ratio(images, target, data_range=1.0)
            ssim = structural_similarity_index_measure(images, target, data_range=1.0)
            result.setdefault(f"psnr_{name}", []).append(psnr.item())
            result.setdefault(f"ssim_{name}", []).append(ssim.item())
    return result
