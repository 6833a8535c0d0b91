"""Picture a saved pipeline's forward process D(x0, t): test digits (rows) at evenly spaced t (columns).

    python scripts/plot_degradation.py --model outputs/experiments/cold_rows --output degradation.png

Gaussian pipelines show ``x_t`` of ``q(x_t | x0)`` (their ``add_noise``); cold ones ``D(x0, t)`` of their
scheduler, with one random draw per digit for all columns so that the same corruption grows along a row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines import load_pipeline  # noqa: E402
from training.cli import ArgumentParser, run_cli  # noqa: E402
from training.data import default_mnist, load_split, to_model_range, to_unit_range  # noqa: E402
from pipelines.sampling import is_gaussian  # noqa: E402


def degradation_timesteps(pipeline, num_columns: int) -> list[int]:
    """``num_columns`` distinct timesteps from clean to fully degraded (Gaussian: ``T - 1``, cold: ``T``)."""
    last = pipeline.scheduler.config.num_train_timesteps - (1 if is_gaussian(pipeline) else 0)
    return np.unique(np.linspace(0, last, num_columns).round().astype(int)).tolist()


@torch.inference_mode()
def degrade_series(pipeline, images: torch.Tensor, timesteps: list[int], seed: int) -> torch.Tensor:
    """``(digits, len(timesteps), 1, H, W)`` in ``[0, 1]``: each digit degraded to each timestep.

    Args:
        pipeline: a saved Gaussian or cold pipeline.
        images: ``uint8`` test digits ``(N, H, W)``.
        timesteps: where to show the forward process; ``0`` is the clean digit.
        seed: fixes the noise (Gaussian) or the degradation's random draw (cold).
    """
    x0 = to_model_range(images)
    generator = torch.Generator().manual_seed(seed)
    scheduler = pipeline.scheduler
    if is_gaussian(pipeline):
        noise = torch.randn(x0.shape, generator=generator)
        columns = [
            x0 if t == 0 else scheduler.add_noise(x0, noise, torch.full((len(x0),), t)) for t in timesteps
        ]
    else:
        draw = scheduler.draw(tuple(x0.shape), generator)
        columns = [scheduler.degrade(x0, t, draw=draw) for t in timesteps]
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
    figure.savefig(path, dpi=120)


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
    pipeline = load_pipeline(args.model)
    images = load_split(args.dataset_name, "test", args.num_digits).images
    timesteps = degradation_timesteps(pipeline, args.num_columns)
    series = degrade_series(pipeline, images, timesteps, args.seed)
    name = type(pipeline.scheduler).__name__
    plot_series(
        series, timesteps, f"{Path(args.model).name}: forward process D(x0, t) of {name}", args.output
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
