"""The metrics library: the shipped classifier, FID/KID/IS against real MNIST, per-t curves, bad input."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from models.mnist_classifier import PRETRAINED_DIR, load_mnist_classifier
from schedulers import ImpulseNoiseScheduler
from training.data import ImageSplit, load_split, to_model_range
from evaluation.metrics import (
    SampleQuality,
    check_images01,
    classify,
    forward_process_normality,
    images01_from_array,
    restoration_quality,
    sample_quality,
    split_to_unit_range,
)

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
def test_sample_quality_caches_the_reference_and_is_deterministic(test_images):
    reference = test_images[:2000]
    first = sample_quality(test_images[-200:], reference)
    assert sample_quality(test_images[-200:], reference) == first
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


class Restorer(ModelMixin, ConfigMixin):
    """``oracle``: returns the known clean images (model space); otherwise returns its input unchanged."""

    @register_to_config
    def __init__(self, oracle: bool = False):
        super().__init__()
        self.register_buffer("clean", torch.zeros(1, 1, 28, 28))

    def forward(self, sample, timestep):
        return BaseOutput(sample=self.clean if self.config.oracle else sample)


def test_restoration_quality_is_perfect_for_an_oracle_and_falls_with_severity_for_identity():
    images = (torch.rand(8, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.7).to(torch.uint8) * 255
    reference = ImageSplit(images, torch.zeros(8, dtype=torch.int64))
    scheduler = ImpulseNoiseScheduler(num_train_timesteps=10)
    oracle = Restorer(oracle=True)
    oracle.clean = to_model_range(images)
    timesteps = [1, 5, 10]
    perfect = restoration_quality(oracle, scheduler, reference, timesteps, num_images=8)
    assert perfect["timesteps"] == timesteps
    for mode in ("direct", "iterative"):
        # The improved update restores exactly from any t when x0_hat is exact, reusing the draw.
        assert all(value > 0.999 for value in perfect[f"ssim_{mode}"]), perfect
        assert all(value > 60 for value in perfect[f"psnr_{mode}"]), perfect
    identity = restoration_quality(Restorer(), scheduler, reference, timesteps, num_images=8)
    psnr = identity["psnr_direct"]
    assert psnr[0] > psnr[1] > psnr[2], identity
    with pytest.raises(ValueError, match="timesteps"):
        restoration_quality(oracle, scheduler, reference, [0, 11])


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
