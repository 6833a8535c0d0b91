"""Score samples of a saved pipeline (or a ``.npy`` of images) against MNIST; write metrics.json and figures.

    python scripts/evaluate.py --model outputs/quickstart --num_images 1000 --sampler dpmsolver \\
        --num_inference_steps 25 --seed 0 --output outputs/quickstart/eval/metrics.json
    python scripts/evaluate.py --samples samples.npy --output metrics.json

Reports FID and KID against the MNIST test set (with the FID floor of as many real training images),
the Inception-style score, the predicted-class histogram, its normalized entropy and the mean classifier
confidence; for a model also the sampling speed and per-t curves (restoration PSNR/SSIM when its forward
process restores images, as cold ones do; else the Kolmogorov-Smirnov normality of the forward process).
Figures go beside the output: a sample grid, the class histogram, the 16 most and least confident samples
and the per-t curves.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from mnist_diffusion.evaluation.metrics import (
    FEATURE_NETWORKS,
    SampleQuality,
    forward_process_normality,
    images01_from_array,
    restoration_quality,
)
from mnist_diffusion.pipelines import load_pipeline
from mnist_diffusion.pipelines.sampling import generate, save_grid
from mnist_diffusion.schedulers import ForwardProcess, forward_process
from mnist_diffusion.training.cli import ArgumentParser, device, run_cli
from mnist_diffusion.training.data import default_mnist, load_split, uint8_to_unit_range
from mnist_diffusion.training.files import atomic_output, check_writable, write_text
from mnist_diffusion.training.train import all_sampler_names, long_sampling_notice

NUM_EXTREMES = 16
P_VALUE_FLOOR = 1e-20


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="saved pipeline folder to sample from")
    source.add_argument("--samples", help=".npy images (N, 28, 28): uint8 or float in [0, 1]")
    parser.add_argument("--num_images", type=int, default=1000, help="samples to draw (with --model)")
    parser.add_argument(
        "--sampler",
        choices=all_sampler_names(),
        default=None,
        help="a sampler of the model's forward process (default: the process's own)",
    )
    parser.add_argument(
        "--start",
        choices=("prior", "test"),
        default="prior",
        help="models that restore images (cold): sample the prior (unconditional) or restore degraded test "
        "images (conditional)",
    )
    parser.add_argument(
        "--num_inference_steps", type=int, default=None, help="default: the sampler's usual count"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--features", choices=FEATURE_NETWORKS, default="mnist")
    parser.add_argument(
        "--dataset_name",
        default=default_mnist(),
        help="Hub id or local parquet folder (default: local copy or Hub)",
    )
    parser.add_argument("--per_t_images", type=int, default=32, help="test images behind the per-t curves")
    parser.add_argument("--per_t_points", type=int, default=10, help="severities t of the restoration curves")
    parser.add_argument("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--num_threads", type=int, default=2)
    parser.add_argument("--output", required=True, help="metrics .json; figures are written beside it")
    args = parser.parse_args(argv)
    if not args.output.endswith(".json"):
        raise ValueError(f"--output {args.output!r} must end in .json")
    for name in ("num_images", "batch_size", "per_t_images", "per_t_points", "num_threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.samples and not Path(args.samples).is_file():
        raise ValueError(f"--samples {args.samples!r} is not a file")
    return args


def load_samples(path: str) -> torch.Tensor:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"could not read {path!r} as a .npy array: {error}") from error
    return images01_from_array(array)


def curve_sampler(process: ForwardProcess, sampler: str) -> str:
    """The iterative sampler of the restoration curves: ``sampler``, unless it takes a single step.

    The curves set one restoration step against the iterative run, so a one-step sampler (``direct``) is
    compared through the process's default sampler instead.
    """
    return process.default_sampler if process.samplers[sampler].default_steps == 1 else sampler


def per_t_metrics(pipeline, sampler: str, args: argparse.Namespace, test) -> dict:
    """Restoration quality per severity (processes that restore images), else forward-process normality."""
    process = forward_process(pipeline)
    if not process.restores:
        return {"kind": "forward_process_normality"} | forward_process_normality(
            pipeline, test, args.per_t_images, args.seed
        )
    first, last = process.timestep_range
    points = min(args.per_t_points, last - first)
    timesteps = np.unique(np.linspace(first + 1, last, points).round().astype(int)).tolist()
    sampler = curve_sampler(process, sampler)
    return {"kind": "restoration", "sampler": sampler} | restoration_quality(
        pipeline,
        test,
        timesteps,
        num_inference_steps=args.num_inference_steps,
        sampler=sampler,
        num_images=args.per_t_images,
        seed=args.seed,
    )


def plot_histogram(counts: list[int], entropy: float, path: Path) -> None:
    figure = Figure(figsize=(5, 3))
    axis = figure.subplots()
    axis.bar(range(len(counts)), counts, color="tab:blue")
    axis.set(xticks=range(len(counts)), xlabel="predicted class", ylabel="samples")
    axis.set_title(f"predicted classes (normalized entropy {entropy:.3f})")
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=120)


def plot_per_t(per_t: dict, path: Path) -> None:
    if per_t["kind"] == "forward_process_normality":
        figure = Figure(figsize=(6, 3.5))
        axis = figure.subplots()
        # p underflows to 0 early on; clip so that the interesting late part keeps the axis.
        axis.semilogy(per_t["timesteps"], np.maximum(per_t["ks_pvalue"], P_VALUE_FLOOR))
        axis.axhline(0.05, color="gray", linestyle="--", label="p = 0.05")
        if per_t["first_t_p_above_0.05"] is not None:
            first = per_t["first_t_p_above_0.05"]
            axis.axvline(first, color="tab:red", linestyle=":", label=f"first t with p > 0.05: {first}")
        axis.set(xlabel="t", ylabel="KS p-value of x_t vs N(0, 1)", title="forward process normality")
        axis.set_ylim(P_VALUE_FLOOR / 2, 2.0)
        axis.legend(loc="upper left")
    else:
        figure = Figure(figsize=(10, 3.5))
        axes = figure.subplots(1, 2)
        for axis, metric in zip(axes, ("psnr", "ssim"), strict=True):
            for mode, label in (("direct", "direct"), ("iterative", f"iterative ({per_t['sampler']})")):
                axis.plot(per_t["severity"], per_t[f"{metric}_{mode}"], marker="o", label=label)
            axis.set(xlabel="severity t / T", ylabel=metric.upper(), title=f"restoration {metric.upper()}")
            axis.legend()
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=120)


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, sample or load images, score them and write metrics.json and the figures."""
    args = parse_args(argv)
    torch.set_num_threads(args.num_threads)
    output = check_writable(args.output)
    metrics: dict = {
        "model": args.model,
        "samples": args.samples,
        "feature_network": args.features,
    }
    # Bad input (the samples, or a sampler the model lacks) is reported before the data is read.
    pipeline = sampler = None
    if args.samples:
        images = load_samples(args.samples)
    else:
        pipeline = load_pipeline(args.model).to(args.device)
        process = forward_process(pipeline)
        sampler = args.sampler or process.default_sampler
        process.check_sampler(sampler, args.num_inference_steps)
        steps = args.num_inference_steps or process.default_steps(sampler)
        if notice := long_sampling_notice(process, sampler, steps, args.num_images):
            print(notice, file=sys.stderr)
    test, train = load_split(args.dataset_name, "test"), load_split(args.dataset_name, "train")
    if pipeline is not None:
        if args.start == "test" and args.num_images > len(test.images):
            raise ValueError(f"--num_images {args.num_images} exceeds the {len(test.images)} test images")
        start_images = uint8_to_unit_range(test.images[: args.num_images]) if args.start == "test" else None
        began = time.perf_counter()
        images = generate(
            pipeline,
            args.num_images,
            sampler,
            args.num_inference_steps,
            args.seed,
            args.batch_size,
            True,
            start_images,
        )
        seconds = time.perf_counter() - began
        metrics |= {
            "sampler": sampler,
            "num_inference_steps": args.num_inference_steps or process.default_steps(sampler),
            "start": args.start,
            "seed": args.seed,
            "sampling_seconds": seconds,
            "images_per_second": len(images) / seconds,
        }

    quality = SampleQuality(test, train, features=args.features, seed=args.seed, device=args.device)
    evaluation = quality.evaluate(images)
    metrics |= evaluation.to_dict()

    output.parent.mkdir(parents=True, exist_ok=True)
    figures = {"samples": output.with_name(f"{output.stem}_samples.png")}
    save_grid(images[:64], figures["samples"])
    figures["class_histogram"] = output.with_name(f"{output.stem}_class_histogram.png")
    plot_histogram(evaluation.class_counts, evaluation.metrics["class_entropy"], figures["class_histogram"])
    order = evaluation.confidences.argsort(descending=True)
    count = min(NUM_EXTREMES, len(images))
    figures["most_confident"] = output.with_name(f"{output.stem}_most_confident.png")
    save_grid(images[order[:count]], figures["most_confident"])
    figures["least_confident"] = output.with_name(f"{output.stem}_least_confident.png")
    save_grid(images[order[-count:].flip(0)], figures["least_confident"])
    if pipeline is not None:
        metrics["per_t"] = per_t_metrics(pipeline, sampler, args, test)
        figures["per_t"] = output.with_name(f"{output.stem}_per_t.png")
        plot_per_t(metrics["per_t"], figures["per_t"])
    metrics["figures"] = {name: path.name for name, path in figures.items()}  # beside the JSON
    write_text(output, json.dumps(metrics, indent=2) + "\n")

    print(
        f"FID {metrics['fid']:.3f} (floor {metrics['fid_floor']:.3f})  KID {metrics['kid_mean']:.5f}  "
        f"IS {metrics['inception_score_mean']:.3f} +- {metrics['inception_score_std']:.3f}  "
        f"class entropy {metrics['class_entropy']:.3f}  confidence {metrics['mean_confidence']:.3f}"
    )
    print(f"wrote {output} and {len(figures)} figures beside it")


if __name__ == "__main__":
    sys.exit(run_cli(main))
