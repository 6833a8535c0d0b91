"""Few-step generation: a teacher's full and fast samplers against its distilled students, in one run.

The teacher is a trained Gaussian or flow-matching pipeline (trained first with ``training/train.py`` from a
recipe when its folder holds no pipeline yet); ``training/distill.py`` distils it into students of 8, 4, 2 and
1 steps (:mod:`mnist_diffusion.training.distill`). Every model and sampler of the table is then scored as
``scripts/evaluate.py`` scores one: FID on the MNIST classifier's features of ``num_images`` samples against
the test split, with its floor (as many real training images), KID, the Inception-style score and the
normalised entropy of the predicted classes, plus the sampling speed (images/s, the network calls per image
counted on the network itself) and, for the students, the distillation's wall-clock and CPU minutes up to
that student. The teacher samples with its full sampler (DDPM with all ``T`` steps for a Gaussian model, 50
Euler steps for a flow one), its fast one at fewer steps (DPM-Solver++ 20/10/5, Euler 20/10) and the
deterministic sampler that the first round distils (DDIM or Euler at ``--teacher_steps``); each student with
its own sampler and step count, as the tools take them from its folder.

Everything resumes: the teacher's training and the distillation continue from their latest checkpoints (and
are not run again once finished), and each scored row is written to the JSON at once, so a later run of the
same command scores only what is missing. Used by ``scripts/benchmark.py --section fewstep``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_diffusion.evaluation.benchmark import ResultsFile, reset_accelerate_state
from mnist_diffusion.pipelines import load_pipeline
from mnist_diffusion.pipelines.sampling import generate
from mnist_diffusion.schedulers import forward_process
from mnist_diffusion.training import distill
from mnist_diffusion.training import train as trainer
from mnist_diffusion.training.files import write_text

SCHEMA_VERSION = 1
# The teacher's samplers, per process: its full sampler first, then its fast one at fewer steps. A process not
# listed gets its default sampler at its usual steps.
TEACHER_SAMPLERS: dict[str, tuple[tuple[str, int], ...]] = {
    "gaussian": (("ddpm", 1000), ("dpmsolver", 20), ("dpmsolver", 10), ("dpmsolver", 5)),
    "flow": (("flow_euler", 50), ("flow_euler", 20), ("flow_euler", 10)),
}
STUDENT_STEPS: tuple[int, ...] = (4, 2, 1)
METRIC_KEYS = ("fid", "fid_floor", "kid_mean", "kid_std", "inception_score_mean", "class_entropy")
# Settings that must match for a later run to continue an existing results file.
SETTINGS_KEYS = (
    "process",
    "teacher",
    "num_images",
    "seed",
    "dataset",
    "quick",
    "train_flags",
    "distill_flags",
)
SAMPLING_BATCH = 256


@dataclass
class FewStepPlan:
    """What the few-step section measures and where it keeps its models.

    Args:
        process: the teacher's process name (``flow`` or ``gaussian``), for its samplers and the record.
        teacher: the teacher's pipeline folder.
        distill_config: the ``training/distill.py`` config of the students.
        work_dir: the distillation's output folder (its students are ``steps-N/`` in it).
        teacher_config: the ``training/train.py`` config that trains the teacher into ``teacher`` when that
            folder holds no pipeline (``None``: the teacher must exist).
        dataset_name: Hub id or local parquet folder (training data, FID reference and floor).
        num_images: samples per row.
        seed: seed of the samples and of the metrics' random subsets.
        student_steps: the students scored (each with its own steps).
        train_flags: ``train.py`` flags after the teacher's config (the smoke run's tiny settings).
        distill_flags: ``distill.py`` flags after its config.
        quick: a smoke run (synthetic data, seconds of training); recorded in the results.

    Example:
        >>> from pathlib import Path
        >>> from mnist_diffusion.evaluation.fewstep import FewStepPlan
        >>> plan = FewStepPlan("flow", Path("outputs/fast_cpu_flow"), Path("distill_flow.yaml"), Path("w"))
        >>> plan.distill_argv()[:4]
        ['--config', 'distill_flow.yaml', '--teacher', 'outputs/fast_cpu_flow']
    """

    process: str
    teacher: Path
    distill_config: Path
    work_dir: Path
    teacher_config: Path | None = None
    dataset_name: str = "ylecun/mnist"
    num_images: int = 1000
    seed: int = 0
    student_steps: tuple[int, ...] = STUDENT_STEPS
    train_flags: tuple[str, ...] = ()
    distill_flags: tuple[str, ...] = ()
    quick: bool = False

    def settings(self) -> dict[str, Any]:
        """The settings recorded in (and checked against) the results file."""
        return {
            "process": self.process,
            "teacher": str(self.teacher),
            "teacher_config": str(self.teacher_config) if self.teacher_config else None,
            "distill_config": str(self.distill_config),
            "work_dir": str(self.work_dir),
            "dataset_name": self.dataset_name,
            "dataset": Path(self.dataset_name).name,
            "num_images": self.num_images,
            "seed": self.seed,
            "student_steps": list(self.student_steps),
            "train_flags": list(self.train_flags),
            "distill_flags": list(self.distill_flags),
            "quick": self.quick,
        }

    def train_argv(self) -> list[str]:
        """The ``train.py`` flags of the teacher: its config, the data, its folder, resuming."""
        return [
            "--config",
            str(self.teacher_config),
            f"--dataset_name={self.dataset_name}",
            f"--output_dir={self.teacher}",
            "--resume_from_checkpoint=latest",
            *self.train_flags,
        ]

    def distill_argv(self) -> list[str]:
        """The ``distill.py`` flags of the students: its config, the teacher, the data, resuming."""
        return [
            "--config",
            str(self.distill_config),
            "--teacher",
            str(self.teacher),
            f"--dataset_name={self.dataset_name}",
            f"--output_dir={self.work_dir}",
            "--resume_from_checkpoint=latest",
            *self.distill_flags,
        ]


class Results(ResultsFile):
    """The results file: written whole after every change, so that a kill loses at most one row."""

    @classmethod
    def open(cls, path: Path, plan: FewStepPlan, command: str) -> Results:
        """Continue ``path`` if it holds a run of the same settings, else start one.

        Raises:
            ValueError: if ``path`` holds results of other settings (they would be mixed), or is not JSON.
        """
        empty = {
            "schema_version": SCHEMA_VERSION,
            "quick": plan.quick,
            "teacher": {},
            "distillation": {},
            "rows": [],
        }
        return cls.open_with(path, plan.settings(), SETTINGS_KEYS, empty, command)

    def row(self, model: str, sampler: str, steps: int) -> dict[str, Any] | None:
        """The row of ``model`` (``teacher`` or ``student-N``) with ``sampler`` at ``steps``, if scored."""
        return next(
            (
                row
                for row in self.data["rows"]
                if (row["model"], row["sampler"], row["steps"]) == (model, sampler, steps)
            ),
            None,
        )


def train_teacher(plan: FewStepPlan) -> dict[str, Any]:
    """Train (or resume, or find finished) the teacher when its folder has no pipeline; returns its record.

    Raises:
        ValueError: if the folder has no pipeline and there is no ``teacher_config`` to train one with.
    """
    if plan.teacher_config is not None and not (plan.teacher / "model_index.json").is_file():
        args = trainer.parse_args(plan.train_argv())
        reset_accelerate_state()
        trainer.train(args)
    if not (plan.teacher / "model_index.json").is_file():
        raise ValueError(
            f"the teacher {str(plan.teacher)!r} holds no pipeline; train it first or pass its recipe to "
            "train it"
        )
    record: dict[str, Any] = {
        "folder": str(plan.teacher),
        "process": forward_process(load_pipeline(plan.teacher)).name,
    }
    log = plan.teacher / "logs" / "metrics.jsonl"
    if log.is_file():
        timed = [r for r in map(json.loads, log.read_text().splitlines()) if "train_seconds" in r]
        if timed:
            record |= {"train_minutes": timed[-1]["train_seconds"] / 60, "train_steps": timed[-1]["step"]}
    return record


def distill_students(plan: FewStepPlan) -> dict[str, Any]:
    """Distil (or resume, or find finished) the students; returns the run's ``distillation.json``."""
    args = distill.parse_args(plan.distill_argv())
    reset_accelerate_state()
    distill.distill(args)
    return json.loads((plan.work_dir / distill.SUMMARY_FILE).read_text())


def teacher_samplers(process, distilled: tuple[str, int] | None = None) -> list[tuple[str, int]]:
    """The teacher's rows: :data:`TEACHER_SAMPLERS` of its process, then ``distilled`` (the deterministic
    sampler and steps that the first round distils); steps capped at ``T``, no repeats."""
    rows = TEACHER_SAMPLERS.get(process.name, ((process.default_sampler, process.default_steps()),))
    rows = (*rows, distilled) if distilled else rows
    capped = [(sampler, min(steps, process.num_train_timesteps)) for sampler, steps in rows]
    return list(dict.fromkeys(capped))


def score(pipeline, sampler: str, steps: int, quality, num_images: int, seed: int) -> dict[str, Any]:
    """Sample ``num_images`` with ``sampler`` in ``steps`` steps, count the network calls and score them.

    Args:
        pipeline: a trained pipeline.
        sampler: a sampler of its process.
        steps: the sampler's steps.
        quality: a :class:`~mnist_diffusion.evaluation.metrics.SampleQuality` (test split reference, training
            split floor).
        num_images: samples to draw.
        seed: seed of the samples.
    """
    calls = []
    hook = pipeline.unet.register_forward_hook(lambda module, inputs, output: calls.append(1))
    try:
        began = time.perf_counter()
        images = generate(pipeline, num_images, sampler, steps, seed, batch_size=SAMPLING_BATCH)
        seconds = time.perf_counter() - began
    finally:
        hook.remove()
    metrics = quality.evaluate(images).metrics
    return {
        "network_calls": len(calls) / math.ceil(num_images / SAMPLING_BATCH),
        "sampling_seconds": seconds,
        "images_per_second": num_images / seconds,
        "num_images": num_images,
        **{key: metrics[key] for key in METRIC_KEYS},
    }


def run_fewstep(plan: FewStepPlan, results: Results, quality) -> dict[str, Any]:
    """Train the teacher if needed, distil the students, and score every row, writing ``results`` as it goes.

    Args:
        plan: the teacher, the distillation and the sampling settings.
        results: the results file (possibly holding an earlier, interrupted run's rows).
        quality: a :class:`~mnist_diffusion.evaluation.metrics.SampleQuality` against the test split, with the
            training split for the floor.

    Returns:
        The results (also written to ``results.path``).

    Example:
        >>> from pathlib import Path
        >>> from mnist_diffusion.evaluation.fewstep import FewStepPlan, Results, run_fewstep, write_report
        >>> from mnist_diffusion.evaluation.metrics import SampleQuality
        >>> from mnist_diffusion.training.data import load_split
        >>> plan = FewStepPlan("flow", Path("outputs/fast_cpu_flow"),
        ...                    Path("training/configs/distill_flow.yaml"), Path("outputs/fewstep/flow"))
        >>> results = Results.open(Path("benchmarks/fewstep_flow.json"), plan, "a note")  # doctest: +SKIP
        >>> test = load_split("ylecun/mnist", "test")  # doctest: +SKIP
        >>> train = load_split("ylecun/mnist", "train")  # doctest: +SKIP
        >>> data = run_fewstep(plan, results, SampleQuality(test, train))  # doctest: +SKIP
        >>> write_report(data, Path("benchmarks/fewstep_flow.md"))  # doctest: +SKIP
    """
    results.data["teacher"] = train_teacher(plan)
    results.save()
    summary = distill_students(plan)
    results.data["distillation"] = {
        key: summary[key] for key in ("method", "process", "teacher_steps", "students", "steps_per_round")
    } | {
        "train_batch_size": summary["train_batch_size"],
        "minutes": summary["train_seconds"] / 60,
        "cpu_minutes": summary["cpu_seconds"] / 60,
        "torch_threads": summary["torch_threads"],
    }
    results.save()

    teacher = load_pipeline(plan.teacher)
    process = forward_process(teacher)
    distilled = (distill.deterministic_sampler(teacher.scheduler).teacher_sampler, summary["teacher_steps"])
    for sampler, steps in teacher_samplers(process, distilled):
        if results.row("teacher", sampler, steps) is None:
            row = {"model": "teacher", "folder": str(plan.teacher), "sampler": sampler, "steps": steps}
            row |= {"label": process.samplers[sampler].label}
            row |= score(teacher, sampler, steps, quality, plan.num_images, plan.seed)
            results.data["rows"].append(row)
            results.save()
    for student_steps in plan.student_steps:
        folder = plan.work_dir / f"{distill.STEPS_PREFIX}{student_steps}"
        pipeline = load_pipeline(folder)
        student = forward_process(pipeline)
        # The student's own sampler and steps, as every tool takes them from its folder.
        sampler, steps = student.default_sampler, student.default_steps()
        model = f"student-{student_steps}"
        if results.row(model, sampler, steps) is None:
            record = json.loads((folder / distill.SUMMARY_FILE).read_text())
            row = {"model": model, "folder": str(folder), "sampler": sampler, "steps": steps}
            row |= {"label": student.samplers[sampler].label}
            row |= score(pipeline, sampler, steps, quality, plan.num_images, plan.seed)
            row |= {
                "distill_minutes": record["train_seconds"] / 60,
                "distill_cpu_minutes": record["cpu_seconds"] / 60,
            }
            results.data["rows"].append(row)
            results.save()
    return results.data


def markdown_report(results: dict[str, Any]) -> str:
    """The results as Markdown: how they were measured, then one table row per model and sampler."""
    settings, teacher, distilled = results["settings"], results["teacher"], results["distillation"]
    machine = results["sessions"][-1]["machine"]
    command = results["sessions"][-1]["command"]
    lines = ["# Few-step generation", "", f"Produced by `{command}`.", ""]
    if results["quick"]:
        lines += [
            "**Smoke run (`--quick`)**: synthetic data, a tiny teacher and seconds of distillation; the",
            "numbers only show that the benchmark runs. Run it without `--quick` for results.",
            "",
        ]
    trained = (
        f", trained for {teacher['train_minutes']:.1f} minutes ({teacher['train_steps']} steps)"
        if "train_minutes" in teacher
        else ""
    )
    lines += [
        f"Teacher: `{teacher['folder']}` ({teacher['process']}){trained}. Students: "
        f"{distilled['method']} of its {distilled['teacher_steps']}-step deterministic sampler, "
        f"{distilled['steps_per_round']} steps of {distilled['train_batch_size']} images per round, "
        f"{distilled['minutes']:.1f} minutes in all ({distilled['cpu_minutes']:.1f} CPU-minutes, "
        f"{distilled['torch_threads']} threads).",
        "",
        f"{settings['num_images']} samples per row; FID on the MNIST classifier's features against the test "
        "split (floor: as many real training images); class entropy: normalised entropy of the predicted "
        "classes (1: balanced); calls: network calls per image, counted; distillation minutes: up to that "
        "student (its rounds and those before).",
        "",
        f"Machine: {machine['cpu']}, {machine['usable_cpus']} usable CPUs, torch {machine['torch']}, "
        f"diffusers {machine['diffusers']}.",
        "",
        "| model | sampler | steps | calls | FID | floor | class entropy | images/s | distil. min (CPU) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results["rows"]:
        cost = (
            f"{row['distill_minutes']:.1f} ({row['distill_cpu_minutes']:.1f})"
            if "distill_minutes" in row
            else "-"
        )
        lines.append(
            f"| {row['model']} | {row['label']} | {row['steps']} | {row['network_calls']:g} | "
            f"{row['fid']:.2f} | {row['fid_floor']:.2f} | {row['class_entropy']:.2f} | "
            f"{row['images_per_second']:.1f} | {cost} |"
        )
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, Any], markdown: Path) -> str:
    """Write :func:`markdown_report` of ``results`` to ``markdown``; returns it."""
    text = markdown_report(results)
    write_text(markdown, text)
    return text
