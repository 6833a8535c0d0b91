"""Does cold diffusion generate? Each cold degradation with and without noise injection, beside Gaussian DDPM.

Each variant of the study is a forward process with some of its options. Every variant trains the same network
for the same number of steps (the quickstart's tiny UNet without attention and its optimiser, 936 steps of 128
images: the coursework CNN at that budget has not learned to draw, FID 149 and class entropy 0.09 for its
Gaussian row, so it could not tell a diverse degradation from a collapsed one), samples
``num_images`` images from its start distribution with each of its process's samplers (the Gaussian baseline
with its default sampler only), and is scored by :class:`mnist_diffusion.evaluation.metrics.SampleQuality`
(FID and its floor, KID, the Inception-style score, class entropy) and by ``pixel_diversity``, the RMS pixel
distance between two samples averaged over all pairs (0 when every sample is the same image). The variants
(:func:`study_variants`):

- ``gaussian``: the baseline;
- ``NAME`` for every registered degradation (a process that restores images: the cold ones), with its own
  defaults;
- ``NAME+noise``: the same with noise injection, ``train_noise`` and ``sample_noise`` (Rissanen et al., 2023:
  0.01 and 0.013 on MNIST), for every process whose scheduler takes them;
- the start distributions of :data:`ALTERNATIVE_STARTS` for degradations whose ``D(x, T)`` is one image for
  every ``x`` (``mask[fill=noise]``), with and without noise injection.

The results are written after every scored row, so a killed study resumes where it stopped: training resumes
from its last checkpoint and scored rows are kept.

Example:
    >>> from mnist_diffusion.evaluation.cold_diversity import study_variants
    >>> names = [variant.name for variant in study_variants(0.01, 0.013)]
    >>> names[:3]
    ['gaussian', 'impulse', 'impulse+noise']
    >>> "mask[fill=noise]+noise" in names
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mnist_diffusion.schedulers import FORWARD_PROCESSES, factory_options, forward_process
from mnist_diffusion.training.files import write_text

BASELINE = "gaussian"
NOISE_INJECTION = ("train_noise", "sample_noise")
# Start distributions that are not a point, for the degradations whose D(x, T) is (see fit_prior's warning).
ALTERNATIVE_STARTS: dict[str, tuple[dict[str, Any], ...]] = {"mask": ({"fill": "noise"},)}
# Options of every variant of a degradation, where its measured recipe departs from the defaults in what the
# network learns: des predicts the velocity (training/configs/cold_des.yaml; its noise-predicting network
# leaves grain on its samples, benchmarks/conditional.md).
RECIPE_OPTIONS: dict[str, dict[str, Any]] = {"des": {"prediction_type": "v_prediction"}}
# The score columns of a row, taken from SampleQuality's metrics.
SCORES = ("fid", "fid_floor", "kid_mean", "inception_score_mean", "class_entropy", "mean_confidence")


@dataclass(frozen=True)
class Variant:
    """One trained model of the study: a forward process and the options it is built with.

    Attributes:
        name: the row label (``blur``, ``blur+noise``, ``mask[fill=noise]``).
        degradation: the process's name in ``mnist_diffusion.schedulers.FORWARD_PROCESSES``
            (``--degradation``).
        options: the process's options (``train.py`` flags without dashes).
        samplers: the samplers scored; ``None``: every sampler of the process.
    """

    name: str
    degradation: str
    options: dict[str, Any] = field(default_factory=dict)
    samplers: tuple[str, ...] | None = None

    @property
    def folder_name(self) -> str:
        """The name as a folder name (letters, digits, ``-`` and ``_``)."""
        return re.sub(r"[^A-Za-z0-9_-]+", "_", self.name).strip("_")


@dataclass(frozen=True)
class StudySettings:
    """What every variant shares; a results file holds the settings it was made with.

    Attributes:
        dataset_name: MNIST (Hub id or local folder in the Hub's parquet layout).
        target_dataset: given to processes that take a ``target_dataset`` option (morph: Fashion-MNIST).
        train_steps: optimisation steps of every model (936: 2 epochs of 128 images, the report's budget).
        train_batch_size: images per step.
        learning_rate: AdamW learning rate.
        network: the ``train.py`` flags of the network and its training (the quickstart's: the tiny UNet
            without attention, warm-up and cosine decay of the learning rate, an EMA of the weights).
        num_images: samples per sampler, scored against the test split (floor: as many training images).
        seed: training seed and sampling seed.
        train_noise: ``train_noise`` of the ``+noise`` variants.
        sample_noise: ``sample_noise`` of the ``+noise`` variants.
        max_inference_steps: caps every sampler's step count, spaced evenly from ``T`` to 1 (``None``: each
            sampler's usual count, ``T`` for the cold ones). 20, the conditional benchmark's cap, leaves blur
            and pixelate at their ``T`` and spares des's 1000 steps per image, hours per score.
        extra_train_flags: further ``train.py`` flags of every run.
        quick: a smoke run (synthetic data, a tiny network, few steps); its numbers mean nothing.
    """

    dataset_name: str
    target_dataset: str
    train_steps: int = 936
    train_batch_size: int = 128
    learning_rate: float = 1e-3
    network: tuple[str, ...] = (
        "--model", "unet", "--unet_preset", "tiny_no_attention", "--lr_scheduler", "cosine",
        "--lr_warmup_steps", "100", "--use_ema", "--ema_max_decay", "0.999",
    )  # fmt: skip
    num_images: int = 1000
    seed: int = 0
    train_noise: float = 0.01
    sample_noise: float = 0.013
    max_inference_steps: int | None = 20
    extra_train_flags: tuple[str, ...] = ("--num_validation_images", "1000", "--num_sample_images", "16")
    quick: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON values (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def check(self) -> None:
        """Raise ``ValueError`` naming the first setting out of range."""
        for name in ("train_steps", "train_batch_size", "seed"):
            if getattr(self, name) < (0 if name == "seed" else 1):
                raise ValueError(f"{name}={getattr(self, name)} is out of range")
        if self.num_images < 2:
            raise ValueError(f"num_images={self.num_images} must be at least 2 (FID needs two samples)")
        if self.train_noise < 0 or self.sample_noise < 0:
            raise ValueError(
                f"train_noise={self.train_noise} and sample_noise={self.sample_noise} must be >= 0"
            )
        if self.max_inference_steps is not None and self.max_inference_steps < 1:
            raise ValueError(f"max_inference_steps={self.max_inference_steps} must be at least 1")


def quick_settings(dataset_name: str, **overrides: Any) -> StudySettings:
    """Smoke-run settings on a small synthetic dataset (which also stands in for Fashion-MNIST).

    Args:
        dataset_name: the synthetic dataset folder (see
            :func:`mnist_diffusion.training.data.write_synthetic_mnist`).
        **overrides: other :class:`StudySettings` fields.
    """
    values = {
        "dataset_name": dataset_name,
        "target_dataset": dataset_name,
        "train_steps": 2,
        "train_batch_size": 16,
        "network": ("--model", "cnn", "--n_hidden", "4", "4"),
        "num_images": 16,
        "max_inference_steps": 3,
        "extra_train_flags": (
            "--num_validation_images",
            "16",
            "--num_sample_images",
            "4",
            "--logging_steps",
            "1",
        ),
        "quick": True,
    }
    return StudySettings(**{**values, **overrides})


def study_variants(
    train_noise: float, sample_noise: float, registry: Mapping[str, Callable] = FORWARD_PROCESSES
) -> list[Variant]:
    """The variants of the study, baseline first, then the degradations in registry order, each with its
    :data:`RECIPE_OPTIONS`.

    The degradations are the processes that restore images (``ForwardProcess.restores``: the cold ones);
    other families (flow matching, say) are not part of the study.

    Args:
        train_noise: ``train_noise`` of the ``+noise`` variants.
        sample_noise: ``sample_noise`` of the ``+noise`` variants.
        registry: the processes (``mnist_diffusion.schedulers.FORWARD_PROCESSES``); ``gaussian`` is the
            baseline.
    """
    baseline = forward_process(registry[BASELINE]())
    variants = [Variant(BASELINE, BASELINE, {}, (baseline.default_sampler,))]
    injection = dict(zip(NOISE_INJECTION, (train_noise, sample_noise), strict=True))
    for degradation, factory in registry.items():
        if degradation == BASELINE or not forward_process(factory()).restores:
            continue
        injects = set(NOISE_INJECTION) <= set(factory_options(factory))
        recipe = RECIPE_OPTIONS.get(degradation, {})
        for start in ({}, *ALTERNATIVE_STARTS.get(degradation, ())):
            label = degradation + "".join(f"[{key}={value}]" for key, value in start.items())
            variants.append(Variant(label, degradation, {**recipe, **start}))
            if injects:
                variants.append(Variant(f"{label}+noise", degradation, {**recipe, **start, **injection}))
    return variants


def select_variants(variants: list[Variant], names: list[str] | None) -> list[Variant]:
    """The variants called ``names`` (all when ``None``), in study order.

    Raises:
        ValueError: naming an unknown variant and the known ones.
    """
    if names is None:
        return variants
    known = {variant.name: variant for variant in variants}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {', '.join(known)}")
    return [variant for variant in variants if variant.name in names]


def train_flags(variant: Variant, settings: StudySettings, output_dir: str | os.PathLike) -> list[str]:
    """The ``train.py`` flags of a variant (resuming from the last checkpoint of ``output_dir``).

    Raises:
        ValueError: if the variant's process does not take one of its options.
    """
    factory = FORWARD_PROCESSES[variant.degradation]
    accepted = factory_options(factory)
    unknown = sorted(set(variant.options) - set(accepted))
    if unknown:
        raise ValueError(f"variant {variant.name!r}: {variant.degradation} takes no option {unknown}")
    options = dict(variant.options)
    if "target_dataset" in accepted:
        options.setdefault("target_dataset", settings.target_dataset)
    flags = [
        "--degradation", variant.degradation, "--dataset_name", settings.dataset_name,
        "--output_dir", str(output_dir), *settings.network,
        "--train_batch_size", str(settings.train_batch_size), "--learning_rate", str(settings.learning_rate),
        "--max_train_steps", str(settings.train_steps), "--seed", str(settings.seed),
        "--save_images_epochs", str(10**6), "--checkpointing_steps", str(max(1, settings.train_steps // 4)),
        "--checkpoints_total_limit", "1", "--resume_from_checkpoint", "latest", *settings.extra_train_flags,
    ]  # fmt: skip
    for name, value in options.items():
        flags += [f"--{name}", str(value)]
    return flags


def sampler_steps(process, sampler: str, settings: StudySettings) -> int:
    """The step count of ``sampler``: its usual count, capped by ``settings.max_inference_steps``."""
    steps = process.default_steps(sampler)
    return min(steps, settings.max_inference_steps) if settings.max_inference_steps else steps


def pixel_diversity(images01: torch.Tensor) -> float:
    """The RMS pixel distance between two images of the batch, averaged over all pairs (0: all identical).

    Args:
        images01: ``(N, 1, H, W)`` images in ``[0, 1]``, ``N >= 2``.

    Example:
        >>> import torch
        >>> pixel_diversity(torch.zeros(4, 1, 2, 2))
        0.0
        >>> round(pixel_diversity(torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])), 3)
        1.0
    """
    flat = images01.flatten(1).double()
    count = len(flat)
    if count < 2:
        raise ValueError(f"pixel_diversity needs at least 2 images, got {count}")
    distances = torch.cdist(flat, flat) / math.sqrt(flat.shape[1])
    return float(distances.sum() / (count * (count - 1)))


def machine() -> dict[str, Any]:
    """The machine the study ran on (the numbers' context)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "usable_cpus": usable,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


class Study:
    """Trains, samples and scores the variants, keeping the results in ``output`` (resumable).

    Args:
        settings: what every variant shares.
        variants: the variants to run (see :func:`study_variants`).
        output: the results JSON; a Markdown table is written beside it (``.md``).
        work_dir: the trained pipelines, their checkpoints and the sample grids.
        command: the command line, recorded in the results.
        log: where progress lines go.

    Raises:
        ValueError: if ``output`` or ``work_dir`` hold a study with other settings, or a variant is invalid.
    """

    def __init__(
        self,
        settings: StudySettings,
        variants: list[Variant],
        output: str | os.PathLike,
        work_dir: str | os.PathLike,
        command: str = "",
        log: Callable[[str], None] = print,
    ):
        settings.check()
        self.settings, self.variants, self.log = settings, variants, log
        self.output, self.work_dir = Path(output), Path(work_dir)
        self.markdown = self.output.with_suffix(".md")
        # Check every variant (options, samplers, steps) before any work.
        self.processes = {variant.name: self._process(variant) for variant in variants}
        self.results = self._load(command)
        self._quality = None

    def _process(self, variant: Variant):
        from mnist_diffusion.training.train import make_process, parse_args

        process = make_process(parse_args(train_flags(variant, self.settings, self.work_dir / "check")))
        for sampler in variant.samplers or process.samplers:
            process.check_sampler(sampler)
        return process

    def _load(self, command: str) -> dict[str, Any]:
        settings = self.settings.to_dict()
        stamp = self.work_dir / "study_settings.json"
        if stamp.is_file() and json.loads(stamp.read_text()) != settings:
            raise ValueError(
                f"{self.work_dir} holds models trained with other settings; pass another --work_dir or "
                "remove it"
            )
        results = {"command": command, "quick": self.settings.quick, "settings": settings, "rows": []}
        if self.output.is_file():
            previous = json.loads(self.output.read_text())
            if previous.get("settings") != settings:
                raise ValueError(
                    f"{self.output} holds a study with other settings; pass another --output or remove it"
                )
            results["rows"] = previous.get("rows", [])
            results["variants"] = previous.get("variants", {})
            if "reference" in previous:
                results["reference"] = previous["reference"]
        self.work_dir.mkdir(parents=True, exist_ok=True)
        write_text(stamp, json.dumps(settings, indent=2) + "\n")
        results.setdefault("variants", {})
        results["machine"] = machine()
        return results

    @property
    def quality(self):
        """The evaluator, with the test split's features computed once (built on first use)."""
        if self._quality is None:
            from mnist_diffusion.evaluation.metrics import SampleQuality
            from mnist_diffusion.training.data import load_split, uint8_to_unit_range

            test = load_split(self.settings.dataset_name, "test")
            train = load_split(self.settings.dataset_name, "train")
            self._quality = SampleQuality(test, train, seed=self.settings.seed)
            real = uint8_to_unit_range(test.images[: self.settings.num_images])
            self.results["reference"] = {"pixel_diversity_test_images": pixel_diversity(real)}
        return self._quality

    def samplers(self, variant: Variant) -> tuple[str, ...]:
        """The samplers scored for ``variant``."""
        return tuple(variant.samplers or self.processes[variant.name].samplers)

    def run(self) -> dict[str, Any]:
        """Train, sample and score every missing row; returns the results (also written to the files)."""
        done = {(row["variant"], row["sampler"]) for row in self.results["rows"]}
        for variant in self.variants:
            missing = [sampler for sampler in self.samplers(variant) if (variant.name, sampler) not in done]
            if not missing:
                self.log(f"[{variant.name}] done")
                continue
            pipeline = self.train(variant)
            for sampler in missing:
                self.results["rows"].append(self.score(variant, pipeline, sampler))
                self.write()
        self.write()
        return self.results

    def train(self, variant: Variant):
        """Train ``variant`` (resuming), unless its pipeline is already saved; returns the loaded pipeline."""
        from accelerate.state import AcceleratorState

        from mnist_diffusion.pipelines import load_pipeline
        from mnist_diffusion.training.train import parse_args, train

        folder = self.work_dir / variant.folder_name
        if not (folder / "model_index.json").is_file():
            self.log(f"[{variant.name}] training {self.settings.train_steps} steps into {folder}")
            args = parse_args(train_flags(variant, self.settings, folder))
            # Each Trainer makes its own Accelerator; forget the process-wide state of the previous one.
            AcceleratorState._reset_state(reset_partial_state=False)
            began = time.perf_counter()
            train(args)
            self.results["variants"][variant.name] = {
                "degradation": variant.degradation,
                "options": variant.options,
                "train_seconds_last_call": time.perf_counter() - began,
                "pipeline": str(folder),
            }
            self.write()
        pipeline = load_pipeline(str(folder))
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def score(self, variant: Variant, pipeline, sampler: str) -> dict[str, Any]:
        """Sample ``num_images`` with ``sampler`` and score them."""
        from mnist_diffusion.pipelines.sampling import generate, save_grid

        settings = self.settings
        steps = sampler_steps(self.processes[variant.name], sampler, settings)
        self.log(f"[{variant.name}] sampling {settings.num_images} images with {sampler}, {steps} steps")
        began = time.perf_counter()
        images = generate(pipeline, settings.num_images, sampler, steps, seed=settings.seed)
        seconds = time.perf_counter() - began
        save_grid(images[:64], self.work_dir / "grids" / f"{variant.folder_name}__{sampler}.png")
        evaluation = self.quality.evaluate(images)
        row = {
            "variant": variant.name,
            "degradation": variant.degradation,
            "options": variant.options,
            "noise_injection": any(variant.options.get(name, 0) > 0 for name in NOISE_INJECTION),
            "sampler": sampler,
            "steps": steps,
            "num_images": settings.num_images,
            **{name: evaluation.metrics[name] for name in SCORES},
            "pixel_diversity": pixel_diversity(images),
            "class_histogram": evaluation.class_counts,
            "sampling_seconds": seconds,
        }
        self.log(
            f"[{variant.name}] {sampler}: FID {row['fid']:.2f} (floor {row['fid_floor']:.2f}), class entropy "
            f"{row['class_entropy']:.2f}, IS {row['inception_score_mean']:.2f}"
        )
        return row

    def write(self) -> None:
        """Write the results (rows in study order) and the Markdown table, each atomically."""
        keys = [(variant.name, sampler) for variant in self.variants for sampler in self.samplers(variant)]
        order = {key: index for index, key in enumerate(keys)}
        self.results["rows"].sort(key=lambda row: order.get((row["variant"], row["sampler"]), len(order)))
        write_text(self.output, json.dumps(self.results, indent=2) + "\n")
        write_text(self.markdown, markdown_table(self.results))


def markdown_table(results: dict[str, Any]) -> str:
    """The results as a Markdown page: settings, then one row per variant and sampler."""
    settings = results["settings"]
    lines = ["# Does cold diffusion generate?", ""]
    if results.get("command"):
        lines += [f"Produced by `{results['command']}`.", ""]
    if results.get("quick"):
        lines += [
            "**Smoke run (`--quick`)**: synthetic data, a tiny network, a few steps and samples; the numbers",
            "only show that the study runs.",
            "",
        ]
    lines += [
        f"Every model: `{' '.join(settings['network'])}`, {settings['train_steps']} steps of "
        f"{settings['train_batch_size']} images (learning rate {settings['learning_rate']:g}, seed "
        f"{settings['seed']}). Each row: {settings['num_images']} samples from the start distribution, "
        "scored with the MNIST-classifier features against the test split (floor: the FID of as many real "
        "training images). `+noise`: noise injection (Rissanen et al., 2023), Gaussian noise of std "
        f"{settings['train_noise']:g} added to the degraded training inputs and of std "
        f"{settings['sample_noise']:g} after every sampling step but the last. Pixel diversity: the RMS "
        "pixel distance between two samples, averaged over all pairs (0: every sample is the same image)"
        + (
            f"; {results['reference']['pixel_diversity_test_images']:.3f} for real test images."
            if "reference" in results
            else "."
        ),
        "",
        "| variant | sampler | steps | FID | floor | KID | IS | class entropy | pixel diversity |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['variant']} | {row['sampler']} | {row['steps']} | {row['fid']:.1f} | "
            f"{row['fid_floor']:.2f} | {row['kid_mean']:.3f} | {row['inception_score_mean']:.2f} | "
            f"{row['class_entropy']:.2f} | {row['pixel_diversity']:.3f} |"
        )
    return "\n".join(lines) + "\n"
