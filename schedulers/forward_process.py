"""The forward-process protocol: the questions the trainer and every tool ask, answered once per process.

Gaussian DDPM and every cold degradation differ only here. The trainer draws timesteps and training examples,
the tools picture ``D(x0, t)``, build the pipeline that samples a model and pick its samplers, all through a
:class:`ForwardProcess`, and never ask which kind of process it is. A process wraps the scheduler that is
saved with the pipeline, so :func:`forward_process` answers for any loaded pipeline too.

Adding a process: subclass :class:`ForwardProcess` for a new family of schedulers (see
:class:`~mnist_diffusion.schedulers.gaussian.GaussianProcess`) and list it in :data:`PROCESS_TYPES`; adding a
cold degradation needs only its scheduler file and one line in
``mnist_diffusion.schedulers.FORWARD_PROCESSES``.
"""

from __future__ import annotations

import inspect
import re
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from diffusers import DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin

Loss = Literal["l1", "l2"]
# Factory keywords that are not training options: the sampler is chosen when sampling (`sampler` everywhere).
NOT_TRAINING_OPTIONS = ("sampling",)
# A private key of a saved scheduler's config: the step count of the pipeline's default sampler, for a model
# made to sample in exactly that many steps (a few-step student of training/distill.py). Diffusers keeps
# private keys through save_pretrained, from_pretrained and from_config.
DEFAULT_STEPS_KEY = "_default_steps"


@dataclass(frozen=True)
class Sampler:
    """One way of sampling a trained model: an entry of a process's sampler registry.

    Args:
        label: the name people read (demo, model card, report).
        default_steps: the usual number of network calls; ``None`` means all ``T`` timesteps.
        build: the sampling scheduler, built from the trained one (which is left unchanged).
    """

    label: str
    default_steps: int | None
    build: Callable[[SchedulerMixin], SchedulerMixin]


class ForwardProcess(ABC):
    """A forward process ``x_t = D(x0, t)`` and everything that follows from it, around its saved scheduler.

    Subclasses set :attr:`scheduler_class` (the schedulers they answer for), :attr:`samplers` and
    :attr:`default_sampler`, and implement the abstract methods.

    Args:
        scheduler: the trained scheduler, as saved in the pipeline folder.
    """

    scheduler_class: ClassVar[type[SchedulerMixin]]
    samplers: ClassVar[dict[str, Sampler]]
    default_sampler: ClassVar[str]
    # Whether the pipeline can restore given images from D(x0, t) (a start timestep, restoration curves).
    restores: ClassVar[bool] = False
    # The family of processes a subclass answers for, as a Hub tag of their pipelines (model cards).
    family: ClassVar[str] = "diffusion"

    def __init__(self, scheduler: SchedulerMixin):
        self.scheduler = scheduler

    @classmethod
    def answers_for(cls, scheduler: SchedulerMixin) -> bool:
        """Whether this process answers for ``scheduler``, an instance of its :attr:`scheduler_class` (yes).

        A family whose scheduler class also serves only for sampling (a ``DDIMScheduler``) answers just for
        the schedulers whose config marks them as its own.
        """
        return True

    @property
    @abstractmethod
    def name(self) -> str:
        """The command-line name (``--degradation``), recoverable from the saved scheduler."""

    @property
    @abstractmethod
    def default_loss(self) -> Loss:
        """The training loss when ``--loss`` is not given."""

    @property
    def num_train_timesteps(self) -> int:
        """``T``."""
        return self.scheduler.config.num_train_timesteps

    @property
    @abstractmethod
    def timestep_range(self) -> tuple[int, int]:
        """The first and last timestep of the forward process (``D(x0, first) = x0``)."""

    @abstractmethod
    def training_timesteps(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Timesteps of a training batch, shape ``(batch_size,)``."""

    @abstractmethod
    def training_example(
        self, x0: torch.Tensor, timesteps: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(model_input, target)`` of a batch of clean images in ``[-1, 1]`` at ``timesteps``.

        Processes with :attr:`draws_gaussian_noise` also take ``noise=``, the Gaussian noise to use.
        """

    @abstractmethod
    def degrade(
        self, x0: torch.Tensor, timesteps: int | torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``D(x0, t)`` of clean images in ``[-1, 1]``, for pictures and per-timestep metrics."""

    @abstractmethod
    def make_pipeline(self, unet: torch.nn.Module) -> DiffusionPipeline:
        """The pipeline that samples ``unet`` with this process's scheduler."""

    def describe(self) -> str:
        """One line for people: the process, its kind and ``T``."""
        return f"{self.name} ({type(self.scheduler).__name__}), T = {self.num_train_timesteps}"

    # ----- for people: model cards and reports ------------------------------------------------------------

    @property
    def label(self) -> str:
        """What people call the process, as a title (``Gaussian DDPM``, ``Cold diffusion (blur)``)."""
        return self.name

    @property
    @abstractmethod
    def stochastic(self) -> bool:
        """Whether ``D(x0, t)`` is random (a fresh draw per image), not a function of ``x0`` and ``t``."""

    @property
    @abstractmethod
    def objective(self) -> str:
        """What the network is trained to output, for people (Markdown, without the loss)."""

    @abstractmethod
    def summary(self) -> str:
        """A Markdown paragraph for people: the process, what the network learns, where sampling starts."""

    def usage(
        self, repo_id: str, class_labels: Sequence[int] | None = None, guidance_scale: float | None = None
    ) -> str:
        """Python that draws 16 samples with :attr:`default_sampler` where this project is not installed.

        The model card's usage snippet: the pipeline saved at ``repo_id`` (a Hub id or a folder) is loaded
        with ``trust_remote_code=True``, which loads the custom classes shipped beside the weights. This
        default samples with the pipeline's saved scheduler; processes that pick a sampler otherwise override
        it, passing ``class_labels`` and ``guidance_scale`` on to :func:`usage_snippet`.

        Args:
            repo_id: the Hub id or folder to load.
            class_labels: for a class-conditional model, the digits to draw, one image each (the call's
                ``class_labels``); ``None``: an unconditional model's 16 samples.
            guidance_scale: with ``class_labels``, the classifier-free guidance weight of the call (``None``:
                the pipeline's default, 1).
        """
        return usage_snippet(
            repo_id, self.default_steps(), class_labels=class_labels, guidance_scale=guidance_scale
        )

    def fit(  # noqa: B027
        self,
        x0_train: torch.Tensor,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
    ) -> None:
        """Fit what the process needs from the training data before sampling (nothing by default).

        ``labels`` (the class of each training image) are given for a class-conditional model.
        """

    # ----- optional parts of the objective: min-SNR weights, noise the objective pairs with images --------

    # Whether `training_example` takes `noise=`: a standard Gaussian tensor of `x0`'s shape that it noises
    # `x0` with (drawn there when not given), so the objective can pair noise and images (--immiscible).
    draws_gaussian_noise: ClassVar[bool] = False

    def loss_weights(self, timesteps: torch.Tensor, snr_gamma: float) -> torch.Tensor | None:
        """Per-example min-SNR-gamma loss weights at ``timesteps`` (Hang et al., 2023); ``None``: no SNR.

        A process whose ``x_t`` has a signal-to-noise ratio returns the weights, for its own training target,
        that equal ``min(SNR(t), snr_gamma)`` on the squared error of the clean image; processes without one
        (the cold degradations) return ``None``, and the trainer refuses ``--snr_gamma`` for them.

        Args:
            timesteps: the batch's timesteps, as :meth:`training_timesteps` draws them.
            snr_gamma: the cap ``gamma`` (Hang et al. use 5).
        """
        return None

    # ----- samplers ---------------------------------------------------------------------------------------

    def check_sampler(self, sampler: str, num_inference_steps: int | None = None) -> None:
        """Raise ``ValueError`` naming the bad value unless ``sampler`` and the step count are allowed."""
        if sampler not in self.samplers:
            raise ValueError(
                f"sampler {sampler!r} is not available for the {self.name} process; "
                f"choose one of {', '.join(self.samplers)}"
            )
        limit = self.num_train_timesteps
        if num_inference_steps is not None and not 1 <= num_inference_steps <= limit:
            raise ValueError(f"num_inference_steps={num_inference_steps} must be between 1 and {limit}")

    def default_steps(self, sampler: str | None = None) -> int:
        """The usual network calls of ``sampler`` (default: :attr:`default_sampler`), at most ``T``.

        For the default sampler, a step count saved in the scheduler's config under :data:`DEFAULT_STEPS_KEY`
        (a distilled few-step student's) comes before the sampler's usual count.
        """
        sampler = sampler or self.default_sampler
        saved = self.scheduler.config.get(DEFAULT_STEPS_KEY) if sampler == self.default_sampler else None
        steps = saved or self.samplers[sampler].default_steps
        return min(steps or self.num_train_timesteps, self.num_train_timesteps)

    def with_sampler(self, pipeline: DiffusionPipeline, sampler: str) -> DiffusionPipeline:
        """A copy of ``pipeline`` whose scheduler is ``sampler``, built from this (trained) scheduler."""
        self.check_sampler(sampler)
        components = {**pipeline.components, "scheduler": self.samplers[sampler].build(self.scheduler)}
        return type(pipeline)(**components)


def usage_snippet(
    repo_id: str,
    num_inference_steps: int,
    imports: str = "",
    setup: tuple[str, ...] = (),
    call: str = "",
    class_labels: Sequence[int] | None = None,
    guidance_scale: float | None = None,
) -> str:
    """A usage snippet (see :meth:`ForwardProcess.usage`): load, ``setup`` lines, then sample and save one.

    Args:
        repo_id: the Hub id or folder to load.
        num_inference_steps: the network calls of the sampling run.
        imports: names imported from ``diffusers`` besides ``DiffusionPipeline`` (``", DDIMScheduler"``).
        setup: lines run on the loaded ``pipe`` before sampling.
        call: extra keyword arguments of the pipeline call (``', sampler="naive"'``).
        class_labels: for a class-conditional model: the digits of the call, one image each (its
            ``batch_size``); ``None``: 16 unconditional samples.
        guidance_scale: with ``class_labels``: the call's classifier-free guidance weight (``None``: left
            out, the pipeline's default of 1).

    Example:
        >>> from mnist_diffusion.schedulers.forward_process import usage_snippet
        >>> print(usage_snippet("someone/model", 25, class_labels=[0, 7], guidance_scale=3.0))
        ... # doctest: +NORMALIZE_WHITESPACE
        import torch
        from diffusers import DiffusionPipeline
        <BLANKLINE>
        pipe = DiffusionPipeline.from_pretrained("someone/model", trust_remote_code=True)
        generator = torch.Generator().manual_seed(0)
        # A class-conditional model: one digit per image (0-9), guided with weight guidance_scale
        # (uncond + w * (cond - uncond); 1: the model as trained, 0: unconditional).
        images = pipe(
            batch_size=2,
            num_inference_steps=25,
            generator=generator,
            class_labels=[0, 7],
            guidance_scale=3.0,
        ).images
        images[0].save("sample.png")
    """
    if class_labels is None:
        sampling = [
            f"images = pipe(batch_size=16, num_inference_steps={num_inference_steps}, "
            f"generator=generator{call}).images"
        ]
    else:
        labels = [int(label) for label in class_labels]
        arguments = [f"batch_size={len(labels)}", f"num_inference_steps={num_inference_steps}"]
        arguments += ["generator=generator", *([call.removeprefix(", ")] if call else [])]
        arguments += [f"class_labels={labels}"]
        arguments += [f"guidance_scale={float(guidance_scale)!r}"] if guidance_scale is not None else []
        sampling = [
            "# A class-conditional model: one digit per image (0-9), guided with weight guidance_scale",
            "# (uncond + w * (cond - uncond); 1: the model as trained, 0: unconditional).",
            "images = pipe(",
            *(f"    {argument}," for argument in arguments),
            ").images",
        ]
    return "\n".join(
        [
            "import torch",
            f"from diffusers import DiffusionPipeline{imports}",
            "",
            f'pipe = DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True)',
            *setup,
            "generator = torch.Generator().manual_seed(0)",
            *sampling,
            'images[0].save("sample.png")',
        ]
    )


# The process families, each answering for its own scheduler class; later entries win for subclasses.
PROCESS_TYPES: list[type[ForwardProcess]] = []


def register_process_type(process_type: type[ForwardProcess]) -> type[ForwardProcess]:
    """Class decorator: let :func:`forward_process` wrap schedulers of ``process_type.scheduler_class``."""
    PROCESS_TYPES.append(process_type)
    return process_type


def forward_process(pipeline_or_scheduler: DiffusionPipeline | SchedulerMixin) -> ForwardProcess:
    """The forward process of a trained pipeline (or of its scheduler).

    Raises:
        ValueError: if no registered process answers for the scheduler's class.
    """
    scheduler = getattr(pipeline_or_scheduler, "scheduler", pipeline_or_scheduler)
    for process_type in reversed(PROCESS_TYPES):
        if isinstance(scheduler, process_type.scheduler_class) and process_type.answers_for(scheduler):
            return process_type(scheduler)
    raise ValueError(
        f"no forward process answers for the scheduler {type(scheduler).__name__}; the trained scheduler of "
        "a pipeline of this project is needed (not one built for sampling)"
    )


# ----- options of a process, from the signature of its scheduler factory ------------------------------------


@dataclass(frozen=True)
class Option:
    """A keyword option of a process's scheduler factory, as the command line offers it.

    Args:
        name: the keyword (and the flag ``--name``).
        type: ``int``, ``float``, ``str`` or ``bool``.
        choices: the allowed values of a ``Literal`` annotation, else ``None``.
        help: the factory's docstring for the keyword.
    """

    name: str
    type: type
    choices: tuple | None
    help: str


def factory_options(factory: Callable[..., SchedulerMixin]) -> dict[str, Option]:
    """The keyword options of a scheduler factory (a class, a function or a ``functools.partial``).

    Keywords fixed by a ``partial`` (``axis="rows"``) are not options; types and choices come from the
    annotations (``Literal[...]`` gives choices), help from the ``Args:`` section of the docstring.
    """
    fixed = getattr(factory, "keywords", {})
    target = getattr(factory, "func", factory)
    function = target.__init__ if inspect.isclass(target) else target
    hints = typing.get_type_hints(function)
    docs = _argument_docs(inspect.getdoc(target) or "")
    options = {}
    for name, parameter in inspect.signature(function).parameters.items():
        if name in fixed or name in NOT_TRAINING_OPTIONS or parameter.default is inspect.Parameter.empty:
            continue
        kind, choices = _option_type(hints.get(name, str), parameter.default)
        options[name] = Option(name, kind, choices, docs.get(name, ""))
    return options


def _option_type(annotation, default) -> tuple[type, tuple | None]:
    """``(type, choices)`` of an annotation such as ``int | None`` or ``Literal["a", "b"]``."""
    arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is Literal:
        return type(arguments[0]), tuple(arguments)
    if arguments:  # a union such as `int | None`
        return _option_type(arguments[0], default)
    if isinstance(annotation, type):
        return annotation, None
    return type(default) if default is not None else str, None


def _argument_docs(docstring: str) -> dict[str, str]:
    """``name -> text`` of a Google-style ``Args:`` section (continuation lines joined)."""
    section = re.search(r"^Args:\n((?:[ \t]+.*\n?|\n)*)", docstring, re.MULTILINE)
    docs: dict[str, str] = {}
    name = None
    for line in (section.group(1) if section else "").splitlines():
        entry = re.match(r"^ {4}(\w+)(?: \(.*?\))?: (.*)", line)
        if entry:
            name = entry.group(1)
            docs[name] = entry.group(2).strip()
        elif name and line.strip():
            docs[name] += " " + line.strip()
    return docs
