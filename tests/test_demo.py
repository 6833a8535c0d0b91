"""The demo's handlers without a browser: they ask the forward process and record steps with the callback."""

from __future__ import annotations

import itertools
import shutil
import threading
from collections import Counter

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from mnist_diffusion.app import demo
from mnist_diffusion.models import CourseworkCNN
from mnist_diffusion.pipelines import ColdDiffusionPipeline, load_pipeline
from mnist_diffusion.pipelines.sampling import generate
from mnist_diffusion.schedulers import AveragingScheduler, ImpulseNoiseScheduler, forward_process
from mnist_diffusion.training.data import to_unit_range
from tests.conftest import CallRecorder, run_python, tiny_pipeline

# A safety net against a hang, not a speed requirement.
SAFETY_TIMEOUT_S = 600


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


class CallCounter:
    """A forward pre-hook counting network calls by batch size; it can hold a run at one of its calls."""

    def __init__(self, hold_batch: int | None = None, hold_at: int = 0) -> None:
        self.calls: Counter = Counter()
        self.hold_batch, self.hold_at = hold_batch, hold_at
        self.held, self.release = threading.Event(), threading.Event()

    def __call__(self, module, args) -> None:
        batch = args[0].shape[0]
        self.calls[batch] += 1
        if batch == self.hold_batch and self.calls[batch] == self.hold_at:
            self.held.set()
            assert self.release.wait(SAFETY_TIMEOUT_S), "the test never released the held run"


def test_a_request_over_the_budget_is_refused_before_any_network_call(tiny_ddpm_folder):
    pipeline = load_pipeline(tiny_ddpm_folder)
    counter = CallCounter()
    pipeline.unet.register_forward_pre_hook(counter)
    limits = demo.Limits(max_image_steps=12)
    with pytest.raises(ValueError) as refused:
        demo.sample_images(pipeline, "ddim", 5, 3, 0, limits=limits)
    assert str(refused.value) == (
        "3 image(s) x 5 network call(s) = 15 is over this demo's limit of 12 images x network calls per "
        "request; ask for fewer images or steps"
    )
    gallery, _, _ = demo.sample_images(pipeline, "ddim", 4, 3, 0, limits=limits)  # 12: at the limit
    assert len(gallery) == 3 and counter.calls == {3: 4}

    cold = tiny_cold(AveragingScheduler(group_size=4))
    cold.unet.register_forward_pre_hook(counter)
    # A restore is one image and at most steps + 1 calls (one from t, then the grid below it).
    with pytest.raises(
        ValueError, match=r"^1 image\(s\) x 5 network call\(s\) = 5 is over this demo's limit of 4 "
    ):
        demo.restore_digit(cold, "improved", 4, a_digit(), 3, 0, limits=demo.Limits(max_image_steps=4))
    assert counter.calls == {3: 4}
    with pytest.raises(ValueError, match="must be positive"):
        demo.Limits(max_queue=0)


def test_a_run_past_its_time_limit_stops_and_says_so(tiny_ddpm_folder):
    pipeline = load_pipeline(tiny_ddpm_folder)
    counter = CallCounter()
    pipeline.unet.register_forward_pre_hook(counter)
    clock = itertools.count(0.0, 2.0)  # two seconds pass at every look at the clock
    control = demo.RunControl(time_limit_s=5, clock=lambda: next(clock))
    with pytest.raises(ValueError) as stopped:
        demo.sample_images(pipeline, "ddim", 10, 2, 0, control=control)
    assert str(stopped.value) == (
        "the run was stopped at this demo's time limit of 5 s per request, after 3 of 10 network calls; ask "
        "for fewer images or steps"
    )
    assert counter.calls == {2: 3} and control.stopped == "time limit"


def test_closing_a_streamed_run_stops_it_within_a_few_network_calls(tiny_ddpm_folder):
    pipeline = load_pipeline(tiny_ddpm_folder)
    counter = CallCounter(hold_batch=2, hold_at=3)
    pipeline.unet.register_forward_pre_hook(counter)
    limits = demo.Limits(time_limit_s=SAFETY_TIMEOUT_S)
    # Gradio's handler: gr.skip() after each network call, then the result; Gradio closes it when the client
    # has gone, which it notices between two yields.
    run = demo.stream_run(demo.sample_images, pipeline, "ddpm", 20, 2, 0, limits=limits)
    assert next(run) == next(run) == gr.skip()  # the run may now go up to STEPS_AHEAD calls past the 2nd
    assert counter.held.wait(SAFETY_TIMEOUT_S)
    run.close()
    counter.release.set()
    # The next run starts once the closed one has stopped, and runs to the end.
    *updates, (gallery, gif, report) = demo.stream_run(
        demo.sample_images, pipeline, "ddim", 4, 1, 0, limits=limits
    )
    assert updates == [gr.skip()] * len(updates) and 1 <= len(updates) <= 4
    assert len(gallery) == 1 and report.startswith("1 image(s), DDIM, 4 steps")
    assert 3 <= counter.calls[2] <= 3 + demo.STEPS_AHEAD and counter.calls[1] == 4

    with pytest.raises(gr.Error, match="Number of images must be between 1 and 64, got 0"):
        list(demo.stream_run(demo.sample_images, pipeline, "ddim", 4, 0, 0, limits=limits))


def test_only_offered_models_are_served_and_errors_name_no_server_path(tiny_ddpm_folder, tmp_path):
    store = demo.ModelStore()
    store.offer([str(tiny_ddpm_folder), str(tmp_path / "missing"), str(tmp_path)])
    assert forward_process(store.get(str(tiny_ddpm_folder))).name == "gaussian"
    for name in (str(tiny_ddpm_folder.parent), "/etc", "someone/model", "../shared/data/mnist"):
        with pytest.raises(ValueError) as refused:
            store.get(name)
        assert str(refused.value) == "unknown model; choose one of the offered models"
    # An offered folder that is missing and one that is not a pipeline get the same answer.
    for name in (str(tmp_path / "missing"), str(tmp_path)):
        with pytest.raises(ValueError) as failed:
            store.get(name)
        assert str(failed.value) == (
            f"could not load model {name!r}: it is not a saved pipeline that this demo can read"
        )
    assert store.loaded() == [str(tiny_ddpm_folder)]


def test_any_model_may_be_typed_when_allowed_and_few_stay_loaded(tiny_ddpm_folder, tmp_path):
    copies = []
    for index in range(3):
        copies.append(str(tmp_path / f"copy{index}"))
        shutil.copytree(tiny_ddpm_folder, copies[-1])
    store = demo.ModelStore(allow_any=True, max_extra=2)
    store.offer([copies[0]])
    for name in copies:
        store.get(name)
    store.get(copies[1])
    # The offered one, then the other two, least recently used first.
    assert store.loaded() == [copies[0], copies[2], copies[1]]
    store.get(str(tiny_ddpm_folder))
    assert store.loaded() == [copies[0], copies[1], str(tiny_ddpm_folder)]
    with pytest.raises(ValueError, match="^could not load model '/etc': it is not a saved pipeline"):
        store.get("/etc")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--test_data", "/nonexistent"], "error: dataset folder '/nonexistent' does not exist"),
        (["--max_queue", "0"], "error: max_queue must be positive, got 0"),
    ],
    ids=["test-data", "queue"],
)
def test_the_command_line_refuses_bad_settings_at_start_up(tiny_ddpm_folder, arguments, message):
    result = run_python("scripts/demo.py", "--model", str(tiny_ddpm_folder), "--port", "1", *arguments)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.startswith(message), result.stderr[-3000:]


# ----- class-conditional models: a digit picker and a guidance scale ---------------------------------------


@pytest.mark.parametrize("name", ["gaussian", "blur"])
def test_a_conditional_model_draws_the_picked_digit_guided_as_generate_does(name):
    pipeline = tiny_pipeline(name)
    recorder = CallRecorder(pipeline.unet)
    sampler = forward_process(pipeline).default_sampler
    gallery, gif, report = demo.sample_images(pipeline, sampler, 3, 2, 5, "7", 2.5)
    label = forward_process(pipeline).samplers[sampler].label
    assert len(gallery) == 2 and gif_frames(gif) >= 3
    assert report.startswith(f"2 image(s) of digit 7 (guidance scale 2.5), {label}, 3 steps")
    # Guided: one call per step on the doubled batch, the digit then the no-class label.
    assert recorder.calls and all(call == (4, [7, 7, 10, 10]) for call in recorder.calls)
    images, _ = demo.run_pipeline(pipeline, sampler, 3, 5, 2, class_labels=7, guidance_scale=2.5)
    expected = generate(pipeline, 2, sampler, 3, seed=5, class_labels=[7, 7], guidance_scale=2.5)
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-6)
    assert [demo.to_pil(image[None]) for image in images] == gallery

    # "any": unconditional samples (the no-class label), whatever the scale says.
    recorder.calls.clear()
    _, _, report = demo.sample_images(pipeline, sampler, 3, 2, 5, "any", 4.0)
    assert report.startswith(f"2 image(s), {label}, 3 steps")
    assert recorder.calls and all(call == (2, [10, 10]) for call in recorder.calls)
    # w = 1: the conditional prediction alone, one call of the batch.
    recorder.calls.clear()
    demo.sample_images(pipeline, sampler, 3, 2, 5, 3, 1.0)
    assert recorder.calls and all(call == (2, [3, 3]) for call in recorder.calls)


def test_a_guided_request_counts_twice_against_the_budget():
    pipeline = tiny_pipeline()
    recorder = CallRecorder(pipeline.unet)
    limits = demo.Limits(max_image_steps=12)
    with pytest.raises(ValueError) as refused:
        demo.sample_images(pipeline, "ddim", 4, 2, 0, "3", 2.0, limits=limits)
    assert str(refused.value) == (
        "2 image(s) x 4 network call(s) x 2 (guidance: two predictions per image) = 16 is over this demo's "
        "limit of 12 images x network calls per request; ask for fewer images or steps"
    )
    assert recorder.calls == []
    demo.sample_images(pipeline, "ddim", 3, 2, 0, "3", 2.0, limits=limits)  # 2 x 3 x 2 = 12: at the limit
    demo.sample_images(pipeline, "ddim", 4, 2, 0, "3", 1.0, limits=limits)  # w = 1: not guided, 8
    demo.sample_images(pipeline, "ddim", 4, 2, 0, "3", 0.0, limits=limits)  # w = 0: unconditional, 8
    assert [batch for batch, _ in recorder.calls] == [4] * 3 + [2] * 4 + [2] * 4


@pytest.mark.parametrize(
    ("conditional", "digit", "scale", "message"),
    [
        (True, "12", 1.0, "Digit must be 'any' or one of 0 to 9, got '12'"),
        (True, "seven", 1.0, "Digit must be 'any' or one of 0 to 9, got 'seven'"),
        (True, "3", 11.0, "Guidance scale must be a number between 0 and 10, got 11.0"),
        (True, "3", -1.0, "Guidance scale must be a number between 0 and 10, got -1.0"),
        (True, "3", None, "Guidance scale must be a number between 0 and 10, got None"),
        (False, "3", 1.0, "this model is unconditional: it cannot be asked for a digit; choose 'any'"),
    ],
)
def test_a_bad_digit_or_guidance_scale_is_refused_before_any_network_call(conditional, digit, scale, message):
    pipeline = tiny_pipeline(conditional=conditional)
    recorder = CallRecorder(pipeline.unet)
    with pytest.raises(ValueError) as refused:
        demo.sample_images(pipeline, "ddim", 3, 2, 0, digit, scale)
    assert str(refused.value) == message and recorder.calls == []


def test_the_digit_picker_and_guidance_slider_are_shown_for_conditional_models_only(tmp_path):
    from mnist_diffusion.pipelines import save_pipeline

    assert demo.digit_choices(tiny_pipeline()) == ["any", *map(str, range(10))]
    assert demo.digit_choices(tiny_pipeline(conditional=False)) == []
    for conditional in (True, False):
        folder = tmp_path / f"conditional_{conditional}"
        save_pipeline(tiny_pipeline(conditional=conditional), folder)
        page = demo.build_demo([str(folder)], test_data=None)
        props = {c["props"].get("elem_id"): c["props"] for c in page.config["components"]}
        for elem_id in ("class-digit", "guidance-scale"):
            assert props[elem_id]["visible"] is conditional, elem_id
        assert props["guidance-scale"]["interactive"] is False  # until a digit is picked
        if conditional:
            assert [choice[1] for choice in props["class-digit"]["choices"]] == demo.digit_choices(
                load_pipeline(folder)
            )
        page.close()
