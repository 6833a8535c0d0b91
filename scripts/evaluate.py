"""Score samples of a saved pipeline (or a ``.npy`` of images) against MNIST; write metrics.json and figures.

    python scripts/evaluate.py --model outputs/quickstart --num_images 1000 --sampler flow_euler \\
        --num_inference_steps 25 --seed 0 --output outputs/quickstart/eval/metrics.json
    python scripts/evaluate.py --samples samples.npy --output metrics.json

Reports FID and KID against the MNIST test set (with the FID floor of as many real training images),
the Inception-style score, the predicted-class histogram, its normalized entropy and the mean classifier
confidence; for a model also the sampling speed and per-t curves (restoration PSNR/SSIM when its forward
process restores images, as cold ones do; else the Kolmogorov-Smirnov normality of the forward process).
Figures go beside the output: a sample grid, the class histogram, the 16 most and least confident samples
and the per-t curves.

A class-conditional model (``--class_conditional``) is asked for every digit equally often (``--num_images``
a multiple of 10) at ``--guidance_scale`` (default 1), and also gets its conditional accuracy: the fraction of
samples that the MNIST classifier reads as the digit asked for (and per digit). ``--guidance_curve [W ...]``
repeats that for each guidance scale (default 0 1 2 3 5), with the same seed, into ``<output>_guidance_curve
.json`` and a plot of accuracy and FID against the scale, ``<output>_guidance_curve.png``
(:mod:`mnist_diffusion.evaluation.conditional`):

    python scripts/evaluate.py --model outputs/quickstart_conditional --num_images 1000 --guidance_scale 3 \
        --guidance_curve --output outputs/quickstart_conditional/eval/metrics.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from mnist_diffusion.evaluation.conditional import (
    DEFAULT_GUIDANCE_SCALES,
    ConditionalResult,
    check_guidance_scales,
    evaluate_conditional,
    guidance_curve,
    plot_guidance_curve,
    recommended_guidance_scale,
    requested_digits,
)
from mnist_diffusion.evaluation.metrics import (
    FEATURE_NETWORKS,
    SampleQuality,
    forward_process_normality,
    images01_from_array,
    restoration_quality,
)
from mnist_diffusion.pipelines import is_class_conditional, load_pipeline
from mnist_diffusion.pipelines.guidance import num_classes
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
    parser.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        metavar="W",
        help="class-conditional models: the classifier-free guidance weight w >= 0 of the samples (default "
        "1: the model as trained); every digit is asked for equally often",
    )
    parser.add_argument(
        "--guidance_curve",
        type=float,
        nargs="*",
        default=None,
        metavar="W",
        help="class-conditional models: also score these guidance scales (default "
        + " ".join(f"{scale:g}" for scale in DEFAULT_GUIDANCE_SCALES)
        + "), each with --num_images samples of the same seed; writes <output>_guidance_curve.json and .png",
    )
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
    scale = args.guidance_scale
    if scale is not None and not (math.isfinite(scale) and scale >= 0):
        raise ValueError(f"--guidance_scale must be a finite number >= 0, got {args.guidance_scale}")
    if args.guidance_curve is not None:
        try:
            args.guidance_curve = check_guidance_scales(args.guidance_curve or DEFAULT_GUIDANCE_SCALES)
        except ValueError as error:
            raise ValueError(f"--guidance_curve: {error}") from None
    if args.samples:
        given = conditional_flags(args)
        if given:
            raise ValueError(
                f"{' and '.join(given)} sample a class-conditional model (--model); --samples are scored as "
                "they are"
            )
    return args


def conditional_flags(args: argparse.Namespace) -> list[str]:
    """The flags for class-conditional models that were given."""
    return [f"--{name}" for name in ("guidance_scale", "guidance_curve") if getattr(args, name) is not None]


def check_conditional(pipeline, args: argparse.Namespace) -> bool:
    """Whether the model is class-conditional; refuse the conditional flags for an unconditional one.

    Raises:
        ValueError: for ``--guidance_scale`` or ``--guidance_curve`` with an unconditional model; for a
            conditional one, a ``--num_images`` that is not a multiple of its classes, or ``--start test``.
    """
    if not is_class_conditional(pipeline):
        given = conditional_flags(args)
        if given:
            raise ValueError(
                f"{' and '.join(given)} need a class-conditional model, but {args.model!r} is unconditional "
                "(trained without --class_conditional)"
            )
        return False
    if args.start == "test":
        raise ValueError(
            "--start test restores test images without asking for digits; a class-conditional model is "
            f"evaluated from the prior (--start prior), each of its {num_classes(pipeline)} digits asked for "
            "equally often"
        )
    try:
        requested_digits(pipeline, args.num_images)
    except ValueError as error:
        raise ValueError(f"--num_images: {error}") from None
    return True


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


def write_guidance_curve(rows: list[dict], output: Path, metrics: dict) -> tuple[Path, Path]:
    """Write the guidance curve's JSON (settings and one row per scale) and its plot beside ``output``."""
    path = output.with_name(f"{output.stem}_guidance_curve.json")
    settings = {key: metrics.get(key) for key in ("model", "sampler", "num_inference_steps", "seed")}
    curve = {
        **settings,
        "num_images": rows[0]["num_images"],
        "feature_network": metrics["feature_network"],
        "guidance_scales": [row["guidance_scale"] for row in rows],
        "recommended_guidance_scale": recommended_guidance_scale(rows),
        "rows": rows,
    }
    write_text(path, json.dumps(curve, indent=2) + "\n")
    plot = output.with_name(f"{output.stem}_guidance_curve.png")
    plot_guidance_curve(rows, plot)
    return path, plot


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
    conditional = False
    if args.samples:
        images = load_samples(args.samples)
    else:
        pipeline = load_pipeline(args.model).to(args.device)
        conditional = check_conditional(pipeline, args)
        process = forward_process(pipeline)
        sampler = args.sampler or process.default_sampler
        process.check_sampler(sampler, args.num_inference_steps)
        steps = args.num_inference_steps or process.default_steps(sampler)
        if notice := long_sampling_notice(process, sampler, steps, args.num_images):
            print(notice, file=sys.stderr)
    test, train = load_split(args.dataset_name, "test"), load_split(args.dataset_name, "train")
    quality = SampleQuality(test, train, features=args.features, seed=args.seed, device=args.device)
    result: ConditionalResult | None = None
    if pipeline is not None:
        if args.start == "test" and args.num_images > len(test.images):
            raise ValueError(f"--num_images {args.num_images} exceeds the {len(test.images)} test images")
        start_images = uint8_to_unit_range(test.images[: args.num_images]) if args.start == "test" else None
        if conditional:
            guidance_scale = 1.0 if args.guidance_scale is None else args.guidance_scale
            result = evaluate_conditional(
                pipeline, quality, args.num_images, guidance_scale, sampler, args.num_inference_steps,
                args.seed, args.batch_size, True,
            )  # fmt: skip
            images, seconds, evaluation = result.images, result.sampling_seconds, result.evaluation
        else:
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
    if result is None:
        evaluation = quality.evaluate(images)
    else:
        metrics |= {
            "class_conditional": True,
            "class_labels": f"every digit equally often ({args.num_images // num_classes(pipeline)} each)",
            "guidance_scale": result.guidance_scale,
        }
    metrics |= evaluation.to_dict()
    if result is not None:
        metrics["per_digit_accuracy"] = result.per_digit_accuracy

    output.parent.mkdir(parents=True, exist_ok=True)
    figures = {"samples": output.with_name(f"{output.stem}_samples.png")}
    # A conditional model's grid: one column per digit asked for (the labels go 0, 1, ..., 9 in turn).
    save_grid(images[:100] if conditional else images[:64], figures["samples"], 10 if conditional else None)
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
    curve_json = None
    if result is not None and args.guidance_curve is not None:
        rows = guidance_curve(
            pipeline, quality, args.num_images, args.guidance_curve, sampler, args.num_inference_steps,
            args.seed, args.batch_size, True, done=[result],
            on_result=lambda done: print(
                f"guidance scale {done.guidance_scale:g}: conditional accuracy {done.accuracy:.3f}, "
                f"FID {done.evaluation.metrics['fid']:.3f}", file=sys.stderr,
            ),
        )  # fmt: skip
        metrics["guidance_curve"] = rows
        metrics["recommended_guidance_scale"] = recommended_guidance_scale(rows)
        curve_json, figures["guidance_curve"] = write_guidance_curve(rows, output, metrics)
    metrics["figures"] = {name: path.name for name, path in figures.items()}  # beside the JSON
    if curve_json is not None:
        metrics["guidance_curve_file"] = curve_json.name
    write_text(output, json.dumps(metrics, indent=2) + "\n")

    print(
        f"FID {metrics['fid']:.3f} (floor {metrics['fid_floor']:.3f})  KID {metrics['kid_mean']:.5f}  "
        f"IS {metrics['inception_score_mean']:.3f} +- {metrics['inception_score_std']:.3f}  "
        f"class entropy {metrics['class_entropy']:.3f}  confidence {metrics['mean_confidence']:.3f}"
    )
    if result is not None:
        print(
            f"conditional accuracy {result.accuracy:.3f} at guidance scale {result.guidance_scale:g} (the "
            "classifier reads the digit asked for)"
        )
    for row in metrics.get("guidance_curve", []):
        print(
            f"  guidance scale {row['guidance_scale']:g}: accuracy {row['conditional_accuracy']:.3f}  "
            f"FID {row['fid']:.3f} (floor {row['fid_floor']:.3f})  class entropy {row['class_entropy']:.3f}"
        )
    extra = f" and {curve_json.name}" if curve_json is not None else ""
    print(f"wrote {output}{extra} and {len(figures)} figures beside it")


if __name__ == "__main__":
    sys.exit(run_cli(main))
