"""Quality per CPU-minute: the FID that each training recipe reaches after 2.5 to 30 minutes of training.

A recipe is a ``train.py`` YAML config (``training/configs/``). One recipe at a time, on one machine, the real
:class:`~mnist_diffusion.training.train.Trainer` trains it with ``--checkpoint_minutes`` (a pipeline saved
after 2.5, 5, 10, 20 and 30 minutes of training-loop time: the steps and their data loading, not validation,
sampling or saving) and ``--max_train_minutes`` (the last mark). Then every saved pipeline is scored as
``scripts/evaluate.py`` scores one: FID on the MNIST classifier's features of ``num_images`` samples against
the test split, with its floor (as many real training images), KID, the Inception-style score and the
normalised entropy of the predicted classes, sampled with the recipe's own sampler (its config's ``sampler``
and ``sample_inference_steps``, else its process's default). A run that ends by its ``max_train_steps`` before
the last mark adds its final pipeline as a point.

Everything resumes: a killed training continues from its latest checkpoint (which holds the training-loop
time), a finished one is not trained again, and each scored point is written to the JSON at once, so a later
run scores only what is missing. Used by ``scripts/benchmark.py --section quality``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from mnist_diffusion.evaluation.benchmark import ResultsFile, reset_accelerate_state
from mnist_diffusion.pipelines import load_pipeline
from mnist_diffusion.pipelines.sampling import generate
from mnist_diffusion.schedulers import forward_process
from mnist_diffusion.training.files import atomic_output, write_text
from mnist_diffusion.training.train import MINUTES_PREFIX, SNAPSHOT_FILE, parse_args, train

SCHEMA_VERSION = 1
CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
# The candidate recipes: name -> train.py config. gaussian is the first 30-minute recipe (fast_cpu.yaml until
# flow matching beat it); the next five change one thing each; flow_10min and flow_30min are the best of them
# with schedules fitted to 10 and 30 minutes (the second shipped as fast_cpu.yaml); the last two change the
# flow recipe's network shape (depth, attention).
RECIPES: dict[str, Path] = {
    "gaussian": CONFIGS / "fast_cpu_gaussian.yaml",
    "snr_gamma": CONFIGS / "fast_cpu_snr_gamma.yaml",
    "flow": CONFIGS / "fast_cpu_flow.yaml",
    "immiscible": CONFIGS / "fast_cpu_immiscible.yaml",
    "unet_small": CONFIGS / "fast_cpu_unet_small.yaml",
    "edm": CONFIGS / "fast_cpu_edm.yaml",
    "flow_10min": CONFIGS / "fast_cpu_flow_10min.yaml",
    "flow_30min": CONFIGS / "fast_cpu.yaml",
    "flow_2layers": CONFIGS / "fast_cpu_flow_2layers.yaml",
    "flow_no_attention": CONFIGS / "fast_cpu_flow_no_attention.yaml",
}
MINUTES: tuple[float, ...] = (2.5, 5.0, 10.0, 20.0, 30.0)
# The smoke run's marks: fractions of a second, always reached, since the run stops at the last one.
QUICK_MINUTES: tuple[float, ...] = (0.002, 0.004)
FINAL = "final"
# Settings that must match for a later run to continue an existing results file; the dataset by its last name
# ("mnist" for ylecun/mnist and ../shared/data/mnist alike), so that another checkout can finish a run.
SETTINGS_KEYS = ("minutes", "num_images", "num_inference_steps", "seed", "dataset", "quick", "train_flags")
METRIC_KEYS = ("fid", "fid_floor", "kid_mean", "kid_std", "inception_score_mean", "class_entropy")
BLOCK_BEGIN = "<!-- quality-per-minute:begin -->"
BLOCK_END = "<!-- quality-per-minute:end -->"


@dataclass
class QualityPlan:
    """What the quality section measures and where it keeps its runs.

    Args:
        recipes: recipe name -> ``train.py`` config, trained in this order.
        minutes: training-loop minutes after which a pipeline is saved and scored; the last ends the run.
        dataset_name: Hub id or local parquet folder (train split to train on and for the floor, test split
            as the FID reference).
        work_dir: one training folder per recipe (checkpoints and saved pipelines; large, not for git).
        num_images: samples per score.
        seed: seed of the sampling and of the metrics' random subsets.
        num_inference_steps: sampler steps of every score; ``None``: each recipe's own.
        train_flags: ``train.py`` flags appended to every recipe's config (the smoke run's tiny settings).
        quick: a smoke run (synthetic data, seconds of training); recorded in the results.

    Example:
        >>> from mnist_diffusion.evaluation.quality import RECIPES, QualityPlan
        >>> plan = QualityPlan(recipes={"flow": RECIPES["flow"]}, minutes=(2.5, 5.0))
        >>> plan.train_argv("flow")[4:]
        ['--checkpoint_minutes', '2.5', '5', '--max_train_minutes=5', '--resume_from_checkpoint=latest']
    """

    recipes: dict[str, Path]
    minutes: tuple[float, ...] = MINUTES
    dataset_name: str = "ylecun/mnist"
    work_dir: Path = Path("outputs/quality_per_minute")
    num_images: int = 1000
    seed: int = 0
    num_inference_steps: int | None = None
    train_flags: tuple[str, ...] = ()
    quick: bool = False

    def settings(self) -> dict[str, Any]:
        """The settings recorded in (and checked against) the results file."""
        return {
            "minutes": list(self.minutes),
            "num_images": self.num_images,
            "num_inference_steps": self.num_inference_steps,
            "seed": self.seed,
            "dataset_name": self.dataset_name,
            "dataset": Path(self.dataset_name).name,
            "quick": self.quick,
            "train_flags": list(self.train_flags),
            "work_dir": str(self.work_dir),
        }

    def train_argv(self, name: str) -> list[str]:
        """The ``train.py`` flags of recipe ``name``: its config, the data, the minutes, resuming."""
        return [
            "--config",
            str(self.recipes[name]),
            f"--dataset_name={self.dataset_name}",
            f"--output_dir={self.work_dir / name}",
            "--checkpoint_minutes",
            *(f"{m:g}" for m in self.minutes),
            f"--max_train_minutes={max(self.minutes):g}",
            "--resume_from_checkpoint=latest",
            *self.train_flags,
        ]


class Results(ResultsFile):
    """The results file: written whole after every change, so that a kill loses at most one score."""

    @classmethod
    def open(cls, path: Path, plan: QualityPlan, command: str) -> Results:
        """Continue ``path`` if it holds a run of the same settings, else start one.

        Raises:
            ValueError: if ``path`` holds results of other settings (they would be mixed), or is not JSON.
        """
        empty = {"schema_version": SCHEMA_VERSION, "quick": plan.quick, "recipes": {}}
        return cls.open_with(path, plan.settings(), SETTINGS_KEYS, empty, command)

    def recipe(self, name: str, config: Path) -> dict[str, Any]:
        """The entry of recipe ``name`` (created empty)."""
        entry = self.data["recipes"].setdefault(name, {"config": _relative(config), "points": []})
        entry.setdefault("points", [])
        return entry


def _relative(path: Path) -> str:
    """``path`` relative to the project when inside it (stable across machines), else as given."""
    try:
        return str(Path(path).resolve().relative_to(CONFIGS.parents[1]))
    except ValueError:
        return str(path)


def recipe_summary(config: Path) -> str:
    """The first sentence of the config's opening comment (what the recipe is)."""
    lines = []
    for line in Path(config).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    text = " ".join(lines)
    return text.split(". ")[0].rstrip(".") + "." if text else ""


def train_recipe(plan: QualityPlan, name: str) -> Path:
    """Train (or resume, or find finished) recipe ``name`` with the real Trainer; returns its folder."""
    args = parse_args(plan.train_argv(name))
    reset_accelerate_state()
    train(args)
    return Path(args.output_dir)


def saved_points(run_dir: Path) -> list[dict[str, Any]]:
    """The pipelines of a trained recipe to score: its complete ``minutes-M/`` snapshots, and its end.

    The final pipeline is a point of its own when the run ended (by its ``max_train_steps``) at another step
    than its last snapshot.

    Returns:
        Per point: ``checkpoint`` (the folder name, or ``final``), ``target_minutes`` (``None`` for the
        final one), ``minutes`` (training-loop minutes when it was saved) and ``step``.
    """
    points = []
    for folder in run_dir.glob(f"{MINUTES_PREFIX}*"):
        snapshot = folder / SNAPSHOT_FILE
        if not (snapshot.is_file() and (folder / "model_index.json").is_file()):
            continue  # a save that a kill interrupted; the resumed run writes it again
        info = json.loads(snapshot.read_text())
        points.append(
            {
                "checkpoint": folder.name,
                "target_minutes": info["minutes"],
                "minutes": info["train_seconds"] / 60,
                "step": info["step"],
            }
        )
    points.sort(key=lambda point: point["target_minutes"])
    final = _final_step_and_seconds(run_dir)
    if final is not None and (run_dir / "model_index.json").is_file():
        step, seconds = final
        if not any(point["step"] == step for point in points):
            points.append(
                {"checkpoint": FINAL, "target_minutes": None, "minutes": seconds / 60, "step": step}
            )
    return points


def _final_step_and_seconds(run_dir: Path) -> tuple[int, float] | None:
    """The last logged step with its training-loop seconds (the trainer logs the final step)."""
    log = run_dir / "logs" / "metrics.jsonl"
    if not log.is_file():
        return None
    timed = [record for record in map(json.loads, log.read_text().splitlines()) if "train_seconds" in record]
    return (timed[-1]["step"], timed[-1]["train_seconds"]) if timed else None


def recipe_sampler(run_dir: Path, pipeline) -> tuple[str, int]:
    """The recipe's own sampler and steps: its config's ``sampler`` and ``sample_inference_steps``.

    Where the config sets none, the process's default sampler and its usual steps.
    """
    config = yaml.safe_load((run_dir / "training_config.yaml").read_text()) or {}
    process = forward_process(pipeline)
    sampler = config.get("sampler") or process.default_sampler
    return sampler, config.get("sample_inference_steps") or process.default_steps(sampler)


def score_pipeline(folder: Path, sampler: str, steps: int, quality, num_images: int, seed: int) -> dict:
    """Sample ``num_images`` from the pipeline in ``folder`` and score them.

    Args:
        folder: a saved pipeline.
        sampler: a sampler of its process.
        steps: the sampler's steps.
        quality: a :class:`~mnist_diffusion.evaluation.metrics.SampleQuality` (test split reference, training
            split floor).
        num_images: samples to draw.
        seed: seed of the samples.
    """
    pipeline = load_pipeline(folder)
    began = time.perf_counter()
    images = generate(pipeline, num_images, sampler, steps, seed)
    seconds = time.perf_counter() - began
    metrics = quality.evaluate(images).metrics
    return {"sampling_seconds": seconds, **{key: metrics[key] for key in METRIC_KEYS}}


def run_quality(plan: QualityPlan, results: Results, quality) -> dict[str, Any]:
    """Train and score every recipe of ``plan`` in turn, writing ``results`` after each step.

    Args:
        plan: the recipes, minutes and sampling settings.
        results: the results file (possibly holding an earlier, interrupted run's scores).
        quality: a :class:`~mnist_diffusion.evaluation.metrics.SampleQuality` against the test split, with the
            training split for the floor.

    Returns:
        The results (also written to ``results.path``).

    Example:
        >>> from pathlib import Path
        >>> from mnist_diffusion.evaluation.metrics import SampleQuality
        >>> from mnist_diffusion.evaluation.quality import (
        ...     RECIPES, QualityPlan, Results, run_quality, write_report
        ... )
        >>> from mnist_diffusion.training.data import load_split
        >>> plan = QualityPlan(recipes=dict(RECIPES), dataset_name="../shared/data/mnist")
        >>> out = Path("benchmarks")
        >>> results = Results.open(out / "quality_per_minute.json", plan, "a note")  # doctest: +SKIP
        >>> test = load_split(plan.dataset_name, "test")  # doctest: +SKIP
        >>> train = load_split(plan.dataset_name, "train")  # doctest: +SKIP
        >>> data = run_quality(plan, results, SampleQuality(test, train))  # doctest: +SKIP
        >>> write_report(data, out / "README.md", out / "quality_per_minute.png")  # doctest: +SKIP
    """
    for name, config in plan.recipes.items():
        entry = results.recipe(name, config)
        entry["summary"] = recipe_summary(config)
        run_dir = train_recipe(plan, name)
        points = saved_points(run_dir)
        pipeline = load_pipeline(run_dir)
        sampler, steps = recipe_sampler(run_dir, pipeline)
        steps = plan.num_inference_steps or steps
        entry.update(process=forward_process(pipeline).name, sampler=sampler, num_inference_steps=steps)
        entry["missing_minutes"] = [
            m for m in plan.minutes if not any(p["target_minutes"] == m for p in points)
        ]
        # Scores of the pipelines saved now are kept; those of pipelines since replaced (retrained) are not.
        current = {(point["checkpoint"], point["step"]) for point in points}
        scored = {p["checkpoint"]: p for p in entry["points"] if (p["checkpoint"], p["step"]) in current}
        entry["points"] = _in_order(scored)
        results.save()
        for point in points:
            if point["checkpoint"] in scored:
                continue
            folder = run_dir if point["checkpoint"] == FINAL else run_dir / point["checkpoint"]
            point.update(score_pipeline(folder, sampler, steps, quality, plan.num_images, plan.seed))
            scored[point["checkpoint"]] = point
            entry["points"] = _in_order(scored)
            results.save()
    return results.data


def _in_order(points: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(points.values(), key=lambda point: (point["minutes"], point["step"]))


# ----- report: the markdown table and the plot --------------------------------------------------------------


def markdown_section(results: dict[str, Any], plot_name: str | None = None) -> str:
    """The quality section of ``benchmarks/README.md``: how it was measured, one row per scored point."""
    settings = results["settings"]
    sessions = results.get("sessions", [])
    machine = sessions[-1]["machine"] if sessions else None
    minutes = ", ".join(f"{m:g}" for m in settings["minutes"])
    lines = [BLOCK_BEGIN, "## Quality per CPU-minute: training recipes", ""]
    if results["quick"]:
        lines += [
            "**Smoke run (`--quick`)**: synthetic data, fractions of a second of training and few samples; "
            "the numbers only show that the section runs. Run it without `--quick` on a quiet machine.",
            "",
        ]
    command = sessions[-1]["command"] if sessions else "?"
    resumed = (
        f" ({len(sessions)} sessions: it resumes where the last one stopped)" if len(sessions) > 1 else ""
    )
    lines += [
        f"Produced by `{command}`{resumed}.",
        "",
        "Each recipe (a `train.py` config) is trained once, one at a time on the same machine, with a "
        f"pipeline saved after {minutes} minutes of training-loop time (the steps and their data loading; "
        "validation, sampling grids and saving excluded). Each pipeline is scored on "
        f"{settings['num_images']} samples with the recipe's own sampler: FID on the MNIST classifier's "
        "features against the test split, its floor (the FID of as many real training images), KID and the "
        "normalised entropy of the predicted classes (1 = all ten digits equally often). The learning-rate "
        "schedule is each recipe's own (over its `max_train_steps`), so an early point is a snapshot of a "
        "longer run, not a run tuned for that budget.",
    ]
    if machine:
        bf16 = "yes" if machine["bf16_supported"] else "no"
        lines += [
            "",
            f"Machine (last session): {machine['cpu']}, {machine['usable_cpus']} usable CPUs, bf16 kernels: "
            f"{bf16}, load average {machine['load_average_1min']:.1f} at its start; torch "
            f"{machine['torch']}, diffusers {machine['diffusers']}.",
        ]
    lines += ["", "Recipes:", ""]
    for name, entry in results["recipes"].items():
        lines.append(
            f"- `{name}` ([`{entry['config']}`]({_link(entry['config'])})): {entry.get('summary', '')}"
        )
    lines += [
        "",
        "| recipe | sampler | minutes (mark) | step | FID | FID floor | KID | class entropy |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, entry in results["recipes"].items():
        sampler = f"{entry.get('sampler', '?')} {entry.get('num_inference_steps', '')}".strip()
        for point in entry["points"]:
            if "fid" not in point:
                continue
            mark = "end" if point["target_minutes"] is None else f"{point['target_minutes']:g}"
            lines.append(
                f"| {name} | {sampler} | {point['minutes']:.3g} ({mark}) | {point['step']} | "
                f"{point['fid']:.2f} | {point['fid_floor']:.2f} | {point['kid_mean']:.4f} | "
                f"{point['class_entropy']:.3f} |"
            )
        if entry.get("missing_minutes"):
            missing = ", ".join(f"{m:g}" for m in entry["missing_minutes"])
            lines.append(
                f"| {name} | marks not reached (the run ended by its steps): {missing} | | | | | | |"
            )
    if plot_name:
        lines += ["", f"![FID against training-loop minutes, one curve per recipe]({plot_name})"]
    lines.append(BLOCK_END)
    return "\n".join(lines) + "\n"


def replace_section(document: str, section: str) -> str:
    """``document`` with its quality section (between the markers) replaced by ``section``, or appended."""
    if BLOCK_BEGIN in document and BLOCK_END in document:
        before = document[: document.index(BLOCK_BEGIN)]
        after = document[document.index(BLOCK_END) + len(BLOCK_END) :].lstrip("\n")
        return before + section + ("\n" + after if after else "")
    return document.rstrip("\n") + ("\n\n" if document.strip() else "") + section


def existing_section(document: str) -> str | None:
    """The quality section of ``document`` (markers included), if it has one."""
    if BLOCK_BEGIN in document and BLOCK_END in document:
        return document[document.index(BLOCK_BEGIN) : document.index(BLOCK_END) + len(BLOCK_END)] + "\n"
    return None


def plot(results: dict[str, Any], path: Path) -> None:
    """FID against training-loop minutes (log-log), one curve per recipe, the FID floor dashed."""
    figure = Figure(figsize=(7, 4.5))
    axis = figure.subplots()
    floors = []
    for name, entry in results["recipes"].items():
        points = [p for p in entry["points"] if "fid" in p and p["minutes"] > 0]
        if not points:
            continue
        axis.plot([p["minutes"] for p in points], [p["fid"] for p in points], marker="o", label=name)
        floors += [p["fid_floor"] for p in points]
    if floors:
        floor = sum(floors) / len(floors)
        axis.axhline(floor, color="gray", linestyle="--", label=f"floor (real images), {floor:.2f}")
    axis.set_xscale("log")
    axis.set_yscale("log")
    minutes = results["settings"]["minutes"]
    axis.set_xticks(minutes, [f"{m:g}" for m in minutes])
    axis.xaxis.set_minor_formatter(NullFormatter())
    axis.set(xlabel="training-loop minutes (CPU)", ylabel="FID (MNIST classifier features)")
    settings = results["settings"]
    axis.set_title(f"Quality per CPU-minute ({settings['num_images']} samples per point)")
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize="small")
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=120)


def write_report(results: dict[str, Any], markdown: Path, plot_path: Path) -> str:
    """Write the plot and put the quality section into ``markdown`` (kept whole otherwise); returns it."""
    plot(results, plot_path)
    relative = os.path.relpath(plot_path, markdown.parent)
    section = markdown_section(results, relative)
    document = markdown.read_text() if markdown.is_file() else ""
    write_text(markdown, replace_section(document, section))
    return section


def _link(config: str) -> str:
    """A link from ``benchmarks/README.md`` to a config given relative to the project."""
    return config if Path(config).is_absolute() else f"../{config}"
