"""CPU benchmark of this project against the classic coursework loop: training, sampling, quality per minute.

Every number is measured in one process on the current machine, so the ratios between rows are what
matters; the absolute rates depend on the CPU and on what else it is running.

- Training: the project's real step (:class:`mnist_diffusion.training.train.Trainer`, with its speed options)
  against a deliberately plain copy of the classic notebook loop (PIL images decoded per item by a
  ``DataLoader``, fp32, eager, NCHW, ``loss.item()`` every step) over the same network and the same DDPM
  objective, alternating timed windows after a warm-up. Each loop's arithmetic rate is set against this CPU's
  measured fp32 matrix-product rate, the ceiling of any loop that computes the same convolutions directly.
- Sampling: images/s and FID of one trained Gaussian pipeline under DDPM, DDIM and DPM-Solver++.
- Quality per CPU-minute: FID after training each network for a fixed wall-clock budget (the training
  recipes' curves are :mod:`mnist_diffusion.evaluation.quality`, ``--section quality``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import torch
from accelerate.state import AcceleratorState
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from mnist_diffusion.evaluation.metrics import SampleQuality
from mnist_diffusion.pipelines import load_pipeline
from mnist_diffusion.pipelines.sampling import generate
from mnist_diffusion.schedulers import ForwardProcess, forward_process
from mnist_diffusion.training.data import to_model_range, uint8_to_unit_range
from mnist_diffusion.training.files import write_text
from mnist_diffusion.training.objective import compute_loss, held_out_losses, training_batch
from mnist_diffusion.training.train import (
    Trainer,
    cpu_has_native_bf16,
    make_model,
    make_process,
    parse_args,
    train,
)

# The sampler comparison, per process: the reference first (every timestep, the ratios' denominator), then
# the fast samplers. A process not listed gets its default sampler at every timestep, then each of its
# samplers at its usual steps.
SAMPLERS: dict[str, tuple[tuple[str, int], ...]] = {
    "gaussian": (("ddpm", 1000), ("ddim", 50), ("ddim", 20), ("dpmsolver", 20), ("dpmsolver", 10)),
    "flow": (
        ("flow_euler", 1000),
        ("flow_euler", 50),
        ("flow_heun", 13),
        ("flow_euler", 20),
        ("flow_euler", 10),
    ),
}
# The project's speed options, each a set of train.py flags; bf16 last (see ProjectLoop).
VARIANTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "channels_last": ("--channels_last",),
    "compile": ("--compile",),
    "bf16": ("--mixed_precision", "bf16"),
}
MIB = 1024 * 1024


def machine_info() -> dict[str, Any]:
    """The CPU, core and thread counts, bf16 support and library versions the numbers were taken on."""
    model = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        model = names[0] if names else model
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "bf16_supported": cpu_supports_bf16(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
    }


@dataclass
class ResultsFile:
    """A long run's results JSON, continued by the next run of the same settings, written whole after every
    change so that a kill loses at most the row being scored.

    Subclasses give their ``open`` the settings to compare and the fresh file's first contents.
    """

    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open_with(
        cls,
        path: Path,
        settings: dict[str, Any],
        compared: tuple[str, ...],
        empty: dict[str, Any],
        command: str,
    ) -> ResultsFile:
        """Continue ``path`` if its ``compared`` settings equal ``settings``', else start ``empty``.

        Each call is logged as a session, with its command and machine.

        Raises:
            ValueError: if ``path`` holds results of other settings (they would be mixed), or is not JSON.
        """
        results = cls(Path(path))
        if results.path.is_file():
            try:
                results.data = json.loads(results.path.read_text())
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} is not valid JSON ({error}); move it away to start again") from None
            old = {key: results.data.get("settings", {}).get(key) for key in compared}
            new = {key: settings[key] for key in compared}
            if old != new:
                changed = ", ".join(
                    f"{key} {old[key]!r} -> {new[key]!r}" for key in compared if old[key] != new[key]
                )
                raise ValueError(
                    f"{path} holds results of other settings ({changed}); pass the same settings to finish "
                    "it, or another --output to start a new one"
                )
        else:
            results.data = {**empty, "settings": settings, "sessions": []}
        results.data["sessions"].append(
            {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command, "machine": machine_info()}
        )
        results.save()
        return results

    def save(self) -> None:
        write_text(self.path, json.dumps(self.data, indent=2) + "\n")


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX-512 BF16 or AMX); elsewhere bf16 is emulated.

    The trainer's own check (:func:`mnist_diffusion.training.train.cpu_has_native_bf16`), which refuses
    ``--mixed_precision bf16`` where it is false.
    """
    return cpu_has_native_bf16()


def matmul_gflops(size: int = 1024, repeats: int = 10) -> float:
    """This CPU's practical fp32 peak: GFLOP/s of a square matrix product on torch's threads (median)."""
    left, right = torch.randn(size, size), torch.randn(size, size)
    left @ right  # warm-up: thread pool and caches
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        left @ right
        timings.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(timings) / 1e9


def training_flops_per_image(
    network: torch.nn.Module, process: ForwardProcess, images: torch.Tensor
) -> float:
    """Floating-point operations of one training step (forward and backward) per image of ``images``."""
    model_input, timesteps, target = training_batch(process, images)
    with FlopCounterMode(display=False) as counter:
        compute_loss(network(model_input, timesteps).sample, target, process.default_loss).backward()
    network.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(images)


def peak_rss_mib() -> dict[str, float]:
    """Peak resident memory so far of this process and of its finished children (DataLoader workers)."""
    # ru_maxrss is in KiB on Linux.
    return {
        "self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def reset_accelerate_state() -> None:
    """Forget Accelerate's process-wide state so the next ``Accelerator`` takes its own settings.

    ``AcceleratorState`` is a singleton that keeps the mixed precision and dynamo backend of the first
    ``Accelerator``; without a reset a second ``Trainer`` with other speed flags would silently run with
    the first one's. Models keep what ``prepare`` baked in (compilation, bf16 autocast of ``forward``).
    """
    AcceleratorState._reset_state(reset_partial_state=False)


def train_argv(
    dataset: str, model: str, unet_preset: str, batch_size: int, seed: int, **extra: Any
) -> list[str]:
    """train.py flags shared by every run of the benchmark (extra flags as ``name=value``)."""
    argv = [
        f"--dataset_name={dataset}",
        f"--model={model}",
        f"--unet_preset={unet_preset}",
        f"--train_batch_size={batch_size}",
        f"--seed={seed}",
        "--degradation=gaussian",
    ]
    return argv + [f"--{name}={value}" for name, value in extra.items()]


class ClassicMNIST(Dataset):
    """The classic notebook's dataset: one PIL image decoded and transformed per item, as torchvision's MNIST.

    Normalised to ``[-1, 1]`` (the notebook used ``Normalize((0.5,), (1.0,))``) so that its loss is
    comparable with the project's, which scales pixels with
    :func:`mnist_diffusion.training.data.to_model_range`.
    """

    def __init__(self, dataset_name: str, split: str, limit: int | None = None):
        from datasets import load_dataset

        rows = load_dataset(dataset_name, split=split)
        self.rows = rows.select(range(min(limit, len(rows)))) if limit is not None else rows
        self.image_column = "image" if "image" in self.rows.column_names else "img"
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        row = self.rows[index]
        return self.transform(row[self.image_column]), row["label"]


class ReferenceLoop:
    """The classic coursework training loop over the project's network and objective (the Gaussian DDPM one).

    Plain on purpose: a PIL ``DataLoader`` (``num_workers`` worker processes, as the notebook), fp32,
    eager, NCHW, ``torch.optim.Adam`` with its CPU defaults and ``loss.item()`` after every step.

    Args:
        args: parsed train.py flags (network, schedule, batch size, learning rate, seed, data).
        num_workers: DataLoader worker processes.
    """

    def __init__(self, args: argparse.Namespace, num_workers: int):
        self.process = make_process(args)
        self.loss = args.loss or self.process.default_loss
        torch.manual_seed(args.seed)  # the Trainer's set_seed: the same initial weights
        self.model = make_model(args, self.process.num_train_timesteps)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=args.learning_rate)
        dataset = ClassicMNIST(args.dataset_name, args.train_split, args.max_train_samples)
        self.dataloader = DataLoader(
            dataset, batch_size=args.train_batch_size, shuffle=True, num_workers=num_workers, drop_last=True
        )
        self.batches = self._forever()
        self.losses: list[float] = []

    def _forever(self) -> Iterator[torch.Tensor]:
        while True:
            for images, _ in self.dataloader:
                yield images

    def run(self, steps: int) -> None:
        """Take ``steps`` optimisation steps."""
        self.model.train()
        for _ in range(steps):
            model_input, timesteps, target = training_batch(self.process, next(self.batches))
            loss = compute_loss(self.model(model_input, timesteps).sample, target, self.loss)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.losses.append(loss.item())

    @property
    def network(self) -> torch.nn.Module:
        return self.model


class ProjectLoop:
    """The project's training step: a :class:`~mnist_diffusion.training.train.Trainer` driven a few steps at a
    time.

    Args:
        argv: train.py flags; the Trainer's own logging reads the loss once per call of :meth:`run`.
    """

    def __init__(self, argv: list[str]):
        from tqdm.auto import tqdm

        reset_accelerate_state()
        self.trainer = Trainer(parse_args(argv))
        # What Trainer.train(), which we do not call, does first: the run's log folder and a progress bar.
        self.trainer.record_run()
        self.trainer.progress = tqdm(disable=True)
        self.epoch = 0

    def run(self, steps: int) -> None:
        """Take ``steps`` optimisation steps (whole or partial epochs of the Trainer's own data loader)."""
        trainer = self.trainer
        trainer.max_train_steps = trainer.global_step + steps
        while trainer.global_step < trainer.max_train_steps:
            trainer.train_epoch(self.epoch, 0)
            self.epoch += 1

    @property
    def network(self) -> torch.nn.Module:
        return self.trainer.accelerator.unwrap_model(self.trainer.model)


@torch.inference_mode()
def held_out_loss(
    network: torch.nn.Module,
    process: ForwardProcess,
    images: torch.Tensor,
    seed: int,
    batch_size: int = 500,
) -> tuple[float, float]:
    """Mean loss (the process's default) and its standard error over held-out ``uint8`` images.

    The noise and timesteps are fixed by ``seed``, so every loop is scored on the same examples.
    """
    network.eval()
    losses = held_out_losses(network, process, images, process.default_loss, batch_size, seed)
    network.train()
    return losses.mean().item(), (losses.std() / len(losses) ** 0.5).item()


@dataclass
class ThroughputPlan:
    """How the training loops are timed.

    Attributes:
        warmup_steps: untimed steps first (allocations, thread pools, compilation).
        windows: timed windows per loop, alternating between the loops.
        window_steps: optimisation steps per window.
    """

    warmup_steps: int
    windows: int
    window_steps: int

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.windows * self.window_steps


@dataclass
class LoopResult:
    """Timings of one training loop."""

    window_images_per_second: list[float] = field(default_factory=list)
    setup_seconds: float = 0.0
    warmup_seconds: float = 0.0
    peak_rss_after_warmup_mib: float = 0.0

    @property
    def images_per_second(self) -> float:
        return statistics.median(self.window_images_per_second)


def compare_training(
    argv: list[str], variants: list[str], plan: ThroughputPlan, reference_num_workers: int, output_dir: Path
) -> dict[str, Any]:
    """Time the reference loop and each project variant, alternating windows, in this process.

    Args:
        argv: train.py flags of the network, its data and the seed (see :func:`train_argv`).
        variants: names from :data:`VARIANTS` (at least one).
        plan: warm-up and timed windows.
        reference_num_workers: DataLoader workers of the reference loop.
        output_dir: scratch folder for the Trainers' logs.

    Returns:
        Per loop: median images/s, the window rates, ratio to the reference, GFLOP/s, set-up and warm-up
        time, process peak RSS after its warm-up, and the held-out loss after the same number of steps.
        For the section: the network's training FLOPs per image and the CPU's fp32 matrix-product GFLOP/s,
        whose ratio to the reference's GFLOP/s bounds the speed-up of any loop computing the same.
    """
    # The notebook's update (Adam, no clipping; AdamW without weight decay is the same); read the loss
    # only when the benchmark ends a window, and never write checkpoints.
    argv = [*argv, "--max_grad_norm=0", f"--logging_steps={10**9}", f"--checkpointing_steps={10**9}"]
    args = parse_args([*argv, f"--output_dir={output_dir / 'reference'}"])
    loops: dict[str, ReferenceLoop | ProjectLoop] = {}
    results: dict[str, LoopResult] = {}
    for name in ["reference", *sorted(variants, key=list(VARIANTS).index)]:
        start = time.perf_counter()
        if name == "reference":
            loops[name] = ReferenceLoop(args, reference_num_workers)
        else:
            loops[name] = ProjectLoop([*argv, f"--output_dir={output_dir / name}", *VARIANTS[name]])
        results[name] = LoopResult(setup_seconds=time.perf_counter() - start)
    initial = list(loops["reference"].network.parameters())
    same_start = all(
        all(torch.equal(a, b) for a, b in zip(initial, loop.network.parameters(), strict=True))
        for loop in loops.values()
    )
    for name, loop in loops.items():
        start = time.perf_counter()
        loop.run(plan.warmup_steps)
        results[name].warmup_seconds = time.perf_counter() - start
        results[name].peak_rss_after_warmup_mib = peak_rss_mib()["self"]
    for _ in range(plan.windows):
        for name, loop in loops.items():
            start = time.perf_counter()
            loop.run(plan.window_steps)
            elapsed = time.perf_counter() - start
            results[name].window_images_per_second.append(plan.window_steps * args.train_batch_size / elapsed)

    project = next(loop for loop in loops.values() if isinstance(loop, ProjectLoop))
    held_out = project.trainer.validation_images
    reference_loop = loops["reference"]
    flops_per_image = training_flops_per_image(
        reference_loop.network, reference_loop.process, to_model_range(held_out[: args.train_batch_size])
    )
    peak_gflops = matmul_gflops()
    report: dict[str, Any] = {
        "model": args.model if args.model == "cnn" else f"unet-{args.unet_preset}",
        "batch_size": args.train_batch_size,
        "steps": plan.total_steps,
        "plan": vars(plan),
        "same_initial_weights": same_start,
        "held_out_images": len(held_out),
        "training_flops_per_image": flops_per_image,
        "matmul_gflops": peak_gflops,
        "loops": {},
    }
    for name, loop in loops.items():
        loss, stderr = held_out_loss(loop.network, reference_loop.process, held_out, args.seed)
        result = results[name]
        report["loops"][name] = {
            "flags": list(VARIANTS.get(name, ())),
            "images_per_second": result.images_per_second,
            "window_images_per_second": result.window_images_per_second,
            "ratio_to_reference": result.images_per_second / results["reference"].images_per_second,
            "gflops": result.images_per_second * flops_per_image / 1e9,
            "setup_seconds": result.setup_seconds,
            "warmup_seconds": result.warmup_seconds,
            "peak_rss_after_warmup_mib": result.peak_rss_after_warmup_mib,
            "held_out_loss": loss,
            "held_out_loss_stderr": stderr,
        }
    reference = report["loops"]["reference"]
    for entry in report["loops"].values():
        difference = entry["held_out_loss"] - reference["held_out_loss"]
        noise = (entry["held_out_loss_stderr"] ** 2 + reference["held_out_loss_stderr"] ** 2) ** 0.5
        entry["loss_within_noise"] = abs(difference) <= 2 * noise
    # Computing the same convolutions directly (as oneDNN does for these shapes), no loop can run its
    # arithmetic faster than the CPU multiplies matrices.
    report["max_ratio_at_matmul_peak"] = peak_gflops / reference["gflops"]
    report["peak_rss_mib"] = peak_rss_mib()
    return report


def fastest_variant(training: dict[str, Any]) -> str:
    """The project variant with the highest median images/s in a :func:`compare_training` report."""
    loops = {name: entry for name, entry in training["loops"].items() if name != "reference"}
    return max(loops, key=lambda name: loops[name]["images_per_second"])


class Reference:
    """Real images for FID: the test split as the reference, training images for the floor.

    The features of the reference are computed once, here, and kept for every score.
    """

    def __init__(self, test_images: torch.Tensor, train_images: torch.Tensor):
        self.quality = SampleQuality(uint8_to_unit_range(test_images), uint8_to_unit_range(train_images))

    def score(self, images01: torch.Tensor) -> dict[str, float]:
        """FID (and its floor at the same N), KID, IS and class balance of ``images01``."""
        return self.quality.evaluate(images01).metrics


def sampler_plan(process: ForwardProcess) -> list[tuple[str, int]]:
    """The samplers and steps that :func:`compare_samplers` times on ``process``: :data:`SAMPLERS` of its
    family, steps capped at ``T``, no repeats.

    Example:
        >>> from mnist_diffusion.schedulers import flow_matching_scheduler, forward_process
        >>> sampler_plan(forward_process(flow_matching_scheduler(num_train_timesteps=20)))
        [('flow_euler', 20), ('flow_heun', 13), ('flow_euler', 10)]
    """
    every_step = process.num_train_timesteps
    usual = tuple((name, process.default_steps(name)) for name in process.samplers)
    rows = SAMPLERS.get(process.name, ((process.default_sampler, every_step), *usual))
    return list(dict.fromkeys((sampler, min(steps, every_step)) for sampler, steps in rows))


def compare_samplers(pipeline, num_images: int, reference: Reference, seed: int) -> list[dict[str, Any]]:
    """Images/s and FID of each sampler of :func:`sampler_plan` on ``pipeline``, with ratios to the first
    (the reference: every timestep)."""
    rows = []
    for sampler, steps in sampler_plan(forward_process(pipeline)):
        start = time.perf_counter()
        images = generate(pipeline, num_images, sampler, steps, seed=seed)
        elapsed = time.perf_counter() - start
        rows.append(
            {
                "sampler": sampler,
                "steps": steps,
                "seconds": elapsed,
                "images_per_second": num_images / elapsed,
                **_quality_fields(reference.score(images)),
            }
        )
    baseline = rows[0]
    for row in rows:
        row["speedup_vs_reference"] = row["images_per_second"] / baseline["images_per_second"]
        row["fid_ratio_vs_reference"] = row["fid"] / baseline["fid"]
    return rows


def _quality_fields(metrics: dict[str, float]) -> dict[str, float]:
    keys = ("fid", "fid_floor", "kid_mean", "inception_score_mean", "class_entropy")
    return {key: metrics[key] for key in keys}


def train_steps(argv: list[str], steps: int) -> dict[str, Any]:
    """Train with the real Trainer (``mnist_diffusion.training.train.train``) for ``steps`` optimisation
    steps.

    Returns:
        The step count, the wall-clock seconds of the whole run (data loading, validation and saving
        included) and the folder of the saved pipeline.
    """
    args = parse_args(argv)
    args.max_train_steps = steps
    reset_accelerate_state()
    start = time.perf_counter()
    train(args)
    return {"steps": steps, "wall_seconds": time.perf_counter() - start, "output_dir": args.output_dir}


def quality_after_training(
    argv: list[str], steps: int, num_images: int, reference: Reference, seed: int
) -> dict[str, Any]:
    """FID of ``num_images`` DPM-Solver++ (20 steps) samples after ``steps`` steps of training."""
    run = train_steps(argv, steps)
    pipeline = load_pipeline(run.pop("output_dir"))
    images = generate(pipeline, num_images, "dpmsolver", 20, seed=seed)
    return {**run, **_quality_fields(reference.score(images))}


def markdown_report(results: dict[str, Any]) -> str:
    """The results as markdown: the machine, then one table per section."""
    machine = results["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Produced by `{results['command']}`.",
        "",
        "A full run on a quiet machine (about 40 minutes on 2 cores; it samples `outputs/quickstart` unless",
        "`--model DIR`): `python scripts/benchmark.py --output benchmarks/results.json`.",
        "",
    ]
    if results["quick"]:
        lines += [
            "**Smoke run (`--quick`)**: tiny data, few steps and few samples; the numbers only show that the",
            "benchmark runs. Run it without `--quick` on a quiet machine for results.",
            "",
        ]
    lines += [
        f"Machine: {machine['cpu']}, {machine['usable_cpus']} usable CPUs ({machine['torch_threads']} torch "
        f"threads), bf16 kernels: {'yes' if machine['bf16_supported'] else 'no'}, load average "
        f"{machine['load_average_1min']:.1f} at the start; torch {machine['torch']}, diffusers "
        f"{machine['diffusers']}, Python {machine['python']}.",
        "",
        "## Training throughput",
        "",
        "Reference: the classic notebook loop (PIL DataLoader, fp32, eager, NCHW, `loss.item()` every step).",
        "Ours: `mnist_diffusion.training.train.Trainer` with the flags shown. Median of the timed windows,",
        "alternating between the loops after a warm-up; held-out loss (fixed noise) after the same number",
        "of steps from the same initial weights, both with the notebook's update (Adam, no gradient",
        "clipping). Peak RSS is the whole process after that loop's warm-up (a high-water mark: it only",
        "grows down the table).",
        "GFLOP/s: images/s times the network's training FLOPs per image (torch's FLOP counter).",
        "",
        "| model | loop | flags | images/s | × reference | GFLOP/s | held-out loss | peak RSS (MiB) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for section in results["training"]:
        for name, loop in section["loops"].items():
            lines.append(
                f"| {section['model']} | {name} | {' '.join(loop['flags']) or '-'} | "
                f"{loop['images_per_second']:.0f} | {loop['ratio_to_reference']:.2f} | "
                f"{loop['gflops']:.0f} | "
                f"{loop['held_out_loss']:.4f} ± {loop['held_out_loss_stderr']:.4f} | "
                f"{loop['peak_rss_after_warmup_mib']:.0f} |"
            )
    lines += [
        "",
        "Ceiling: computing the same convolutions directly, no loop runs the network's arithmetic faster",
        "than this CPU multiplies fp32 matrices (a 1024² product on the same threads, measured in the same",
        "run). Far below that peak, the time goes to convolutions too narrow for oneDNN to run at full",
        "rate and to memory-bound operations (normalisation, activations).",
        "",
    ]
    for section in results["training"]:
        reference_gflops, peak_gflops = section["loops"]["reference"]["gflops"], section["matmul_gflops"]
        lines.append(
            f"- {section['model']}: {section['training_flops_per_image'] / 1e6:.0f} MFLOP per training "
            f"image; the reference runs at {reference_gflops:.0f} GFLOP/s, "
            f"{reference_gflops / peak_gflops:.0%} of the {peak_gflops:.0f} GFLOP/s peak, so at most "
            f"{section['max_ratio_at_matmul_peak']:.2f}× the reference is possible here."
        )
    sampling = results["sampling"]
    lines += [
        "",
        "## Sampling",
        "",
        f"Model: {sampling['model']}. {sampling['num_images']} images per sampler; FID on the MNIST "
        "classifier's features against the test split (floor: as many real training images).",
        "",
        "The first row is the reference (every timestep); the ratios are to it.",
        "",
        "| sampler | steps | images/s | × reference | FID | FID / FID(reference) | FID floor |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in sampling["rows"]:
        lines.append(
            f"| {row['sampler']} | {row['steps']} | {row['images_per_second']:.1f} | "
            f"{row['speedup_vs_reference']:.1f} | {row['fid']:.2f} | {row['fid_ratio_vs_reference']:.2f} | "
            f"{row['fid_floor']:.2f} |"
        )
    lines += [
        "",
        "## Quality per CPU-minute",
        "",
        "FID of DPM-Solver++ (20 steps) samples after training for a fixed wall-clock budget with the",
        "fastest flags measured above (wall time includes data loading, validation and saving).",
        "",
        "| model | flags | budget (s) | steps | wall (s) | FID | FID floor |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results["quality_per_budget"]:
        lines.append(
            f"| {row['model']} | {' '.join(row['flags']) or '-'} | {row['budget_seconds']:.0f} | "
            f"{row['steps']} | {row['wall_seconds']:.0f} | {row['fid']:.2f} | {row['fid_floor']:.2f} |"
        )
    return "\n".join(lines) + "\n"
