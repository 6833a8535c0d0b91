"""The Gradio demo: sample any saved pipeline of the project, watch its reverse process, restore a digit.

``scripts/demo.py`` is the command-line front end. Like sampling and evaluation, the demo starts from saved
pipeline folders (or Hub ids) loaded with :func:`pipelines.load_pipeline`, and asks each pipeline's forward
process (:func:`schedulers.forward_process`) for its samplers, step counts, degradation and whether it
restores images. It samples as :func:`pipelines.sampling.generate` does (the same seed gives the same
images) and records the reverse process with the pipelines' ``callback_on_step_end``.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from pipelines import load_pipeline
from pipelines.sampling import image_grid
from schedulers import ForwardProcess, forward_process
from training.data import LOCAL_MNIST, load_split, to_model_range, to_unit_range

DEFAULT_MODEL = "outputs/quickstart"
TRAIN_COMMAND = "accelerate launch training/train.py --config training/configs/quickstart.yaml"
# The offline MNIST copy beside the project, when there is one; the Hub is only used when asked for, since
# without a network its retries would hold up the start for half a minute.
# No Hub default: an unreachable Hub would stall start-up with retries; uploads always work.
DEFAULT_TEST_DATA = str(LOCAL_MNIST) if LOCAL_MNIST.is_dir() else None
MAX_IMAGES = 64
MAX_SEED = 2**32 - 1
MAX_GIF_FRAMES = 30
# 28x28 digits are upscaled with nearest-neighbour so that the browser shows crisp pixels, not a blur.
DISPLAY_SCALE = 4
# Gradio injects a progress tracker into handlers with this default; it follows the pipelines' tqdm bars.
TRACK_TQDM = gr.Progress(track_tqdm=True)


class ModelStore:
    """Pipelines by name (a saved folder or a Hub id), loaded on first use and then kept in memory."""

    def __init__(self) -> None:
        self._pipelines: dict[str, DiffusionPipeline] = {}
        self._lock = threading.Lock()

    def get(self, name: str | None) -> DiffusionPipeline:
        """The pipeline called ``name``.

        Raises:
            ValueError: if ``name`` is empty or cannot be loaded.
        """
        name = (name or "").strip()
        if not name:
            raise ValueError("choose a model: a saved pipeline folder or a Hub id")
        if name == DEFAULT_MODEL and not Path(name).exists():
            raise ValueError(
                f"there is no pipeline in {DEFAULT_MODEL} yet: train the quickstart model with "
                f"`{TRAIN_COMMAND}` (a few minutes on a CPU), then restart the demo"
            )
        with self._lock:
            if name not in self._pipelines:
                try:
                    self._pipelines[name] = load_pipeline(name)
                except Exception as error:  # missing folders, bad configs and Hub errors all end here
                    raise ValueError(f"could not load model {name!r}: {error}") from error
            return self._pipelines[name]


def describe(name: str, pipeline: DiffusionPipeline) -> str:
    """One Markdown line about a loaded pipeline: its forward process and ``T``."""
    return f"**{name}**: {forward_process(pipeline).describe()}"


def sampler_choices(process: ForwardProcess) -> list[tuple[str, str]]:
    """``(label, name)`` of each sampler of the process, for the sampler radio buttons."""
    return [(sampler.label, name) for name, sampler in process.samplers.items()]


def check_int(label: str, value: float | None, low: int, high: int) -> int:
    """``value`` as an int in ``[low, high]``.

    Raises:
        ValueError: naming ``label`` when ``value`` is missing, not whole, or out of range.
    """
    if value is None or not float(value).is_integer():
        raise ValueError(f"{label} must be a whole number between {low} and {high}, got {value}")
    if not low <= int(value) <= high:
        raise ValueError(f"{label} must be between {low} and {high}, got {int(value)}")
    return int(value)


def to_pil(images01: torch.Tensor) -> Image.Image:
    """A ``(N, 1, H, W)`` batch in ``[0, 1]`` as one upscaled greyscale grid."""
    grid = image_grid(images01)
    pixels = (grid[0] * 255).round().byte().numpy()
    image = Image.fromarray(pixels, mode="L")
    return image.resize((image.width * DISPLAY_SCALE, image.height * DISPLAY_SCALE), Image.Resampling.NEAREST)


class FrameRecorder:
    """A ``callback_on_step_end`` that keeps the sample after every step, in ``[0, 1]`` on the CPU."""

    tensor_inputs = ["latents"]

    def __init__(self) -> None:
        self.frames: list[torch.Tensor] = []

    def __call__(self, pipeline, step_index: int, timestep, callback_kwargs: dict) -> dict:
        self.frames.append(to_unit_range(callback_kwargs["latents"].detach().float().cpu()))
        return callback_kwargs


def run_pipeline(
    pipeline: DiffusionPipeline, sampler: str, steps: int, seed: int, num_images: int, **call_kwargs
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run ``pipeline`` with ``sampler`` as :func:`~pipelines.sampling.generate` does, recording each step.

    Args:
        pipeline: a trained pipeline of the project.
        sampler: a sampler of its forward process.
        steps: network calls of a run from ``T``.
        seed: seed of the generator on the pipeline's device (the same images as ``generate``).
        num_images: how many images (one batch).
        **call_kwargs: further pipeline arguments (``start_images``, ``start_timestep``).

    Returns:
        The images ``(N, 1, H, W)`` in ``[0, 1]`` and the sample after each step, in ``[0, 1]``.
    """
    sampling = forward_process(pipeline).with_sampler(pipeline, sampler)
    sampling.set_progress_bar_config(disable=False)
    recorder = FrameRecorder()
    output = sampling(
        batch_size=num_images,
        generator=torch.Generator(device=pipeline.device).manual_seed(seed),
        num_inference_steps=steps,
        output_type="pt",
        callback_on_step_end=recorder,
        callback_on_step_end_tensor_inputs=FrameRecorder.tensor_inputs,
        **call_kwargs,
    )
    return output.images.float().cpu(), recorder.frames


def reverse_process_gif(frames: list[torch.Tensor]) -> str:
    """Write the reverse process as an animated GIF of image grids; returns its path.

    Args:
        frames: batches ``(N, 1, H, W)`` in ``[0, 1]``, from the start (or the first step) to the result.
    """
    picked = sorted(
        set(np.linspace(0, len(frames) - 1, min(len(frames), MAX_GIF_FRAMES)).round().astype(int))
    )
    images = [to_pil(frames[index]) for index in picked]
    durations = [120] * (len(images) - 1) + [2000]  # hold the result before looping
    with tempfile.NamedTemporaryFile(suffix=".gif", delete=False) as handle:
        images[0].save(handle, save_all=True, append_images=images[1:], duration=durations, loop=0)
    return handle.name


def prepare_digit(image: np.ndarray, size: int) -> torch.Tensor:
    """A picture as a ``uint8`` MNIST-style digit ``(1, size, size)``: grey, resized, light on dark."""
    # Box filtering averages each pixel's area: it undoes the demo's own upscaling exactly.
    digit = Image.fromarray(image).convert("L").resize((size, size), Image.Resampling.BOX)
    pixels = np.array(digit)
    if pixels.mean() > 127:  # a dark digit on a light background, as people draw them
        pixels = 255 - pixels
    return torch.from_numpy(pixels).unsqueeze(0)


def load_test_digits(dataset: str | None) -> list[np.ndarray]:
    """The first test image of each class, to pick from; empty when the dataset cannot be loaded."""
    if not dataset:
        return []
    try:
        split = load_split(dataset, "test")
    except ValueError:
        return []
    return [
        split.images[int((split.labels == label).nonzero()[0, 0])].numpy() for label in split.labels.unique()
    ]


def sample_images(
    pipeline: DiffusionPipeline,
    sampler: str,
    steps: float | None,
    num_images: float | None,
    seed: float | None,
) -> tuple[list[Image.Image], str, str]:
    """Draw samples; returns the gallery images, the reverse-process GIF and the time taken.

    Raises:
        ValueError: on a bad number of images, steps, seed or sampler.
    """
    process = forward_process(pipeline)
    num_images = check_int("Number of images", num_images, 1, MAX_IMAGES)
    steps = check_int("Steps", steps, 1, process.num_train_timesteps)
    seed = check_int("Seed", seed, 0, MAX_SEED)
    process.check_sampler(sampler, steps)
    start = time.perf_counter()
    images, frames = run_pipeline(pipeline, sampler, steps, seed, num_images)
    elapsed = time.perf_counter() - start
    label = process.samplers[sampler].label
    report = f"{num_images} image(s), {label}, {steps} steps: **{elapsed:.2f} s**"
    return [to_pil(image[None]) for image in images], reverse_process_gif(frames), report


def degraded_start(pipeline: DiffusionPipeline, x0: torch.Tensor, timestep: int, seed: int) -> torch.Tensor:
    """``D(x0, t)`` drawn as a restoring run with ``seed`` draws its start (the preview shows that start)."""
    generator = torch.Generator(device=pipeline.device).manual_seed(seed)
    return forward_process(pipeline).degrade(x0.to(pipeline.device), timestep, generator).cpu()


def degrade_digit(
    pipeline: DiffusionPipeline, digit: np.ndarray, timestep: int, seed: float | None
) -> Image.Image:
    """The digit degraded to ``timestep`` by the pipeline's forward process, with the restore's draw.

    Raises:
        ValueError: on a bad timestep or seed.
    """
    first, last = forward_process(pipeline).timestep_range
    timestep = check_int("Degradation t", timestep, first, last)
    seed = check_int("Seed", seed, 0, MAX_SEED)
    x0 = to_model_range(prepare_digit(digit, pipeline.unet.config.sample_size))
    return to_pil(to_unit_range(degraded_start(pipeline, x0, timestep, seed)))


def restore_digit(
    pipeline: DiffusionPipeline,
    sampler: str,
    steps: float | None,
    digit: np.ndarray | None,
    timestep: float | None,
    seed: float | None,
) -> tuple[list[tuple[Image.Image, str]], str, str]:
    """Degrade a digit to ``timestep`` and restore it through the pipeline's start timestep.

    The run steps from ``timestep``, then from each timestep of the ``steps``-step grid below it.

    Returns:
        The original, degraded and restored digits with captions, the reverse-process GIF and the time taken.

    Raises:
        ValueError: for a process that does not restore images, a missing digit, or a bad timestep, steps,
            seed or sampler.
    """
    process = forward_process(pipeline)
    if not process.restores:
        raise ValueError(
            f"restoring a digit needs a model whose process restores images; {process.name} does not"
        )
    if digit is None:
        raise ValueError("upload a digit or pick a test digit first")
    first, last = process.timestep_range
    timestep = check_int("Degradation t", timestep, first + 1, last)
    steps = check_int("Steps", steps, 1, process.num_train_timesteps)
    seed = check_int("Seed", seed, 0, MAX_SEED)
    process.check_sampler(sampler, steps)
    clean = prepare_digit(digit, pipeline.unet.config.sample_size)
    x0 = to_model_range(clean)
    degraded = to_unit_range(degraded_start(pipeline, x0, timestep, seed))
    start = time.perf_counter()
    restored, frames = run_pipeline(
        pipeline, sampler, steps, seed, 1, start_images=to_unit_range(x0), start_timestep=timestep
    )
    elapsed = time.perf_counter() - start
    label = process.samplers[sampler].label
    gallery = [
        (to_pil(to_unit_range(x0)), "original"),
        (to_pil(degraded), f"degraded, t = {timestep}"),
        (to_pil(restored), f"restored ({label})"),
    ]
    calls = len(frames)
    report = f"restored from t = {timestep} in {calls} network call(s), {label}: **{elapsed:.2f} s**"
    return gallery, reverse_process_gif([degraded, *frames]), report


def build_demo(
    models: list[str], test_data: str | None = DEFAULT_TEST_DATA, store: ModelStore | None = None
) -> gr.Blocks:
    """Build the demo page.

    Args:
        models: pipelines to offer (saved folders or Hub ids); the first is selected. Others can be typed in.
        test_data: dataset (Hub id or local folder) whose test digits can be picked for restoration.
        store: where pipelines are loaded and kept; a new one by default.
    """
    store = store or ModelStore()
    try:
        first = store.get(models[0])
        notice = ""
    except ValueError as error:
        first = None
        notice = f"⚠️ {error}. You can also type a saved pipeline folder or a Hub id in **Model**."
    process = forward_process(first) if first else None
    sampler = process.default_sampler if process else None
    restores = process is not None and process.restores
    num_train_timesteps = process.num_train_timesteps if process else 1000
    first_t, last_t = process.timestep_range if process else (0, num_train_timesteps)
    test_digits = load_test_digits(test_data)

    with gr.Blocks(title="MNIST diffusion demo") as demo:
        gr.Markdown(
            "# MNIST diffusion\nGenerate digits with a Gaussian DDPM or a cold-diffusion model, and watch "
            "the reverse process."
        )
        gr.Markdown(notice, visible=bool(notice), elem_id="notice")
        with gr.Row():
            with gr.Column(scale=1):
                model = gr.Dropdown(
                    models,
                    value=models[0],
                    label="Model",
                    info="A saved pipeline folder or a Hub id; type one to add it.",
                    allow_custom_value=True,
                    elem_id="model",
                )
                about = gr.Markdown(describe(models[0], first) if first else "")
                sampler_choice = gr.Radio(
                    sampler_choices(process) if process else [], value=sampler, label="Sampler"
                )
                steps = gr.Number(
                    process.default_steps(sampler) if process else 25,
                    label="Steps",
                    info=f"1 to {num_train_timesteps}",
                    precision=0,
                    elem_id="steps",
                )
                num_images = gr.Number(
                    16, label="Number of images", info=f"1 to {MAX_IMAGES}", precision=0, elem_id="num-images"
                )
                seed = gr.Number(0, label="Seed", precision=0, elem_id="seed")
                generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                gallery = gr.Gallery(
                    label="Samples", columns=6, height="auto", object_fit="contain", elem_id="samples"
                )
                animation = gr.Image(label="Reverse process", type="filepath", height=360, elem_id="process")
                timing = gr.Markdown(elem_id="timing")
        with gr.Accordion("Degrade and restore a digit", open=True, visible=restores) as restore_panel:
            with gr.Row():
                digit = gr.Image(
                    label="Digit (upload, or pick below)",
                    type="numpy",
                    image_mode="L",
                    sources=["upload", "clipboard"],
                    height=200,
                    elem_id="digit",
                )
                with gr.Column():
                    timestep = gr.Slider(
                        first_t,
                        last_t,
                        value=(first_t + last_t + 1) // 2,
                        step=1,
                        label="Degradation t",
                        elem_id="degradation-t",
                    )
                    degraded = gr.Image(
                        label="Degraded at t", interactive=False, height=200, elem_id="degraded"
                    )
                restore_button = gr.Button("Restore from t", elem_id="restore")
            picker = gr.Gallery(
                [Image.fromarray(image) for image in test_digits],
                label="Test digits (click one)",
                columns=10,
                height=140,
                allow_preview=False,
                visible=bool(test_digits),
                elem_id="test-digits",
            )

        def select_model(name: str):
            pipeline = _loaded(store, name)
            process = forward_process(pipeline)
            low, high = process.timestep_range
            return (
                describe(name, pipeline),
                gr.Radio(choices=sampler_choices(process), value=process.default_sampler),
                gr.Number(value=process.default_steps(), info=f"1 to {process.num_train_timesteps}"),
                gr.Accordion(visible=process.restores),
                gr.Slider(minimum=low, maximum=high, value=(low + high + 1) // 2),
            )

        def select_sampler(name: str, sampler_name: str | None):
            if not sampler_name:
                return gr.Number()
            return forward_process(_loaded(store, name)).default_steps(sampler_name)

        def run_sampling(name, sampler_name, steps_value, count, seed_value, progress=TRACK_TQDM):
            return _as_page_error(
                sample_images, _loaded(store, name), sampler_name, steps_value, count, seed_value
            )

        def run_restore(name, sampler_name, steps_value, image, t, seed_value, progress=TRACK_TQDM):
            return _as_page_error(
                restore_digit, _loaded(store, name), sampler_name, steps_value, image, t, seed_value
            )

        def preview(name, image, t, seed_value):
            if image is None:
                return None
            return _as_page_error(degrade_digit, _loaded(store, name), image, t, seed_value)

        def pick(event: gr.SelectData):
            return to_pil(torch.from_numpy(test_digits[event.index])[None, None] / 255.0)

        model.change(
            select_model,
            model,
            [about, sampler_choice, steps, restore_panel, timestep],
            show_progress="minimal",
        )
        sampler_choice.input(select_sampler, [model, sampler_choice], steps)
        # One queue for everything that runs the network: runs share the loaded networks and the CPU.
        generate_button.click(
            run_sampling,
            [model, sampler_choice, steps, num_images, seed],
            [gallery, animation, timing],
            concurrency_id="sampling",
        )
        restore_button.click(
            run_restore,
            [model, sampler_choice, steps, digit, timestep, seed],
            [gallery, animation, timing],
            concurrency_id="sampling",
        )
        picker.select(pick, None, digit)
        gr.on([digit.change, timestep.release, seed.blur], preview, [model, digit, timestep, seed], degraded)
    return demo


def _loaded(store: ModelStore, name: str) -> DiffusionPipeline:
    return _as_page_error(store.get, name)


def _as_page_error(function, *args):
    """Call ``function``; a ``ValueError`` becomes a ``gr.Error`` shown in the page until dismissed."""
    try:
        return function(*args)
    except ValueError as error:
        raise gr.Error(str(error), duration=None) from error
