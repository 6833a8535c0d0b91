"""Picture a saved pipeline's forward process D(x0, t): test digits (rows) at evenly spaced t (columns).

    python scripts/plot_degradation.py --model outputs/experiments/cold_rows --output degradation.png

Each column is ``D(x0, t)`` of the pipeline's forward process (``x_t`` of ``q(x_t | x0)`` for Gaussian DDPM),
from the clean digit to the last timestep, with one random draw per digit for all columns so that the same
corruption grows along a row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from mnist_diffusion.pipelines import load_pipeline
from mnist_diffusion.schedulers import ForwardProcess, forward_process
from mnist_diffusion.training.cli import ArgumentParser, run_cli
from mnist_diffusion.training.data import default_mnist, load_split, to_model_range, to_unit_range
from mnist_diffusion.training.files import atomic_output, check_writable


def degradation_timesteps(process: ForwardProcess, num_columns: int) -> list[int]:
    """``num_columns`` distinct timesteps over the process's range, from clean to fully degraded."""
    first, last = process.timestep_range
    return np.unique(np.linspace(first, last, num_columns).round().astype(int)).tolist()


@torch.inference_mode()
def degrade_series(
    process: ForwardProcess, images: torch.Tensor, timesteps: list[int], seed: int
) -> torch.Tensor:
    """``(digits, len(timesteps), 1, H, W)`` in ``[0, 1]``: each digit degraded to each timestep.

    Args:
        process: the forward process of a saved pipeline.
        images: ``uint8`` test digits ``(N, H, W)``.
        timesteps: where to show the forward process; the first of its range is the clean digit.
        seed: fixes the random draw (the noise of Gaussian DDPM), the same for every column.
    """
    x0 = to_model_range(images)
    first, _ = process.timestep_range
    # D(x0, first) = x0 by definition; a fresh generator with one seed per column repeats the draw.
    columns = [
        x0 if t == first else process.degrade(x0, t, torch.Generator().manual_seed(seed)) for t in timesteps
    ]
    return to_unit_range(torch.stack(columns, dim=1))


def plot_series(series: torch.Tensor, timesteps: list[int], title: str, path: str | Path) -> None:
    """Save ``series`` from :func:`degrade_series` as a grid of images with ``t`` above each column."""
    rows, columns = series.shape[:2]
    figure = Figure(figsize=(1.1 * columns, 1.1 * rows + 0.5))
    axes = figure.subplots(rows, columns, squeeze=False)
    for row in range(rows):
        for column in range(columns):
            axis = axes[row][column]
            axis.imshow(series[row, column, 0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
            axis.set_axis_off()
            if row == 0:
                axis.set_title(f"t = {timesteps[column]}", fontsize=9)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=120)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="saved pipeline folder")
    parser.add_argument("--output", required=True, help="PNG to write")
    parser.add_argument("--dataset_name", default=default_mnist(), help="Hub id or local parquet folder")
    parser.add_argument("--num_digits", type=int, default=4, help="test digits, one per row")
    parser.add_argument("--num_columns", type=int, default=8, help="timesteps, one per column (>= 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.num_digits < 1 or args.num_columns < 2:
        raise ValueError(
            f"--num_digits must be >= 1 and --num_columns >= 2, got {args.num_digits}, {args.num_columns}"
        )
    if not args.output.endswith(".png"):
        raise ValueError(f"--output {args.output!r} must end in .png")
    return args


def main(argv: list[str] | None = None) -> None:
    """Load the pipeline and the digits, degrade them and save the picture."""
    args = parse_args(argv)
    check_writable(args.output)
    process = forward_process(load_pipeline(args.model))
    images = load_split(args.dataset_name, "test", args.num_digits).images
    timesteps = degradation_timesteps(process, args.num_columns)
    series = degrade_series(process, images, timesteps, args.seed)
    title = f"{Path(args.model).name}: forward process D(x0, t), {process.describe()}"
    plot_series(series, timesteps, title, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
