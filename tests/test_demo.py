"""The demo's handlers without a browser: they ask the forward process and record steps with the callback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from app import demo
from models import CourseworkCNN
from pipelines import ColdDiffusionPipeline, load_pipeline
from pipelines.sampling import generate
from schedulers import AveragingScheduler, ImpulseNoiseScheduler, forward_process
from training.data import to_unit_range


def tiny_cold(scheduler) -> ColdDiffusionPipeline:
    torch.manual_seed(0)
    unet = CourseworkCNN(
        n_hidden=(4, 4),
        time_embedding_frequencies=2,
        num_train_timesteps=scheduler.config.num_train_timesteps,
    )
    clean = (torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    scheduler.fit_prior(clean * 2 - 1, torch.Generator().manual_seed(0))
    return ColdDiffusionPipeline(unet, scheduler)


def a_digit() -> np.ndarray:
    pixels = np.zeros((28, 28), np.uint8)
    pixels[6:22, 12:16] = 255
    return pixels


def gif_frames(path: str) -> int:
    with Image.open(path) as gif:
        return gif.n_frames


def test_sampling_records_every_step_and_draws_what_generate_draws(tiny_ddpm_folder):
    pipeline = load_pipeline(tiny_ddpm_folder)
    images, frames = demo.run_pipeline(pipeline, "ddim", 6, seed=3, num_images=2)
    assert len(frames) == 6 and all(frame.shape == (2, 1, 28, 28) for frame in frames)
    torch.testing.assert_close(images, generate(pipeline, 2, "ddim", 6, seed=3), rtol=0, atol=1e-7)
    torch.testing.assert_close(frames[-1], images, rtol=0, atol=1e-7)

    gallery, gif, report = demo.sample_images(pipeline, "dpmsolver", 7, 3, 0)
    assert len(gallery) == 3 and gif_frames(gif) == 7
    assert report.startswith("3 image(s), DPM-Solver++, 7 steps")
    with pytest.raises(ValueError, match="sampler 'naive' is not available for the gaussian process"):
        demo.sample_images(pipeline, "naive", 7, 3, 0)


def test_the_page_offers_the_process_samplers_with_their_labels():
    process = forward_process(AveragingScheduler(group_size=4))
    assert demo.sampler_choices(process) == [
        ("Improved (Algorithm 2)", "improved"),
        ("Naive (Algorithm 1)", "naive"),
        ("Direct (one restoration step)", "direct"),
    ]


@pytest.mark.parametrize(
    "make_scheduler",
    [lambda: ImpulseNoiseScheduler(num_train_timesteps=10), lambda: AveragingScheduler(group_size=4)],
    ids=["impulse", "rows"],
)
def test_restoring_a_digit_runs_from_the_chosen_t_and_shows_the_real_start(make_scheduler):
    pipeline = tiny_cold(make_scheduler())
    inputs: list[torch.Tensor] = []
    pipeline.unet.register_forward_pre_hook(lambda module, args: inputs.append(args[0].clone()))
    gallery, gif, report = demo.restore_digit(pipeline, "improved", 4, a_digit(), 3, 5)
    grid = make_scheduler()
    grid.set_timesteps(4)
    calls = 1 + int((grid.timesteps < 3).sum())  # from t = 3, then the 4-step grid below it
    assert len(inputs) == calls and gif_frames(gif) == 1 + calls
    assert report.startswith(f"restored from t = 3 in {calls} network call(s), Improved (Algorithm 2)")
    (_, original), (degraded, degraded_caption), (_, restored_caption) = gallery
    assert (original, degraded_caption, restored_caption) == (
        "original",
        "degraded, t = 3",
        "restored (Improved (Algorithm 2))",
    )
    # The degraded digit shown (and previewed for this seed) is the start the pipeline restored.
    assert degraded == demo.to_pil(to_unit_range(inputs[0]))
    assert degraded == demo.degrade_digit(pipeline, a_digit(), 3, 5)
    assert degraded != demo.degrade_digit(pipeline, a_digit(), 4, 5)


def test_restoring_needs_a_process_that_restores_and_a_valid_t(tiny_ddpm_folder):
    with pytest.raises(ValueError, match="restores images; gaussian does not"):
        demo.restore_digit(load_pipeline(tiny_ddpm_folder), "ddpm", 4, a_digit(), 3, 0)
    cold = tiny_cold(AveragingScheduler(group_size=4))
    with pytest.raises(ValueError, match="Degradation t must be between 1 and 7, got 0"):
        demo.restore_digit(cold, "improved", 4, a_digit(), 0, 0)
    with pytest.raises(ValueError, match="upload a digit"):
        demo.restore_digit(cold, "improved", 4, None, 3, 0)
