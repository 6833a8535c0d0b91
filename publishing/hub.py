"""Publish a saved pipeline folder to the Hugging Face Hub with a model card.

The upload is always a *staged* copy of the folder the trainer wrote: the pipeline itself
(``model_index.json`` and its component folders, safetensors weights only), made portable so that
``DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)`` works without this project
installed, plus ``training_config.yaml`` (without secrets such as ``hub_token``), ``metrics.json`` (from
``scripts/evaluate.py``), a sample grid and a model card.
Checkpoints, logs and the per-epoch grids stay behind. Staging happens in a temporary folder that is moved
into place only once complete, so a failure never leaves a half-written folder.

The card asks the pipeline's forward process (:func:`mnist_diffusion.schedulers.forward_process`) for
everything that differs between processes: its name, title, summary, objective, randomness, samplers and usage
snippet. A class-conditional model (``--class_conditional``) also gets a section on how to ask for digits,
the recommended guidance scale (measured by ``scripts/evaluate.py --guidance_curve`` when it was run) and its
measured conditional accuracy (from ``scripts/evaluate.py``, else the trainer's ``--eval_epochs`` log), and a
usage snippet that asks for the digits 0 to 9 at that scale.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import diffusers
import torch
import yaml
from diffusers.utils.dynamic_modules_utils import get_relative_import_files
from huggingface_hub import ModelCard, ModelCardData, create_repo, get_token, upload_folder
from huggingface_hub import constants as hub_constants
from huggingface_hub.utils import validate_repo_id
from safetensors import safe_open

from mnist_diffusion.pipelines import load_pipeline, make_portable
from mnist_diffusion.pipelines.cold_diffusion import imported_class
from mnist_diffusion.pipelines.guidance import balanced_labels
from mnist_diffusion.pipelines.sampling import generate, save_grid
from mnist_diffusion.schedulers import ForwardProcess, forward_process
from mnist_diffusion.training.data import FASHION_MNIST, MNIST
from mnist_diffusion.training.train import build_parser, make_model, process_options

CARD_FILE = "README.md"
SAMPLE_GRID_FILE = "samples.png"
METRICS_FILE = "metrics.json"
TRAINING_CONFIG_FILE = "training_config.yaml"
# Training-config keys that may hold secrets: never shown in a card nor uploaded.
SECRET_KEYS = ("hub_token",)
# The trainer's log, whose records with an "fid" come from its evaluations (--eval_epochs).
TRAINING_LOG_FILE = Path("logs", "metrics.jsonl")
NUM_CARD_SAMPLES = 16
# Steps for a freshly drawn card grid when the trainer left none: enough for a recognisable preview.
CARD_SAMPLE_STEPS = 100

_KNOWN_DATASETS = {"mnist": MNIST, "fashion_mnist": FASHION_MNIST}
# Metrics of scripts/evaluate.py as the card lists them; a "<key>_mean" with a "<key>_std" is shown as
# mean ± std. Other numeric top-level keys follow under their own names.
_METRIC_ROWS = (
    ("fid", "FID ↓"),
    ("fid_floor", "FID of as many real training images (floor)"),
    ("kid", "KID ↓"),
    ("inception_score", "Inception-style score ↑ (max 10)"),
    ("class_entropy", "Class balance: normalised entropy of the predicted digits ↑ (1 = uniform)"),
    ("conditional_accuracy", "Conditional accuracy ↑: samples the classifier reads as the digit asked for"),
    ("mean_confidence", "Mean classifier confidence ↑"),
    ("images_per_second", "Sampling speed (images / s)"),
)
# Run settings rather than scores: reported in the sentence above the table.
# ("scheduler" is what older versions of scripts/evaluate.py called the sampler.)
_METRIC_SETTINGS = (
    "num_images",
    "sampler",
    "scheduler",
    "num_inference_steps",
    "start",
    "seed",
    "sampling_seconds",
    "guidance_scale",
    "class_labels",
    "recommended_guidance_scale",
)
# A class-conditional model's guidance scale when nothing was measured: the model as trained.
DEFAULT_GUIDANCE_SCALE = 1.0
# The trainer settings the card's training table shows first (when they applied to the run).
_MAIN_TRAINING_SETTINGS = (
    "num_epochs",
    "max_train_steps",
    "train_batch_size",
    "learning_rate",
    "lr_scheduler",
    "use_ema",
    "mixed_precision",
    "seed",
)
_FEATURE_NETWORKS = {
    "mnist": "the project's MNIST classifier (`models/mnist_classifier.py`, penultimate layer)",
    "inception": "Inception-v3 (pool features)",
}

CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ description }}

![Samples drawn from the model]({{ sample_grid }})

## Usage

```python
{{ usage }}
```
{% if conditioning %}
## Class-conditional generation

{{ conditioning }}
{% endif %}
## Model

{{ model_table }}

## {{ process_heading }}

{{ process }}

## Training

{{ training }}

## Evaluation

{{ evaluation }}
"""


def read_metrics(folder: str | os.PathLike, metrics_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read the metrics written by ``scripts/evaluate.py``.

    Args:
        folder: a saved pipeline folder; without ``metrics_path``, its ``metrics.json`` or else
            ``eval/metrics.json`` (where the README's evaluation command writes) is read when present.
        metrics_path: an explicit metrics JSON file.

    Returns:
        The metrics, or an empty dict when ``metrics_path`` is not given and the folder holds none.

    Raises:
        ValueError: if ``metrics_path`` is given but missing, or a metrics file is not a JSON object.
    """
    if metrics_path is not None:
        path = Path(metrics_path)
        if not path.is_file():
            raise ValueError(f"metrics file {str(path)!r} does not exist; run scripts/evaluate.py first")
    else:
        found = [p for p in (Path(folder, METRICS_FILE), Path(folder, "eval", METRICS_FILE)) if p.is_file()]
        if not found:
            return {}
        path = found[0]
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"metrics file {str(path)!r} is not valid JSON: {error}") from error
    if not isinstance(metrics, dict):
        raise ValueError(f"metrics file {str(path)!r} must hold a JSON object")
    return metrics


def build_model_card(
    folder: str | os.PathLike,
    repo_id: str,
    metrics: dict[str, Any] | None = None,
    sample_grid: str = SAMPLE_GRID_FILE,
) -> ModelCard:
    """Build the model card of a saved pipeline folder.

    Args:
        folder: a saved pipeline folder (``model_index.json``, components, and the trainer's
            ``training_config.yaml`` when present).
        repo_id: the Hub id (or local path) that the card's usage snippet loads.
        metrics: evaluation metrics (see :func:`read_metrics`); omitted from the card when empty.
        sample_grid: path of the sample grid image, relative to the card.

    Raises:
        ValueError: if ``folder`` is not a saved pipeline.
    """
    folder = Path(folder)
    index = _read_model_index(folder)
    scheduler_config = _read_json(folder / "scheduler" / "scheduler_config.json")
    model_config = _read_json(folder / "unet" / "config.json")
    process = forward_process(_load_scheduler(folder, index))
    training = applied_training_config(_read_training_config(folder), process)
    dataset = _dataset_id(str(training.get("dataset_name", MNIST)))
    size = model_config.get("sample_size", "?")

    classes = model_config.get("num_class_embeds")
    classes = int(classes) - 1 if classes else None  # the last class embedding is the no-class label
    metrics = metrics or {}
    logged = _logged_quality(folder)
    guidance = recommended_guidance(metrics) if classes else None
    tags = ["diffusion", "mnist", process.family, process.name]
    tags += ["class-conditional", "classifier-free-guidance"] if classes else []
    # A conditional model's snippet asks for each digit once, at the recommended guidance scale.
    conditional_call = {}
    if classes:
        conditional_call = {"class_labels": list(range(classes)), "guidance_scale": guidance[0]}
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        license="mit",
        datasets=[dataset] if dataset else None,
        tags=list(dict.fromkeys(["diffusers", "unconditional-image-generation", *tags])),
    )
    dataset_name = dataset.split("/")[-1].replace("_", "-").upper() if dataset else "an image dataset"
    loss = str(training.get("loss") or process.default_loss)
    return ModelCard.from_template(
        card_data,
        template_str=CARD_TEMPLATE,
        title=f"{process.label} on {dataset_name}",
        description=_description(process, index),
        sample_grid=sample_grid,
        usage=process.usage(repo_id, **conditional_call),
        conditioning=_conditioning(classes, guidance, metrics, logged, training) if classes else "",
        model_table=_table(
            [
                ("Pipeline", f"`{_class_name(index['_class_name'])}`"),
                ("Denoiser", f"`{model_config.get('_class_name', '?')}`"),
                ("Parameters", f"{_count_parameters(folder / 'unet'):,}"),
                ("Image size", f"{size} × {size}"),
                ("Training objective", f"{process.objective}, {loss.upper()} loss"),
            ],
            header=("Property", "Value"),
        ),
        process_heading="Forward process",
        process=_process(process, scheduler_config, training),
        training=_training(training, process),
        evaluation=_evaluation(metrics, logged, training, process),
    )


def recommended_guidance(metrics: dict[str, Any]) -> tuple[float, str]:
    """A class-conditional model's recommended guidance scale, and where it comes from (for the card).

    The lowest-FID scale of ``scripts/evaluate.py --guidance_curve`` when it was run, else the scale the model
    was evaluated at, else :data:`DEFAULT_GUIDANCE_SCALE` (the model as trained).
    """
    measured = metrics.get("recommended_guidance_scale")
    if _is_number(measured):
        return float(measured), (
            "of the guided scales on the guidance curve that `scripts/evaluate.py --guidance_curve` "
            "measured, the one of lowest FID (see Evaluation); larger scales trade diversity for adherence"
        )
    if _is_number(metrics.get("guidance_scale")):
        return float(metrics["guidance_scale"]), (
            "the scale it was evaluated at; `scripts/evaluate.py --guidance_curve` measures accuracy and FID "
            "at several"
        )
    return DEFAULT_GUIDANCE_SCALE, (
        "the model as trained, since no guidance curve was measured: `scripts/evaluate.py --guidance_curve` "
        "measures accuracy and FID at several scales"
    )


def _count(value: Any) -> str:
    """A count of samples followed by a space (``1,000 ``), or nothing when it is not a number."""
    return f"{int(value):,} " if _is_number(value) and float(value).is_integer() else ""


def _conditioning(
    classes: int,
    guidance: tuple[float, str],
    metrics: dict[str, Any],
    logged: dict[str, Any],
    training: dict[str, Any],
) -> str:
    """The card's section on a class-conditional model: how to ask for digits, the scale, the accuracy."""
    dropout = training.get("label_dropout")
    trained = "trained with `--class_conditional`" + (
        f", label dropout {dropout:g}" if _is_number(dropout) else ""
    )
    scale, why = guidance
    text = (
        f"This model is **class-conditional** ({trained}): the pipeline takes `class_labels`, the digit of "
        f"each image (one int in 0..{classes - 1} for all images, or one per image), and `guidance_scale` "
        "`w`, classifier-free guidance (Ho & Salimans, 2022), which mixes the conditional and the "
        "unconditional prediction as `uncond + w * (cond - uncond)`: `w = 1` (the default) samples the model "
        "as trained, `w = 0` unconditionally (as does leaving `class_labels` out), and a larger `w` pushes "
        "each image harder towards its digit, computing both predictions in one network call on a doubled "
        f"batch.\n\nRecommended guidance scale: **{scale:g}** ({why}); the snippet above uses it."
    )
    if _is_number(metrics.get("conditional_accuracy")):
        count = metrics.get("num_images")
        at = metrics.get("guidance_scale", DEFAULT_GUIDANCE_SCALE)
        text += (
            f"\n\nConditional accuracy: **{metrics['conditional_accuracy']:.1%}** of "
            f"{_count(count)}samples drawn at `w = {at:g}`, every digit "
            "asked for equally often, are read as the digit asked for by the project's MNIST classifier "
            "(`scripts/evaluate.py`)."
        )
    elif _is_number(logged.get("conditional_accuracy")):
        count = logged.get("num_images")
        text += (
            f"\n\nConditional accuracy: **{logged['conditional_accuracy']:.1%}** of "
            f"{_count(count)}samples drawn at `w = 1`, the digits asked "
            "for in turn, are read as the digit asked for by the project's MNIST classifier (the trainer's "
            "latest evaluation, `--eval_epochs`)."
        )
    else:
        text += (
            "\n\nConditional accuracy: not measured yet; `scripts/evaluate.py` reports it (the fraction of "
            "samples that the project's MNIST classifier reads as the digit asked for)."
        )
    return text


def applied_training_config(training: dict[str, Any], process: ForwardProcess) -> dict[str, Any]:
    """The entries of a saved ``training_config.yaml`` that applied to the run, in their order.

    The trainer saves every flag, also the options of the models and forward processes it did not use. Left
    out are the options of other processes (by :func:`mnist_diffusion.training.train.process_options`) and the
    model options that :func:`mnist_diffusion.training.train.make_model` reads only for another ``--model``.

    Args:
        training: the saved training config (may be empty).
        process: the forward process of the saved pipeline.
    """
    if not training:
        return {}
    by_option = process_options()
    _, other_models = _model_flags(training, process.num_train_timesteps)
    return {
        key: value
        for key, value in training.items()
        if key not in other_models and (key not in by_option or process.name in by_option[key])
    }


class _RecordedArgs:
    """Flag values that record which flags are read: what ``make_model`` uses for one ``--model``."""

    def __init__(self, values: dict[str, Any]):
        self._values = values
        self.read: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name not in self._values:
            raise AttributeError(name)
        if name not in self.read:
            self.read.append(name)
        return self._values[name]


def _model_flags(training: dict[str, Any], num_train_timesteps: int) -> tuple[list[str], set[str]]:
    """The flags ``make_model`` reads for the run's ``--model`` (in order), and those only others read.

    Every ``--model`` choice is built from the config over the trainer's defaults, on the ``meta`` device: no
    memory, no random numbers, nothing computed.
    """
    parser = build_parser()
    defaults = {action.dest: action.default for action in parser._actions}
    reads = {}
    for choice in parser._option_string_actions["--model"].choices:
        args = _RecordedArgs({**defaults, **training, "model": choice})
        try:
            with torch.device("meta"):
                make_model(args, num_train_timesteps)
        except (ValueError, TypeError, KeyError):
            pass  # a bad value (an old config's) fails the build only after its flag was read
        reads[choice] = args.read
    chosen = reads.get(training.get("model", defaults["model"]), [])
    return chosen, {flag for flags in reads.values() for flag in flags} - set(chosen)


def write_model_card(
    folder: str | os.PathLike,
    repo_id: str | None = None,
    metrics_path: str | os.PathLike | None = None,
) -> Path:
    """Write ``README.md`` and the sample grid it shows into a saved pipeline folder, without uploading.

    Args:
        folder: a saved pipeline folder.
        repo_id: the Hub id the usage snippet loads; defaults to ``folder`` itself, so that the snippet
            runs locally.
        metrics_path: metrics JSON to report; defaults to ``folder/metrics.json`` when present.

    Returns:
        The path of the written card.

    Raises:
        ValueError: if ``folder`` is not a saved pipeline, ``repo_id`` is neither a Hub id nor a local
            folder, or a given file is missing or invalid.
    """
    folder = Path(folder)
    if repo_id is not None and not Path(repo_id).is_dir():
        _check_repo_id(repo_id)
    card = build_model_card(folder, repo_id or str(folder), read_metrics(folder, metrics_path))
    with tempfile.TemporaryDirectory(dir=folder, prefix=".card-") as scratch:
        grid = Path(scratch, SAMPLE_GRID_FILE)
        _write_sample_grid(folder, grid)
        card.save(Path(scratch, CARD_FILE))
        # Both files are complete before either replaces an older version.
        os.replace(grid, folder / SAMPLE_GRID_FILE)
        os.replace(Path(scratch, CARD_FILE), folder / CARD_FILE)
    return folder / CARD_FILE


def stage_pipeline(
    folder: str | os.PathLike,
    destination: str | os.PathLike,
    repo_id: str,
    metrics_path: str | os.PathLike | None = None,
) -> Path:
    """Build in ``destination`` exactly the files that :func:`push_pipeline` uploads.

    The pipeline's files are copied, made portable (custom component code beside the weights), and joined by
    ``training_config.yaml``, ``metrics.json``, a sample grid and the model card. The folder is assembled
    under a temporary name and renamed to ``destination`` only when complete.

    Args:
        folder: a saved pipeline folder.
        destination: the folder to create; it must not exist yet.
        repo_id: the Hub id that the card's usage snippet loads.
        metrics_path: metrics JSON to ship and report; defaults to ``folder/metrics.json`` when present.

    Returns:
        ``destination``.

    Raises:
        ValueError: if ``folder`` is not a saved pipeline with safetensors weights, ``destination`` exists,
            or a given file is missing or invalid.
    """
    folder, destination = Path(folder), Path(destination)
    index = _read_model_index(folder)
    if destination.exists():
        raise ValueError(f"staging folder {str(destination)!r} already exists; choose a new path")
    metrics = read_metrics(folder, metrics_path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}-partial-"))
    try:
        shutil.copy2(folder / "model_index.json", staging / "model_index.json")
        # A custom pipeline class that save_pretrained already made portable: its module beside the index,
        # with the sibling modules it imports relatively (guidance.py, pipeline_utils.py).
        pipeline_module = index["_class_name"][0] if isinstance(index["_class_name"], list) else None
        if pipeline_module and (folder / f"{pipeline_module}.py").is_file():
            source = folder / f"{pipeline_module}.py"
            for path in [source, *map(Path, get_relative_import_files(str(source)))]:
                shutil.copy2(path, staging / path.name)
        for component in _components(index):
            _check_safetensors(folder / component)
            shutil.copytree(folder / component, staging / component, ignore=shutil.ignore_patterns("*.bin"))
        if (folder / TRAINING_CONFIG_FILE).is_file():
            _stage_training_config(folder / TRAINING_CONFIG_FILE, staging / TRAINING_CONFIG_FILE)
        if metrics:
            (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        make_portable(staging)
        _write_sample_grid(folder, staging / SAMPLE_GRID_FILE)
        build_model_card(folder, repo_id, metrics).save(staging / CARD_FILE)
        os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination


def push_pipeline(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    metrics_path: str | os.PathLike | None = None,
    commit_message: str = "Upload pipeline",
) -> str:
    """Stage a saved pipeline folder (see :func:`stage_pipeline`) and upload it to a Hub model repo.

    The repo is created if needed. Nothing is written next to ``folder``: staging happens in a temporary
    folder that is removed afterwards.

    Args:
        folder: a saved pipeline folder.
        repo_id: ``USER/NAME`` or ``ORG/NAME``.
        private: create the repo as private (an existing repo keeps its visibility).
        token: a Hub token with write access; defaults to ``HF_TOKEN`` or the token saved by
            ``hf auth login``.
        metrics_path: metrics JSON to ship and report; defaults to ``folder/metrics.json`` when present.
        commit_message: message of the upload commit.

    Returns:
        The URL of the upload commit.

    Raises:
        ValueError: on a bad folder or repo id, when no token is available, when the Hub is disabled with
            ``HF_HUB_OFFLINE``, or when the Hub cannot be reached or refuses the upload.
    """
    _read_model_index(Path(folder))
    _check_repo_id(repo_id)
    token = token or get_token()
    if not token:
        raise ValueError(
            "no Hugging Face token found: run `hf auth login`, set HF_TOKEN, "
            "or pass a token with write access"
        )
    if hub_constants.HF_HUB_OFFLINE:
        raise ValueError("the Hugging Face Hub is disabled by HF_HUB_OFFLINE=1; unset it to upload")
    with tempfile.TemporaryDirectory(prefix="hub-upload-") as scratch:
        staged = stage_pipeline(folder, Path(scratch, "upload"), repo_id, metrics_path)
        try:
            create_repo(repo_id, token=token, private=private, exist_ok=True)
            commit = upload_folder(
                repo_id=repo_id, folder_path=staged, token=token, commit_message=commit_message
            )
        except Exception as error:  # the Hub client raises many HTTP and connection error types
            raise ValueError(
                f"could not upload to the Hugging Face Hub repo {repo_id!r} "
                f"({type(error).__name__}: {error}); check the network connection and that the token "
                "may write to this namespace"
            ) from error
    return commit.commit_url


def _check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except ValueError as error:
        raise ValueError(f"invalid Hub repo id {repo_id!r}: {error}") from error
    if repo_id.count("/") != 1:
        raise ValueError(f"Hub repo id {repo_id!r} must have the form USER/NAME or ORG/NAME")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is missing; is this a folder written by save_pretrained?")
    return json.loads(path.read_text())


def _read_model_index(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise ValueError(f"pipeline folder {str(folder)!r} does not exist; train one first (see README)")
    return _read_json(folder / "model_index.json")


def _read_training_config(folder: Path) -> dict[str, Any]:
    """The saved training config without :data:`SECRET_KEYS` (empty when there is none)."""
    path = folder / TRAINING_CONFIG_FILE
    config = yaml.safe_load(path.read_text()) if path.is_file() else None
    if not isinstance(config, dict):
        return {}
    return {key: value for key, value in config.items() if key not in SECRET_KEYS}


def _stage_training_config(source: Path, target: Path) -> None:
    """Copy the training config, rewritten without :data:`SECRET_KEYS` when it holds one."""
    config = yaml.safe_load(source.read_text())
    if isinstance(config, dict) and any(key in config for key in SECRET_KEYS):
        safe = {key: value for key, value in config.items() if key not in SECRET_KEYS}
        target.write_text(yaml.safe_dump(safe, sort_keys=False))
    else:
        shutil.copy2(source, target)


def _components(index: dict[str, Any]) -> list[str]:
    """Names of the component folders listed in ``model_index.json``."""
    return [name for name, value in index.items() if not name.startswith("_") and isinstance(value, list)]


def _check_safetensors(component: Path) -> None:
    if any(component.glob("*.bin")) and not any(component.glob("*.safetensors")):
        raise ValueError(
            f"{str(component)!r} holds only PyTorch .bin weights; re-save the pipeline with "
            "save_pretrained(..., safe_serialization=True)"
        )


def _count_parameters(component: Path) -> int:
    total = 0
    for path in component.glob("*.safetensors"):
        with safe_open(path, framework="pt") as weights:
            total += sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())  # noqa: SIM118
    return total


def _dataset_id(name: str) -> str | None:
    """The Hub id of the training dataset, also when it was loaded from a local copy of a known one."""
    known = _KNOWN_DATASETS.get(Path(name).name.lower())
    if known:
        return known
    return name if re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not Path(name).exists() else None


def _load_scheduler(folder: Path, index: dict[str, Any]):
    """The trained scheduler saved in ``folder``, built with the installed class its entry names."""
    entry = index.get("scheduler")
    if not isinstance(entry, list) or entry[0] is None:
        raise ValueError(
            f"{str(folder / 'model_index.json')!r} names no scheduler; is this a saved pipeline?"
        )
    return imported_class(entry[1]).from_pretrained(folder, subfolder="scheduler")


def _class_name(entry: str | list[str]) -> str:
    """The class of a ``model_index.json`` entry (``[library, class]`` or, for the pipeline, a name)."""
    return entry[-1] if isinstance(entry, list) else entry


def _description(process: ForwardProcess, index: dict[str, Any]) -> str:
    """The card's opening: the process's own summary, its samplers, and the custom code it ships."""
    samplers = "; ".join(
        f"`{name}`: {sampler.label}, {_steps(process.default_steps(name))}"
        + (" (the default, in the snippet below)" if name == process.default_sampler else "")
        for name, sampler in process.samplers.items()
    )
    text = f"{process.summary()}\n\nSamplers (the `sampler` of the project's tools): {samplers}."
    names = [_class_name(index["_class_name"])]
    names += [_class_name(entry) for entry in (index[name] for name in _components(index))]
    custom = [name for name in dict.fromkeys(names) if not hasattr(diffusers, name)]
    if custom:
        classes = ", ".join(f"`{name}`" for name in custom)
        text += (
            f" {classes} {'is' if len(custom) == 1 else 'are'} custom code shipped in this repository, hence "
            "`trust_remote_code=True`."
        )
    return text


def _steps(count: int) -> str:
    return f"{count} step" + ("" if count == 1 else "s")


def _process(process: ForwardProcess, scheduler_config: dict[str, Any], training: dict[str, Any]) -> str:
    """The forward process: its name, randomness, scheduler and settings, long arrays summarised."""
    rows = [
        ("`--degradation`", f"`{process.name}`"),
        ("Process", process.describe()),
        (
            "Randomness",
            "stochastic: a fresh random draw per image"
            if process.stochastic
            else "deterministic: `D(x0, t)` depends on `x0` and `t` only",
        ),
        ("Scheduler", f"`{scheduler_config.get('_class_name', '?')}`"),
    ]
    # Options of the process that the saved scheduler config does not record (a schedule's name).
    options = process_options()
    rows += [
        (f"`{key}` (training option)", f"`{value}`")
        for key, value in training.items()
        if key in options and key not in scheduler_config and value is not None
    ]
    # Explicit betas override the scheduler's own schedule settings, which would only mislead here.
    ignored = {"beta_start", "beta_end", "beta_schedule"} if scheduler_config.get("trained_betas") else set()
    for key, value in scheduler_config.items():
        if key.startswith("_") or key in ignored or value is None:
            continue
        if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
            value = f"{len(value)} values, {value[0]:.4g} … {value[-1]:.4g}"
        elif isinstance(value, (list, dict)):
            continue
        rows.append((f"`{key}`", f"`{value}`"))
    return _table(rows, header=("Setting", "Value"))


def _training(training: dict[str, Any], process: ForwardProcess) -> str:
    """The run's main settings and every argument that applied to it (see :func:`applied_training_config`)."""
    if not training:
        return f"No `{TRAINING_CONFIG_FILE}` was saved with this pipeline."
    model, _ = _model_flags(training, process.num_train_timesteps)
    keys = dict.fromkeys(["model", *model, *_MAIN_TRAINING_SETTINGS])
    summary = [(key, f"`{training[key]}`") for key in keys if training.get(key) is not None]
    full = yaml.safe_dump(training, sort_keys=False).strip()
    return (
        "Trained with `training/train.py` of the project; the main settings:\n\n"
        f"{_table(summary, header=('Setting', 'Value'))}\n\n"
        f"<details><summary>The arguments that applied to this run ({TRAINING_CONFIG_FILE}, without the "
        "options of other models and forward processes)</summary>\n\n"
        f"```yaml\n{full}\n```\n\n</details>"
    )


def _logged_quality(folder: Path) -> dict[str, Any]:
    """The latest evaluation the trainer logged (``--eval_epochs``), or an empty dict when it logged none."""
    path = folder / TRAINING_LOG_FILE
    latest: dict[str, Any] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a stopped run
        if isinstance(record, dict) and _is_number(record.get("fid")):
            latest = record
    return latest


def _evaluation(
    metrics: dict[str, Any], logged: dict[str, Any], training: dict[str, Any], process: ForwardProcess
) -> str:
    """The metrics of ``scripts/evaluate.py``, else the trainer's latest logged ones, else how to add them."""
    if metrics:
        network = metrics.get("feature_network")
        text = "Computed by `scripts/evaluate.py` against the MNIST test set (all values in `metrics.json`)"
        if network:
            text += f"; FID and KID use features from {_FEATURE_NETWORKS.get(network, f'`{network}`')}"
        settings = [
            f"`{key}` = {_format(metrics[key]) if _is_number(metrics[key]) else metrics[key]}"
            for key in _METRIC_SETTINGS
            if metrics.get(key) is not None
        ]
        if settings:
            text += f". Samples: {', '.join(settings)}"
        return f"{text}.\n\n{_metric_table(metrics)}{_guidance_curve_table(metrics)}"
    if logged:
        sampler = training.get("sampler") or process.default_sampler
        steps = training.get("sample_inference_steps") or process.default_steps(sampler)
        images = training.get("num_validation_images")
        reference = f"{images:,} images" if _is_number(images) else "all images"
        reference += f" of the `{training.get('validation_split', 'test')}` split"
        count = logged.get("num_images")
        drawn = f"{_format(count)} samples" if _is_number(count) else "samples"
        when = f"epoch {logged.get('epoch', '?')}" + (f", step {logged['step']}" if "step" in logged else "")
        return (
            "Logged by `training/train.py` during training (`--eval_epochs`): its latest evaluation, at "
            f"{when}, of {drawn} drawn with the `{sampler}` sampler in {steps} steps against {reference} of "
            "the training dataset; FID and KID use features from "
            f"{_FEATURE_NETWORKS['mnist']}. `scripts/evaluate.py` gives a fuller evaluation.\n\n"
            f"{_metric_table({k: v for k, v in logged.items() if k not in ('step', 'epoch')})}"
        )
    return (
        "Not evaluated yet: run `scripts/evaluate.py` on the pipeline folder to add FID, KID, "
        "Inception score and class balance."
    )


def _guidance_curve_table(metrics: dict[str, Any]) -> str:
    """The guidance curve of ``scripts/evaluate.py --guidance_curve`` as a table, when there is one."""
    rows = metrics.get("guidance_curve")
    if not isinstance(rows, list) or not rows or not all(isinstance(row, dict) for row in rows):
        return ""
    lines = [
        "",
        "",
        "Guidance curve (the same seed at every scale, every digit asked for equally often):",
        "",
        "| Guidance scale `w` | Conditional accuracy ↑ | FID ↓ | FID floor | Class entropy |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        cells = [row.get(key) for key in ("conditional_accuracy", "fid", "fid_floor", "class_entropy")]
        shown = [_format(value) if _is_number(value) else "-" for value in cells]
        scale = row.get("guidance_scale")
        lines.append(f"| {_format(scale) if _is_number(scale) else '?'} | {' | '.join(shown)} |")
    return "\n".join(lines)


def _metric_table(metrics: dict[str, Any]) -> str:
    rows, used = [], set(_METRIC_SETTINGS)
    for key, label in _METRIC_ROWS:
        mean, std = metrics.get(key, metrics.get(f"{key}_mean")), metrics.get(f"{key}_std")
        used |= {key, f"{key}_mean", f"{key}_std"}
        if _is_number(mean):
            rows.append((label, _format(mean) + (f" ± {_format(std)}" if _is_number(std) else "")))
    rows += [
        (f"`{key}`", _format(value))
        for key, value in metrics.items()
        if key not in used and _is_number(value)
    ]
    return _table(rows, header=("Metric", "Value"))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _format(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def _table(rows: list[tuple[str, str]], header: tuple[str, str]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def _write_sample_grid(folder: Path, path: Path) -> None:
    """Copy an existing sample grid to ``path``, or draw one from the pipeline when there is none.

    ``samples.png`` (written by ``make quickstart``) comes first, then the trainer's newest per-epoch grid.
    """
    grids = [Path(folder, SAMPLE_GRID_FILE)] + sorted(Path(folder, "samples").glob("*.png"), reverse=True)
    existing = [grid for grid in grids if grid.is_file()]
    if existing:
        shutil.copy2(existing[0], path)
        return
    pipeline = load_pipeline(str(folder))
    steps = min(CARD_SAMPLE_STEPS, pipeline.scheduler.config.num_train_timesteps)
    # A class-conditional model draws the digits in turn (at w = 1), as the trainer's grids do.
    labels = balanced_labels(pipeline, NUM_CARD_SAMPLES)
    images = generate(pipeline, NUM_CARD_SAMPLES, num_inference_steps=steps, seed=0, class_labels=labels)
    save_grid(images, path)
