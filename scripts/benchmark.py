"""Benchmark training throughput, sampling speed and quality per CPU-minute against the classic loop.

    python scripts/benchmark.py --output benchmarks/results.json            # full run, quiet machine
    python scripts/benchmark.py --quick --output benchmarks/results.json    # smoke run, under 2 minutes
    python scripts/benchmark.py --section quality                           # recipes, hours; resumes
    python scripts/benchmark.py --section quality --quick                   # smoke run, synthetic data
    python scripts/benchmark.py --section fewstep                           # flow teacher, ~70 min; resumes
    python scripts/benchmark.py --section fewstep --process gaussian        # Gaussian teacher, ~2 h
    python scripts/benchmark.py --section fewstep --quick                   # smoke run, under a minute
    python scripts/benchmark.py --section conditional                       # labels and guidance; resumes
    python scripts/benchmark.py --section conditional --quick               # smoke run, synthetic data

``--section speed`` (the default) writes the results as JSON and as a markdown table (``README.md`` beside
the JSON unless ``--markdown`` says otherwise) and prints the table; see
:mod:`mnist_diffusion.evaluation.benchmark` for what it measures. ``--section quality`` trains each training
recipe for 30 minutes and scores it after 2.5, 5, 10, 20 and 30 minutes
(:mod:`mnist_diffusion.evaluation.quality`); it writes ``benchmarks/quality_per_minute.json``, the plot
``quality_per_minute.png`` beside it and its own section of ``README.md`` (which the speed section keeps), and
a run killed at any point is finished by running the same command again. ``--section fewstep`` distils a
teacher (``outputs/fast_cpu_flow`` or ``outputs/fast_cpu_gaussian``, trained first from its recipe when the
folder holds no pipeline) with ``training/distill.py`` and scores the teacher's full and fast samplers and its
4-, 2- and 1-step students side by side (:mod:`mnist_diffusion.evaluation.fewstep`) into
``benchmarks/fewstep_<process>.json`` and a Markdown table beside it; it resumes the same way.
``--section conditional`` trains the quickstart recipe with and without ``--class_conditional`` side by side
and every cold degradation with it, at equal budgets, and scores FID, the conditional accuracy and guidance
curves (:mod:`mnist_diffusion.evaluation.conditional_benchmark`) into ``benchmarks/conditional.json`` and a
Markdown table beside it; it resumes the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from mnist_diffusion.evaluation.benchmark import (
    VARIANTS,
    Reference,
    ThroughputPlan,
    compare_samplers,
    compare_training,
    cpu_supports_bf16,
    fastest_variant,
    machine_info,
    markdown_report,
    quality_after_training,
    train_argv,
    train_steps,
)
from mnist_diffusion.evaluation.quality import (
    MINUTES,
    QUICK_MINUTES,
    RECIPES,
    QualityPlan,
    Results,
    existing_section,
)
from mnist_diffusion.pipelines import load_pipeline
from mnist_diffusion.training.cli import ArgumentParser, run_cli
from mnist_diffusion.training.data import (
    default_fashion_mnist,
    default_mnist,
    load_split,
    write_synthetic_mnist,
)
from mnist_diffusion.training.files import check_writable, write_text
from mnist_diffusion.training.train import parse_args as parse_train_args

QUICKSTART_DIR = Path("outputs/quickstart")
# Defaults of the full run and of --quick (a smoke run: tiny data, a tiny UNet, few steps and samples).
PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "batch_size": 128,
        "train_samples": None,
        "validation_images": 2000,
        "reference_images": None,
        "unet_preset": "small",
        "warmup_steps": 5,
        "windows": 5,
        "window_steps": 20,
        "budget_seconds": 600.0,
        "num_fid_images": 1000,
        "variants": ["default", "channels_last", "compile", "bf16"],
        "num_threads": None,
    },
    "quick": {
        "batch_size": 32,
        "train_samples": 1024,
        "validation_images": 256,
        "reference_images": 1000,
        "unet_preset": "tiny",
        "warmup_steps": 2,
        "windows": 2,
        "window_steps": 2,
        "budget_seconds": 8.0,
        "num_fid_images": 16,
        "variants": ["default", "channels_last"],
        # One thread: with every core in use, a busy machine can stall a multi-threaded step up to 25x.
        "num_threads": 1,
    },
}
# Trainer flags for the quality runs: a few cheap samples at the end instead of a grid every epoch.
QUIET_TRAINING = {
    "save_images_epochs": 10**6,
    "num_sample_images": 4,
    "sampler": "dpmsolver",
    "sample_inference_steps": 10,
    "checkpointing_steps": 10**9,
}


SECTIONS = ("speed", "quality", "fewstep", "conditional")
CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
# Per teacher process: the teacher's folder and recipe, and the distillation's config.
FEWSTEP_PRESETS = {
    "flow": (Path("outputs/fast_cpu_flow"), CONFIGS / "fast_cpu_flow.yaml", CONFIGS / "distill_flow.yaml"),
    "gaussian": (
        Path("outputs/fast_cpu_gaussian"),
        CONFIGS / "fast_cpu_gaussian.yaml",
        CONFIGS / "distill_gaussian.yaml",
    ),
}
# --section fewstep --quick: a tiny CNN teacher (T = 20) trained for a few steps, distilled from 8 steps in
# rounds of 2 steps.
FEWSTEP_QUICK_TEACHER_FLAGS = (
    "--model=cnn",
    "--n_hidden",
    "8",
    "8",
    "--num_train_timesteps=20",
    "--max_train_steps=4",
    "--train_batch_size=16",
    "--num_validation_images=16",
    "--eval_batch_size=16",
    "--num_sample_images=2",
    "--sample_inference_steps=2",
    "--save_images_epochs=1000000",
    "--checkpointing_steps=1000000",
    "--lr_warmup_steps=0",
    "--num_threads=1",
)
FEWSTEP_QUICK_DISTILL_FLAGS = (
    "--teacher_steps=8",
    "--steps_per_round=2",
    "--train_batch_size=16",
    "--num_sample_images=2",
    "--logging_steps=1",
    "--checkpointing_steps=2",
    "--num_threads=1",
)
FEWSTEP_QUICK_NUM_IMAGES = 16
# The quality section's --quick: synthetic data and train.py flags that make each recipe's run a smoke run
# (time, not steps, ends it, so every minute mark is reached however fast the machine is).
QUICK_QUALITY = {"num_fid_images": 16, "num_inference_steps": 2}
QUICK_TRAIN_FLAGS = (
    "--max_train_steps=1000000",
    "--train_batch_size=8",
    "--num_validation_images=16",
    "--eval_batch_size=16",
    "--num_sample_images=2",
    "--sample_inference_steps=2",
    "--save_images_epochs=1000000",
    "--checkpointing_steps=1000000",
    "--lr_warmup_steps=0",
    "--num_threads=1",
)


def add_section_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--section",
        choices=SECTIONS,
        default="speed",
        help="speed: training throughput, samplers and quality per budget (default); quality: FID per "
        "CPU-minute of each training recipe; fewstep: a teacher against its distilled 4-, 2- and 1-step "
        "students; conditional: class-conditional training and guidance, the quickstart recipe and every "
        "cold degradation (see `--section quality --help`, `--section fewstep --help`, `--section "
        "conditional --help`)",
    )


def quick_dataset(folder: Path) -> str:
    """The synthetic MNIST of a section's ``--quick`` run in ``folder``, written on the first run only."""
    if not (Path(folder) / "data").is_dir():
        write_synthetic_mnist(folder, 256, 64)
    return str(folder)


def check_results_paths(output: str, markdown: str | Path) -> None:
    """A section's results ``.json`` and its Markdown table must be writable, before any work.

    Raises:
        ValueError: if ``output`` is not a ``.json`` path, or either file cannot be written.
    """
    if not output.endswith(".json"):
        raise ValueError(f"--output {output!r} must end in .json")
    check_writable(output)
    check_writable(markdown, "--markdown")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_section_flag(parser)
    parser.add_argument("--quick", action="store_true", help="smoke run in under 2 minutes")
    parser.add_argument("--output", default="benchmarks/results.json", help="results .json")
    parser.add_argument("--markdown", default=None, help="markdown table; default README.md beside --output")
    parser.add_argument(
        "--dataset_name",
        default=default_mnist(),
        help="Hub id or local parquet folder (default: ../shared/data/mnist when present)",
    )
    parser.add_argument(
        "--model", default=None, help=f"Gaussian pipeline to sample (ddpm, ddim, dpmsolver); {QUICKSTART_DIR}"
    )
    parser.add_argument("--unet_preset", choices=("tiny", "small", "base"), default=None)
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="the quickstart's")
    parser.add_argument("--train_samples", type=int, default=None, help="training images (default: all)")
    parser.add_argument("--validation_images", type=int, default=None, help="held-out images for the loss")
    parser.add_argument("--reference_images", type=int, default=None, help="test images for FID (all)")
    parser.add_argument("--warmup_steps", type=int, default=None)
    parser.add_argument("--windows", type=int, default=None, help="timed windows per training loop")
    parser.add_argument("--window_steps", type=int, default=None, help="optimisation steps per window")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None)
    parser.add_argument("--reference_num_workers", type=int, default=4, help="as the classic notebook")
    parser.add_argument("--budget_seconds", type=float, default=None, help="training budget per network")
    parser.add_argument("--num_fid_images", type=int, default=None, help="samples per FID")
    parser.add_argument("--num_threads", type=int, default=None, help="torch threads (all; --quick: 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, value in PRESETS["quick" if args.quick else "full"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    _validate(args)
    return args


def _validate(args: argparse.Namespace) -> None:
    check_results_paths(args.output, args.markdown or Path(args.output).with_name("README.md"))
    for name in ("batch_size", "validation_images", "windows", "window_steps", "num_fid_images"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}")
    for name in ("train_samples", "reference_images", "num_threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}")
    for name in ("warmup_steps", "reference_num_workers"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must not be negative, got {getattr(args, name)}")
    if args.budget_seconds <= 0:
        raise ValueError(f"--budget_seconds must be positive, got {args.budget_seconds}")
    if args.num_fid_images < 2:
        raise ValueError(f"--num_fid_images must be at least 2 for FID, got {args.num_fid_images}")
    if args.model is not None and not Path(args.model).is_dir():
        raise ValueError(f"--model {args.model!r} is not a folder")
    if args.model is None and not args.quick and not QUICKSTART_DIR.is_dir():
        raise ValueError(f"no model to sample: pass --model DIR or run `make quickstart` ({QUICKSTART_DIR})")
    model_dir = args.model or (str(QUICKSTART_DIR) if QUICKSTART_DIR.is_dir() else None)
    if model_dir is not None:
        # Before the long training sections: the folder to sample must hold a pipeline.
        load_pipeline(model_dir)


def network_argv(args: argparse.Namespace, model: str) -> list[str]:
    """train.py flags of one benchmark network and its data."""
    extra = {"learning_rate": args.learning_rate, "num_validation_images": args.validation_images}
    if args.train_samples is not None:
        extra["max_train_samples"] = args.train_samples
    return train_argv(args.dataset_name, model, args.unet_preset, args.batch_size, args.seed, **extra)


def smoke_model(args: argparse.Namespace, output_dir: Path) -> str:
    """Train a tiny CNN for a few steps (``--quick`` without a model): a pipeline to time, not to judge."""
    argv = network_argv(args, "cnn") + ["--n_hidden", "8", "8", "--kernel_size=3"]
    argv += [f"--{name}={value}" for name, value in QUIET_TRAINING.items()]
    return train_steps([*argv, f"--output_dir={output_dir}"], steps=5)["output_dir"]


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """All three sections of the benchmark; returns the JSON-ready results."""
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    variants = list(args.variants)
    skipped = {}
    if "bf16" in variants and not cpu_supports_bf16():
        variants.remove("bf16")
        skipped["bf16"] = "no native bf16 kernels on this CPU (bf16 would be emulated and slower)"
    if not variants:
        raise ValueError("no project variant left to measure; add --variants default")
    results: dict[str, Any] = {
        "schema_version": 1,
        "quick": args.quick,
        "command": command,
        "machine": machine_info(),
        "settings": {key: value for key, value in vars(args).items() if key not in ("output", "markdown")},
        "skipped_variants": skipped,
    }
    plan = ThroughputPlan(args.warmup_steps, args.windows, args.window_steps)
    with tempfile.TemporaryDirectory(prefix="mnist-benchmark-") as scratch:
        scratch = Path(scratch)
        training = [
            compare_training(
                network_argv(args, model), variants, plan, args.reference_num_workers, scratch / model
            )
            for model in ("cnn", "unet")
        ]
        results["training"] = training

        test = load_split(args.dataset_name, "test", args.reference_images)
        floor = load_split(args.dataset_name, "train", max(args.num_fid_images, 10_000))
        reference = Reference(test.images, floor.images)
        results["quality_per_budget"] = []
        for model, section in zip(("cnn", "unet"), training, strict=True):
            variant = fastest_variant(section)
            argv = network_argv(args, model) + [f"--{name}={value}" for name, value in QUIET_TRAINING.items()]
            argv += [f"--output_dir={scratch / f'budget-{model}'}", *VARIANTS[variant]]
            # The step count that the measured rate of these flags fits into the budget.
            rate = section["loops"][variant]["images_per_second"]
            steps = max(1, round(args.budget_seconds * rate / args.batch_size))
            row = quality_after_training(argv, steps, args.num_fid_images, reference, args.seed)
            results["quality_per_budget"].append(
                {
                    "model": section["model"],
                    "flags": list(VARIANTS[variant]),
                    "budget_seconds": args.budget_seconds,
                    **row,
                }
            )

        if args.model or QUICKSTART_DIR.is_dir():
            model_dir = label = args.model or str(QUICKSTART_DIR)
        else:
            model_dir = smoke_model(args, scratch / "smoke")
            label = "smoke run: a tiny CNN trained for 5 steps in-process (times only, FID meaningless)"
        results["sampling"] = {
            "model": label,
            "num_images": args.num_fid_images,
            "rows": compare_samplers(load_pipeline(model_dir), args.num_fid_images, reference, args.seed),
        }
    return results


def parse_quality_args(argv: list[str]) -> argparse.Namespace:
    """Flags of ``--section quality``; every value is checked before any training."""
    parser = ArgumentParser(
        description="Quality per CPU-minute: train each recipe for 30 minutes, score it after 2.5 to 30."
    )
    add_section_flag(parser)
    parser.add_argument("--quick", action="store_true", help="smoke run on synthetic data, in about a minute")
    parser.add_argument(
        "--output",
        default=None,
        help="results .json (default: benchmarks/quality_per_minute.json; --quick: "
        "outputs/quality_per_minute_quick/quality_per_minute.json); continued when it exists",
    )
    parser.add_argument("--markdown", default=None, help="README.md to put the section in (beside --output)")
    parser.add_argument("--plot", default=None, help="plot .png (default: beside --output, same name)")
    parser.add_argument(
        "--recipes",
        nargs="+",
        choices=list(RECIPES),
        default=list(RECIPES),
        help="recipes to train and score, in this order (default: all: " + ", ".join(RECIPES) + ")",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        nargs="+",
        default=None,
        help="training-loop minutes of the scored checkpoints (default: "
        + " ".join(f"{m:g}" for m in MINUTES)
        + ")",
    )
    parser.add_argument(
        "--work_dir",
        default=None,
        help="training folders, one per recipe (default: outputs/quality_per_minute[_quick])",
    )
    parser.add_argument(
        "--dataset_name",
        default=None,
        help="Hub id or local parquet folder (default: ../shared/data/mnist when present; --quick: "
        "synthetic)",
    )
    parser.add_argument(
        "--num_fid_images", type=int, default=None, help="samples per score (1000; --quick: 16)"
    )
    parser.add_argument(
        "--num_inference_steps", type=int, default=None, help="sampler steps (default: each recipe's own)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    suffix = "_quick" if args.quick else ""
    args.work_dir = Path(args.work_dir or f"outputs/quality_per_minute{suffix}")
    if args.output is None:
        args.output = str(
            args.work_dir / "quality_per_minute.json"
            if args.quick
            else Path("benchmarks/quality_per_minute.json")
        )
    args.minutes = tuple(sorted(args.minutes or (QUICK_MINUTES if args.quick else MINUTES)))
    for name, value in QUICK_QUALITY.items():
        if getattr(args, name) is None and args.quick:
            setattr(args, name, value)
    args.num_fid_images = args.num_fid_images or 1000
    if args.num_fid_images < 2:
        raise ValueError(f"--num_fid_images must be at least 2 for FID, got {args.num_fid_images}")
    if args.num_inference_steps is not None and args.num_inference_steps < 1:
        raise ValueError(f"--num_inference_steps must be at least 1, got {args.num_inference_steps}")
    if not all(m > 0 for m in args.minutes):
        raise ValueError(f"--minutes must all be positive, got {list(args.minutes)}")
    if len(set(args.recipes)) != len(args.recipes):
        raise ValueError(f"--recipes names one recipe twice: {args.recipes}")
    output = Path(args.output)
    args.markdown = Path(args.markdown) if args.markdown else output.with_name("README.md")
    args.plot = Path(args.plot) if args.plot else output.with_suffix(".png")
    check_results_paths(args.output, args.markdown)
    check_writable(args.plot, "--plot")
    return args


def quality_main(argv: list[str], command: str) -> None:
    """``--section quality``: train and score the recipes (resuming); write the JSON, plot and section."""
    from mnist_diffusion.evaluation.metrics import SampleQuality
    from mnist_diffusion.evaluation.quality import run_quality, write_report

    args = parse_quality_args(argv)
    if args.dataset_name is None:
        quick = args.work_dir / "synthetic_mnist"
        args.dataset_name = quick_dataset(quick) if args.quick else default_mnist()
    plan = QualityPlan(
        recipes={name: RECIPES[name] for name in args.recipes},
        minutes=args.minutes,
        dataset_name=args.dataset_name,
        work_dir=args.work_dir,
        num_images=args.num_fid_images,
        seed=args.seed,
        num_inference_steps=args.num_inference_steps,
        train_flags=QUICK_TRAIN_FLAGS if args.quick else (),
        quick=args.quick,
    )
    # Every recipe's flags are checked (by train.py's own parser) before the first one trains.
    for name in plan.recipes:
        parse_train_args(plan.train_argv(name))
    results = Results.open(Path(args.output), plan, command)
    test, train = load_split(plan.dataset_name, "test"), load_split(plan.dataset_name, "train")
    quality = SampleQuality(test, train, seed=plan.seed)
    data = run_quality(plan, results, quality)
    section = write_report(data, args.markdown, args.plot)
    print(section)


def parse_fewstep_args(argv: list[str]) -> argparse.Namespace:
    """Flags of ``--section fewstep``; every value is checked before any training."""
    parser = ArgumentParser(
        description="Few-step students: a teacher's full and fast samplers against its 4-, 2- and 1-step "
        "students."
    )
    add_section_flag(parser)
    parser.add_argument(
        "--process", choices=tuple(FEWSTEP_PRESETS), default="flow", help="the teacher's process"
    )
    parser.add_argument(
        "--teacher", default=None, help="teacher pipeline folder (default: the process's recipe)"
    )
    parser.add_argument(
        "--teacher_config",
        default=None,
        help="train.py config that trains the teacher when its folder has no pipeline (default: the recipe; "
        "'none': the teacher must exist)",
    )
    parser.add_argument("--distill_config", default=None, help="distill.py config (default: the process's)")
    parser.add_argument("--work_dir", default=None, help="the students' folder (default: outputs/fewstep/P)")
    parser.add_argument(
        "--dataset_name",
        default=default_mnist(),
        help="Hub id or local parquet folder (default: ../shared/data/mnist when present)",
    )
    parser.add_argument("--num_images", type=int, default=None, help="samples per row (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_threads", type=int, default=None, help="torch threads for sampling and FID")
    parser.add_argument("--output", default=None, help="results .json (default benchmarks/fewstep_P.json)")
    parser.add_argument("--markdown", default=None, help="Markdown table (default: --output with .md)")
    parser.add_argument("--quick", action="store_true", help="smoke run on synthetic data, under a minute")
    args = parser.parse_args(argv)
    teacher, recipe, distill_config = FEWSTEP_PRESETS[args.process]
    if args.quick:
        work = Path(args.work_dir or f"outputs/fewstep_quick/{args.process}")
        args.teacher = args.teacher or str(work / "teacher")
        args.work_dir = str(work / "students")
    args.teacher = args.teacher or str(teacher)
    args.teacher_config = None if args.teacher_config == "none" else (args.teacher_config or str(recipe))
    args.distill_config = args.distill_config or str(distill_config)
    args.work_dir = args.work_dir or f"outputs/fewstep/{args.process}"
    args.num_images = args.num_images or (FEWSTEP_QUICK_NUM_IMAGES if args.quick else 1000)
    args.output = args.output or f"benchmarks/fewstep_{args.process}{'_quick' if args.quick else ''}.json"
    args.markdown = args.markdown or str(Path(args.output).with_suffix(".md"))
    if args.num_images < 2:
        raise ValueError(f"--num_images must be at least 2 for FID, got {args.num_images}")
    if args.num_threads is not None and args.num_threads < 1:
        raise ValueError(f"--num_threads must be at least 1, got {args.num_threads}")
    for name in ("teacher_config", "distill_config"):
        if getattr(args, name) is not None and not Path(getattr(args, name)).is_file():
            raise ValueError(f"--{name} {getattr(args, name)!r} is not a file")
    if args.teacher_config is None and not (Path(args.teacher) / "model_index.json").is_file():
        raise ValueError(f"--teacher {args.teacher!r} holds no pipeline and --teacher_config is none")
    check_results_paths(args.output, args.markdown)
    return args


def fewstep_main(argv: list[str], command: str) -> None:
    """``--section fewstep``: train the teacher if needed, distil, score (resuming); write JSON and table."""
    from mnist_diffusion.evaluation.fewstep import STUDENT_STEPS, FewStepPlan, run_fewstep
    from mnist_diffusion.evaluation.fewstep import Results as FewStepResults
    from mnist_diffusion.evaluation.fewstep import write_report as write_fewstep_report
    from mnist_diffusion.evaluation.metrics import SampleQuality

    args = parse_fewstep_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    dataset = quick_dataset(Path(args.work_dir).parent / "data") if args.quick else args.dataset_name
    plan = FewStepPlan(
        process=args.process,
        teacher=Path(args.teacher),
        distill_config=Path(args.distill_config),
        work_dir=Path(args.work_dir),
        teacher_config=Path(args.teacher_config) if args.teacher_config else None,
        dataset_name=dataset,
        num_images=args.num_images,
        seed=args.seed,
        student_steps=STUDENT_STEPS,
        train_flags=FEWSTEP_QUICK_TEACHER_FLAGS if args.quick else (),
        distill_flags=FEWSTEP_QUICK_DISTILL_FLAGS if args.quick else (),
        quick=args.quick,
    )
    results = FewStepResults.open(Path(args.output), plan, command)
    quality = SampleQuality(load_split(dataset, "test"), load_split(dataset, "train"), seed=args.seed)
    data = run_fewstep(plan, results, quality)
    print(write_fewstep_report(data, Path(args.markdown)))
    print(f"wrote {args.output} and {args.markdown}")


# --section conditional --quick: tiny networks trained for two steps on synthetic data, every sampler capped
# at 2 steps, 20 samples per score (2 of each digit).
CONDITIONAL_QUICK_TRAIN_FLAGS = (
    "--max_train_steps=2",
    "--train_batch_size=8",
    "--num_validation_images=16",
    "--eval_batch_size=16",
    "--num_sample_images=2",
    "--sample_inference_steps=2",
    "--eval_num_images=4",
    "--save_images_epochs=1000000",
    "--checkpointing_steps=1000000",
    "--lr_warmup_steps=0",
    "--num_threads=1",
)
CONDITIONAL_QUICK = {"num_images": 20, "num_inference_steps": 2}


def parse_conditional_args(argv: list[str]) -> argparse.Namespace:
    """Flags of ``--section conditional``; every value is checked before any training."""
    from mnist_diffusion.evaluation.conditional import DEFAULT_GUIDANCE_SCALES, check_guidance_scales
    from mnist_diffusion.evaluation.conditional_benchmark import (
        COLD_DEGRADATIONS,
        COLD_MAX_STEPS,
        COLD_MINUTES,
    )
    from mnist_diffusion.training.train import NUM_CLASSES

    parser = ArgumentParser(
        description="Class-conditional generation at equal budget: the quickstart recipe with and without "
        "labels, and every cold degradation with them; FID, conditional accuracy and guidance curves."
    )
    add_section_flag(parser)
    parser.add_argument("--quick", action="store_true", help="smoke run on synthetic data, a minute or two")
    parser.add_argument(
        "--output",
        default=None,
        help="results .json (default: benchmarks/conditional.json; --quick: "
        "outputs/conditional_benchmark_quick/conditional.json); continued when it exists",
    )
    parser.add_argument("--markdown", default=None, help="Markdown table (default: --output with .md)")
    parser.add_argument(
        "--work_dir", default=None, help="training folders (default: outputs/conditional_benchmark[_quick])"
    )
    parser.add_argument(
        "--dataset_name",
        default=None,
        help="Hub id or local parquet folder (default: ../shared/data/mnist when present; --quick: "
        "synthetic)",
    )
    parser.add_argument(
        "--target_dataset",
        default=None,
        help="the morph degradation's target images (default: ../shared/data/fashion_mnist when present; "
        "--quick: the synthetic data)",
    )
    parser.add_argument(
        "--num_images",
        type=int,
        default=None,
        help=f"samples per score, a multiple of {NUM_CLASSES} (default 1000; --quick: 20)",
    )
    parser.add_argument(
        "--guidance_scales",
        type=float,
        nargs="+",
        default=list(DEFAULT_GUIDANCE_SCALES),
        metavar="W",
        help="the guidance curves' scales (default "
        + " ".join(f"{scale:g}" for scale in DEFAULT_GUIDANCE_SCALES)
        + ")",
    )
    parser.add_argument(
        "--degradations",
        nargs="+",
        choices=COLD_DEGRADATIONS,
        default=list(COLD_DEGRADATIONS),
        help="the cold degradations to train and score, in this order (default: all)",
    )
    parser.add_argument(
        "--cold_minutes",
        type=float,
        default=COLD_MINUTES,
        help=f"training-loop minutes of every cold run (default {COLD_MINUTES:g}, the quickstart's; --quick "
        "runs stop after 2 steps)",
    )
    parser.add_argument(
        "--cold_max_steps",
        type=int,
        default=COLD_MAX_STEPS,
        help=f"a cap on every cold sampler's steps, spaced evenly from T to 1 (default {COLD_MAX_STEPS})",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_threads", type=int, default=None, help="torch threads for sampling and FID")
    args = parser.parse_args(argv)
    suffix = "_quick" if args.quick else ""
    args.work_dir = Path(args.work_dir or f"outputs/conditional_benchmark{suffix}")
    args.output = args.output or str(
        args.work_dir / "conditional.json" if args.quick else Path("benchmarks/conditional.json")
    )
    args.markdown = Path(args.markdown or Path(args.output).with_suffix(".md"))
    args.num_inference_steps = CONDITIONAL_QUICK["num_inference_steps"] if args.quick else None
    if args.num_images is None:
        args.num_images = CONDITIONAL_QUICK["num_images"] if args.quick else 1000
    if args.num_images < NUM_CLASSES or args.num_images % NUM_CLASSES:
        raise ValueError(
            f"--num_images must be a positive multiple of {NUM_CLASSES} (each digit asked for equally "
            f"often), got {args.num_images}"
        )
    if not args.cold_minutes > 0:
        raise ValueError(f"--cold_minutes must be positive, got {args.cold_minutes:g}")
    if args.cold_max_steps < 1:
        raise ValueError(f"--cold_max_steps must be at least 1, got {args.cold_max_steps}")
    if args.num_threads is not None and args.num_threads < 1:
        raise ValueError(f"--num_threads must be at least 1, got {args.num_threads}")
    if len(set(args.degradations)) != len(args.degradations):
        raise ValueError(f"--degradations names one degradation twice: {args.degradations}")
    try:
        args.guidance_scales = check_guidance_scales(args.guidance_scales)
    except ValueError as error:
        raise ValueError(f"--guidance_scales: {error}") from None
    check_results_paths(args.output, args.markdown)
    return args


def conditional_main(argv: list[str], command: str) -> None:
    """``--section conditional``: train and score (resuming); write the JSON and the Markdown table."""
    from mnist_diffusion.evaluation.conditional_benchmark import (
        ConditionalPlan,
        run_conditional,
        write_report,
    )
    from mnist_diffusion.evaluation.conditional_benchmark import Results as ConditionalResults
    from mnist_diffusion.evaluation.metrics import SampleQuality

    args = parse_conditional_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    dataset, targets = args.dataset_name, args.target_dataset
    if dataset is None:
        dataset = quick_dataset(args.work_dir / "synthetic_mnist") if args.quick else default_mnist()
    targets = targets or (dataset if args.quick else default_fashion_mnist())
    plan = ConditionalPlan(
        work_dir=args.work_dir,
        dataset_name=dataset,
        target_dataset=targets,
        num_images=args.num_images,
        guidance_scales=args.guidance_scales,
        seed=args.seed,
        degradations=tuple(args.degradations),
        cold_minutes=args.cold_minutes,
        cold_max_steps=args.cold_max_steps,
        num_inference_steps=args.num_inference_steps,
        train_flags=CONDITIONAL_QUICK_TRAIN_FLAGS if args.quick else (),
        quick=args.quick,
    )
    # Every run's flags are checked (by train.py's own parser) before the first one trains.
    for conditional in (False, True):
        parse_train_args(plan.quickstart_argv(conditional))
    for name in plan.degradations:
        parse_train_args(plan.cold_argv(name))
    results = ConditionalResults.open(Path(args.output), plan, command)
    quality = SampleQuality(load_split(dataset, "test"), load_split(dataset, "train"), seed=args.seed)
    data = run_conditional(plan, results, quality)
    print(write_report(data, args.markdown))
    print(f"wrote {args.output} and {args.markdown}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = "python scripts/benchmark.py " + " ".join(argv)
    section = ArgumentParser(add_help=False)
    add_section_flag(section)
    chosen = section.parse_known_args(argv)[0].section
    if chosen != "speed":
        sections = {"quality": quality_main, "fewstep": fewstep_main, "conditional": conditional_main}
        sections[chosen](argv, command)
        return
    args = parse_args(argv)
    results = run(args, command)
    output = Path(args.output)
    markdown = Path(args.markdown) if args.markdown else output.with_name("README.md")
    output.parent.mkdir(parents=True, exist_ok=True)
    markdown.parent.mkdir(parents=True, exist_ok=True)
    write_text(output, json.dumps(results, indent=2) + "\n")
    table = markdown_report(results)
    # The quality section is measured separately (--section quality, hours); keep it.
    kept = existing_section(markdown.read_text()) if markdown.is_file() else None
    write_text(markdown, table + ("\n" + kept if kept else ""))
    print(table)


if __name__ == "__main__":
    sys.exit(run_cli(main))
