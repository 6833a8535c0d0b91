"""Draw samples from a saved pipeline folder and write a PNG grid or a ``.npy`` array.

    python scripts/sample.py --model outputs/quickstart --num_images 64 --sampler flow_euler \\
        --num_inference_steps 25 --seed 0 --output samples.png
    python scripts/sample.py --model outputs/quickstart_conditional --digits all --num_images 8 \\
        --guidance_scale 3 --output digits.png    # a class-conditional model: one row per digit

``.npy`` output is a float32 array of shape ``(N, 28, 28)`` in ``[0, 1]``, in the order the images were
asked for (with ``--digits all``: digit 0's images first). The same seed gives the same images.
``--sampler`` is one of the samplers of the pipeline's forward process (Gaussian: ddpm, ddim, dpmsolver;
flow matching: flow_euler, flow_heun; cold: improved, naive, direct); by default the process's own.

A class-conditional model (trained with ``--class_conditional``) draws the digits asked for with
``--digits``, guided with ``--guidance_scale``; without ``--digits`` it draws every digit in turn (0, 1, ...,
9, 0, ...), one column per digit in the grid, as the training's sample grids do. ``--digits any`` samples it
unconditionally. Both flags are refused for an unconditional model, before any sampling.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mnist_diffusion.pipelines import load_pipeline
from mnist_diffusion.pipelines.guidance import balanced_labels, num_classes
from mnist_diffusion.pipelines.sampling import generate, save_grid
from mnist_diffusion.schedulers import forward_process
from mnist_diffusion.training.cli import ArgumentParser, run_cli
from mnist_diffusion.training.files import atomic_output, check_writable
from mnist_diffusion.training.train import all_sampler_names, long_sampling_notice

OUTPUT_SUFFIXES = (".png", ".npy")
DEFAULT_NUM_IMAGES = 64
# --digits all: images per digit (the grid's columns) unless --num_images says otherwise.
DEFAULT_PER_DIGIT = 8
DIGITS_HELP = (
    "Class-conditional models only: the digit of each image, as many as --num_images (which then defaults "
    "to their number), or one digit for all images; 'all': a grid with one row per digit 0-9 and "
    f"--num_images images per digit (default {DEFAULT_PER_DIGIT}) as its columns; 'any': unconditional "
    "samples (no digit asked for). Default: every digit in turn (0, 1, ..., 9, 0, ...), one column per "
    "digit in the grid."
)
GUIDANCE_HELP = (
    "Class-conditional models only: the classifier-free guidance weight w >= 0 (uncond + w * (cond - "
    "uncond)). 1, the default, samples the model as trained; 0 ignores the digit; above 1 pushes each image "
    "harder towards its digit, at twice the network's batch per step (scripts/evaluate.py --guidance_curve "
    "measures the choice)."
)


class DigitRequest(NamedTuple):
    """What ``--digits`` asks for: ``kind`` is ``default`` (every digit in turn), ``all``, ``any`` or
    ``list`` (``digits``, one per image or one for all)."""

    kind: str
    digits: tuple[int, ...] = ()


def parse_digits(values: list[str] | None) -> DigitRequest:
    """Check the syntax of ``--digits`` (before the model is loaded; the range is the model's to check).

    Raises:
        ValueError: if ``all`` or ``any`` is not alone, or a value is not a whole number.
    """
    if values is None:
        return DigitRequest("default")
    words = [value.strip().lower() for value in values]
    for word in ("all", "any"):
        if word in words:
            if len(words) > 1:
                raise ValueError(f"--digits {word} must be given alone, got --digits {' '.join(values)}")
            return DigitRequest(word)
    bad = next((value for value in values if not value.strip().isdigit()), None)
    if bad is not None:
        raise ValueError(
            f"--digits takes digits 0-9 (one per image, or one for all), 'all' or 'any'; got {bad!r}"
        )
    return DigitRequest("list", tuple(int(value) for value in values))


def check_guidance_flag(guidance_scale: float | None) -> None:
    """Raise ``ValueError`` unless ``--guidance_scale`` is absent or a finite number >= 0."""
    if guidance_scale is not None and not (math.isfinite(guidance_scale) and guidance_scale >= 0):
        raise ValueError(f"--guidance_scale must be a finite number >= 0, got {guidance_scale}")


def plan_labels(
    request: DigitRequest, num_images: int | None, guidance_scale: float | None, pipeline, model: str
) -> tuple[int, list[int] | None, int | None]:
    """The number of images, their class labels and the grid's images per row, for a loaded pipeline.

    Raises:
        ValueError: for ``--digits`` or ``--guidance_scale`` with an unconditional model, a digit the model
            does not draw, a count of digits other than ``--num_images``, or ``--guidance_scale`` with
            ``--digits any``.
    """
    classes = num_classes(pipeline)
    if classes is None:
        given = ["--digits"] if request.kind != "default" else []
        given += ["--guidance_scale"] if guidance_scale is not None else []
        if given:
            raise ValueError(
                f"{given[0]} needs a class-conditional model, but {model!r} is unconditional (trained "
                f"without --class_conditional); leave {' and '.join(given)} out"
            )
        return num_images or DEFAULT_NUM_IMAGES, None, None
    if request.kind == "any":
        if guidance_scale is not None:
            raise ValueError(
                "--guidance_scale guides towards the digits asked for, but --digits any samples "
                "unconditionally; give digits or leave --guidance_scale out"
            )
        return num_images or DEFAULT_NUM_IMAGES, None, None
    if request.kind == "default":
        count = num_images or DEFAULT_NUM_IMAGES
        return count, balanced_labels(pipeline, count), classes
    if request.kind == "all":
        per_digit = num_images or DEFAULT_PER_DIGIT
        return per_digit * classes, [digit for digit in range(classes) for _ in range(per_digit)], per_digit
    bad = next((digit for digit in request.digits if digit >= classes), None)
    if bad is not None:
        raise ValueError(f"--digits {bad} is not a class of this model: it draws the digits 0-{classes - 1}")
    digits = list(request.digits)
    if len(digits) == 1:
        count = num_images or DEFAULT_NUM_IMAGES
        return count, digits * count, None
    if num_images is not None and num_images != len(digits):
        raise ValueError(
            f"{len(digits)} --digits given for --num_images {num_images}; give one digit per image, or one "
            "for all"
        )
    return len(digits), digits, None


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, sample and write the output file."""
    parser = ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="A class-conditional model without --digits draws every digit in turn (0, 1, ..., 9, 0, ...) "
        "at --guidance_scale 1; --digits any samples it unconditionally.",
    )
    parser.add_argument("--model", required=True, help="Saved pipeline folder (or Hub id).")
    parser.add_argument(
        "--num_images",
        type=int,
        default=None,
        help=f"Images to draw (default {DEFAULT_NUM_IMAGES}, or the number of --digits); with --digits all: "
        f"images per digit (default {DEFAULT_PER_DIGIT}).",
    )
    parser.add_argument("--digits", nargs="+", default=None, metavar="DIGIT", help=DIGITS_HELP)
    parser.add_argument("--guidance_scale", type=float, default=None, metavar="W", help=GUIDANCE_HELP)
    parser.add_argument(
        "--sampler",
        choices=all_sampler_names(),
        default=None,
        help="A sampler of the pipeline's forward process; default: the process's own.",
    )
    parser.add_argument(
        "--num_inference_steps", type=int, default=None, help="Default: the sampler's usual count."
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--output", required=True, help="A .png grid or a .npy array.")
    args = parser.parse_args(argv)
    output = Path(args.output)
    if output.suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"--output {args.output!r} must end in one of {', '.join(OUTPUT_SUFFIXES)}")
    num_images = DEFAULT_NUM_IMAGES if args.num_images is None else args.num_images
    if num_images < 1 or args.batch_size < 1:
        raise ValueError(
            f"--num_images and --batch_size must be at least 1, got {num_images} and {args.batch_size}"
        )
    check_guidance_flag(args.guidance_scale)
    request = parse_digits(args.digits)
    check_writable(output)
    pipeline = load_pipeline(args.model)
    count, labels, nrow = plan_labels(request, args.num_images, args.guidance_scale, pipeline, args.model)
    process = forward_process(pipeline)
    sampler = args.sampler or process.default_sampler
    process.check_sampler(sampler, args.num_inference_steps)
    steps = args.num_inference_steps or process.default_steps(sampler)
    if notice := long_sampling_notice(process, sampler, steps, count):
        print(notice, file=sys.stderr)
    guidance_scale = 1.0 if args.guidance_scale is None else args.guidance_scale
    images = generate(
        pipeline, count, sampler, args.num_inference_steps, args.seed, args.batch_size, True,
        class_labels=labels, guidance_scale=guidance_scale,
    )  # fmt: skip
    if output.suffix == ".npy":
        with atomic_output(output) as temporary:
            np.save(temporary, images[:, 0].numpy().astype(np.float32))
    else:
        save_grid(images, output, nrow)
    asked = "" if labels is None else f" (digits asked for, guidance scale {guidance_scale:g})"
    print(f"wrote {len(images)} images{asked} to {output}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
