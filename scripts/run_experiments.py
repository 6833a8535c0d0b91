"""Train and evaluate the report's runs (``report/experiments.yaml``), resuming where an earlier call stopped.

    python scripts/run_experiments.py                          # every run, one after the other
    python scripts/run_experiments.py --only cold_rows cold_blur --jobs 2

Each run trains with ``training/train.py --resume_from_checkpoint latest`` into ``outputs/experiments/NAME``
(skipped once its pipeline is saved), copies the small files (metrics.jsonl, per-epoch sample grids, the
training config), a picture of the forward process (scripts/plot_degradation.py) to ``report/runs/NAME``
and evaluates the final model with ``scripts/evaluate.py`` once per
entry of its ``evaluations`` that has no JSON there yet. A stopped call loses at most the steps since the
last checkpoint: call it again. Each command's output goes to ``outputs/experiments/NAME/experiments.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from mnist_diffusion.evaluation.benchmark import machine_info
from mnist_diffusion.training.cli import ArgumentParser, run_cli
from mnist_diffusion.training.data import default_fashion_mnist, default_mnist
from mnist_diffusion.training.files import write_text
from mnist_diffusion.training.train import make_process
from mnist_diffusion.training.train import parse_args as parse_train_args

ROOT = Path(__file__).resolve().parents[1]
EVALUATION_KEYS = ("sampler", "num_inference_steps", "start", "num_images")
RUN_KEYS = {"config", "args", "evaluations"}
DATASET_KEYS = ("mnist", "fashion_mnist")


@dataclass
class Experiment:
    """One run of the report: a training config, extra flags and the evaluations of its final model.

    Attributes:
        name: folder name under the work and report directories.
        config: train.py ``--config`` file.
        args: extra train.py flags (name -> value); ``{mnist}``/``{fashion_mnist}`` name the datasets.
        evaluations: JSON stem -> evaluate.py flags (see ``EVALUATION_KEYS``); the first must be ``metrics``.
    """

    name: str
    config: str
    args: dict[str, object] = field(default_factory=dict)
    evaluations: dict[str, dict[str, object]] = field(default_factory=dict)


def load_experiments(path: str | os.PathLike) -> dict[str, Experiment]:
    """Read and check an experiments YAML file.

    Raises:
        ValueError: naming the run and the bad entry.
    """
    try:
        with open(path) as handle:
            document = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise ValueError(f"experiments file {str(path)!r} does not exist") from None
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(
            f"experiments file {str(path)!r} is not readable YAML: {' '.join(str(error).split())}"
        ) from None
    runs = document.get("runs") if isinstance(document, dict) else None
    if not isinstance(runs, dict) or not runs:
        raise ValueError(f"{path}: expected a non-empty mapping 'runs'")
    experiments = {}
    for name, entry in runs.items():
        unknown = set(entry) - RUN_KEYS
        if unknown:
            raise ValueError(
                f"{path}: run {name!r} has unknown keys {sorted(unknown)}; allowed {sorted(RUN_KEYS)}"
            )
        if not (ROOT / entry.get("config", "")).is_file():
            raise ValueError(
                f"{path}: run {name!r} needs 'config', an existing file, got {entry.get('config')!r}"
            )
        evaluations = entry.get("evaluations") or {}
        if next(iter(evaluations), None) != "metrics":
            raise ValueError(f"{path}: the first evaluation of run {name!r} must be called 'metrics'")
        for stem, flags in evaluations.items():
            bad = set(flags) - set(EVALUATION_KEYS)
            if bad:
                raise ValueError(
                    f"{path}: evaluation {name}/{stem} has unknown keys {sorted(bad)}; "
                    f"allowed {EVALUATION_KEYS}"
                )
        experiment = Experiment(name, entry["config"], dict(entry.get("args") or {}), dict(evaluations))
        check_samplers(experiment, path)
        experiments[name] = experiment
    return experiments


def check_samplers(experiment: Experiment, path: str | os.PathLike) -> None:
    """Check each evaluation's sampler, steps and start against the run's forward process, before training.

    Raises:
        ValueError: naming the run, the evaluation and the samplers its process offers.
    """
    # The datasets stay placeholders: building a process reads none of them.
    flags = as_flags(experiment.args, {key: f"{{{key}}}" for key in DATASET_KEYS})
    try:
        process = make_process(parse_train_args(["--config", str(ROOT / experiment.config), *flags]))
    except ValueError as error:
        raise ValueError(f"{path}: run {experiment.name!r}: {error}") from error
    for stem, evaluation in experiment.evaluations.items():
        try:
            process.check_sampler(
                evaluation.get("sampler", process.default_sampler), evaluation.get("num_inference_steps")
            )
            if evaluation.get("start", "prior") != "prior" and not process.restores:
                raise ValueError(f"start {evaluation['start']!r} needs a process that restores images")
        except ValueError as error:
            raise ValueError(f"{path}: evaluation {experiment.name}/{stem}: {error}") from error


def as_flags(values: dict[str, object], datasets: dict[str, str]) -> list[str]:
    """``{"noise_schedule": "cosine"}`` -> ``["--noise_schedule", "cosine"]``, dataset names filled in."""
    flags = []
    for name, value in values.items():
        flags += [
            f"--{name}",
            *(str(v).format(**datasets) for v in (value if isinstance(value, list) else [value])),
        ]
    return flags


def describe_hardware() -> dict[str, object]:
    """The machine the run trained on (the benchmark's description), plus the GPU when there is one."""
    info = machine_info()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


class Runner:
    """Trains, collects and evaluates experiments; one instance serves all worker threads."""

    def __init__(self, args: argparse.Namespace):
        self.work_dir = Path(args.work_dir).resolve()
        self.runs_dir = Path(args.runs_dir).resolve()
        self.datasets = {"mnist": args.dataset_name, "fashion_mnist": args.fashion_dataset_name}
        self.num_threads = str(args.num_threads)
        self.num_images = str(args.num_images)

    def run(self, experiment: Experiment) -> None:
        """Train (or resume) ``experiment``, copy its logs and grids, then run its missing evaluations."""
        work, report = self.work_dir / experiment.name, self.runs_dir / experiment.name
        work.mkdir(parents=True, exist_ok=True)
        report.mkdir(parents=True, exist_ok=True)
        if not (work / "model_index.json").is_file():
            began = time.perf_counter()
            self.call(experiment, [
                "training/train.py", "--config", experiment.config, "--output_dir", str(work),
                "--dataset_name", self.datasets["mnist"], "--resume_from_checkpoint", "latest",
                "--num_threads", self.num_threads, *as_flags(experiment.args, self.datasets),
            ])  # fmt: skip
            run_record = {"train_seconds_last_call": time.perf_counter() - began, **describe_hardware()}
            write_text(report / "run.json", json.dumps(run_record, indent=2) + "\n")
        self.collect(work, report)
        if not (report / "degradation.png").is_file():
            self.call(experiment, [
                "scripts/plot_degradation.py", "--model", str(work), "--dataset_name", self.datasets["mnist"],
                "--output", str(report / "degradation.png"),
            ])  # fmt: skip
        for stem, flags in experiment.evaluations.items():
            output = report / f"{stem}.json"
            if output.is_file():
                continue
            self.call(experiment, [
                "scripts/evaluate.py", "--model", str(work), "--output", str(output),
                "--dataset_name", self.datasets["mnist"], "--num_threads", self.num_threads,
                *as_flags({"num_images": self.num_images, **flags}, self.datasets),
            ])  # fmt: skip

    def call(self, experiment: Experiment, command: list[str]) -> None:
        """Run a project script, appending its output to the run's log; raise if it fails."""
        log_path = self.work_dir / experiment.name / "experiments.log"
        print(f"[{experiment.name}] {' '.join(command)}", flush=True)
        with open(log_path, "a") as log:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            result = subprocess.run(
                [sys.executable, *command], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False
            )
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} exited with {result.returncode}; see {log_path}")

    @staticmethod
    def collect(work: Path, report: Path) -> None:
        """Copy the training log, config and per-epoch sample grids (small files) into the report folder."""
        shutil.copy2(work / "logs" / "metrics.jsonl", report / "metrics.jsonl")
        shutil.copy2(work / "training_config.yaml", report / "training_config.yaml")
        (report / "samples").mkdir(exist_ok=True)
        for grid in sorted((work / "samples").glob("epoch_*.png")):
            shutil.copy2(grid, report / "samples" / grid.name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", default=str(ROOT / "report" / "experiments.yaml"))
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run only these experiments")
    parser.add_argument("--work_dir", default="outputs/experiments", help="weights and checkpoints")
    parser.add_argument("--runs_dir", default="report/runs", help="the small files the report is built from")
    parser.add_argument("--dataset_name", default=default_mnist(), help="MNIST: Hub id or local folder")
    parser.add_argument("--fashion_dataset_name", default=default_fashion_mnist(), help="for morphing")
    parser.add_argument("--num_images", type=int, default=1000, help="samples per final evaluation")
    parser.add_argument("--jobs", type=int, default=1, help="experiments run at the same time")
    parser.add_argument(
        "--num_threads", type=int, default=None, help="torch threads per job (default: share)"
    )
    args = parser.parse_args(argv)
    for name in ("jobs", "num_images"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.num_threads is None:
        args.num_threads = max(1, len(os.sched_getaffinity(0)) // args.jobs)
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the selected experiments, ``--jobs`` at a time; exit non-zero if any failed."""
    args = parse_args(argv)
    experiments = load_experiments(args.experiments)
    names = args.only or list(experiments)
    unknown = [name for name in names if name not in experiments]
    if unknown:
        raise ValueError(f"unknown experiments {unknown}; choose from {', '.join(experiments)}")
    runner = Runner(args)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {name: pool.submit(runner.run, experiments[name]) for name in names}
    failures = {name: future.exception() for name, future in futures.items() if future.exception()}
    for name in names:
        print(f"{name}: {'FAILED: ' + str(failures[name]) if name in failures else 'done'}")
    if failures:
        raise SystemExit(f"error: {len(failures)} of {len(names)} experiments failed: {', '.join(failures)}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
