"""Plot the training loss, validation loss and FID of one or several runs on shared axes (a PNG).

    python scripts/plot_run.py outputs/linear outputs/cosine --output report/figures/schedules.png

Each run folder holds the trainer's ``logs/metrics.jsonl``: one JSON record per line with ``step`` and
any of ``loss``, ``val_loss`` and ``fid`` (with ``fid_floor``, drawn dashed, when it was logged); see
:mod:`mnist_diffusion.evaluation.training_logs`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mnist_diffusion.evaluation.training_logs import plot_runs
from mnist_diffusion.training.cli import ArgumentParser, run_cli


def main(argv: list[str] | None = None) -> None:
    """Parse the flags and write the plot."""
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="training output folders")
    parser.add_argument("--output", type=Path, default=None, help="PNG path; default RUN_DIR/curves.png")
    args = parser.parse_args(argv)
    output = args.output or args.run_dirs[0] / "curves.png"
    if output.suffix != ".png":
        raise ValueError(f"--output {str(output)!r} must end in .png")
    plot_runs(args.run_dirs, output)
    print(f"wrote {output}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
