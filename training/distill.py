"""Distil a saved Gaussian or flow-matching pipeline into few-step students by progressive distillation.

Shaped like ``training/train.py`` (the same YAML-over-flags configs, checkpoints and exact resume)::

    accelerate launch training/distill.py --config training/configs/distill_flow.yaml \\
        --teacher outputs/fast_cpu_flow [--key value ...]

Progressive distillation (Salimans & Ho, 2022) distils the teacher's deterministic sampler: DDIM for a
Gaussian model, Euler steps of the flow ODE for a flow-matching one, which is DDIM in the flow's
parameterisation (``x_s = (1 - s) x0 + s noise``). Each round trains a student, initialised from its teacher,
to land with one step where its teacher lands with two; the student of a round is the next round's teacher,
so ``--teacher_steps 16`` gives students of 8, 4, 2 and 1 steps (down to ``--student_steps``). The student
learns on real images: ``x_t`` is a training image noised to one of the student's steps, the target is the
clean image that makes the student's step land on the teacher's two-step result, and the loss is the squared
error on that clean image weighted by ``max(SNR, 1)`` (the paper's truncated-SNR weighting).

Every round's student is a pipeline folder (``OUTPUT_DIR/steps-N/``; the last one also ``OUTPUT_DIR``),
saved with :func:`mnist_diffusion.pipelines.save_pipeline` and sampled by the project's tools like any other:
a Gaussian student is a stock ``DDPMPipeline`` with a stock ``DDIMScheduler`` (``v_prediction`` by default,
trailing timesteps), a flow student a ``FlowMatchingPipeline`` with a stock
``FlowMatchEulerDiscreteScheduler`` whose noise levels are evenly spaced (``shift_terminal = 1 / N``); both
scheduler configs carry ``_default_steps: N``, which the forward-process protocol reads for the default step
count. ``distillation.json`` beside each records the distillation's wall-clock and CPU seconds up to that
student.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import yaml
from accelerate.logging import get_logger
from diffusers import DDIMScheduler, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from mnist_diffusion.pipelines.loading import load_pipeline
from mnist_diffusion.pipelines.sampling import generate, save_grid
from mnist_diffusion.pipelines.saving import save_pipeline
from mnist_diffusion.schedulers import forward_process
from mnist_diffusion.schedulers.forward_process import DEFAULT_STEPS_KEY
from mnist_diffusion.schedulers.gaussian import DEGRADATION_KEY
from mnist_diffusion.schedulers.noise_schedules import original_sample
from mnist_diffusion.training.cli import ArgumentParser, run_cli
from mnist_diffusion.training.data import MNIST, load_split, to_model_range
from mnist_diffusion.training.files import write_text
from mnist_diffusion.training.objective import per_image_loss
from mnist_diffusion.training.train import (
    MetricsLog,
    _config_argv,
    make_accelerator,
    save_checkpoint,
    start_or_resume,
    use_cores,
)

logger = get_logger(__name__)

StudentPrediction = Literal["v_prediction", "sample"]
LrSchedule = Literal["constant", "linear", "cosine"]
STEPS_PREFIX = "steps-"
SUMMARY_FILE = "distillation.json"
CONFIG_FILE = "distillation_config.yaml"
# What a checkpoint holds beside Accelerate's own files (no pickles): the round's teacher, the generator
# of images, steps and noise, and the loop's times.
TEACHER_WEIGHTS_FILE = "teacher.safetensors"
GENERATOR_FILE = "generator_{}.safetensors"
STATE_FILE = "distillation_state.json"
NOT_RECORDED = ("config",)


# ----- the deterministic samplers that are distilled --------------------------------------------------------


@dataclass(frozen=True)
class StepGrid:
    """The steps of a deterministic sampler at one step count, as its stock scheduler takes them.

    Step ``i`` calls the network at ``timesteps[i]`` on a sample ``x = alpha[i] x0 + sigma[i] noise`` and
    lands on ``alpha_next[i] x0_hat + sigma_next[i] noise_hat`` (the last step on ``x0_hat``).

    Attributes:
        timesteps: ``(N,)``, what the pipeline passes to the network (int for DDIM, float for flow).
        alpha: ``(N,)`` signal weights of the samples the steps start from.
        sigma: ``(N,)`` noise weights of those samples.
        alpha_next: ``(N,)`` signal weights the steps land on.
        sigma_next: ``(N,)`` noise weights the steps land on.
    """

    timesteps: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor
    alpha_next: torch.Tensor
    sigma_next: torch.Tensor

    def __len__(self) -> int:
        return len(self.timesteps)


class DeterministicSampler(ABC):
    """The deterministic sampler of one kind of process, in the DDIM form that progressive distillation uses.

    Both kinds step as DDIM does: from the network's clean-image estimate ``x0_hat`` and the noise it
    implies, ``noise_hat = (x - alpha x0_hat) / sigma``, to ``alpha_next x0_hat + sigma_next noise_hat``. They
    differ in the student's scheduler, the noise levels of its steps and what the network predicts.
    """

    #: The student parameterisations the sampler offers (the first is the default).
    prediction_types: ClassVar[tuple[str, ...]]
    #: The teacher process's sampler (in its registry) that this deterministic sampler is.
    teacher_sampler: ClassVar[str]

    @abstractmethod
    def student_scheduler(
        self, scheduler: SchedulerMixin, steps: int, prediction_type: str | None = None
    ) -> SchedulerMixin:
        """The saved scheduler of a ``steps``-step student of a model trained with ``scheduler``."""

    @abstractmethod
    def grid(self, scheduler: SchedulerMixin, steps: int) -> StepGrid:
        """The steps that ``scheduler`` (a student's) takes at ``steps`` steps."""

    @abstractmethod
    def clean_estimate(
        self, output: torch.Tensor, sample: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, scheduler
    ) -> torch.Tensor:
        """``x0_hat`` from the network's ``output`` on ``sample``, as ``scheduler``'s model predicts."""

    def clips(self, scheduler: SchedulerMixin) -> bool:
        """Whether ``scheduler``'s sampler clips ``x0_hat`` to ``[-1, 1]`` (after computing ``noise_hat``)."""
        return False


class GaussianDDIM(DeterministicSampler):
    """DDIM (``eta = 0``, trailing timesteps) for a Gaussian model; the student is a stock ``DDIMScheduler``.

    Example:
        >>> from mnist_diffusion.schedulers import ddpm_scheduler
        >>> from mnist_diffusion.training.distill import GaussianDDIM
        >>> sampler = GaussianDDIM()
        >>> student = sampler.student_scheduler(ddpm_scheduler("cosine"), 4)
        >>> type(student).__name__, student.config.prediction_type, student.config["_default_steps"]
        ('DDIMScheduler', 'v_prediction', 4)
        >>> sampler.grid(student, 4).timesteps.tolist()
        [999, 749, 499, 249]
    """

    prediction_types = ("v_prediction", "sample")
    teacher_sampler = "ddim"

    def student_scheduler(self, scheduler, steps, prediction_type=None) -> DDIMScheduler:
        student = DDIMScheduler.from_config(
            {k: v for k, v in scheduler.config.items() if not k.startswith("_")},
            prediction_type=prediction_type or self.prediction_types[0],
            clip_sample=False,
            thresholding=False,
            timestep_spacing="trailing",
            set_alpha_to_one=True,
            steps_offset=0,
        )
        student.register_to_config(**{DEGRADATION_KEY: "gaussian", DEFAULT_STEPS_KEY: steps})
        return student

    def grid(self, scheduler, steps) -> StepGrid:
        ddim = DDIMScheduler.from_config(scheduler.config)
        ddim.set_timesteps(steps)
        timesteps = ddim.timesteps
        # As DDIMScheduler.step: the sample is at timesteps[i]; it lands T // N timesteps earlier.
        previous = timesteps - ddim.config.num_train_timesteps // steps
        abar = ddim.alphas_cumprod
        abar_next = torch.where(previous >= 0, abar[previous.clamp(min=0)], ddim.final_alpha_cumprod)
        abar_now = abar[timesteps]
        return StepGrid(
            timesteps, abar_now**0.5, (1 - abar_now) ** 0.5, abar_next**0.5, (1 - abar_next) ** 0.5
        )

    def clean_estimate(self, output, sample, alpha, sigma, scheduler) -> torch.Tensor:
        return original_sample(scheduler.config.prediction_type, output, sample, alpha, sigma)

    def clips(self, scheduler) -> bool:
        return bool(scheduler.config.get("clip_sample", False))


class FlowEuler(DeterministicSampler):
    """Euler steps of the flow ODE on evenly spaced noise levels; the student is a stock flow-match scheduler.

    ``x_next = x + (s_next - s) v`` is DDIM with ``alpha = 1 - s``, ``sigma = s`` and ``x0_hat = x - s v``.
    The student's ``FlowMatchEulerDiscreteScheduler`` has ``shift = 1`` and ``shift_terminal = 1 / N``, so its
    ``N`` steps start at ``s = 1, 1 - 1/N, ..., 1/N`` (Diffusers' plain grid would end at ``1 / T`` and spend
    one of the few steps on almost nothing).

    Example:
        >>> from mnist_diffusion.schedulers import flow_matching_scheduler
        >>> from mnist_diffusion.training.distill import FlowEuler
        >>> sampler = FlowEuler()
        >>> student = sampler.student_scheduler(flow_matching_scheduler(), 4)
        >>> [round(s, 4) for s in sampler.grid(student, 4).sigma.tolist()]
        [1.0, 0.75, 0.5, 0.25]
    """

    prediction_types = ("velocity",)
    teacher_sampler = "flow_euler"

    def student_scheduler(self, scheduler, steps, prediction_type=None) -> FlowMatchEulerDiscreteScheduler:
        student = FlowMatchEulerDiscreteScheduler.from_config(
            scheduler.config,
            shift=1.0,
            use_dynamic_shifting=False,
            shift_terminal=1 / steps if steps > 1 else None,
            stochastic_sampling=False,
            use_karras_sigmas=False,
            use_exponential_sigmas=False,
            use_beta_sigmas=False,
            invert_sigmas=False,
        )
        student.register_to_config(**{DEFAULT_STEPS_KEY: steps})
        return student

    def grid(self, scheduler, steps) -> StepGrid:
        euler = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
        euler.set_timesteps(steps)
        sigmas = euler.sigmas
        return StepGrid(euler.timesteps, 1 - sigmas[:-1], sigmas[:-1], 1 - sigmas[1:], sigmas[1:])

    def clean_estimate(self, output, sample, alpha, sigma, scheduler) -> torch.Tensor:
        return sample - sigma * output


# The processes whose models have a deterministic sampler to distil, by their command-line name.
DETERMINISTIC_SAMPLERS: dict[str, DeterministicSampler] = {"gaussian": GaussianDDIM(), "flow": FlowEuler()}


def deterministic_sampler(scheduler: SchedulerMixin) -> DeterministicSampler:
    """The :class:`DeterministicSampler` of a trained scheduler's process.

    Raises:
        ValueError: if the process has none (the cold degradations).
    """
    name = forward_process(scheduler).name
    if name not in DETERMINISTIC_SAMPLERS:
        raise ValueError(
            f"the {name} process has no deterministic sampler to distil; --teacher must be a pipeline of "
            f"{' or '.join(DETERMINISTIC_SAMPLERS)}"
        )
    return DETERMINISTIC_SAMPLERS[name]


def _column(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device, like.dtype).reshape(-1, *[1] * (like.ndim - 1))


def ddim_step(
    clean: torch.Tensor,
    sample: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    alpha_next: torch.Tensor,
    sigma_next: torch.Tensor,
    clip: bool = False,
) -> torch.Tensor:
    """One DDIM step from ``sample`` with the clean estimate ``clean``; ``clip`` clips ``clean`` after use.

    As Diffusers' ``DDIMScheduler.step`` (``eta = 0``): the noise estimate comes from the unclipped ``clean``.

    Example:
        >>> import torch
        >>> from mnist_diffusion.training.distill import ddim_step
        >>> x0, noise = torch.tensor([0.5]), torch.tensor([2.0])
        >>> one = torch.tensor([1.0])
        >>> ddim_step(x0, 0.6 * x0 + 0.8 * noise, 0.6 * one, 0.8 * one, one, 0 * one)  # the last step: x0
        tensor([0.5000])
    """
    noise = (sample - alpha * clean) / sigma
    if clip:
        clean = clean.clamp(-1, 1)
    return alpha_next * clean + sigma_next * noise


def clean_target(
    sample: torch.Tensor,
    landing: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    alpha_next: torch.Tensor,
    sigma_next: torch.Tensor,
) -> torch.Tensor:
    """The clean estimate whose DDIM step from ``sample`` lands on ``landing`` (inverts :func:`ddim_step`).

    Example:
        >>> import torch
        >>> from mnist_diffusion.training.distill import clean_target, ddim_step
        >>> x, x0 = torch.tensor([0.3]), torch.tensor([-0.2])
        >>> a, s, a2, s2 = (torch.tensor([v]) for v in (0.6, 0.8, 0.8, 0.6))
        >>> torch.allclose(clean_target(x, ddim_step(x0, x, a, s, a2, s2), a, s, a2, s2), x0)
        True
    """
    ratio = sigma_next / sigma
    return (landing - ratio * sample) / (alpha_next - ratio * alpha)


@torch.no_grad()
def two_step_target(
    teacher: torch.nn.Module,
    sampler: DeterministicSampler,
    teacher_scheduler: SchedulerMixin,
    grid: StepGrid,
    teacher_grid: StepGrid,
    sample: torch.Tensor,
    steps: torch.Tensor,
) -> torch.Tensor:
    """The distillation target: the clean image that makes the student's step land on two teacher steps.

    Args:
        teacher: the teacher network.
        sampler: the deterministic sampler of the process.
        teacher_scheduler: what the teacher predicts and whether its sampler clips.
        grid: the student's steps.
        teacher_grid: the teacher's steps, twice as many: its two steps go from the start of the student's
            step ``i`` through the start of its own step ``2 i + 1`` to where the student's step lands.
        sample: ``x = alpha x0 + sigma noise`` at the start of each example's student step.
        steps: the student step ``i`` of each example, ``(batch,)``.

    Returns:
        ``x0_target`` with ``ddim_step(x0_target, sample, ...)`` equal to the teacher's two-step landing.
    """
    alpha, sigma = _column(grid.alpha[steps], sample), _column(grid.sigma[steps], sample)
    alpha_next, sigma_next = _column(grid.alpha_next[steps], sample), _column(grid.sigma_next[steps], sample)
    middle = 2 * steps + 1
    alpha_mid, sigma_mid = (
        _column(teacher_grid.alpha[middle], sample),
        _column(teacher_grid.sigma[middle], sample),
    )
    clip = sampler.clips(teacher_scheduler)
    output = teacher(sample, grid.timesteps[steps].to(sample.device)).sample
    clean = sampler.clean_estimate(output, sample, alpha, sigma, teacher_scheduler)
    halfway = ddim_step(clean, sample, alpha, sigma, alpha_mid, sigma_mid, clip)
    output = teacher(halfway, teacher_grid.timesteps[middle].to(sample.device)).sample
    clean = sampler.clean_estimate(output, halfway, alpha_mid, sigma_mid, teacher_scheduler)
    landing = ddim_step(clean, halfway, alpha_mid, sigma_mid, alpha_next, sigma_next, clip)
    return clean_target(sample, landing, alpha, sigma, alpha_next, sigma_next)


@torch.no_grad()
def rollout(
    unet: torch.nn.Module,
    sampler: DeterministicSampler,
    scheduler: SchedulerMixin,
    steps: int,
    latents: torch.Tensor,
) -> torch.Tensor:
    """Sample from ``latents`` with ``scheduler`` (a student's) in ``steps`` steps, as distillation sees it.

    The stock pipeline with the same scheduler computes the same samples (up to rounding); the tests hold the
    two together.

    Returns:
        Samples in model space (about ``[-1, 1]``).
    """
    grid = sampler.grid(scheduler, steps)
    sample = latents
    for i in range(len(grid)):
        alpha, sigma = _column(grid.alpha[i : i + 1], sample), _column(grid.sigma[i : i + 1], sample)
        output = unet(sample, grid.timesteps[i].expand(len(sample))).sample
        clean = sampler.clean_estimate(output, sample, alpha, sigma, scheduler)
        landing = (_column(grid.alpha_next[i : i + 1], sample), _column(grid.sigma_next[i : i + 1], sample))
        sample = ddim_step(clean, sample, alpha, sigma, *landing, clip=sampler.clips(scheduler))
    return sample


# ----- the rounds -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The rounds of a distillation: students of half the steps of their teachers, each trained alike.

    Args:
        teacher_steps: the steps of the teacher's sampler distilled in the first round.
        student_steps: the steps of the last student.
        steps_per_round: optimisation steps of each round.

    Example:
        >>> from mnist_diffusion.training.distill import Plan
        >>> plan = Plan(teacher_steps=16, student_steps=1, steps_per_round=100)
        >>> plan.students, plan.total_steps, plan.position(250)
        ([8, 4, 2, 1], 400, (2, 50))
    """

    teacher_steps: int
    student_steps: int
    steps_per_round: int

    @property
    def students(self) -> list[int]:
        """The student steps of the rounds, in order."""
        count = round(math.log2(self.teacher_steps // self.student_steps))
        return [self.teacher_steps >> (index + 1) for index in range(count)]

    @property
    def total_steps(self) -> int:
        return len(self.students) * self.steps_per_round

    def position(self, global_step: int) -> tuple[int, int]:
        """``(round, step within the round)`` of the step after ``global_step`` steps."""
        return divmod(global_step, self.steps_per_round)


def check_plan(teacher_steps: int, student_steps: int, num_train_timesteps: int) -> None:
    """Raise ``ValueError`` unless the steps halve from ``teacher_steps`` to ``student_steps`` (``<= T``)."""
    if student_steps < 1:
        raise ValueError(f"--student_steps must be at least 1, got {student_steps}")
    ratio, remainder = divmod(teacher_steps, student_steps)
    if remainder or ratio < 2 or ratio & (ratio - 1):
        raise ValueError(
            f"--teacher_steps {teacher_steps} must be --student_steps {student_steps} times a power of two "
            f"(2, 4, 8, ...): each round halves the steps"
        )
    if teacher_steps > num_train_timesteps:
        raise ValueError(
            f"--teacher_steps {teacher_steps} exceeds the teacher's T = {num_train_timesteps} timesteps"
        )


def round_grids(
    sampler: DeterministicSampler, scheduler: SchedulerMixin, students: list[int], prediction_type: str | None
) -> list[tuple[SchedulerMixin, StepGrid, StepGrid]]:
    """Per round: the student's scheduler, its steps, and the steps of its teacher (twice as many).

    The teacher's steps start where the student's do (every other one), so its two steps from a student's
    sample pass through one of its own and land where the student's one step lands.

    Raises:
        ValueError: if the teacher's steps do not start where the student's do.
    """
    rounds = []
    for steps in students:
        student = sampler.student_scheduler(scheduler, steps, prediction_type)
        grid = sampler.grid(student, steps)
        teacher_grid = sampler.grid(
            sampler.student_scheduler(scheduler, 2 * steps, prediction_type), 2 * steps
        )
        starts = teacher_grid.timesteps[0::2].double()
        if not torch.allclose(starts, grid.timesteps.double(), rtol=0, atol=1e-3):
            raise ValueError(
                f"the {2 * steps}-step sampler does not start its steps where the {steps}-step one does "
                f"({starts.tolist()} against {grid.timesteps.tolist()}); choose other --teacher_steps"
            )
        rounds.append((student, grid, teacher_grid))
    return rounds


# ----- the command line -------------------------------------------------------------------------------------


def build_parser() -> ArgumentParser:
    """The command-line interface; every flag can also be a key of the ``--config`` YAML file."""
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=str, default=None, help="YAML file of defaults for these flags.")
    parser.add_argument(
        "--teacher",
        type=str,
        default=None,
        help="Saved pipeline folder (or Hub id) of a Gaussian or flow-matching model (required).",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset_name",
        type=str,
        default=MNIST,
        help="Hub dataset id or a local folder in the Hub's parquet layout (e.g. ../shared/data/mnist).",
    )
    data.add_argument("--train_split", type=str, default="train")
    data.add_argument("--max_train_samples", type=int, default=None, help="Use only the first N images.")
    data.add_argument("--output_dir", type=str, default="outputs/distilled")
    rounds = parser.add_argument_group("distillation")
    rounds.add_argument(
        "--teacher_steps",
        type=int,
        default=16,
        help="Steps of the teacher's deterministic sampler (DDIM or flow Euler) that round 1 distils.",
    )
    rounds.add_argument("--student_steps", type=int, default=1, help="Steps of the last student.")
    rounds.add_argument("--steps_per_round", type=int, default=240, help="Optimisation steps per round.")
    rounds.add_argument(
        "--student_prediction_type",
        choices=GaussianDDIM.prediction_types,
        default=None,
        help="Gaussian teachers: what the student predicts (default v_prediction, which stays finite at "
        "t = T where epsilon does not); flow students predict the velocity.",
    )
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--train_batch_size", type=int, default=128)
    optim.add_argument("--learning_rate", type=float, default=3e-4)
    optim.add_argument(
        "--lr_scheduler",
        choices=("constant", "linear", "cosine"),
        default="linear",
        help="Within each round (restarted every round): linear decays to 0, as Salimans & Ho.",
    )
    optim.add_argument("--lr_warmup_steps", type=int, default=0, help="Per round.")
    optim.add_argument("--adam_weight_decay", type=float, default=0.0)
    optim.add_argument("--max_grad_norm", type=float, default=1.0)
    optim.add_argument("--seed", type=int, default=0)
    optim.add_argument(
        "--num_threads",
        type=int,
        default=None,
        help="torch threads per process (default: cores / processes).",
    )
    logs = parser.add_argument_group("logging, samples and checkpoints")
    logs.add_argument("--logging_steps", type=int, default=50)
    logs.add_argument(
        "--num_sample_images", type=int, default=64, help="Sample grid of each round's student."
    )
    logs.add_argument("--checkpointing_steps", type=int, default=240)
    logs.add_argument("--checkpoints_total_limit", type=int, default=2)
    logs.add_argument("--resume_from_checkpoint", type=str, default=None, help="'latest' or a path.")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse flags over the values of ``--config`` and check them; raises ``ValueError`` on bad input.

    The teacher is loaded here: a folder that is not a Gaussian or flow pipeline is refused before any work.

    Example:
        >>> from mnist_diffusion.training.distill import parse_args
        >>> args = parse_args(["--teacher", "outputs/fast_cpu_flow"])  # doctest: +SKIP
        >>> args.teacher_steps, args.student_steps  # doctest: +SKIP
        (16, 1)
    """
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    config_argv = _config_argv(known.config, parser) if known.config else []
    args = parser.parse_args([*config_argv, *(sys.argv[1:] if argv is None else argv)])
    _validate(args)
    return args


def _validate(args: argparse.Namespace) -> None:
    if not args.teacher:
        raise ValueError("--teacher FOLDER is required (a saved Gaussian or flow-matching pipeline)")
    for name in (
        "steps_per_round",
        "train_batch_size",
        "logging_steps",
        "num_sample_images",
        "checkpointing_steps",
        "checkpoints_total_limit",
    ):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}")
    for name in ("max_train_samples", "num_threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.seed < 0 or args.lr_warmup_steps < 0 or args.adam_weight_decay < 0 or args.max_grad_norm < 0:
        raise ValueError(
            "--seed, --lr_warmup_steps, --adam_weight_decay and --max_grad_norm must not be negative"
        )
    if not args.learning_rate > 0:
        raise ValueError(f"--learning_rate must be positive, got {args.learning_rate}")
    if args.resume_from_checkpoint not in (None, "latest") and not os.path.isdir(args.resume_from_checkpoint):
        raise ValueError(
            f"--resume_from_checkpoint {args.resume_from_checkpoint!r}: no such checkpoint folder"
        )
    teacher = load_pipeline(args.teacher)
    process = forward_process(teacher)
    sampler = deterministic_sampler(teacher.scheduler)
    if (
        args.student_prediction_type is not None
        and args.student_prediction_type not in sampler.prediction_types
    ):
        raise ValueError(
            f"--student_prediction_type applies to Gaussian teachers; the {process.name} student predicts "
            f"the {sampler.prediction_types[0]}"
        )
    check_plan(args.teacher_steps, args.student_steps, process.num_train_timesteps)
    students = Plan(args.teacher_steps, args.student_steps, args.steps_per_round).students
    round_grids(sampler, teacher.scheduler, students, args.student_prediction_type)


# ----- the distillation -------------------------------------------------------------------------------------


class Distiller:
    """One distillation run: set-up, the rounds of optimisation steps, the students' saves.

    Args:
        args: the parsed flags (see :func:`build_parser`).
    """

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.output_dir = Path(args.output_dir)
        self.accelerator = make_accelerator(self.output_dir, args.seed)
        accelerator = self.accelerator
        # Images, steps and noise come from one generator per process, saved with every checkpoint.
        self.generator = torch.Generator().manual_seed(args.seed + 1 + accelerator.process_index)
        use_cores(accelerator, args.num_threads)

        teacher = load_pipeline(args.teacher)
        self.teacher_scheduler = teacher.scheduler
        self.sampler = deterministic_sampler(teacher.scheduler)
        self.process_name = forward_process(teacher).name
        self.plan = Plan(args.teacher_steps, args.student_steps, args.steps_per_round)
        self.rounds = round_grids(
            self.sampler, teacher.scheduler, self.plan.students, args.student_prediction_type
        )
        self.student_schedulers = [student for student, _, _ in self.rounds]
        logger.info("Loading %s ...", args.dataset_name)
        began = time.perf_counter()
        self.train_images = load_split(args.dataset_name, args.train_split, args.max_train_samples).images
        logger.info(
            "Loaded %d training images in %.1f s", len(self.train_images), time.perf_counter() - began
        )

        # The student starts as a copy of the teacher; each round's teacher is the last round's student.
        self.teacher = teacher.unet.to(accelerator.device).eval().requires_grad_(False)
        student = copy.deepcopy(self.teacher).train().requires_grad_(True)
        optimizer = torch.optim.AdamW(
            student.parameters(), lr=args.learning_rate, weight_decay=args.adam_weight_decay, foreach=True
        )
        self.student, self.optimizer = accelerator.prepare(student, optimizer)
        accelerator.register_save_state_pre_hook(self.save_state)
        accelerator.register_load_state_pre_hook(self.load_state)
        self.metrics_log = MetricsLog(self.output_dir / "logs" / "metrics.jsonl", accelerator.is_main_process)
        self.global_step = 0
        self.train_seconds = 0.0
        self.cpu_seconds = 0.0

    # ----- checkpoints --------------------------------------------------------------------------------------

    def save_state(self, models: list, weights: list, folder: str) -> None:
        """Accelerate's save-state hook: the teacher, the generator and the times, without pickles."""
        folder = Path(folder)
        save_file(
            {"state": self.generator.get_state()},
            folder / GENERATOR_FILE.format(self.accelerator.process_index),
        )
        if not self.accelerator.is_main_process:
            return
        teacher = {name: tensor.contiguous() for name, tensor in self.teacher.state_dict().items()}
        save_file(teacher, folder / TEACHER_WEIGHTS_FILE)
        state = {"train_seconds": self.train_seconds, "cpu_seconds": self.cpu_seconds}
        (folder / STATE_FILE).write_text(json.dumps(state))

    def load_state(self, models: list, folder: str) -> None:
        """Accelerate's load-state hook: the inverse of :meth:`save_state`."""
        folder = Path(folder)
        generator = load_file(folder / GENERATOR_FILE.format(self.accelerator.process_index))
        self.generator.set_state(generator["state"])
        self.teacher.load_state_dict(
            load_file(folder / TEACHER_WEIGHTS_FILE, device=str(self.accelerator.device))
        )
        state = json.loads((folder / STATE_FILE).read_text())
        self.train_seconds, self.cpu_seconds = float(state["train_seconds"]), float(state["cpu_seconds"])

    # ----- the loop -----------------------------------------------------------------------------------------

    def run(self) -> torch.nn.Module:
        """Distil round by round and save each round's student; returns the last student."""
        args, accelerator = self.args, self.accelerator
        self.global_step = start_or_resume(
            accelerator, args.resume_from_checkpoint, args.output_dir, self.metrics_log
        )
        total = self.plan.total_steps
        if self.global_step >= total and (self.output_dir / "model_index.json").is_file():
            logger.info(
                "The run in %s has finished (step %d); nothing to do.", args.output_dir, self.global_step
            )
            return accelerator.unwrap_model(self.student)
        self.record_run()
        logger.info(
            "Distilling the %s teacher %s: %d-step sampler to students of %s steps, %d steps of %d images "
            "per round",
            self.process_name, args.teacher, args.teacher_steps, ", ".join(map(str, self.plan.students)),
            args.steps_per_round, args.train_batch_size,
        )  # fmt: skip
        progress = tqdm(
            total=total,
            initial=self.global_step,
            disable=not accelerator.is_local_main_process,
            desc="distil",
        )
        window_loss, window_steps = torch.zeros((), device=accelerator.device), 0
        while self.global_step < total:
            round_index, step_in_round = self.plan.position(self.global_step)
            if step_in_round == 0:
                self.start_round(round_index)
            tick, cpu_tick = time.perf_counter(), time.process_time()
            loss = self.step(round_index, step_in_round)
            self.global_step += 1
            self.train_seconds += time.perf_counter() - tick
            self.cpu_seconds += time.process_time() - cpu_tick
            progress.update(1)
            window_loss += loss.detach()
            window_steps += 1
            end_of_round = self.global_step % args.steps_per_round == 0
            if self.global_step % args.logging_steps == 0 or end_of_round:
                mean_loss = accelerator.reduce(window_loss, reduction="mean").item() / window_steps
                record = {
                    "round": round_index + 1,
                    "student_steps": self.plan.students[round_index],
                    "loss": mean_loss,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "train_seconds": self.train_seconds,
                    "cpu_seconds": self.cpu_seconds,
                }
                self.metrics_log.write({"step": self.global_step, **record})
                progress.set_postfix(loss=f"{mean_loss:.4f}", steps=self.plan.students[round_index])
                window_loss.zero_()
                window_steps = 0
            if end_of_round:
                self.end_round(round_index)
            if self.global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, args.output_dir, self.global_step, args.checkpoints_total_limit)
        progress.close()
        if self.global_step % args.checkpointing_steps != 0:
            save_checkpoint(accelerator, args.output_dir, self.global_step, args.checkpoints_total_limit)
        final = accelerator.unwrap_model(self.student)
        if accelerator.is_main_process:
            last = self.plan.students[-1]
            save_pipeline(self.student_pipeline(len(self.plan.students) - 1), self.output_dir)
            write_text(self.output_dir / SUMMARY_FILE, json.dumps(self.summary(), indent=2) + "\n")
            logger.info("Saved the %d-step student to %s", last, self.output_dir)
        accelerator.wait_for_everyone()
        return final

    def record_run(self) -> None:
        """Write ``distillation_config.yaml``: only once the run is sure to start."""
        if self.accelerator.is_main_process:
            (self.output_dir / "logs").mkdir(parents=True, exist_ok=True)
            recorded = {k: v for k, v in vars(self.args).items() if k not in NOT_RECORDED}
            write_text(self.output_dir / CONFIG_FILE, yaml.safe_dump(recorded, sort_keys=False))

    def start_round(self, round_index: int) -> None:
        """The round's teacher is the last round's student; the optimiser starts afresh (Adam's moments)."""
        if round_index > 0:
            self.teacher.load_state_dict(self.accelerator.unwrap_model(self.student).state_dict())
        self.optimizer.optimizer.state.clear()
        logger.info(
            "Round %d: the %d-step student of the %d-step teacher",
            round_index + 1, self.plan.students[round_index], self._teacher_steps(round_index),
        )  # fmt: skip

    def _teacher_steps(self, round_index: int) -> int:
        return self.plan.students[round_index] * 2

    def _teacher_scheduler(self, round_index: int) -> SchedulerMixin:
        """What the round's teacher predicts and whether it clips: the model's own, then a student's."""
        return self.teacher_scheduler if round_index == 0 else self.student_schedulers[round_index - 1]

    def learning_rate(self, step_in_round: int) -> float:
        """``--learning_rate`` under the per-round warm-up and schedule."""
        args = self.args
        if step_in_round < args.lr_warmup_steps:
            return args.learning_rate * (step_in_round + 1) / args.lr_warmup_steps
        progress = (step_in_round - args.lr_warmup_steps) / max(
            1, args.steps_per_round - args.lr_warmup_steps
        )
        if args.lr_scheduler == "linear":
            return args.learning_rate * (1 - progress)
        if args.lr_scheduler == "cosine":
            return args.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))
        return args.learning_rate

    def step(self, round_index: int, step_in_round: int) -> torch.Tensor:
        """One optimisation step of round ``round_index``; returns the loss."""
        args, accelerator = self.args, self.accelerator
        device = accelerator.device
        student_scheduler, grid, teacher_grid = self.rounds[round_index]
        teacher_scheduler = self._teacher_scheduler(round_index)
        generator = self.generator
        indices = torch.randint(len(self.train_images), (args.train_batch_size,), generator=generator)
        x0 = to_model_range(self.train_images[indices]).to(device)
        steps = torch.randint(len(grid), (args.train_batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        alpha, sigma = _column(grid.alpha[steps], x0), _column(grid.sigma[steps], x0)
        sample = alpha * x0 + sigma * noise
        timesteps = grid.timesteps[steps].to(device)
        target = two_step_target(
            self.teacher, self.sampler, teacher_scheduler, grid, teacher_grid, sample, steps
        )
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(step_in_round)
        output = self.student(sample, timesteps).sample
        estimate = self.sampler.clean_estimate(output, sample, alpha, sigma, student_scheduler)
        # Salimans & Ho's truncated-SNR weighting of the clean image's squared error: max(SNR, 1).
        weights = (alpha**2 / sigma**2).clamp(min=1).flatten()
        loss = (weights * per_image_loss(estimate, target, "l2")).mean()
        accelerator.backward(loss)
        if accelerator.sync_gradients and args.max_grad_norm > 0:
            accelerator.clip_grad_norm_(self.student.parameters(), args.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def student_pipeline(self, round_index: int) -> DiffusionPipeline:
        """The pipeline of round ``round_index``'s student (the student network as it is now)."""
        process = forward_process(self.student_schedulers[round_index])
        return process.make_pipeline(self.accelerator.unwrap_model(self.student))

    def end_round(self, round_index: int) -> None:
        """Save the round's student as ``steps-N/`` with its times, and a sample grid of it."""
        if not self.accelerator.is_main_process:
            return
        steps = self.plan.students[round_index]
        folder = self.output_dir / f"{STEPS_PREFIX}{steps}"
        pipeline = self.student_pipeline(round_index)
        (folder / SUMMARY_FILE).unlink(missing_ok=True)
        save_pipeline(pipeline, folder)
        record = {
            "student_steps": steps,
            "teacher_steps": self._teacher_steps(round_index),
            "round": round_index + 1,
            "step": self.global_step,
            "train_seconds": self.train_seconds,
            "cpu_seconds": self.cpu_seconds,
            "torch_threads": torch.get_num_threads(),
        }
        write_text(folder / SUMMARY_FILE, json.dumps(record, indent=2) + "\n")
        self.student.eval()
        images = generate(pipeline, self.args.num_sample_images, seed=self.args.seed)
        self.student.train()
        save_grid(images, self.output_dir / "samples" / f"{STEPS_PREFIX}{steps}.png")
        logger.info(
            "Saved the %d-step student to %s (%.1f min so far)", steps, folder, self.train_seconds / 60
        )

    def summary(self) -> dict[str, Any]:
        """``distillation.json`` of the run: the method, the teacher, every round's student and its times."""
        rounds = []
        for steps in self.plan.students:
            record = self.output_dir / f"{STEPS_PREFIX}{steps}" / SUMMARY_FILE
            if record.is_file():
                rounds.append(json.loads(record.read_text()))
        return {
            "method": "progressive distillation (Salimans & Ho, 2022)",
            "teacher": self.args.teacher,
            "process": self.process_name,
            "teacher_steps": self.args.teacher_steps,
            "students": self.plan.students,
            "steps_per_round": self.args.steps_per_round,
            "train_batch_size": self.args.train_batch_size,
            "train_seconds": self.train_seconds,
            "cpu_seconds": self.cpu_seconds,
            "torch_threads": torch.get_num_threads(),
            "rounds": rounds,
        }


def distill(args: argparse.Namespace) -> torch.nn.Module:
    """Run the distillation described by ``args``; returns the last student network.

    Example:
        >>> from mnist_diffusion.training.distill import distill, parse_args
        >>> argv = ["--teacher", "outputs/fast_cpu_flow", "--output_dir", "outputs/flow_students"]
        >>> distill(parse_args(argv))  # doctest: +SKIP
    """
    return Distiller(args).run()


def main(argv: list[str] | None = None) -> None:
    """Parse the flags and distil."""
    distill(parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_cli(main))
