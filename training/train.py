"""Train a Gaussian DDPM or a cold-diffusion model on MNIST with Accelerate.

Shaped like Diffusers' ``examples/unconditional_image_generation/train_unconditional.py``::

    accelerate launch training/train.py --config training/configs/quickstart.yaml [--key value ...]

Flags given on the command line override the YAML config. The objective comes from the forward process
(``--degradation``, see :data:`mnist_diffusion.schedulers.FORWARD_PROCESSES`): it draws the timesteps, builds
``(model_input, target)`` pairs and names the default loss; each process's own options are flags too. At the
end the pipeline is saved with ``save_pretrained(OUTPUT_DIR)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pickle
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from huggingface_hub import get_token
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from mnist_diffusion.models import UNET_PRESETS, CourseworkCNN, unet_preset
from mnist_diffusion.pipelines.guidance import balanced_labels, null_class_label
from mnist_diffusion.pipelines.sampling import generate, save_grid
from mnist_diffusion.pipelines.saving import save_pipeline
from mnist_diffusion.schedulers import (
    FORWARD_PROCESSES,
    PROCESS_TYPES,
    ForwardProcess,
    factory_options,
    forward_process,
)
from mnist_diffusion.training.cli import ArgumentParser, run_cli
from mnist_diffusion.training.data import (
    MNIST,
    check_dataset_name,
    load_split,
    to_model_range,
    uint8_to_unit_range,
)
from mnist_diffusion.training.files import write_text
from mnist_diffusion.training.objective import (
    compute_loss,
    drop_labels,
    held_out_losses,
    immiscible_refusal,
    loss_weights,
    model_prediction,
    snr_refusal,
    training_batch,
)

logger = get_logger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
PARTIAL_PREFIX = f".partial-{CHECKPOINT_PREFIX}"
# What a checkpoint holds beside Accelerate's own files, written without pickles (see Trainer.save_state).
EMA_WEIGHTS_FILE = "ema.safetensors"
TRAINING_STATE_FILE = "training_state.json"
NOISE_GENERATOR_FILE = "noise_generator_{}.safetensors"
# --checkpoint_minutes: the pipeline after M minutes of training-loop time, and the file that completes it.
MINUTES_PREFIX = "minutes-"
SNAPSHOT_FILE = "snapshot.json"
# CPU flags (/proc/cpuinfo) of native bf16 arithmetic: AVX-512 BF16 and AMX on x86, the BF16 extension on Arm.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# Flags kept out of training_config.yaml and the trackers: the config file itself, and a secret.
NOT_RECORDED = ("config", "hub_token")
# --class_conditional: the dataset's classes (the MNIST digits), and one more label, the last, for "no class".
NUM_CLASSES = 10
NUM_CLASS_EMBEDS = NUM_CLASSES + 1
DEFAULT_LABEL_DROPOUT = 0.1


def process_options(registry: Mapping[str, Any] = FORWARD_PROCESSES) -> dict[str, dict[str, Any]]:
    """``option name -> {process name -> Option}``: the keyword options of every registered process."""
    options: dict[str, dict[str, Any]] = {}
    for process, factory in registry.items():
        for name, option in factory_options(factory).items():
            options.setdefault(name, {})[process] = option
    return options


def all_sampler_names() -> tuple[str, ...]:
    """Every sampler of every process family, for ``--sampler``'s choices (each process checks its own)."""
    return tuple(dict.fromkeys(name for kind in PROCESS_TYPES for name in kind.samplers))


# Sampling more image-steps (images x network calls per image) than this gets a notice before it starts.
LONG_SAMPLING_IMAGE_STEPS = 50_000


def long_sampling_notice(process: ForwardProcess, sampler: str, steps: int, num_images: int) -> str | None:
    """One line naming a faster way when sampling ``num_images`` with ``steps`` calls each is long, else None.

    The faster way is the process's default sampler, else its sampler with the fewest steps above one, when
    that takes fewer steps than ``steps``; else fewer ``--num_inference_steps``.
    """
    if num_images * steps <= LONG_SAMPLING_IMAGE_STEPS:
        return None
    candidates = [process.default_sampler] + sorted(
        (name for name, entry in process.samplers.items() if entry.default_steps),
        key=lambda name: process.default_steps(name),
    )
    faster = next((n for n in candidates if 1 < process.default_steps(n) < steps and n != sampler), None)
    if faster is not None:
        hint = (
            f"--sampler {faster} --num_inference_steps {process.default_steps(faster)} takes "
            f"{steps / process.default_steps(faster):.0f}x fewer"
        )
    else:
        hint = f"fewer --num_inference_steps (e.g. {max(1, steps // 5)}) take fewer"
    return (
        f"notice: {num_images} images x {steps} {sampler} steps = {num_images * steps:,} image-steps, which "
        f"can take many minutes on a CPU; {hint} network calls"
    )


def add_process_options(parser: ArgumentParser, registry: Mapping[str, Any] = FORWARD_PROCESSES) -> None:
    """Add every process's options as flags, after the trainer's own flags.

    An option shared by several processes (``--num_train_timesteps``) is one flag; each process applies its
    own default when the flag is not given.

    Raises:
        ValueError: if an option has the name of a trainer flag (it would silently set both), or two
            processes give one option name different types.
    """
    group = parser.add_argument_group(
        "forward-process options (--degradation picks the process; defaults are each process's own)"
    )
    for name, by_process in process_options(registry).items():
        if f"--{name}" in parser._option_string_actions:
            raise ValueError(
                f"option {name!r} of the forward process {', '.join(by_process)} has the name of a trainer "
                f"flag (--{name}); rename the parameter"
            )
        kinds = {option.type for option in by_process.values()}
        if len(kinds) > 1:
            raise ValueError(f"option {name!r} has different types in {', '.join(by_process)}")
        kind = kinds.pop()
        # Processes that document an option alike share one line of its help.
        texts: dict[str, list[str]] = {}
        for process, option in by_process.items():
            text = option.help.replace("``", "").rstrip(".")
            if option.choices and not all(str(choice) in text for choice in option.choices):
                text += f" ({', '.join(map(str, option.choices))})"
            texts.setdefault(text, []).append(process)
        described = "; ".join(f"{', '.join(processes)}: {text}" for text, processes in texts.items())
        # argparse checks the values any process allows; the chosen process checks its own when built.
        choices = [option.choices for option in by_process.values()]
        group.add_argument(
            f"--{name}",
            type=_parse_bool if kind is bool else kind,
            choices=tuple(dict.fromkeys(sum(choices, ()))) if all(choices) else None,
            default=None,
            metavar=kind.__name__.upper(),
            help=described.replace("%", "%%"),
        )


def build_parser(registry: Mapping[str, Any] = FORWARD_PROCESSES) -> ArgumentParser:
    """The command-line interface; every flag can also be a key of the ``--config`` YAML file.

    Args:
        registry: the forward processes offered by ``--degradation`` (default: the project's registry).

    Raises:
        ValueError: if a forward process's option collides with a trainer flag.
    """
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=str, default=None, help="YAML file of defaults for these flags.")
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset_name",
        type=str,
        default=MNIST,
        help="Hub dataset id or a local folder in the Hub's parquet layout (e.g. ../shared/data/mnist).",
    )
    data.add_argument("--train_split", type=str, default="train")
    data.add_argument("--validation_split", type=str, default="test")
    data.add_argument("--max_train_samples", type=int, default=None, help="Use only the first N images.")
    data.add_argument("--num_validation_images", type=int, default=None, help="Default: the whole split.")
    data.add_argument("--output_dir", type=str, default="outputs/ddpm-mnist")

    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=("cnn", "unet"), default="cnn")
    model.add_argument("--n_hidden", type=int, nargs="+", default=[16, 32, 32, 16], help="CNN channels.")
    model.add_argument("--kernel_size", type=int, default=7)
    model.add_argument("--act_fn", type=str, default="gelu")
    model.add_argument("--dropout", type=float, default=0.0)
    model.add_argument("--time_embedding_in_every_block", action="store_true")
    model.add_argument("--unet_preset", choices=sorted(UNET_PRESETS), default="small")

    diffusion = parser.add_argument_group("diffusion")
    diffusion.add_argument(
        "--degradation",
        choices=tuple(registry),
        default="gaussian",
        help="The forward process: Gaussian noise, flow matching (flow) or a cold degradation.",
    )
    diffusion.add_argument(
        "--loss",
        choices=("l1", "l2"),
        default=None,
        help="Default: the process's own (l2 Gaussian and flow, l1 cold).",
    )
    diffusion.add_argument(
        "--snr_gamma",
        type=float,
        default=None,
        help="Min-SNR-gamma loss weighting (Hang et al., 2023; 5 is usual): each example's loss is weighted "
        "as min(SNR(t), gamma) on the clean image, in the form of the process's target; only for processes "
        "whose x_t has a signal-to-noise ratio (refused for the others).",
    )
    diffusion.add_argument(
        "--immiscible",
        action="store_true",
        help="Immiscible diffusion (Li et al., 2024): give each image of a batch the batch's Gaussian noise "
        "by linear assignment on pixel distances before noising; only for processes that draw Gaussian "
        "noise (refused for the others).",
    )
    conditioning = parser.add_argument_group("class-conditional generation (classifier-free guidance)")
    conditioning.add_argument(
        "--class_conditional",
        action="store_true",
        help=f"Condition the network on the digit (the dataset's label column): it gets num_class_embeds="
        f"{NUM_CLASS_EMBEDS}, the digits 0-{NUM_CLASSES - 1} and the no-class label {NUM_CLASSES}, and the "
        "saved pipeline takes class_labels and guidance_scale (classifier-free guidance, Ho & Salimans, "
        "2022). Any forward process.",
    )
    conditioning.add_argument(
        "--label_dropout",
        type=float,
        default=None,
        help=f"With --class_conditional: the probability, in [0, 1), that a training example's label is "
        f"replaced by the no-class label, which teaches the unconditional prediction that guidance needs "
        f"(default {DEFAULT_LABEL_DROPOUT}).",
    )
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--train_batch_size", type=int, default=128)
    optim.add_argument("--eval_batch_size", type=int, default=512)
    optim.add_argument("--num_epochs", type=int, default=10)
    optim.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_epochs.")
    optim.add_argument("--learning_rate", type=float, default=2e-4)
    optim.add_argument("--lr_scheduler", choices=("constant", "cosine", "plateau"), default="constant")
    optim.add_argument("--lr_warmup_steps", type=int, default=0)
    optim.add_argument("--adam_weight_decay", type=float, default=0.0)
    optim.add_argument("--max_grad_norm", type=float, default=1.0)
    optim.add_argument("--use_ema", action="store_true")
    optim.add_argument("--ema_max_decay", type=float, default=0.9999)
    optim.add_argument(
        "--mixed_precision",
        choices=("no", "bf16"),
        default="no",
        help="bf16 autocast, on a GPU or on a CPU with native bf16 arithmetic (AVX-512 BF16, AMX); refused "
        "on other CPUs, where bf16 is emulated and several times slower than fp32.",
    )
    optim.add_argument(
        "--allow_emulated_bf16",
        action="store_true",
        help="Run --mixed_precision bf16 on a CPU without native bf16 arithmetic anyway (slow).",
    )
    speed = parser.add_argument_group("speed (same computation, different execution)")
    speed.add_argument(
        "--channels_last", action="store_true", help="NHWC memory format for the convolutions."
    )
    speed.add_argument("--compile", action="store_true", help="torch.compile the model (inductor).")
    speed.add_argument(
        "--num_threads",
        type=int,
        default=None,
        help="torch threads per process (default: cores / processes).",
    )
    optim.add_argument("--seed", type=int, default=0)

    logs = parser.add_argument_group("logging, samples and checkpoints")
    logs.add_argument("--logging_steps", type=int, default=50)
    logs.add_argument("--save_images_epochs", type=int, default=1)
    logs.add_argument("--num_sample_images", type=int, default=64)
    logs.add_argument(
        "--sampler",
        choices=all_sampler_names(),
        default=None,
        help="Sampler of the grids and evaluations; default: the process's own (dpmsolver, improved, "
        "flow_euler).",
    )
    logs.add_argument(
        "--sample_inference_steps", type=int, default=None, help="Default: the sampler's usual count."
    )
    logs.add_argument("--eval_epochs", type=int, default=None, help="FID/KID/IS/balance every E epochs.")
    logs.add_argument("--eval_num_images", type=int, default=500, help="Samples per evaluation.")
    logs.add_argument("--checkpointing_steps", type=int, default=500)
    logs.add_argument("--checkpoints_total_limit", type=int, default=2)
    logs.add_argument(
        "--checkpoint_minutes",
        type=float,
        nargs="+",
        default=None,
        metavar="M",
        help=f"Also save the pipeline (EMA weights if any) to OUTPUT_DIR/{MINUTES_PREFIX}M/ when the "
        "training loop has run M minutes (the steps and data loading; not validation, sampling or saving), "
        "with a checkpoint to resume from; the loop time is kept across resumes. E.g. 2.5 5 10 20 30.",
    )
    logs.add_argument(
        "--max_train_minutes",
        type=float,
        default=None,
        help="Stop after this many minutes of training-loop time (as counted for --checkpoint_minutes), or "
        "at --max_train_steps if that comes first (it still sets the learning-rate schedule).",
    )
    logs.add_argument("--resume_from_checkpoint", type=str, default=None, help="'latest' or a path.")
    hub = parser.add_argument_group("Hugging Face Hub")
    hub.add_argument("--push_to_hub", action="store_true", help="Upload the pipeline and a model card.")
    hub.add_argument("--hub_model_id", type=str, default=None, help="USER/NAME of the model repo.")
    hub.add_argument("--hub_private_repo", action="store_true")
    hub.add_argument("--hub_token", type=str, default=None, help="Default: HF_TOKEN or `hf auth login`.")
    add_process_options(parser, registry)
    return parser


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean; use true or false")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse flags over the values of ``--config``; raises ``ValueError`` on an invalid combination.

    The YAML values are turned into flags and parsed by the same parser, before the command line (whose
    flags win), so they get the same types, choices and error messages.
    """
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    config_argv = _config_argv(known.config, parser) if known.config else []
    args = parser.parse_args([*config_argv, *(sys.argv[1:] if argv is None else argv)])
    _validate(args)
    return args


def _config_argv(path: str, parser: argparse.ArgumentParser) -> list[str]:
    """The flags that the YAML mapping at ``path`` stands for (``key: value`` -> ``--key value``)."""
    try:
        with open(path) as handle:
            values = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise ValueError(f"config file {path!r} does not exist") from None
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(
            f"config file {path!r} is not readable YAML: {' '.join(str(error).split())}"
        ) from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path!r} must hold a mapping of flag names to values")
    actions = {action.dest: action for action in parser._actions}
    unknown = sorted(set(values) - set(actions) | ({"config"} & set(values)))
    if unknown:
        raise ValueError(f"config file {path!r} has unknown keys {unknown}; allowed keys are the flag names")
    argv = []
    for key, value in values.items():
        if isinstance(actions[key], argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise ValueError(f"config file {path!r}: {key} must be true or false, got {value!r}")
            argv += [f"--{key}"] if value else []
        elif value is not None:
            argv += [f"--{key}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    return argv


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX on x86, BF16 on Arm).

    Elsewhere (an AVX2-only CPU, say) oneDNN emulates bf16, several times slower than fp32. On Linux the
    answer is read from the CPU flags in ``/proc/cpuinfo``; without that file, from oneDNN's own check.

    Args:
        cpuinfo: the text of ``/proc/cpuinfo`` (default: read it).

    Example:
        >>> from mnist_diffusion.training.train import cpu_has_native_bf16
        >>> cpu_has_native_bf16("flags : fpu sse avx2 fma")
        False
        >>> cpu_has_native_bf16("flags : fpu avx2 avx512f avx512_bf16")
        True
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def check_mixed_precision(mixed_precision: str, allow_emulated_bf16: bool = False) -> None:
    """Refuse ``--mixed_precision bf16`` on a CPU-only machine without native bf16 arithmetic.

    Raises:
        ValueError: one line saying why, unless ``allow_emulated_bf16``.

    Example:
        >>> from mnist_diffusion.training.train import check_mixed_precision
        >>> check_mixed_precision("no")  # fp32 is always allowed
        >>> check_mixed_precision("bf16", allow_emulated_bf16=True)  # and bf16 when asked for explicitly
    """
    if mixed_precision != "bf16" or allow_emulated_bf16 or torch.cuda.is_available():
        return
    if not cpu_has_native_bf16():
        raise ValueError(
            "--mixed_precision bf16 needs a GPU or a CPU with native bf16 arithmetic (AVX-512 BF16 or AMX), "
            "and this CPU has none: bf16 would be emulated and several times slower than fp32; use "
            "--mixed_precision no (or --allow_emulated_bf16 to run it anyway)"
        )


def _validate(args: argparse.Namespace) -> None:
    # Building the process checks its options; the sampler must be one of its own.
    process = make_process(args)
    process.check_sampler(args.sampler or process.default_sampler, args.sample_inference_steps)
    check_dataset_name(args.dataset_name)
    if args.snr_gamma is not None:
        if not args.snr_gamma > 0:
            raise ValueError(f"--snr_gamma must be positive, got {args.snr_gamma}")
        probe = process.training_timesteps(2, generator=torch.Generator().manual_seed(0))
        if process.loss_weights(probe, args.snr_gamma) is None:
            raise ValueError(snr_refusal(process))
    if args.immiscible and not process.draws_gaussian_noise:
        raise ValueError(immiscible_refusal(process))
    if args.label_dropout is not None:
        if not args.class_conditional:
            raise ValueError(
                "--label_dropout drops class labels, which only a --class_conditional run has; add "
                "--class_conditional or leave --label_dropout out"
            )
        if not 0 <= args.label_dropout < 1:
            raise ValueError(f"--label_dropout must be in [0, 1), got {args.label_dropout}")
    elif args.class_conditional:
        args.label_dropout = DEFAULT_LABEL_DROPOUT
    check_mixed_precision(args.mixed_precision, args.allow_emulated_bf16)
    if args.checkpoint_minutes is not None and not all(m > 0 for m in args.checkpoint_minutes):
        raise ValueError(f"--checkpoint_minutes must all be positive, got {args.checkpoint_minutes}")
    if args.max_train_minutes is not None and not args.max_train_minutes > 0:
        raise ValueError(f"--max_train_minutes must be positive, got {args.max_train_minutes}")
    for name in (
        "train_batch_size",
        "eval_batch_size",
        "num_epochs",
        "logging_steps",
        "save_images_epochs",
        "num_sample_images",
        "checkpointing_steps",
    ):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}")
    for name in ("max_train_steps", "max_train_samples", "num_validation_images", "num_threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.seed < 0 or args.checkpoints_total_limit < 1:
        raise ValueError(
            f"--seed must be >= 0 and --checkpoints_total_limit >= 1, got {args.seed} and "
            f"{args.checkpoints_total_limit}"
        )
    if args.learning_rate <= 0:
        raise ValueError(f"--learning_rate must be positive, got {args.learning_rate}")
    if args.eval_epochs is not None and (args.eval_epochs < 1 or args.eval_num_images < 2):
        raise ValueError(
            f"--eval_epochs must be >= 1 and --eval_num_images >= 2, got {args.eval_epochs} and "
            f"{args.eval_num_images}"
        )
    if args.push_to_hub:
        # Checked before training so that a long run does not end in a failed upload.
        if not args.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id USER/NAME")
        if not (args.hub_token or get_token()):
            raise ValueError(
                "--push_to_hub needs a Hugging Face token: run `hf auth login`, set HF_TOKEN "
                "or pass --hub_token"
            )
    if args.resume_from_checkpoint not in (None, "latest") and not os.path.isdir(args.resume_from_checkpoint):
        raise ValueError(
            f"--resume_from_checkpoint {args.resume_from_checkpoint!r}: no such checkpoint folder"
        )


def make_process(args: argparse.Namespace) -> ForwardProcess:
    """The forward process of ``--degradation``, built with the process options that were given.

    Raises:
        ValueError: if an option of another process is given (it would be silently ignored), or an option's
            value is not allowed.
    """
    factory = FORWARD_PROCESSES[args.degradation]
    accepted = factory_options(factory)
    for name, by_process in process_options().items():
        if name not in accepted and getattr(args, name, None) is not None:
            raise ValueError(
                f"--{name} is an option of {', '.join(by_process)}, not of --degradation {args.degradation}"
            )
    given = {name: getattr(args, name) for name in accepted if getattr(args, name) is not None}
    return forward_process(factory(**given))


def make_model(args: argparse.Namespace, num_train_timesteps: int) -> torch.nn.Module:
    """The denoising network named by ``--model``; with ``--class_conditional``, with class embeddings."""
    num_class_embeds = NUM_CLASS_EMBEDS if args.class_conditional else None
    if args.model == "unet":
        return unet_preset(args.unet_preset, num_class_embeds=num_class_embeds)
    return CourseworkCNN(
        n_hidden=tuple(args.n_hidden),
        kernel_size=args.kernel_size,
        act_fn=args.act_fn,
        dropout=args.dropout,
        time_embedding_in_every_block=args.time_embedding_in_every_block,
        num_train_timesteps=num_train_timesteps,
        num_class_embeds=num_class_embeds,
    )


def make_accelerator(output_dir: Path, seed: int, **options: Any) -> Accelerator:
    """The ``Accelerator`` of a run writing to ``output_dir`` (its logs in ``logs/``), logging and seeds set.

    Under ``accelerate launch --multi_gpu`` on a machine without GPUs the processes run data-parallel on the
    CPU (gloo). ``options`` are further ``Accelerator`` arguments (mixed precision, trackers, ...).
    """
    accelerator = Accelerator(
        cpu=int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available(),
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(Path(output_dir) / "logs")
        ),
        **options,
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    set_seed(seed)
    return accelerator


def use_cores(accelerator: Accelerator, num_threads: int | None) -> None:
    """Give torch ``num_threads`` threads, by default an equal share of the usable cores per process.

    ``accelerate launch`` exports ``OMP_NUM_THREADS=1`` for a single CPU process, which halves the speed of a
    2-core laptop.
    """
    usable_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(num_threads or max(1, (usable_cores or 1) // accelerator.num_processes))


def _checkpoints(output_dir: str) -> list[Path]:
    """Complete checkpoint folders, oldest first (a half-written one is never named ``checkpoint-N``)."""
    folders = [
        p
        for p in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*")
        if p.name[len(CHECKPOINT_PREFIX) :].isdigit()
    ]
    return sorted(folders, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def save_checkpoint(accelerator: Accelerator, output_dir: str, step: int, total_limit: int | None) -> None:
    """``accelerator.save_state`` into a temporary folder renamed into place, then prune old ones."""
    final = Path(output_dir, f"{CHECKPOINT_PREFIX}{step}")
    partial = Path(output_dir, f"{PARTIAL_PREFIX}{step}")
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        # Older checkpoints past the limit, and partial ones a killed run left behind.
        stale = [*_checkpoints(output_dir)[:-total_limit], *Path(output_dir).glob(f"{PARTIAL_PREFIX}*")]
        for old in stale:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


class MetricsLog:
    """Append-only JSON-lines log of training metrics, truncated to the resumed step on resume."""

    def __init__(self, path: Path, enabled: bool):
        self.path = path
        self.enabled = enabled

    def clear(self) -> None:
        """Start an empty log (a new run in a folder that holds an older run's log)."""
        if self.enabled and self.path.exists():
            self.path.unlink()

    def truncate_after(self, step: int) -> None:
        """Drop records logged after ``step`` by a run that was stopped after its last checkpoint."""
        if not (self.enabled and self.path.exists()):
            return
        kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


def start_or_resume(
    accelerator: Accelerator, resume_from: str | None, output_dir: str, log: MetricsLog
) -> int:
    """Load ``resume_from`` (``latest`` or a checkpoint folder) and return its step; 0 for a new run.

    A new run (no ``resume_from``, or ``latest`` in a folder without checkpoints) starts with an empty
    metrics log; a resumed one drops the records logged after its checkpoint.

    Raises:
        ValueError: if the checkpoint cannot be loaded (a truncated, foreign or pickled file).
    """
    if not resume_from:
        log.clear()
        return 0
    if resume_from == "latest":
        checkpoints = _checkpoints(output_dir)
        if not checkpoints:
            logger.info("No checkpoint in %s; starting a new run.", output_dir)
            log.clear()
            return 0
        path = checkpoints[-1]
    else:
        path = Path(resume_from)
    try:
        accelerator.load_state(str(path))
    except (OSError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError) as error:
        # torch refuses a pickle that would build arbitrary objects; so does a truncated or foreign file.
        reason = " ".join(str(error).split())[:300]
        raise ValueError(f"checkpoint {path} could not be loaded: {reason}") from error
    step = int(path.name[len(CHECKPOINT_PREFIX) :])
    log.truncate_after(step)
    logger.info("Resumed from %s at step %d.", path, step)
    return step


class Trainer:
    """One training run: set-up, the step loop, end-of-epoch work and the final save.

    Args:
        args: the parsed flags (see :func:`build_parser`).
    """

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.output_dir = Path(args.output_dir)
        self.accelerator = make_accelerator(
            self.output_dir,
            args.seed,
            mixed_precision=args.mixed_precision,
            dynamo_backend="inductor" if args.compile else "no",
            log_with="tensorboard",
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        )
        accelerator = self.accelerator
        # The training noise and timesteps have a generator of their own, saved with each checkpoint, so a
        # resumed run draws exactly what the uninterrupted one would have; its seed differs per process, as
        # the ranks must not draw the same noise for their different images.
        self.noise_generator = torch.Generator(accelerator.device).manual_seed(
            args.seed + 1 + accelerator.process_index
        )

        self.process = make_process(args)
        if args.loss is None:
            args.loss = self.process.default_loss
        # Each phase that takes more than a few seconds says so, with its duration when it is done.
        logger.info("Loading %s ...", args.dataset_name)
        began = time.perf_counter()
        train_split = load_split(args.dataset_name, args.train_split, args.max_train_samples)
        validation_split = load_split(args.dataset_name, args.validation_split, args.num_validation_images)
        self.train_images, self.validation_images = train_split.images, validation_split.images
        # --class_conditional: the labels the network is conditioned on (None: an unconditional run).
        self.train_labels = self.validation_labels = None
        if args.class_conditional:
            self.train_labels = check_labels(train_split.labels, args.dataset_name, args.train_split)
            self.validation_labels = check_labels(
                validation_split.labels, args.dataset_name, args.validation_split
            )
        logger.info(
            "Loaded %d training and %d validation images in %.1f s",
            len(self.train_images), len(self.validation_images), time.perf_counter() - began,
        )  # fmt: skip
        if len(self.train_images) < args.train_batch_size * accelerator.num_processes:
            raise ValueError(
                f"{len(self.train_images)} training images are fewer than one batch of "
                f"{args.train_batch_size} x {accelerator.num_processes} processes"
            )
        if accelerator.is_main_process:
            # What sampling needs from the data (a cold process's start distribution, per class for a
            # conditional model) depends only on the data and the process: fitted first, the sample grids of
            # every epoch can already generate.
            logger.info("Fitting the %s process to the training images ...", self.process.name)
            began = time.perf_counter()
            self.process.fit(
                to_model_range(self.train_images),
                generator=torch.Generator().manual_seed(args.seed),
                labels=self.train_labels,
            )
            logger.info("Fitted the %s process in %.1f s", self.process.name, time.perf_counter() - began)

        use_cores(accelerator, args.num_threads)
        model = make_model(args, self.process.num_train_timesteps)
        self.memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        model = model.to(memory_format=self.memory_format)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=args.learning_rate, weight_decay=args.adam_weight_decay, foreach=True
        )
        # A conditional run's batches also hold the labels: `(images,)` or `(images, labels)`.
        labels = () if self.train_labels is None else (self.train_labels,)
        columns = (self.train_images, *labels)
        dataloader = DataLoader(
            TensorDataset(*columns), batch_size=args.train_batch_size, shuffle=True, drop_last=True
        )
        self.steps_per_epoch = len(dataloader) // accelerator.num_processes
        self.max_train_steps = args.max_train_steps or args.num_epochs * self.steps_per_epoch
        self.model, self.optimizer, self.dataloader = accelerator.prepare(model, optimizer, dataloader)
        if args.lr_scheduler == "plateau":
            # Stepped once per epoch on the validation loss, outside Accelerate's per-process stepping.
            self.lr_scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
        else:
            self.lr_scheduler = accelerator.prepare(
                get_scheduler(
                    args.lr_scheduler,
                    optimizer=optimizer,
                    num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                    num_training_steps=self.max_train_steps * accelerator.num_processes,
                )
            )
        # Built from the prepared model, whose weights are rank 0's on every process: one EMA everywhere.
        unwrapped = accelerator.unwrap_model(self.model)
        # The label that --label_dropout puts in place of the digit (None: an unconditional model).
        self.null_label = null_class_label(unwrapped)
        self.ema_model = (
            EMAModel(unwrapped.parameters(), decay=args.ema_max_decay, use_ema_warmup=True)
            if args.use_ema
            else None
        )
        if self.ema_model is not None:
            self.ema_model.to(accelerator.device)
        # Accelerate would pickle custom objects into its checkpoint (and unpickle them, running any code a
        # crafted file holds); the EMA, the plateau scheduler and the noise generator are saved as
        # safetensors and JSON by these hooks instead.
        accelerator.register_save_state_pre_hook(self.save_state)
        accelerator.register_load_state_pre_hook(self.load_state)

        self.metrics_log = MetricsLog(self.output_dir / "logs" / "metrics.jsonl", accelerator.is_main_process)
        self.global_step = 0
        self.evaluator = None
        # Training-loop time (steps and data loading; not validation, sampling, saving), kept in checkpoints.
        self.train_seconds = 0.0
        self.pending_minutes: list[float] = []

    def record_run(self) -> None:
        """Write ``training_config.yaml`` and start the trackers: only once the run is sure to train."""
        if self.accelerator.is_main_process:
            (self.output_dir / "logs").mkdir(parents=True, exist_ok=True)
            recorded = {k: v for k, v in vars(self.args).items() if k not in NOT_RECORDED}
            write_text(self.output_dir / "training_config.yaml", yaml.safe_dump(recorded, sort_keys=False))
            self.accelerator.init_trackers("train", config={k: str(v) for k, v in recorded.items()})

    def save_state(self, models: list, weights: list, folder: str) -> None:
        """Accelerate's save-state hook: the trainer's own state, as safetensors and JSON (no pickles)."""
        folder = Path(folder)
        noise_state = {"state": self.noise_generator.get_state()}
        save_file(noise_state, folder / NOISE_GENERATOR_FILE.format(self.accelerator.process_index))
        if not self.accelerator.is_main_process:
            return
        state: dict[str, Any] = {"train_seconds": self.train_seconds}
        if self.ema_model is not None:
            ema = self.ema_model.state_dict()
            shadow = {
                str(index): tensor.contiguous() for index, tensor in enumerate(ema.pop("shadow_params"))
            }
            save_file(shadow, folder / EMA_WEIGHTS_FILE)
            state["ema"] = ema
        if self.args.lr_scheduler == "plateau":
            state["plateau"] = self.lr_scheduler.state_dict()
        (folder / TRAINING_STATE_FILE).write_text(json.dumps(state))

    def load_state(self, models: list, folder: str) -> None:
        """Accelerate's load-state hook: the inverse of :meth:`save_state`, without unpickling anything."""
        folder = Path(folder)
        noise_file = folder / NOISE_GENERATOR_FILE.format(self.accelerator.process_index)
        self.noise_generator.set_state(load_file(noise_file)["state"])
        state = json.loads((folder / TRAINING_STATE_FILE).read_text())
        self.train_seconds = float(state.get("train_seconds", 0.0))
        if self.ema_model is not None:
            shadow = load_file(folder / EMA_WEIGHTS_FILE, device=str(self.accelerator.device))
            self.ema_model.load_state_dict(
                {**state["ema"], "shadow_params": [shadow[str(index)] for index in range(len(shadow))]}
            )
        if "plateau" in state:
            self.lr_scheduler.load_state_dict(state["plateau"])

    def train(self) -> torch.nn.Module:
        """Train to ``max_train_steps`` and save the pipeline; returns this process's final model."""
        args, accelerator = self.args, self.accelerator
        self.global_step = start_or_resume(
            accelerator, args.resume_from_checkpoint, args.output_dir, self.metrics_log
        )
        # The --checkpoint_minutes still ahead; a run that has used its --max_train_minutes has finished.
        self.pending_minutes = sorted(m for m in args.checkpoint_minutes or () if m * 60 > self.train_seconds)
        if args.max_train_minutes is not None and self.train_seconds >= args.max_train_minutes * 60:
            self.max_train_steps = min(self.max_train_steps, self.global_step)
        if self.global_step >= self.max_train_steps and (self.output_dir / "model_index.json").is_file():
            logger.info(
                "The run in %s has finished (step %d); nothing to do.", args.output_dir, self.global_step
            )
            accelerator.end_training()
            return accelerator.unwrap_model(self.model)
        self.record_run()
        first_epoch, resume_batch = divmod(self.global_step, self.steps_per_epoch)
        num_epochs = math.ceil(self.max_train_steps / self.steps_per_epoch)
        logger.info(
            "%d images, %d steps of %d x %d processes, %d epochs, model with %d parameters",
            len(self.train_images),
            self.max_train_steps,
            args.train_batch_size,
            accelerator.num_processes,
            num_epochs,
            sum(p.numel() for p in self.model.parameters()),
        )
        self.progress = tqdm(
            total=self.max_train_steps,
            initial=self.global_step,
            disable=not accelerator.is_local_main_process,
            desc="train",
        )
        for epoch in range(first_epoch, num_epochs):
            self.train_epoch(epoch, resume_batch if epoch == first_epoch else 0)
            self.end_of_epoch(epoch)
            if self.global_step >= self.max_train_steps:
                break
        self.progress.close()
        return self.save()

    def train_epoch(self, epoch: int, skip_batches: int) -> None:
        """Optimisation steps over one epoch, from batch ``skip_batches`` on (when resuming)."""
        args, accelerator, model = self.args, self.accelerator, self.model
        model.train()
        self.dataloader.set_epoch(epoch)
        batches = (
            accelerator.skip_first_batches(self.dataloader, skip_batches) if skip_batches else self.dataloader
        )
        window_loss, window_steps, window_start = (
            torch.zeros((), device=accelerator.device),
            0,
            time.perf_counter(),
        )
        tick = time.perf_counter()
        for images, *labels in batches:
            model_input, timesteps, target = training_batch(
                self.process, to_model_range(images), self.noise_generator, args.immiscible
            )
            # Label dropout draws from the training generator too, so a resumed run drops the same labels.
            class_labels = (
                drop_labels(labels[0], args.label_dropout, self.null_label, self.noise_generator)
                if labels
                else None
            )
            model_input = model_input.contiguous(memory_format=self.memory_format)
            with accelerator.autocast():
                prediction = model_prediction(model, model_input, timesteps, class_labels)
            loss = compute_loss(
                prediction, target, args.loss, loss_weights(self.process, timesteps, args.snr_gamma)
            )
            accelerator.backward(loss)
            if accelerator.sync_gradients and args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            self.optimizer.step()
            if args.lr_scheduler != "plateau":
                self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema_model is not None:
                self.ema_model.step(model.parameters())
            self.global_step += 1
            self.count_train_time(time.perf_counter() - tick)
            self.progress.update(1)
            # Accumulate on the device; reading the value synchronises, so only do it when logging.
            window_loss += loss.detach()
            window_steps += 1
            if self.global_step % args.logging_steps == 0 or self.global_step == self.max_train_steps:
                mean_loss = accelerator.reduce(window_loss, reduction="mean").item() / window_steps
                elapsed = time.perf_counter() - window_start
                seen = window_steps * args.train_batch_size * accelerator.num_processes
                record = {
                    "loss": mean_loss,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "train_seconds": self.train_seconds,
                }
                self.log(epoch, {**record, "images_per_second": seen / elapsed})
                self.progress.set_postfix(loss=f"{mean_loss:.4f}")
                window_loss.zero_()
                window_steps, window_start = 0, time.perf_counter()
            if self.global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, args.output_dir, self.global_step, args.checkpoints_total_limit)
            while self.pending_minutes and self.train_seconds >= self.pending_minutes[0] * 60:
                self.save_minutes_snapshot(self.pending_minutes.pop(0))
            tick = time.perf_counter()
            if self.global_step >= self.max_train_steps:
                break

    def count_train_time(self, seconds: float) -> None:
        """Add a step's time to the training-loop time; stop the run when --max_train_minutes is used up.

        With several processes every rank takes the mean, so that all take the same decisions.
        """
        self.train_seconds += seconds
        args, accelerator = self.args, self.accelerator
        timed = args.checkpoint_minutes or args.max_train_minutes is not None
        if timed and accelerator.num_processes > 1:
            total = torch.tensor(self.train_seconds, dtype=torch.float64, device=accelerator.device)
            self.train_seconds = accelerator.reduce(total, reduction="mean").item()
        if args.max_train_minutes is not None and self.train_seconds >= args.max_train_minutes * 60:
            self.max_train_steps = min(self.max_train_steps, self.global_step)

    def save_minutes_snapshot(self, minutes: float) -> None:
        """Save the pipeline (EMA weights if any) as ``minutes-M/``, then a checkpoint to resume from there.

        ``minutes-M/snapshot.json`` (the minutes asked for, the training-loop seconds and the step) is written
        last: a folder without it is incomplete, and a resumed run writes it again.
        """
        accelerator = self.accelerator
        folder = self.output_dir / f"{MINUTES_PREFIX}{minutes:g}"
        unwrapped = accelerator.unwrap_model(self.model)
        if self.ema_model is not None:
            self.ema_model.store(unwrapped.parameters())
            self.ema_model.copy_to(unwrapped.parameters())
        if accelerator.is_main_process:
            (folder / SNAPSHOT_FILE).unlink(missing_ok=True)
            save_pipeline(self.process.make_pipeline(unwrapped), folder)
            snapshot = {"minutes": minutes, "train_seconds": self.train_seconds, "step": self.global_step}
            write_text(folder / SNAPSHOT_FILE, json.dumps(snapshot) + "\n")
            logger.info("Saved the pipeline after %g minutes of training (step %d) to %s", minutes,
                        self.global_step, folder)  # fmt: skip
        if self.ema_model is not None:
            self.ema_model.restore(unwrapped.parameters())
        args = self.args
        if self.global_step % args.checkpointing_steps != 0:  # else the step loop has just saved one
            save_checkpoint(accelerator, args.output_dir, self.global_step, args.checkpoints_total_limit)

    def log(self, epoch: int, values: dict[str, float]) -> None:
        """Send ``values`` to the trackers and append them to ``logs/metrics.jsonl``."""
        self.accelerator.log(values, step=self.global_step)
        self.metrics_log.write({"step": self.global_step, "epoch": epoch, **values})

    def end_of_epoch(self, epoch: int) -> None:
        """Validation loss (every epoch), the plateau LR step, and sample grids and metrics when due."""
        args, accelerator = self.args, self.accelerator
        end_of_run = self.global_step >= self.max_train_steps
        self.model.eval()
        if self.ema_model is not None:
            self.ema_model.store(self.model.parameters())
            self.ema_model.copy_to(self.model.parameters())
        logger.info("epoch %d: validation loss on %d images ...", epoch, len(self.validation_images))
        val_loss = accelerator.reduce(
            torch.tensor(self.validation_loss(), device=accelerator.device), reduction="mean"
        ).item()
        if args.lr_scheduler == "plateau":
            self.lr_scheduler.step(val_loss)
        self.log(epoch, {"val_loss": val_loss})
        logger.info("epoch %d step %d: validation loss %.5f", epoch, self.global_step, val_loss)
        if accelerator.is_main_process:
            pipeline = self.process.make_pipeline(accelerator.unwrap_model(self.model))
            if (epoch + 1) % args.save_images_epochs == 0 or end_of_run:
                logger.info("epoch %d: sampling %d images for the grid", epoch, args.num_sample_images)
                save_sample_grid(pipeline, args, self.output_dir / "samples" / f"epoch_{epoch:03d}.png")
            if args.eval_epochs and ((epoch + 1) % args.eval_epochs == 0 or end_of_run):
                quality = self.sample_quality(pipeline)
                self.log(epoch, quality)
                logger.info(
                    "epoch %d: FID %.2f, IS %.2f", epoch, quality["fid"], quality["inception_score_mean"]
                )
                if "conditional_accuracy" in quality:
                    logger.info("epoch %d: conditional accuracy %.3f", epoch, quality["conditional_accuracy"])
        if self.ema_model is not None:
            self.ema_model.restore(self.model.parameters())
        self.model.train()

    def validation_loss(self) -> float:
        """Mean loss over the validation images with a fixed noise seed, so epochs are comparable."""
        args = self.args
        losses = held_out_losses(
            self.model, self.process, self.validation_images, args.loss, args.eval_batch_size, args.seed,
            self.accelerator.device, self.accelerator.autocast, labels=self.validation_labels,
        )  # fmt: skip
        return losses.mean().item()

    def sample_quality(self, pipeline) -> dict[str, float]:
        """FID/KID/IS/class balance of ``--eval_num_images`` samples against the validation images."""
        if self.evaluator is None:
            from mnist_diffusion.evaluation.metrics import SampleQuality

            # Built once: the reference features are computed here and kept for the whole run.
            logger.info("Computing the reference features of the validation images for FID ...")
            began = time.perf_counter()
            self.evaluator = SampleQuality(
                uint8_to_unit_range(self.validation_images),
                uint8_to_unit_range(self.train_images[:10_000]),
                device=pipeline.device,
            )
            logger.info("Computed the reference features in %.1f s", time.perf_counter() - began)
        args = self.args
        logger.info("Sampling %d images for FID, KID and IS ...", args.eval_num_images)
        # A conditional model is scored on every digit alike (its guidance scale 1: the model as trained),
        # with its conditional accuracy: how often the classifier reads the digit asked for.
        labels = balanced_labels(pipeline, args.eval_num_images)
        samples = generate(
            pipeline, args.eval_num_images, args.sampler, args.sample_inference_steps, args.seed,
            show_progress=True,  # called on the main process only
            class_labels=labels,
        )  # fmt: skip
        return self.evaluator.evaluate(samples, labels=labels).metrics

    def save(self) -> torch.nn.Module:
        """Checkpoint the last step, save the pipeline (EMA weights if any), push it if asked."""
        args, accelerator = self.args, self.accelerator
        if self.global_step % args.checkpointing_steps != 0:
            save_checkpoint(accelerator, args.output_dir, self.global_step, args.checkpoints_total_limit)
        final_model = accelerator.unwrap_model(self.model)
        if self.ema_model is not None:
            self.ema_model.copy_to(final_model.parameters())
        if accelerator.is_main_process:
            save_pipeline(self.process.make_pipeline(final_model), self.output_dir)
            logger.info("Saved the pipeline to %s", self.output_dir)
            if args.push_to_hub:
                from mnist_diffusion.publishing.hub import push_pipeline

                url = push_pipeline(self.output_dir, args.hub_model_id, args.hub_private_repo, args.hub_token)
                logger.info("Uploaded the pipeline to %s", url)
        accelerator.end_training()
        return final_model


def save_sample_grid(pipeline, args, path: Path) -> None:
    """Sample ``--num_sample_images`` with a fixed seed and save them as one PNG grid (main process).

    A class-conditional model draws the digits in turn (0, 1, ..., 9, 0, ...).
    """
    steps, seed, count = args.sample_inference_steps, args.seed, args.num_sample_images
    images = generate(
        pipeline, count, args.sampler, steps, seed, show_progress=True,
        class_labels=balanced_labels(pipeline, count),
    )  # fmt: skip
    save_grid(images, path)


def check_labels(labels: torch.Tensor, dataset_name: str, split: str) -> torch.Tensor:
    """The labels of a ``--class_conditional`` run (int64), checked to be the digits ``0 .. NUM_CLASSES - 1``.

    Raises:
        ValueError: naming the split and the labels outside that range.
    """
    labels = labels.long()
    outside = labels[(labels < 0) | (labels >= NUM_CLASSES)]
    if len(outside):
        raise ValueError(
            f"--class_conditional needs labels 0..{NUM_CLASSES - 1}, but dataset {dataset_name!r} split "
            f"{split!r} has label(s) {sorted(set(outside.tolist()))[:5]}"
        )
    return labels


def train(args: argparse.Namespace) -> torch.nn.Module:
    """Run the training described by ``args`` and save the pipeline; returns this process's final model."""
    return Trainer(args).train()


def main(argv: list[str] | None = None) -> None:
    """Parse the flags and train."""
    train(parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_cli(main))
