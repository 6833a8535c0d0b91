"""Does cold diffusion generate? Train, sample, score each cold degradation with and without noise injection.

    python scripts/cold_diversity.py                      # the full study -> benchmarks/cold_diversity.json
    python scripts/cold_diversity.py --variants gaussian blur blur+noise
    python scripts/cold_diversity.py --quick              # smoke run on synthetic data, in seconds
    python scripts/cold_diversity.py --list               # the variants, then exit

Each variant trains the same network (the quickstart's tiny UNet) for the same number of steps as the
Gaussian row, samples with each sampler of its process and is scored on 1000 samples (FID and floor, KID, IS,
class entropy, pixel diversity); see :mod:`mnist_diffusion.evaluation.cold_diversity`. The JSON and a Markdown
table beside it (``.md``) are rewritten after every row: a killed run resumes where it stopped when called
again with the same flags.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mnist_diffusion.evaluation.cold_diversity import (
    Study,
    StudySettings,
    quick_settings,
    select_variants,
    study_variants,
)
from mnist_diffusion.training.cli import ArgumentParser, run_cli
from mnist_diffusion.training.data import default_fashion_mnist, default_mnist
from mnist_diffusion.training.files import check_writable

DEFAULTS = StudySettings(dataset_name="", target_dataset="")


def parse_args(argv: list[str] | None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output", default=None, help="results JSON (default: benchmarks/cold_diversity.json)"
    )
    parser.add_argument(
        "--work_dir",
        default=None,
        help="trained pipelines and sample grids (default: outputs/cold_diversity)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: synthetic data, tiny network, seconds"
    )
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    parser.add_argument("--variants", nargs="+", default=None, metavar="NAME", help="run only these variants")
    parser.add_argument(
        "--dataset_name", default=None, help="MNIST (default: ../shared/data/mnist or the Hub)"
    )
    parser.add_argument("--target_dataset", default=None, help="Fashion-MNIST, the morph targets")
    parser.add_argument("--train_steps", type=int, default=None, help=f"default {DEFAULTS.train_steps}")
    parser.add_argument("--num_images", type=int, default=None, help=f"default {DEFAULTS.num_images}")
    parser.add_argument("--seed", type=int, default=None, help=f"default {DEFAULTS.seed}")
    parser.add_argument("--train_noise", type=float, default=None, help=f"default {DEFAULTS.train_noise}")
    parser.add_argument("--sample_noise", type=float, default=None, help=f"default {DEFAULTS.sample_noise}")
    parser.add_argument(
        "--max_inference_steps",
        type=int,
        default=None,
        help=f"cap on every sampler's steps, spaced evenly from T to 1 (default "
        f"{DEFAULTS.max_inference_steps}: T for blur and pixelate)",
    )
    return parser.parse_args(argv)


def settings_from(args) -> tuple[StudySettings, Path, Path]:
    """The study's settings, results file and work folder from the flags (writes the quick run's data)."""
    given = {
        name: getattr(args, name)
        for name in (
            "train_steps",
            "num_images",
            "seed",
            "train_noise",
            "sample_noise",
            "max_inference_steps",
        )
        if getattr(args, name) is not None
    }
    if args.quick:
        from mnist_diffusion.training.data import write_synthetic_mnist

        work_dir = Path(args.work_dir or "outputs/cold_diversity_quick")
        data = work_dir / "synthetic_mnist"
        if not (data / "data").is_dir():
            write_synthetic_mnist(data, 256, 64)
        settings = quick_settings(args.dataset_name or str(data), **given)
        output = Path(args.output or work_dir / "cold_diversity.json")
    else:
        work_dir = Path(args.work_dir or "outputs/cold_diversity")
        settings = StudySettings(
            dataset_name=args.dataset_name or default_mnist(),
            target_dataset=args.target_dataset or default_fashion_mnist(),
            **given,
        )
        output = Path(args.output or "benchmarks/cold_diversity.json")
    settings.check()
    return settings, output, work_dir


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    train_noise = args.train_noise if args.train_noise is not None else DEFAULTS.train_noise
    sample_noise = args.sample_noise if args.sample_noise is not None else DEFAULTS.sample_noise
    variants = select_variants(study_variants(train_noise, sample_noise), args.variants)
    if args.list:
        for variant in variants:
            options = ", ".join(f"{key}={value}" for key, value in variant.options.items()) or "defaults"
            print(f"{variant.name}: --degradation {variant.degradation} ({options})")
        return
    if args.output is not None:
        check_writable(args.output, "--output")
    settings, output, work_dir = settings_from(args)
    check_writable(output, "--output")
    command = "python scripts/cold_diversity.py " + " ".join(sys.argv[1:] if argv is None else argv)
    Study(settings, variants, output, work_dir, command.strip()).run()
    print(Path(output).with_suffix(".md").read_text())


if __name__ == "__main__":
    sys.exit(run_cli(main))
