"""The metrics library: the shipped classifier, FID/KID/IS against real MNIST, per-t curves, bad input."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from scipy import stats
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from mnist_diffusion.evaluation.metrics import (
    SampleQuality,
    check_images01,
    classify,
    forward_process_normality,
    images01_from_array,
    restoration_quality,
    split_to_unit_range,
)
from mnist_diffusion.models import CourseworkCNN
from mnist_diffusion.models.mnist_classifier import PRETRAINED_DIR, load_mnist_classifier
from mnist_diffusion.pipelines import ColdDiffusionPipeline
from mnist_diffusion.schedulers import ImpulseNoiseScheduler, ddpm_scheduler, forward_process
from mnist_diffusion.training.data import ImageSplit, load_split, to_model_range, to_unit_range

NUM_SAMPLES = 500


@pytest.fixture(scope="module")
def mnist_test(real_mnist) -> ImageSplit:
    torch.set_num_threads(2)
    return load_split(str(real_mnist), "test")


@pytest.fixture(scope="module")
def test_images(mnist_test) -> torch.Tensor:
    return split_to_unit_range(mnist_test)


@pytest.fixture(scope="module")
def shuffled_test_images(test_images) -> torch.Tensor:
    """The test set in a fixed random order (its two halves come from different writers)."""
    return test_images[torch.randperm(len(test_images), generator=torch.Generator().manual_seed(0))]


@pytest.fixture(scope="module")
def quality(shuffled_test_images) -> SampleQuality:
    """Reference: half of the test set; the floor is drawn from the other half, as are the real samples."""
    half = len(shuffled_test_images) // 2
    return SampleQuality(
        shuffled_test_images[:half], floor_reference=shuffled_test_images[half:], kid_subsets=20
    )


def test_shipped_weights_are_small():
    size = sum(path.stat().st_size for path in Path(PRETRAINED_DIR).iterdir())
    assert size < 5 * 2**20


@pytest.mark.integration
def test_shipped_classifier_reaches_99_percent_on_the_test_set(mnist_test, test_images):
    predictions = classify(load_mnist_classifier(), test_images).logits.argmax(dim=1)
    accuracy = (predictions == mnist_test.labels).float().mean().item()
    assert accuracy >= 0.99, f"test accuracy {accuracy:.4f}"


@pytest.mark.integration
def test_real_images_score_near_the_floor_and_noise_far_above(quality, shuffled_test_images):
    real = quality.evaluate(shuffled_test_images[-NUM_SAMPLES:]).metrics
    floor = real["fid_floor"]
    assert floor > 0.0 and real["fid"] < 1.5 * floor, real
    noise = quality.evaluate(torch.rand(NUM_SAMPLES, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    assert noise.metrics["fid"] > 20 * floor, noise.metrics
    assert noise.metrics["kid_mean"] > 100 * real["kid_mean"]


@pytest.mark.integration
def test_inception_score_histogram_and_balance(quality, test_images):
    real = quality.evaluate(test_images[-NUM_SAMPLES:])
    # Each of the 10 splits estimates the class marginal from 50 images, which lowers the score a little.
    assert 8.5 < real.metrics["inception_score_mean"] <= 10.0
    assert sum(real.class_counts) == NUM_SAMPLES and len(real.class_counts) == 10
    assert real.metrics["class_entropy"] > 0.98 and real.metrics["mean_confidence"] > 0.95

    # One digit repeated: a collapsed sampler has IS near 1 and zero class entropy.
    collapsed = quality.evaluate(test_images[:1].expand(NUM_SAMPLES, -1, -1, -1).contiguous())
    assert 1.0 <= collapsed.metrics["inception_score_mean"] < 1.05
    assert collapsed.metrics["class_entropy"] == 0.0
    assert max(collapsed.class_counts) == NUM_SAMPLES


@pytest.mark.integration
def test_sample_quality_keeps_the_reference_and_is_deterministic(test_images):
    quality = SampleQuality(test_images[:2000])
    first = quality.evaluate(test_images[-200:]).metrics
    assert quality.evaluate(test_images[-200:]).metrics == first
    # The reference features were computed once, in the constructor, not again per evaluation.
    assert quality.fid.real_features_num_samples.item() == 2000
    assert {"fid", "kid_mean", "inception_score_mean", "class_entropy", "mean_confidence"} <= first.keys()
    assert all(isinstance(value, float) for value in first.values())


@pytest.mark.integration
def test_forward_process_becomes_gaussian_only_late_in_a_linear_schedule(mnist_test):
    result = forward_process_normality(DDPMScheduler(num_train_timesteps=1000), mnist_test, num_images=16)
    p_values, first = result["ks_pvalue"], result["first_t_p_above_0.05"]
    assert len(p_values) == len(result["timesteps"]) == 1000
    assert max(p_values[:500]) < 1e-10
    assert first is not None and 500 < first < 1000
    # Once the digits are gone p is roughly uniform, so most late timesteps pass.
    assert sum(p > 0.05 for p in p_values[-100:]) > 50


def old_forward_process_normality(scheduler, reference, num_images, seed):
    """``forward_process_normality`` before the protocol, with ``add_noise`` (the reference)."""
    x0 = to_model_range(reference.images[:num_images])
    generator = torch.Generator().manual_seed(seed)
    p_values = []
    for t in range(scheduler.config.num_train_timesteps):
        noise = torch.randn(x0.shape, generator=generator)
        pixels = scheduler.add_noise(x0, noise, torch.tensor([t])).flatten().numpy()
        p_values.append(float(stats.kstest(pixels, "norm").pvalue))
    return p_values


def test_forward_process_normality_asks_the_process_and_matches_add_noise():
    reference = ImageSplit(
        torch.randint(0, 256, (4, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8),
        torch.zeros(4, dtype=torch.int64),
    )
    scheduler = ddpm_scheduler("linear", num_train_timesteps=30)
    expected = old_forward_process_normality(scheduler, reference, num_images=3, seed=2)
    pipeline = DDPMPipeline(unet=Restorer(), scheduler=scheduler)
    for given in (scheduler, forward_process(scheduler), pipeline):
        result = forward_process_normality(given, reference, num_images=3, seed=2)
        assert result["timesteps"] == list(range(30)) and result["ks_pvalue"] == expected
    # A cold process is tested over its own range, t = 0 .. T.
    cold = forward_process_normality(ImpulseNoiseScheduler(num_train_timesteps=5), reference, num_images=3)
    assert cold["timesteps"] == list(range(6)) and len(cold["ks_pvalue"]) == 6
    with pytest.raises(ValueError, match="num_images=5"):
        forward_process_normality(scheduler, reference, num_images=5)


class Restorer(ModelMixin, ConfigMixin):
    """``oracle``: returns the known clean images (model space); otherwise returns its input unchanged."""

    @register_to_config
    def __init__(self, oracle: bool = False):
        super().__init__()
        self.register_buffer("clean", torch.zeros(1, 1, 28, 28))

    def forward(self, sample, timestep):
        return BaseOutput(sample=self.clean if self.config.oracle else sample)


def binary_digits(count: int = 8) -> ImageSplit:
    images = (torch.rand(count, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.7).to(torch.uint8)
    return ImageSplit(images * 255, torch.zeros(count, dtype=torch.int64))


def cold_pipeline(model, num_train_timesteps: int = 10) -> ColdDiffusionPipeline:
    return ColdDiffusionPipeline(model, ImpulseNoiseScheduler(num_train_timesteps=num_train_timesteps))


def test_restoration_quality_is_perfect_for_an_oracle_and_falls_with_severity_for_identity():
    reference = binary_digits()
    oracle = Restorer(oracle=True)
    oracle.clean = to_model_range(reference.images)
    timesteps = [1, 5, 10]
    perfect = restoration_quality(cold_pipeline(oracle), reference, timesteps, num_images=8)
    assert perfect["timesteps"] == timesteps and perfect["severity"] == [0.1, 0.5, 1.0]
    for mode in ("direct", "iterative"):
        # The improved update restores exactly from any t when x0_hat is exact, reusing the draw.
        assert all(value > 0.999 for value in perfect[f"ssim_{mode}"]), perfect
        assert all(value > 60 for value in perfect[f"psnr_{mode}"]), perfect
    identity = restoration_quality(cold_pipeline(Restorer()), reference, timesteps, num_images=8)
    psnr = identity["psnr_direct"]
    assert psnr[0] > psnr[1] > psnr[2], identity
    with pytest.raises(ValueError, match=r"timesteps must be a non-empty list in \[1, 10\]"):
        restoration_quality(cold_pipeline(oracle), reference, [0, 11])
    with pytest.raises(ValueError, match="sampler 'ddim'"):
        restoration_quality(cold_pipeline(oracle), reference, [1], sampler="ddim", num_images=8)
    gaussian = DDPMPipeline(unet=Restorer(), scheduler=ddpm_scheduler("linear", num_train_timesteps=10))
    with pytest.raises(ValueError, match="restores images; gaussian does not"):
        restoration_quality(gaussian, reference, [1], num_images=8)


def old_restoration_quality(model, scheduler, reference, timesteps, num_inference_steps, sampling, seed):
    """``restoration_quality`` before the pipeline had a start timestep: its own loop (the reference)."""
    x0 = to_model_range(reference.images)
    target = to_unit_range(x0)
    result = {}
    for t in timesteps:
        scheduler.set_timesteps(num_inference_steps)
        generator = torch.Generator().manual_seed(seed)
        draw = scheduler.sampling_draw(tuple(x0.shape), generator, x0.device)
        sample = scheduler.degrade(x0, t, draw=draw)
        restored = {"direct": model(sample, torch.tensor([t])).sample}
        for s in [t, *(int(s) for s in scheduler.timesteps if s < t)]:
            x0_hat = model(sample, torch.tensor([s])).sample
            sample = scheduler.step(x0_hat, s, sample, sampling=sampling).prev_sample
        restored["iterative"] = sample
        for name, images in restored.items():
            images = to_unit_range(images)
            psnr = peak_signal_noise_ratio(images, target, data_range=1.0)
            ssim = structural_similarity_index_measure(images, target, data_range=1.0)
            result.setdefault(f"psnr_{name}", []).append(psnr.item())
            result.setdefault(f"ssim_{name}", []).append(ssim.item())
    return result


@pytest.mark.parametrize("sampler", ["improved", "naive"])
def test_restoration_quality_through_the_pipeline_equals_its_old_loop(sampler):
    torch.manual_seed(0)
    network = CourseworkCNN(n_hidden=(4, 4), time_embedding_frequencies=2, num_train_timesteps=10)
    pipeline = cold_pipeline(network)
    reference = binary_digits(6)
    timesteps = [2, 6, 10]
    result = restoration_quality(pipeline, reference, timesteps, 4, sampler, num_images=6, seed=3)
    expected = old_restoration_quality(network, pipeline.scheduler, reference, timesteps, 4, sampler, seed=3)
    for name, values in expected.items():
        assert result[name] == pytest.approx(values, rel=1e-5, abs=1e-5), name
    # The iterative runs really took more steps than the direct estimate (the comparison is not trivial).
    assert all(a != b for a, b in zip(result["psnr_iterative"], result["psnr_direct"], strict=True))


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.rand(4, 28, 28), "shape"),
        (torch.rand(0, 1, 28, 28), "empty"),
        (torch.full((2, 1, 28, 28), float("nan")), "NaN"),
        (torch.rand(2, 1, 28, 28) * 2, r"\[0, 1\]"),
        (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), "float"),
    ],
)
def test_bad_images_are_rejected(images, message):
    with pytest.raises(ValueError, match=message):
        check_images01(images)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 28), np.float32), "shape"),
        (np.zeros((4, 3, 28, 28), np.float32), "shape"),
        (np.zeros((4, 28, 28), np.int32), "dtype"),
        (np.full((4, 28, 28), -0.5, np.float32), r"\[0, 1\]"),
    ],
)
def test_bad_arrays_are_rejected(array, message):
    with pytest.raises(ValueError, match=message):
        images01_from_array(array)


def test_arrays_in_every_layout_become_the_same_batch():
    uint8 = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    expected = images01_from_array(uint8)
    assert expected.shape == (3, 1, 28, 28) and expected.dtype == torch.float32
    for array in (uint8[:, None], uint8[..., None], uint8.astype(np.float64) / 255):
        torch.testing.assert_close(images01_from_array(array), expected)


@pytest.mark.skipif(
    importlib.util.find_spec("torch_fidelity") is not None, reason="Inception may be available"
)
def test_unavailable_inception_is_a_clear_error():
    with pytest.raises(ValueError, match="Inception-v3 features are not available"):
        SampleQuality(torch.rand(8, 1, 28, 28), features="inception")


def test_evaluator_rejects_unknown_features_and_single_samples():
    reference = torch.rand(8, 1, 28, 28)
    with pytest.raises(ValueError, match="unknown feature network"):
        SampleQuality(reference, features="clip")
    with pytest.raises(ValueError, match="at least 2 samples"):
        SampleQuality(reference).evaluate(torch.rand(1, 1, 28, 28))
