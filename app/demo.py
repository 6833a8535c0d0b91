"""The Gradio demo: sample any saved pipeline of the project, watch its reverse process, restore a digit.

``scripts/demo.py`` is the command-line front end. Like sampling and evaluation, the demo starts from saved
pipeline folders (or Hub ids) loaded with :func:`pipelines.load_pipeline`, and draws samples with
:func:`pipelines.sampling.generate`.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from pipelines import load_pipeline
from training.data import LOCAL_MNIST, load_split, to_model_range, to_unit_range
from pipelines.sampling import (
    check_sampling_args,
    default_sampler,
    default_steps,
    generate,
    image_grid,
    is_gaussian,
    samplers_for,
)

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
SAMPLER_LABELS = {
    "ddpm": "DDPM (ancestral)",
    "ddim": "DDIM",
    "dpmsolver": "DPM-Solver++",
    "improved": "Improved (Algorithm 2)",
    "naive": "Naive (Algorithm 1)",
    "direct": "Direct",
}
# Gradio injects a progress tracker into handlers with this default; it follows the pipelines' tqdm bars.
TRACK_TQDM = gr.Progress(track_tqdm=True)
# Default steps for the fast Gaussian samplers; every other sampler defaults to all T steps.


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
    """One Markdown line about a loaded pipeline: its kind, degradation and ``T``."""
    scheduler = pipeline.scheduler
    kind = "Gaussian DDPM" if is_gaussian(pipeline) else f"cold diffusion, `{type(scheduler).__name__}`"
    return f"**{name}**: {kind}, T = {scheduler.config.num_train_timesteps} training timesteps"


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


@contextmanager
def record_model_inputs(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the sample given to each call of ``model``: the reverse process ``x_T, ..., x_1``.

    The pipelines expose no per-step callback, and a forward pre-hook sees every model input of any of them.
    """
    inputs: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        inputs.append((kwargs["sample"] if "sample" in kwargs else args[0]).detach().cpu())

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield inputs
    finally:
        handle.remove()


def to_pil(images01: torch.Tensor) -> Image.Image:
    """A ``(N, 1, H, W)`` batch in ``[0, 1]`` as one upscaled greyscale grid."""
    grid = image_grid(images01)
    pixels = (grid[0] * 255).round().byte().numpy()
    image = Image.fromarray(pixels, mode="L")
    return image.resize((image.width * DISPLAY_SCALE, image.height * DISPLAY_SCALE), Image.Resampling.NEAREST)


def reverse_process_gif(model_inputs: list[torch.Tensor], final01: torch.Tensor) -> str:
    """Write the reverse process as an animated GIF of image grids; returns its path.

    Args:
        model_inputs: the model-space samples of each step (see :func:`record_model_inputs`).
        final01: the final images in ``[0, 1]``.
    """
    frames = [to_unit_range(sample) for sample in model_inputs] + [final01]
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
    num_train_timesteps = pipeline.scheduler.config.num_train_timesteps
    num_images = check_int("Number of images", num_images, 1, MAX_IMAGES)
    steps = check_int("Steps", steps, 1, num_train_timesteps)
    seed = check_int("Seed", seed, 0, MAX_SEED)
    check_sampling_args(pipeline, sampler, steps)
    start = time.perf_counter()
    with record_model_inputs(pipeline.unet) as inputs:
        images = generate(pipeline, num_images, sampler, steps, seed, show_progress=True)
    elapsed = time.perf_counter() - start
    gif = reverse_process_gif(inputs, images)
    report = f"{num_images} image(s), {SAMPLER_LABELS[sampler]}, {steps} steps: **{elapsed:.2f} s**"
    return [to_pil(image[None]) for image in images], gif, report


def degrade_digit(pipeline: DiffusionPipeline, digit: np.ndarray, timestep: int) -> Image.Image:
    """The digit degraded to ``timestep`` by a cold pipeline's scheduler (fixed seed: a stable slider)."""
    x0 = to_model_range(prepare_digit(digit, pipeline.unet.config.sample_size))
    degraded = pipeline.scheduler.degrade(x0, timestep, generator=torch.Generator().manual_seed(0))
    return to_pil(to_unit_range(degraded))


def restore_digit(
    pipeline: DiffusionPipeline,
    sampler: str,
    steps: float | None,
    digit: np.ndarray | None,
    seed: float | None,
) -> tuple[list[tuple[Image.Image, str]], str, str]:
    """Degrade a digit fully (``t = T``) and run the cold reverse process from it.

    Returns:
        The original, degraded and restored digits with captions, the reverse-process GIF and the time taken.

    Raises:
        ValueError: for a Gaussian pipeline, a missing digit, or bad steps, seed or sampler.
    """
    if is_gaussian(pipeline):
        raise ValueError("restoring a digit needs a cold-diffusion model; this one is Gaussian")
    if digit is None:
        raise ValueError("upload a digit or pick a test digit first")
    num_train_timesteps = pipeline.scheduler.config.num_train_timesteps
    steps = check_int("Steps", steps, 1, num_train_timesteps)
    seed = check_int("Seed", seed, 0, MAX_SEED)
    check_sampling_args(pipeline, sampler, steps)
    x0 = to_model_range(prepare_digit(digit, pipeline.unet.config.sample_size))
    generator = torch.Generator().manual_seed(seed)
    degraded = pipeline.scheduler.degrade(x0, num_train_timesteps, generator=generator)
    start = time.perf_counter()
    with record_model_inputs(pipeline.unet) as inputs:
        output = pipeline(
            batch_size=1,
            num_inference_steps=steps,
            generator=generator,
            start_images=degraded,
            sampling=sampler,
            output_type="pt",
        )
    elapsed = time.perf_counter() - start
    restored = output.images.cpu()
    gallery = [
        (to_pil(to_unit_range(x0)), "original"),
        (to_pil(to_unit_range(degraded)), f"degraded, t = {num_train_timesteps}"),
        (to_pil(restored), f"restored ({SAMPLER_LABELS[sampler]})"),
    ]
    report = f"restored in {steps} steps, {SAMPLER_LABELS[sampler]}: **{elapsed:.2f} s**"
    return gallery, reverse_process_gif(inputs, restored), report


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
    samplers = samplers_for(first) if first else ()
    sampler = default_sampler(first) if first else None
    cold = first is not None and not is_gaussian(first)
    num_train_timesteps = first.scheduler.config.num_train_timesteps if first else 1000
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
                    [(SAMPLER_LABELS[name], name) for name in samplers], value=sampler, label="Sampler"
                )
                steps = gr.Number(
                    default_steps(first, sampler) if first else 25,
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
                process = gr.Image(label="Reverse process", type="filepath", height=360, elem_id="process")
                timing = gr.Markdown(elem_id="timing")
        with gr.Accordion(
            "Cold diffusion: degrade and restore a digit", open=True, visible=cold
        ) as cold_panel:
            with gr.Row():
                digit = gr.Image(
                    label="Digit (upload, or pick below)",
                    type="numpy",
                    image_mode="L",
                    sources=["upload", "clipboard"],
                    height=200,
                )
                with gr.Column():
                    timestep = gr.Slider(
                        0, num_train_timesteps, value=num_train_timesteps // 2, step=1, label="Degradation t"
                    )
                    degraded = gr.Image(label="Degraded at t", interactive=False, height=200)
                restore_button = gr.Button("Restore from t = T")
            picker = gr.Gallery(
                [Image.fromarray(image) for image in test_digits],
                label="Test digits (click one)",
                columns=10,
                height=140,
                allow_preview=False,
                visible=bool(test_digits),
            )

        def select_model(name: str):
            pipeline = _loaded(store, name)
            names = samplers_for(pipeline)
            limit = pipeline.scheduler.config.num_train_timesteps
            sampler = default_sampler(pipeline)
            return (
                describe(name, pipeline),
                gr.Radio(choices=[(SAMPLER_LABELS[n], n) for n in names], value=sampler),
                gr.Number(value=default_steps(pipeline, sampler), info=f"1 to {limit}"),
                gr.Accordion(visible=not is_gaussian(pipeline)),
                gr.Slider(maximum=limit, value=limit // 2),
            )

        def select_sampler(name: str, sampler_name: str | None):
            return default_steps(_loaded(store, name), sampler_name) if sampler_name else gr.Number()

        def run_sampling(name, sampler_name, steps_value, count, seed_value, progress=TRACK_TQDM):
            return _as_page_error(
                sample_images, _loaded(store, name), sampler_name, steps_value, count, seed_value
            )

        def run_restore(name, sampler_name, steps_value, image, seed_value, progress=TRACK_TQDM):
            return _as_page_error(
                restore_digit, _loaded(store, name), sampler_name, steps_value, image, seed_value
            )

        def preview(name, image, t):
            if image is None:
                return None
            return _as_page_error(degrade_digit, _loaded(store, name), image, int(t))

        def pick(event: gr.SelectData):
            return to_pil(torch.from_numpy(test_digits[event.index])[None, None] / 255.0)

        model.change(
            select_model, model, [about, sampler_choice, steps, cold_panel, timestep], show_progress="minimal"
        )
        sampler_choice.input(select_sampler, [model, sampler_choice], steps)
        # One queue for everything that runs the network: the frame recorder hooks the shared model.
        generate_button.click(
            run_sampling,
            [model, sampler_choice, steps, num_images, seed],
            [gallery, process, timing],
            concurrency_id="sampling",
        )
        restore_button.click(
            run_restore,
            [model, sampler_choice, steps, digit, seed],
            [gallery, process, timing],
            concurrency_id="sampling",
        )
        picker.select(pick, None, digit)
        gr.on([digit.change, timestep.release], preview, [model, digit, timestep], degraded)
    return demo


def _loaded(store: ModelStore, name: str) -> DiffusionPipeline:
    return _as_page_error(store.get, name)


def _as_page_error(function, *args):
    """Call ``function``; a ``ValueError`` becomes a ``gr.Error`` shown in the page until dismissed."""
    try:
        return function(*args)
    except ValueError as error:
        raise gr.Error(str(error), duration=None) from error
