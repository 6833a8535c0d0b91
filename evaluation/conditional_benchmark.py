"""Class-conditional generation at equal budget: what conditioning and guidance buy, for every process.

Two measurements, each with the real trainer (:func:`mnist_diffusion.training.train.train`) and scored as
``scripts/evaluate.py`` scores a conditional model (:mod:`mnist_diffusion.evaluation.conditional`):

(a) The quickstart recipe (``training/configs/quickstart.yaml``: flow matching, the tiny UNet without
    attention, 10 minutes)
    trained twice, side by side, unconditionally and with ``--class_conditional`` (label dropout 0.1, as
    ``quickstart_conditional.yaml``): the FID of ``num_images`` samples of each with the recipe's sampler, and
    the conditional model's conditional accuracy and FID at each guidance scale (0, 1, 2, 3, 5), every digit
    asked for equally often and every scale from the same seed.
(b) Every cold degradation trained class-conditionally with the quickstart's network, optimiser and budget
    (the tiny UNet without attention, 10 minutes), so that only the forward process differs from (a): its
    ``training/configs/cold_<name>.yaml`` (the degradation and its loss) with ``--class_conditional`` and
    the quickstart's :data:`QUICKSTART_NETWORK_KEYS`. Each is scored at ``w = 1`` with every sampler of its
    process; the one of lowest FID (its best sampler) is then scored at every guidance scale. (The coursework
    CNN of the cold configs, at its learning rate, had not learned to use the labels after 10 minutes:
    accuracy 0.13 for impulse, 0.18 for morph.)

Everything resumes: a killed training continues from its latest checkpoint, a finished one is not trained
again, and each scored row is written to the JSON at once, so running the same command again scores only what
is missing. A run scored in full is not even opened: a later session whose training folders are gone (a fresh
clone holding the committed JSON) goes on with the runs still missing. Used by ``scripts/benchmark.py
--section conditional``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mnist_diffusion.evaluation.benchmark import ResultsFile, reset_accelerate_state
from mnist_diffusion.evaluation.conditional import (
    DEFAULT_GUIDANCE_SCALES,
    evaluate_conditional,
    recommended_guidance_scale,
)
from mnist_diffusion.evaluation.quality import recipe_sampler
from mnist_diffusion.pipelines import load_pipeline
from mnist_diffusion.pipelines.sampling import generate
from mnist_diffusion.schedulers import FORWARD_PROCESSES, ColdProcess, forward_process
from mnist_diffusion.training.files import write_text
from mnist_diffusion.training.train import parse_args, train

SCHEMA_VERSION = 1
CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
QUICKSTART_CONFIG = CONFIGS / "quickstart.yaml"
# The registered cold degradations, in the registry's order.
COLD_DEGRADATIONS: tuple[str, ...] = tuple(
    name for name, factory in FORWARD_PROCESSES.items() if isinstance(forward_process(factory()), ColdProcess)
)
# The budget of every cold run: the quickstart's, in minutes of training-loop time.
COLD_MINUTES = 10.0
# The cold samplers' step cap (evenly spaced timesteps from T down to 1): blur's T. A process's every step
# costs a network call per image, and des samples with DDPM's 1000 ancestral steps, hours per score on a CPU.
COLD_MAX_STEPS = 20
# What the cold runs take from the quickstart recipe (quickstart.yaml): its network and optimiser; the budget
# is the plan's cold_minutes.
QUICKSTART_NETWORK_KEYS = (
    "model",
    "unet_preset",
    "learning_rate",
    "lr_scheduler",
    "lr_warmup_steps",
    "train_batch_size",
    "max_train_steps",
    "use_ema",
    "ema_max_decay",
)
# Flags of every cold run: one grid and one small evaluation at the end, not every epoch.
COLD_RUN_FLAGS = ("--save_images_epochs=1000000", "--eval_epochs=1000000", "--eval_num_images=100")
SCORE_KEYS = ("fid", "fid_floor", "kid_mean", "class_entropy", "mean_confidence")
# Settings that must match for a later run to continue an existing results file.
SETTINGS_KEYS = (
    "num_images",
    "guidance_scales",
    "seed",
    "dataset",
    "degradations",
    "cold_minutes",
    "cold_max_steps",
    "num_inference_steps",
    "train_flags",
    "quick",
)


@dataclass
class ConditionalPlan:
    """What the conditional section measures and where it keeps its runs.

    Args:
        work_dir: one training folder per run (``quickstart``, ``quickstart_conditional``, ``cold_<name>``).
        dataset_name: Hub id or local parquet folder (training data, FID reference and floor).
        target_dataset: the morph degradation's targets (Fashion-MNIST; a Hub id or local folder).
        num_images: samples per score, a multiple of 10 (each digit asked for equally often).
        guidance_scales: the guidance scales of the curves.
        seed: seed of the samples (the same at every scale) and of the metrics' random subsets.
        degradations: the cold degradations to train, in this order.
        cold_minutes: the training-loop minutes of every cold run (the same budget for all).
        cold_max_steps: a cap on every cold sampler's steps.
        num_inference_steps: a cap on every sampler's steps (``None``: each sampler's usual count).
        train_flags: ``train.py`` flags appended to every run (the smoke run's tiny settings).
        quick: a smoke run (synthetic data, seconds of training); recorded in the results.

    Example:
        >>> from pathlib import Path
        >>> from mnist_diffusion.evaluation.conditional_benchmark import ConditionalPlan
        >>> plan = ConditionalPlan(work_dir=Path("w"), dataset_name="mnist", target_dataset="fashion")
        >>> plan.quickstart_argv(conditional=True)[3:]
        ['--output_dir=w/quickstart_conditional', '--resume_from_checkpoint=latest', '--class_conditional']
    """

    work_dir: Path = Path("outputs/conditional_benchmark")
    dataset_name: str = "ylecun/mnist"
    target_dataset: str = "zalando-datasets/fashion_mnist"
    num_images: int = 1000
    guidance_scales: tuple[float, ...] = DEFAULT_GUIDANCE_SCALES
    seed: int = 0
    degradations: tuple[str, ...] = COLD_DEGRADATIONS
    cold_minutes: float = COLD_MINUTES
    cold_max_steps: int = COLD_MAX_STEPS
    num_inference_steps: int | None = None
    train_flags: tuple[str, ...] = ()
    quick: bool = False

    def settings(self) -> dict[str, Any]:
        """The settings recorded in (and checked against) the results file."""
        return {
            "work_dir": str(self.work_dir),
            "dataset_name": self.dataset_name,
            "dataset": Path(self.dataset_name).name,
            "target_dataset": self.target_dataset,
            "num_images": self.num_images,
            "guidance_scales": list(self.guidance_scales),
            "seed": self.seed,
            "degradations": list(self.degradations),
            "cold_minutes": self.cold_minutes,
            "cold_max_steps": self.cold_max_steps,
            "num_inference_steps": self.num_inference_steps,
            "train_flags": list(self.train_flags),
            "quick": self.quick,
        }

    def quickstart_argv(self, conditional: bool) -> list[str]:
        """``train.py`` flags of the quickstart recipe, unconditional or with ``--class_conditional``."""
        name = "quickstart_conditional" if conditional else "quickstart"
        return [
            "--config",
            str(QUICKSTART_CONFIG),
            f"--dataset_name={self.dataset_name}",
            f"--output_dir={self.work_dir / name}",
            "--resume_from_checkpoint=latest",
            *(["--class_conditional"] if conditional else []),
            *self.train_flags,
        ]

    def cold_argv(self, name: str) -> list[str]:
        """``train.py`` flags of cold degradation ``name``: its config (else its defaults), the quickstart's
        network and optimiser, ``--class_conditional`` and the shared budget."""
        config = CONFIGS / f"cold_{name}.yaml"
        source = ["--config", str(config)] if config.is_file() else [f"--degradation={name}"]
        targets = [f"--target_dataset={self.target_dataset}"] if name == "morph" else []
        return [
            *source,
            *quickstart_network_flags(),
            f"--dataset_name={self.dataset_name}",
            f"--output_dir={self.work_dir / f'cold_{name}'}",
            "--class_conditional",
            f"--max_train_minutes={self.cold_minutes:g}",
            *COLD_RUN_FLAGS,
            *targets,
            "--resume_from_checkpoint=latest",
            *self.train_flags,
        ]

    def steps(self, process, sampler: str, steps: int | None = None) -> int:
        """The steps to sample ``sampler`` with: ``steps`` (else its usual count), capped by the plan."""
        steps = steps or process.default_steps(sampler)
        return min(steps, self.num_inference_steps) if self.num_inference_steps else steps

    def cold_steps(self, process, sampler: str) -> int:
        """The steps of cold sampler ``sampler``: :meth:`steps`, capped at ``cold_max_steps``."""
        return min(self.steps(process, sampler), self.cold_max_steps)


class Results(ResultsFile):
    """The results file: written whole after every change, so that a kill loses at most one score."""

    @classmethod
    def open(cls, path: Path, plan: ConditionalPlan, command: str) -> Results:
        """Continue ``path`` if it holds a run of the same settings, else start one.

        Raises:
            ValueError: if ``path`` holds results of other settings (they would be mixed), or is not JSON.
        """
        empty = {"schema_version": SCHEMA_VERSION, "quick": plan.quick, "quickstart": {}, "cold": {}}
        return cls.open_with(path, plan.settings(), SETTINGS_KEYS, empty, command)

    def entry(self, section: str, name: str, folder: Path) -> dict[str, Any]:
        """The entry of run ``name`` of ``section`` (``quickstart`` or ``cold``), for the pipeline trained in
        ``folder``: when the pipeline is not the one its scores were measured on, they move to its ``earlier``
        runs (shown, not mixed)."""
        record = training_record(folder)
        entry = self.data[section].get(name)
        if entry is None or entry.get("train_steps") != record.get("train_steps"):
            # New, or trained again since (its scores are another pipeline's): trained in this session, whose
            # machine sets how many steps the minutes of budget held. A run scored before is kept as earlier.
            earlier = (entry or {}).pop("earlier", [])
            if entry and (entry.get("curve") or "fid" in entry):
                earlier.append(entry)
            entry = {"machine": machine_label(self.data["sessions"][-1]["machine"])}
            if earlier:
                entry["earlier"] = earlier
        entry |= {"folder": str(folder), **record}
        self.data[section][name] = entry
        return entry

    def finished(self, section: str, name: str) -> bool:
        """Whether run ``name`` of ``section`` is scored in full: a later session (whose training folders may
        be gone) neither trains nor samples it again."""
        entry = self.data[section].get(name, {})
        if section == "quickstart" and name == "unconditional":
            return "fid" in entry
        scored = {row["guidance_scale"] for row in entry.get("curve", [])}
        return set(self.data["settings"]["guidance_scales"]) <= scored


def machine_label(machine: dict[str, Any]) -> str:
    """The CPU and its usable cores, as the tables name the machine a run was trained on."""
    return f"{machine['cpu']}, {machine['usable_cpus']} CPUs"


def quickstart_network_flags() -> list[str]:
    """The ``train.py`` flags of the quickstart recipe's :data:`QUICKSTART_NETWORK_KEYS`."""
    config = yaml.safe_load(QUICKSTART_CONFIG.read_text())
    flags = []
    for key in QUICKSTART_NETWORK_KEYS:
        value = config[key]
        flags += ([f"--{key}"] if value else []) if isinstance(value, bool) else [f"--{key}={value}"]
    return flags


def train_run(argv: list[str]) -> Path:
    """Train (or resume, or find finished) one run with the real Trainer; returns its folder."""
    args = parse_args(argv)
    reset_accelerate_state()
    train(args)
    return Path(args.output_dir)


def training_record(folder: Path) -> dict[str, Any]:
    """The run's last logged step and its training-loop minutes (from ``logs/metrics.jsonl``)."""
    log = folder / "logs" / "metrics.jsonl"
    timed = []
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if "train_seconds" in record:
                timed.append(record)
    if not timed:
        return {}
    return {"train_steps": timed[-1]["step"], "train_minutes": timed[-1]["train_seconds"] / 60}


def _score_unconditional(entry, pipeline, quality, plan: ConditionalPlan, results: Results) -> None:
    if "fid" in entry:
        return
    images = generate(pipeline, plan.num_images, entry["sampler"], entry["num_inference_steps"], plan.seed)
    metrics = quality.evaluate(images).metrics
    entry.update({key: metrics[key] for key in SCORE_KEYS}, num_images=plan.num_images)
    results.save()


def _score_curve(
    entry, pipeline, quality, plan: ConditionalPlan, results: Results, sampler: str, steps: int, known=()
) -> None:
    """Score the plan's guidance scales with ``sampler`` into ``entry["curve"]`` (rows of other samplers go),
    reusing ``known`` rows and those already there; saved after each."""
    rows = {row["guidance_scale"]: row for row in entry.get("curve", []) if row.get("sampler") == sampler}
    for row in known:
        rows.setdefault(row["guidance_scale"], row)
    for scale in plan.guidance_scales:
        if scale not in rows:
            result = evaluate_conditional(
                pipeline, quality, plan.num_images, scale, sampler, steps, plan.seed
            )
            rows[scale] = {"sampler": sampler, "num_inference_steps": steps, **result.row()}
        entry["curve"] = [rows[s] for s in plan.guidance_scales if s in rows]
        entry["recommended_guidance_scale"] = recommended_guidance_scale(entry["curve"])
        results.save()


def run_conditional(plan: ConditionalPlan, results: Results, quality) -> dict[str, Any]:
    """Train and score (a) the quickstart recipe with and without labels and (b) every cold degradation with
    labels, writing ``results`` after each score.

    Args:
        plan: the runs and the sampling settings.
        results: the results file (possibly holding an earlier, interrupted run's scores).
        quality: a :class:`~mnist_diffusion.evaluation.metrics.SampleQuality` against the test split, with the
            training split for the floor.

    Returns:
        The results (also written to ``results.path``).

    Example:
        >>> from pathlib import Path
        >>> from mnist_diffusion.evaluation.conditional_benchmark import (
        ...     ConditionalPlan, Results, run_conditional, write_report
        ... )
        >>> from mnist_diffusion.evaluation.metrics import SampleQuality
        >>> from mnist_diffusion.training.data import load_split
        >>> plan = ConditionalPlan(dataset_name="../shared/data/mnist",
        ...                        target_dataset="../shared/data/fashion_mnist")
        >>> results = Results.open(Path("benchmarks/conditional.json"), plan, "a note")  # doctest: +SKIP
        >>> test = load_split(plan.dataset_name, "test")  # doctest: +SKIP
        >>> train = load_split(plan.dataset_name, "train")  # doctest: +SKIP
        >>> data = run_conditional(plan, results, SampleQuality(test, train))  # doctest: +SKIP
        >>> write_report(data, Path("benchmarks/conditional.md"))  # doctest: +SKIP
    """
    for conditional in (False, True):
        name = "conditional" if conditional else "unconditional"
        if results.finished("quickstart", name):
            continue
        folder = train_run(plan.quickstart_argv(conditional))
        entry = results.entry("quickstart", name, folder)
        pipeline = load_pipeline(folder)
        sampler, steps = recipe_sampler(folder, pipeline)
        steps = plan.steps(forward_process(pipeline), sampler, steps)
        entry.update(config="training/configs/quickstart.yaml", sampler=sampler, num_inference_steps=steps)
        results.save()
        if conditional:
            _score_curve(entry, pipeline, quality, plan, results, sampler, steps)
        else:
            _score_unconditional(entry, pipeline, quality, plan, results)

    for name in plan.degradations:
        if results.finished("cold", name):
            continue
        folder = train_run(plan.cold_argv(name))
        entry = results.entry("cold", name, folder)
        pipeline = load_pipeline(folder)
        process = forward_process(pipeline)
        entry.setdefault("samplers", {})
        for sampler in process.samplers:
            if sampler not in entry["samplers"]:
                steps = plan.cold_steps(process, sampler)
                result = evaluate_conditional(
                    pipeline, quality, plan.num_images, 1.0, sampler, steps, plan.seed
                )
                entry["samplers"][sampler] = {
                    "sampler": sampler,
                    "label": process.samplers[sampler].label,
                    "num_inference_steps": steps,
                    **result.row(),
                }
                results.save()
        best = min(entry["samplers"], key=lambda sampler: entry["samplers"][sampler]["fid"])
        entry["best_sampler"] = best
        row = entry["samplers"][best]
        _score_curve(entry, pipeline, quality, plan, results, best, row["num_inference_steps"], known=[row])
    return results.data


# ----- the report -------------------------------------------------------------------------------------------


def _cell(row: dict[str, Any] | None) -> str:
    return f"{row['conditional_accuracy']:.3f} / {row['fid']:.2f}" if row else "-"


def markdown_report(results: dict[str, Any]) -> str:
    """The results as Markdown: how they were measured, the quickstart table and the cold degradations."""
    settings = results["settings"]
    sessions = results.get("sessions", [])
    command = sessions[-1]["command"] if sessions else "?"
    machine = sessions[-1]["machine"] if sessions else None
    scales = settings["guidance_scales"]
    lines = ["# Class-conditional generation", "", f"Produced by `{command}`."]
    if len(sessions) > 1:
        lines[-1] = lines[-1][:-1] + f" ({len(sessions)} sessions: it resumes where the last one stopped)."
    lines.append("")
    if results["quick"]:
        lines += [
            "**Smoke run (`--quick`)**: synthetic data, a few steps of training and few samples; the numbers "
            "only show that the section runs. Run it without `--quick` for results.",
            "",
        ]
    lines += [
        f"{settings['num_images']} samples per score, each digit asked for equally often and every guidance "
        "scale from the same seed; FID on the MNIST classifier's features against the test split (floor: as "
        "many real training images); conditional accuracy: the fraction of samples that the classifier reads "
        "as the digit asked for (chance: 0.1); class entropy: normalised entropy of the predicted digits "
        "(1: balanced).",
    ]
    if machine:
        lines += [
            "",
            f"Machine (last session): {machine['cpu']}, {machine['usable_cpus']} usable CPUs, torch "
            f"{machine['torch']}, diffusers {machine['diffusers']}. A budget is minutes of the machine each "
            "run was trained on (the `machine` column): a faster CPU fits more steps in them.",
        ]
    quickstart = results["quickstart"]
    plain, conditional = quickstart.get("unconditional", {}), quickstart.get("conditional", {})
    lines += [
        "",
        "## The quickstart recipe, unconditional and class-conditional",
        "",
        "Both trained from `training/configs/quickstart.yaml` at the same budget (the conditional one with "
        "`--class_conditional`, label dropout 0.1: `quickstart_conditional.yaml`), sampled with the recipe's "
        f"sampler ({conditional.get('sampler', plain.get('sampler', '?'))} "
        f"{conditional.get('num_inference_steps', plain.get('num_inference_steps', ''))}).",
        "",
        "| model | guidance scale | conditional accuracy | FID | FID floor | class entropy | steps "
        "| minutes | machine |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]

    def trained(entry: dict[str, Any]) -> str:
        minutes = entry.get("train_minutes")
        return (
            f"{entry.get('train_steps', '?')} | "
            + (f"{minutes:.1f}" if minutes is not None else "?")
            + f" | {entry.get('machine', '?')}"
        )

    if "fid" in plain:
        lines.append(
            f"| unconditional | - | - | {plain['fid']:.2f} | {plain['fid_floor']:.2f} | "
            f"{plain['class_entropy']:.3f} | {trained(plain)} |"
        )
    for row in conditional.get("curve", []):
        lines.append(
            f"| class-conditional | {row['guidance_scale']:g} | {row['conditional_accuracy']:.3f} | "
            f"{row['fid']:.2f} | {row['fid_floor']:.2f} | {row['class_entropy']:.3f} | "
            f"{trained(conditional)} |"
        )
    if conditional.get("recommended_guidance_scale") is not None:
        lines += [
            "",
            f"Lowest FID among the guided scales (w > 0): w = {conditional['recommended_guidance_scale']:g}.",
        ]
    cold = results["cold"]
    lines += [
        "",
        "## Every cold degradation, class-conditional",
        "",
        "Each trained with `--class_conditional` from its `training/configs/cold_<name>.yaml` (its "
        "degradation and loss) with the quickstart's network and optimiser (the tiny UNet without attention) "
        f"for the same {settings['cold_minutes']:g} minutes of training-loop time (steps: the optimisation "
        "steps that fitted in them), so that only the forward process differs from the quickstart rows; "
        "starts come from each digit's own prior where the degradation fits one; scored at w = 1 with every "
        f"sampler of its process (at most {settings['cold_max_steps']} steps, evenly spaced from T down to "
        "1), then with the best one (lowest FID) at every guidance scale. Cells: conditional accuracy / FID."
        + (
            " An earlier run is a run of that degradation trained again since (on another machine, or with "
            "another version of the code: see the git log of this file), kept for comparison."
            if any(entry.get("earlier") for entry in cold.values())
            else ""
        ),
        "",
        "| degradation | best sampler | "
        + " | ".join(f"w = {scale:g}" for scale in scales)
        + " | FID floor | steps | machine |",
        "| --- | --- | " + " | ".join("---:" for _ in scales) + " | ---: | ---: | --- |",
    ]
    for name, entry in cold.items():
        earlier = [(run, f"{name} (earlier run)") for run in entry.get("earlier", [])]
        for run, label in [(entry, name), *earlier]:
            best = run.get("best_sampler")
            if best is None:
                continue
            rows = {row["guidance_scale"]: row for row in run.get("curve", [])}
            sampler = run["samplers"][best]
            cells = " | ".join(_cell(rows.get(scale)) for scale in scales)
            lines.append(
                f"| {label} | {sampler['label']}, {sampler['num_inference_steps']} steps | {cells} | "
                f"{sampler['fid_floor']:.2f} | {run.get('train_steps', '?')} | {run.get('machine', '?')} |"
            )
    lines += ["", "Every sampler at w = 1 (conditional accuracy / FID):", ""]
    for name, entry in cold.items():
        samplers = ", ".join(
            f"{row['label']}, {row['num_inference_steps']} steps: {_cell(row)}"
            for row in entry.get("samplers", {}).values()
        )
        if samplers:
            lines.append(f"- {name}: {samplers}")
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, Any], markdown: Path) -> str:
    """Write :func:`markdown_report` of ``results`` to ``markdown``; returns it."""
    text = markdown_report(results)
    write_text(markdown, text)
    return text
