"""The Gradio demo: sample the project's saved pipelines, watch their reverse process, restore a digit.

``scripts/demo.py`` is the command-line front end. Like sampling and evaluation, the demo starts from saved
pipeline folders (or Hub ids) loaded with :func:`mnist_diffusion.pipelines.load_pipeline`, and asks each
pipeline's forward process (:func:`mnist_diffusion.schedulers.forward_process`) for its samplers, step counts,
degradation and whether it restores images. It samples as :func:`mnist_diffusion.pipelines.sampling.generate`
does (the same seed gives the same images) and records the reverse process with the pipelines'
``callback_on_step_end``.

A class-conditional model (``--class_conditional``) also offers a digit to draw (``any``: unconditional
samples) and the classifier-free guidance scale; these controls are hidden for unconditional models.

One request cannot hold the demo: the models are those offered at start-up (unless ``allow_any_model``), each
request has a budget of images x network calls and a time limit (:class:`Limits`), the queue is bounded, and
a run whose client has gone stops within a few network calls (:func:`stream_run`). A guided request (a digit
and a scale other than 0 and 1) costs twice: each of its network calls sees the batch doubled.
"""

from __future__ import annotations

import contextvars
import logging
import math
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from mnist_diffusion.pipelines import is_class_conditional, load_pipeline
from mnist_diffusion.pipelines.guidance import num_classes
from mnist_diffusion.pipelines.sampling import image_generators, image_grid
from mnist_diffusion.schedulers import ForwardProcess, forward_process
from mnist_diffusion.training.data import LOCAL_MNIST, load_split, to_model_range, to_unit_range

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "outputs/quickstart"
TRAIN_COMMAND = "accelerate launch training/train.py --config training/configs/quickstart.yaml"
# The offline MNIST copy beside the project, when there is one; the Hub is only used when asked for, since
# without a network its retries would hold up the start for half a minute.
DEFAULT_TEST_DATA = str(LOCAL_MNIST) if LOCAL_MNIST.is_dir() else None
MAX_IMAGES = 64
MAX_SEED = 2**32 - 1
MAX_GIF_FRAMES = 30
# 28x28 digits are upscaled with nearest-neighbour so that the browser shows crisp pixels, not a blur.
DISPLAY_SCALE = 4
# Gradio injects a progress tracker into handlers with this default; it follows the pipelines' tqdm bars.
TRACK_TQDM = gr.Progress(track_tqdm=True)

# ----- limits per request -------------------------------------------------------------------------------
# Measured on this project's 2-core AMD EPYC (torch with 2 threads, DDPM sampling of untrained weights, best
# of 3 runs, load average below 1), one network call on a batch of N images costs about c0 + c1 * N:
#   tiny UNet preset (with attention; the quickstart's has none and costs a little less):
#                                              c0 ~ 9 ms,  c1 ~ 2.1 ms per image
#       (12 ms for 1 image, 2.7 ms per image at 16, 2.2 ms per image at 64)
#   coursework CNN (16 32 32 16):              c0 ~ 1.2 ms, c1 ~ 0.8 ms per image
#       (2.0 ms for 1 image, 0.85 ms per image at 16, 0.77 ms per image at 64)
# With at most 2048 images x calls and at most T = 1000 calls, the dearest request the tiny UNet can be
# asked for is 2 images x 1000 DDPM steps, about 13 s (64 images x 32 steps: about 5 s); the CNN's is
# about 3 s: a margin of 2x to the time limit below, and of 4x to a minute. The machine shared with other
# work ran 3 to 4x slower (a load test saw 64 images x 1000 steps take 10 minutes); there, and for larger
# networks (the `base` UNet costs about 80 ms per image-step), the time limit stops a run instead: every
# run checks it after each network call.
MAX_IMAGE_STEPS = 2048
TIME_LIMIT_S = 30.0
# Requests waiting for the single worker; with the limits above the last one waits a few minutes at most.
MAX_QUEUE = 8
# Models typed in the page with `allow_any_model`, kept besides the offered ones (least recently used go).
MAX_EXTRA_MODELS = 3
# A run goes at most this many network calls past the last step the page was told about, so that a run
# whose client has gone stops within a few calls (Gradio only notices a departed client between updates).
STEPS_AHEAD = 2
# Reverse-process GIFs kept on disk; Gradio copies each into its own cache before the next run starts.
MAX_GIF_FILES = 16

UNKNOWN_MODEL = "unknown model; choose one of the offered models"
# The digit picker of class-conditional models: "any" samples unconditionally, a digit asks for it.
ANY_DIGIT = "any"
# The guidance-scale slider: its range and default (1: the model as trained, without guidance's extra cost).
MAX_GUIDANCE_SCALE = 10.0
DEFAULT_GUIDANCE_SCALE = 1.0


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how many may wait.

    Args:
        max_image_steps: the budget of a request: images x network calls (a restore is one image).
        time_limit_s: a run is stopped after the first network call that ends past this many seconds.
        max_queue: requests that may wait for the worker; further ones are refused while it is full.

    Raises:
        ValueError: if a limit is not positive.
    """

    max_image_steps: int = MAX_IMAGE_STEPS
    time_limit_s: float = TIME_LIMIT_S
    max_queue: int = MAX_QUEUE

    def __post_init__(self) -> None:
        for name in ("max_image_steps", "time_limit_s", "max_queue"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def check_budget(self, num_images: int, calls: int, guided: bool = False) -> None:
        """Refuse a request of ``num_images`` x ``calls`` network calls over :attr:`max_image_steps`.

        Args:
            num_images: the images of the request.
            calls: the network calls of its run.
            guided: whether it is guided (classifier-free guidance), which doubles each call's batch: it
                counts twice.

        Raises:
            ValueError: naming the request and the limit.
        """
        cost = num_images * calls * (2 if guided else 1)
        if cost > self.max_image_steps:
            twice = " x 2 (guidance: two predictions per image)" if guided else ""
            raise ValueError(
                f"{num_images} image(s) x {calls} network call(s){twice} = {cost} is over this demo's "
                f"limit of {self.max_image_steps} images x network calls per request; ask for fewer images "
                "or steps"
            )


class ModelStore:
    """Pipelines by name, loaded on first use; only the offered ones, unless any model is allowed.

    Errors never say why a model could not be loaded (that a folder exists on the server, say): the reason
    goes to the server's log.

    Args:
        allow_any: also load names that were not offered (any saved folder on the server or Hub id), keeping
            the ``max_extra`` most recently used of them.
        max_extra: how many such models stay loaded.
    """

    def __init__(self, allow_any: bool = False, max_extra: int = MAX_EXTRA_MODELS) -> None:
        self.allow_any = allow_any
        self.max_extra = max_extra
        self._offered: dict[str, DiffusionPipeline | None] = {}
        self._extra: OrderedDict[str, DiffusionPipeline] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def offered(self) -> list[str]:
        """The offered models, in the order they were offered."""
        return list(self._offered)

    def offer(self, names: Sequence[str]) -> None:
        """Add ``names`` to the offered models (loaded on first use, then kept)."""
        with self._lock:
            for name in names:
                self._offered.setdefault(name.strip(), None)

    def loaded(self) -> list[str]:
        """The models now in memory: the offered ones, then the others, least recently used first."""
        with self._lock:
            offered = [name for name, pipeline in self._offered.items() if pipeline is not None]
            return offered + list(self._extra)

    def get(self, name: str | None) -> DiffusionPipeline:
        """The pipeline called ``name``.

        Raises:
            ValueError: if ``name`` is empty, not offered (unless any model is allowed), or cannot be loaded.
        """
        name = (name or "").strip()
        if not name:
            raise ValueError("choose a model")
        with self._lock:
            if name in self._offered:
                if self._offered[name] is None:
                    self._offered[name] = self._load(name, offered=True)
                return self._offered[name]
            if not self.allow_any:
                raise ValueError(UNKNOWN_MODEL)
            if name not in self._extra:
                self._extra[name] = self._load(name, offered=False)
                while len(self._extra) > self.max_extra:
                    self._extra.popitem(last=False)
            self._extra.move_to_end(name)
            return self._extra[name]

    @staticmethod
    def _load(name: str, offered: bool) -> DiffusionPipeline:
        if offered and name == DEFAULT_MODEL and not Path(name).exists():
            raise ValueError(
                f"there is no pipeline in {DEFAULT_MODEL} yet: train the quickstart model with "
                f"`{TRAIN_COMMAND}` (a few minutes on a CPU), then restart the demo"
            )
        try:
            return load_pipeline(name)
        except Exception as error:  # missing folders, bad configs and Hub errors all end here
            logger.warning("could not load model %r: %s", name, error)
            raise ValueError(
                f"could not load model {name!r}: it is not a saved pipeline that this demo can read"
            ) from error


def describe(name: str, pipeline: DiffusionPipeline) -> str:
    """One Markdown line about a loaded pipeline: its forward process and ``T``."""
    return f"**{name}**: {forward_process(pipeline).describe()}"


def sampler_choices(process: ForwardProcess) -> list[tuple[str, str]]:
    """``(label, name)`` of each sampler of the process, for the sampler radio buttons."""
    return [(sampler.label, name) for name, sampler in process.samplers.items()]


def digit_choices(pipeline: DiffusionPipeline | None) -> list[str]:
    """The digit picker's choices: ``any`` and each class of a class-conditional pipeline (none otherwise)."""
    classes = num_classes(pipeline) if pipeline is not None else None
    return [ANY_DIGIT, *map(str, range(classes))] if classes else []


def check_digit(pipeline: DiffusionPipeline, digit: str | int | None) -> int | None:
    """The class asked for: ``None`` for ``any`` (or nothing), else the digit as an int.

    Raises:
        ValueError: for a digit with an unconditional model, or one that is not a class of the model.
    """
    if not asks_for_digit(digit):
        return None
    classes = num_classes(pipeline)
    if classes is None:
        raise ValueError(f"this model is unconditional: it cannot be asked for a digit; choose {ANY_DIGIT!r}")
    text = str(digit).strip()
    if not text.isdigit() or int(text) >= classes:
        raise ValueError(f"Digit must be {ANY_DIGIT!r} or one of 0 to {classes - 1}, got {digit!r}")
    return int(text)


def check_guidance(value: float | None) -> float:
    """``value`` as a guidance scale in ``[0, MAX_GUIDANCE_SCALE]``.

    Raises:
        ValueError: when it is missing, not a number or out of range.
    """
    try:
        scale = float(value)
    except (TypeError, ValueError):
        scale = math.nan
    if not 0 <= scale <= MAX_GUIDANCE_SCALE:
        raise ValueError(f"Guidance scale must be a number between 0 and {MAX_GUIDANCE_SCALE:g}, got {value}")
    return scale


def asks_for_digit(digit: str | None) -> bool:
    """Whether the digit picker asks for a digit (not ``any``)."""
    return digit is not None and str(digit).strip().lower() not in ("", ANY_DIGIT)


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


class RunCancelled(Exception):
    """A run was stopped because nobody waits for it any more."""


class RunControl:
    """The ``callback_on_step_end`` of the demo's runs: records each step and stops the run when it must.

    It keeps the sample after every step (in ``[0, 1]`` on the CPU) and counts the network calls. A run is
    stopped, through the interrupt flag that the pipelines check before every step, after :meth:`cancel` or
    once ``time_limit_s`` have passed since :meth:`start`.

    Args:
        time_limit_s: the run's time limit; ``None`` for none.
        on_step: called with the number of network calls so far after each one (it may wait).
        clock: the clock of the time limit, in seconds.
    """

    tensor_inputs = ["latents"]

    def __init__(
        self,
        time_limit_s: float | None = None,
        on_step: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.time_limit_s = time_limit_s
        self.on_step = on_step
        self.frames: list[torch.Tensor] = []
        self.calls = 0
        self.stopped: str | None = None  # "cancelled" or "time limit"
        self._cancelled = threading.Event()
        self._clock = clock
        self._start = clock()

    def start(self) -> None:
        """Start the clock of the time limit (the run starts now)."""
        self._start = self._clock()

    def cancel(self) -> None:
        """Stop the run after its current network call (and before it starts, if it has not)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancelled.is_set()

    def __call__(self, pipeline, step_index: int, timestep, callback_kwargs: dict) -> dict:
        self.frames.append(to_unit_range(callback_kwargs["latents"].detach().float().cpu()))
        self.calls += 1
        if self.on_step is not None:
            self.on_step(self.calls)
        if self.cancelled:
            self.stopped = "cancelled"
        elif self.time_limit_s is not None and self._clock() - self._start >= self.time_limit_s:
            self.stopped = "time limit"
        if self.stopped:
            pipeline._interrupt = True  # the Diffusers convention: the remaining steps are skipped
        return callback_kwargs


def run_pipeline(
    pipeline: DiffusionPipeline,
    sampler: str,
    steps: int,
    seed: int,
    num_images: int,
    control: RunControl | None = None,
    **call_kwargs,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run ``pipeline`` with ``sampler`` as :func:`~mnist_diffusion.pipelines.sampling.generate` does,
    recording each step.

    Args:
        pipeline: a trained pipeline of the project.
        sampler: a sampler of its forward process.
        steps: network calls of a run from ``T``.
        seed: seeds the images' generators as ``generate`` does (the same images); a restore
            (``start_images``) has one generator, which :func:`degraded_start` also uses.
        num_images: how many images (one batch).
        control: the step callback, which may stop the run (a new one without limits by default).
        **call_kwargs: further pipeline arguments (``start_images``, ``start_timestep``, ``class_labels``,
            ``guidance_scale``).

    Returns:
        The images ``(N, 1, H, W)`` in ``[0, 1]`` and the sample after each step, in ``[0, 1]``.

    Raises:
        ValueError: if the run was stopped at its time limit.
        RunCancelled: if it was cancelled.
    """
    control = control or RunControl()
    if "start_images" in call_kwargs:  # a restore: the draw of its start is the one the preview shows
        generator = torch.Generator(device=pipeline.device).manual_seed(seed)
    else:
        generator = image_generators(seed, num_images, pipeline.device)
    sampling = forward_process(pipeline).with_sampler(pipeline, sampler)
    sampling.set_progress_bar_config(disable=False)
    if control.cancelled:
        raise RunCancelled("the run was cancelled before it started")
    control.start()
    output = sampling(
        batch_size=num_images,
        generator=generator,
        num_inference_steps=steps,
        output_type="pt",
        callback_on_step_end=control,
        callback_on_step_end_tensor_inputs=RunControl.tensor_inputs,
        **call_kwargs,
    )
    if control.stopped == "time limit":
        raise ValueError(
            f"the run was stopped at this demo's time limit of {control.time_limit_s:g} s per request, after "
            f"{control.calls} of {sampling.num_timesteps} network calls; ask for fewer images or steps"
        )
    if control.stopped == "cancelled":
        raise RunCancelled(f"the run was cancelled after {control.calls} network calls")
    return output.images.float().cpu(), control.frames


class _GifFiles:
    """Where the reverse-process GIFs are written: one folder, keeping the newest :data:`MAX_GIF_FILES`."""

    def __init__(self) -> None:
        self._folder: Path | None = None
        self._written: list[Path] = []
        self._lock = threading.Lock()

    def new_path(self) -> Path:
        with self._lock:
            if self._folder is None or not self._folder.is_dir():
                self._folder = Path(tempfile.mkdtemp(prefix="mnist-demo-"))
            while len(self._written) >= MAX_GIF_FILES:
                self._written.pop(0).unlink(missing_ok=True)
            with tempfile.NamedTemporaryFile(suffix=".gif", dir=self._folder, delete=False) as handle:
                path = Path(handle.name)
            self._written.append(path)
            return path


_GIFS = _GifFiles()


def reverse_process_gif(frames: list[torch.Tensor]) -> str:
    """Write the reverse process as an animated GIF of image grids; returns its path.

    Only the newest :data:`MAX_GIF_FILES` files are kept.

    Args:
        frames: batches ``(N, 1, H, W)`` in ``[0, 1]``, from the start (or the first step) to the result.
    """
    picked = sorted(
        set(np.linspace(0, len(frames) - 1, min(len(frames), MAX_GIF_FRAMES)).round().astype(int))
    )
    images = [to_pil(frames[index]) for index in picked]
    durations = [120] * (len(images) - 1) + [2000]  # hold the result before looping
    path = _GIFS.new_path()
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)
    return str(path)


def prepare_digit(image: np.ndarray, size: int) -> torch.Tensor:
    """A picture as a ``uint8`` MNIST-style digit ``(1, size, size)``: grey, resized, light on dark."""
    # Box filtering averages each pixel's area: it undoes the demo's own upscaling exactly.
    digit = Image.fromarray(image).convert("L").resize((size, size), Image.Resampling.BOX)
    pixels = np.array(digit)
    if pixels.mean() > 127:  # a dark digit on a light background, as people draw them
        pixels = 255 - pixels
    return torch.from_numpy(pixels).unsqueeze(0)


def load_test_digits(dataset: str | None) -> list[np.ndarray]:
    """The first test image of each class of ``dataset`` (a Hub id or local folder), to pick from.

    Returns:
        An empty list when ``dataset`` is ``None``.

    Raises:
        ValueError: if the dataset cannot be loaded.
    """
    if not dataset:
        return []
    split = load_split(dataset, "test")
    return [
        split.images[int((split.labels == label).nonzero()[0, 0])].numpy() for label in split.labels.unique()
    ]


def sample_images(
    pipeline: DiffusionPipeline,
    sampler: str,
    steps: float | None,
    num_images: float | None,
    seed: float | None,
    digit: str | int | None = ANY_DIGIT,
    guidance_scale: float | None = DEFAULT_GUIDANCE_SCALE,
    *,
    limits: Limits | None = None,
    control: RunControl | None = None,
) -> tuple[list[Image.Image], str, str]:
    """Draw samples; returns the gallery images, the reverse-process GIF and the time taken.

    Args:
        digit: for a class-conditional model, the digit every image is asked for (``"3"`` or ``3``);
            ``"any"`` samples unconditionally (the only choice for an unconditional model).
        guidance_scale: with a digit, the classifier-free guidance weight in ``[0, MAX_GUIDANCE_SCALE]``
            (ignored without one); a guided request (not 0 or 1) counts twice against the budget.
        limits: the budget and time limit (the demo's defaults when ``None``).
        control: the step callback (one with ``limits``' time limit when ``None``).

    Raises:
        ValueError: on a bad number of images, steps, seed, sampler, digit or guidance scale, a request over
            the budget, or a run stopped at the time limit.
        RunCancelled: if ``control`` was cancelled.
    """
    limits = limits or Limits()
    process = forward_process(pipeline)
    num_images = check_int("Number of images", num_images, 1, MAX_IMAGES)
    steps = check_int("Steps", steps, 1, process.num_train_timesteps)
    seed = check_int("Seed", seed, 0, MAX_SEED)
    process.check_sampler(sampler, steps)
    label = check_digit(pipeline, digit)
    conditioning = {}
    if label is not None:
        conditioning = {"class_labels": label, "guidance_scale": check_guidance(guidance_scale)}
    limits.check_budget(num_images, steps, guided=conditioning.get("guidance_scale", 1) not in (0, 1))
    start = time.perf_counter()
    images, frames = run_pipeline(
        pipeline, sampler, steps, seed, num_images, control or RunControl(limits.time_limit_s), **conditioning
    )
    elapsed = time.perf_counter() - start
    what = f"{num_images} image(s)"
    if label is not None:
        what += f" of digit {label} (guidance scale {conditioning['guidance_scale']:g})"
    report = f"{what}, {process.samplers[sampler].label}, {steps} steps: **{elapsed:.2f} s**"
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
    *,
    limits: Limits | None = None,
    control: RunControl | None = None,
) -> tuple[list[tuple[Image.Image, str]], str, str]:
    """Degrade a digit to ``timestep`` and restore it through the pipeline's start timestep.

    The run steps from ``timestep``, then from each timestep of the ``steps``-step grid below it: at most
    ``steps + 1`` network calls on one image, which the budget counts.

    Args:
        limits: the budget and time limit (the demo's defaults when ``None``).
        control: the step callback (one with ``limits``' time limit when ``None``).

    Returns:
        The original, degraded and restored digits with captions, the reverse-process GIF and the time taken.

    Raises:
        ValueError: for a process that does not restore images, a missing digit, a bad timestep, steps,
            seed or sampler, a request over the budget, or a run stopped at the time limit.
        RunCancelled: if ``control`` was cancelled.
    """
    limits = limits or Limits()
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
    limits.check_budget(1, steps + 1)
    clean = prepare_digit(digit, pipeline.unet.config.sample_size)
    x0 = to_model_range(clean)
    degraded = to_unit_range(degraded_start(pipeline, x0, timestep, seed))
    start = time.perf_counter()
    restored, frames = run_pipeline(
        pipeline,
        sampler,
        steps,
        seed,
        1,
        control or RunControl(limits.time_limit_s),
        start_images=to_unit_range(x0),
        start_timestep=timestep,
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


# ----- runs that stop when their client has gone --------------------------------------------------------

# One run at a time: a cancelled run may still finish its current network call when the next one starts.
_RUN_LOCK = threading.Lock()


class _Lockstep:
    """A run in a worker thread, kept at most ``ahead`` network calls ahead of what the handler reported."""

    def __init__(self, ahead: int) -> None:
        self._ahead = ahead
        self._condition = threading.Condition()
        self._posted = 0
        self._reported = 0
        self._closed = False
        self.outcome: tuple[object, BaseException | None] | None = None

    def run(self, function: Callable[[], object]) -> None:
        """The worker thread: run ``function`` alone and keep its result or error."""
        try:
            with _RUN_LOCK:
                outcome = (function(), None)
        except BaseException as error:  # handed to the handler, which raises it
            outcome = (None, error)
        with self._condition:
            self.outcome = outcome
            self._condition.notify_all()

    def step(self, calls: int) -> None:
        """After each network call (in the worker): wait while the run is too far ahead of the reports."""
        with self._condition:
            self._posted = calls
            self._condition.notify_all()
            self._condition.wait_for(lambda: self._closed or self._posted - self._reported < self._ahead)

    def reports(self) -> Iterator[int]:
        """The network calls so far, whenever there are new ones, until the run has ended.

        Each value counts as reported once the consumer asks for the next one.
        """
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self.outcome is not None or self._posted > self._reported)
                if self.outcome is not None:
                    return
                posted = self._posted
            yield posted
            with self._condition:
                self._reported = posted
                self._condition.notify_all()

    def close(self) -> None:
        """Release a worker waiting in :meth:`step`."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()


def stream_run(
    function: Callable[..., tuple], *args, limits: Limits | None = None, ahead: int = STEPS_AHEAD
) -> Iterator:
    """Run ``function(*args, limits=limits, control=...)`` as a Gradio generator handler that can be left.

    The run (:func:`sample_images` or :func:`restore_digit`) goes in a worker thread; the handler yields
    ``gr.skip()`` (no change to the page) after each of its network calls and finally its result. Gradio
    checks after every yield whether the client is still connected, and closes the generator of a request
    whose client has gone (or that was cancelled); closing it cancels the run, which stops after its current
    network call. The run never gets more than ``ahead`` calls past the last yield that Gradio took up, so an
    abandoned run stops within a few network calls, however fast or slow the machine.

    Raises:
        gradio.Error: for a ``ValueError`` of the run (bad settings, over the budget or the time limit).
    """
    limits = limits or Limits()
    lockstep = _Lockstep(ahead)
    control = RunControl(limits.time_limit_s, on_step=lockstep.step)
    # Gradio's progress tracker follows the pipelines' tqdm bars through context variables of this request.
    context = contextvars.copy_context()
    work = partial(function, *args, limits=limits, control=control)
    worker = threading.Thread(target=context.run, args=(lockstep.run, work), name="demo-run", daemon=True)
    worker.start()
    try:
        for _ in lockstep.reports():
            yield gr.skip()
    finally:  # also when Gradio closes the generator: the client has gone
        control.cancel()
        lockstep.close()
    result, error = lockstep.outcome
    if isinstance(error, ValueError):
        raise gr.Error(str(error), duration=None, print_exception=False) from error
    if error is not None:
        raise error
    yield result


# ----- the page -----------------------------------------------------------------------------------------


def build_demo(
    models: list[str],
    test_data: str | None = DEFAULT_TEST_DATA,
    store: ModelStore | None = None,
    limits: Limits | None = None,
) -> gr.Blocks:
    """Build the demo page, with its queue.

    Args:
        models: pipelines to offer (saved folders or Hub ids); the first is selected. Only these can be
            chosen, unless ``store`` allows any model.
        test_data: dataset (Hub id or local folder) whose test digits can be picked for restoration.
        store: where pipelines are loaded and kept; a new one (offered models only) by default.
        limits: the budget and time limit of a request and the queue's size.

    Raises:
        ValueError: if ``models`` is empty or ``test_data`` cannot be loaded.
    """
    if not models:
        raise ValueError("offer at least one model")
    limits = limits or Limits()
    test_digits = load_test_digits(test_data)
    store = store or ModelStore()
    store.offer(models)
    try:
        first = store.get(models[0])
        notice = ""
    except ValueError as error:
        first = None
        notice = f"⚠️ {error}."
        if store.allow_any:
            notice += " You can also type a saved pipeline folder or a Hub id in **Model**."
    process = forward_process(first) if first else None
    sampler = process.default_sampler if process else None
    restores = process is not None and process.restores
    conditional = first is not None and is_class_conditional(first)
    num_train_timesteps = process.num_train_timesteps if process else 1000
    first_t, last_t = process.timestep_range if process else (0, num_train_timesteps)

    with gr.Blocks(title="MNIST diffusion demo", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# MNIST diffusion\nGenerate digits with a Gaussian DDPM, flow-matching or cold-diffusion model "
            "(a class-conditional one draws the digit you pick), and watch the reverse process."
        )
        gr.Markdown(notice, visible=bool(notice), elem_id="notice")
        with gr.Row():
            with gr.Column(scale=1):
                model = gr.Dropdown(
                    store.offered,
                    value=models[0],
                    label="Model",
                    info="A saved pipeline folder or a Hub id; type one to add it."
                    if store.allow_any
                    else "One of the models this demo offers.",
                    # Any typed name reaches the store, which refuses one that was not offered.
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
                    16,
                    label="Number of images",
                    info=f"1 to {MAX_IMAGES}; images x steps at most {limits.max_image_steps}",
                    precision=0,
                    elem_id="num-images",
                )
                seed = gr.Number(0, label="Seed", precision=0, elem_id="seed")
                # Class-conditional models only: which digit, and how hard to guide towards it.
                class_digit = gr.Dropdown(
                    digit_choices(first) or [ANY_DIGIT],
                    value=ANY_DIGIT,
                    label="Digit",
                    info="The digit a class-conditional model draws; 'any': unconditional samples.",
                    visible=conditional,
                    elem_id="class-digit",
                )
                guidance = gr.Slider(
                    0,
                    MAX_GUIDANCE_SCALE,
                    value=DEFAULT_GUIDANCE_SCALE,
                    step=0.5,
                    label="Guidance scale",
                    info="Classifier-free guidance w: 1 samples the model as trained, 0 ignores the digit, "
                    "more pushes harder towards it (and costs twice the network calls).",
                    visible=conditional,
                    interactive=False,  # until a digit is picked
                    elem_id="guidance-scale",
                )
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
            digits = digit_choices(pipeline)
            return (
                describe(name, pipeline),
                gr.Radio(choices=sampler_choices(process), value=process.default_sampler),
                gr.Number(value=process.default_steps(), info=f"1 to {process.num_train_timesteps}"),
                gr.Accordion(visible=process.restores),
                gr.Slider(minimum=low, maximum=high, value=(low + high + 1) // 2),
                gr.Dropdown(choices=digits or [ANY_DIGIT], value=ANY_DIGIT, visible=bool(digits)),
                gr.Slider(value=DEFAULT_GUIDANCE_SCALE, visible=bool(digits), interactive=False),
            )

        def select_digit(digit_value: str | None):
            # The guidance scale only matters once a digit is asked for.
            return gr.Slider(interactive=asks_for_digit(digit_value))

        def select_sampler(name: str, sampler_name: str | None):
            if not sampler_name:
                return gr.Number()
            return forward_process(_loaded(store, name)).default_steps(sampler_name)

        def run_sampling(
            name, sampler_name, steps_value, count, seed_value, digit_value, scale, progress=TRACK_TQDM
        ):
            pipeline = _loaded(store, name)
            yield from stream_run(
                sample_images, pipeline, sampler_name, steps_value, count, seed_value, digit_value, scale,
                limits=limits,
            )  # fmt: skip

        def run_restore(name, sampler_name, steps_value, image, t, seed_value, progress=TRACK_TQDM):
            pipeline = _loaded(store, name)
            yield from stream_run(
                restore_digit, pipeline, sampler_name, steps_value, image, t, seed_value, limits=limits
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
            [about, sampler_choice, steps, restore_panel, timestep, class_digit, guidance],
            show_progress="minimal",
        )
        sampler_choice.input(select_sampler, [model, sampler_choice], steps)
        class_digit.change(select_digit, class_digit, guidance, show_progress="hidden")
        # One worker for everything that runs the network: runs share the loaded networks and the CPU.
        generate_button.click(
            run_sampling,
            [model, sampler_choice, steps, num_images, seed, class_digit, guidance],
            [gallery, animation, timing],
            api_name="generate",
            concurrency_id="sampling",
            concurrency_limit=1,
        )
        restore_button.click(
            run_restore,
            [model, sampler_choice, steps, digit, timestep, seed],
            [gallery, animation, timing],
            api_name="restore",
            concurrency_id="sampling",
            concurrency_limit=1,
        )
        picker.select(pick, None, digit)
        gr.on([digit.change, timestep.release, seed.blur], preview, [model, digit, timestep, seed], degraded)
    # Gradio refuses requests beyond `max_queue` waiting ones (the page says the app is busy, HTTP clients
    # get status 503, "Queue is full").
    return demo.queue(max_size=limits.max_queue, default_concurrency_limit=1)


def serve(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, **launch_kwargs):
    """Serve ``demo`` (from :func:`build_demo`) on ``host:port``; blocks unless ``prevent_thread_lock=True``.

    Only the demo's own messages reach the page (``show_error=False``), never an unexpected exception's text.
    """
    return demo.launch(server_name=host, server_port=port, show_error=False, **launch_kwargs)


def _loaded(store: ModelStore, name: str) -> DiffusionPipeline:
    return _as_page_error(store.get, name)


def _as_page_error(function, *args):
    """Call ``function``; a ``ValueError`` becomes a ``gr.Error`` shown in the page until dismissed."""
    try:
        return function(*args)
    except ValueError as error:
        raise gr.Error(str(error), duration=None, print_exception=False) from error
