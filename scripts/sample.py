"""Draw samples from a saved pipeline folder and write a PNG grid or a ``.npy`` array.

    python scripts/sample.py --model outputs/quickstart --num_images 64 --sampler dpmsolver \\
        --num_inference_steps 25 --seed 0 --output samples.png

``.npy`` output is a float32 array of shape ``(N, 28, 28)`` in ``[0, 1]``. The same seed gives the same
images. ``--sampler`` is one of the samplers of the pipeline's forward process (Gaussian: ddpm, ddim,
dpmsolver; cold: improved, naive, direct); by default the process's own.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mnist_diffusion.pipelines import load_pipeline
from mnist_diffusion.pipelines.sampling import generate, save_grid
from mnist_diffusion.schedulers import forward_process
from mnist_diffusion.training.cli import ArgumentParser, run_cli
from mnist_diffusion.training.files import atomic_output, check_writable
from mnist_diffusion.training.train import all_sampler_names, long_sampling_notice

OUTPUT_SUFFIXES = (".png", ".npy")


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, sample and write the output file."""
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Saved pipeline folder (or Hub id).")
    parser.add_argument("--num_images", type=int, default=64)
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
    if args.num_images < 1 or args.batch_size < 1:
        raise ValueError(
            f"--num_images and --batch_size must be at least 1, got {args.num_images} and {args.batch_size}"
        )
    check_writable(output)
    pipeline = load_pipeline(args.model)
    process = forward_process(pipeline)
    sampler = args.sampler or process.default_sampler
    process.check_sampler(sampler, args.num_inference_steps)
    steps = args.num_inference_steps or process.default_steps(sampler)
    if notice := long_sampling_notice(process, sampler, steps, args.num_images):
        print(notice, file=sys.stderr)
    images = generate(
        pipeline, args.num_images, sampler, args.num_inference_steps, args.seed, args.batch_size, True
    )
    if output.suffix == ".npy":
        with atomic_output(output) as temporary:
            np.save(temporary, images[:, 0].numpy().astype(np.float32))
    else:
        save_grid(images, output)
    print(f"wrote {len(images)} images to {output}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
