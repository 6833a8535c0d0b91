"""The shared base of every cold-diffusion scheduler (Bansal et al., 2022, "Cold Diffusion").

A subclass defines only its degradation ``D(x_0, t)`` (and, where it has one, the random draw that makes it
stochastic and the low-dimensional space of ``D(x, T)``); the samplers, the training examples and the
Gaussian-mixture prior over ``D(x, T)`` used for unconditional generation are written once, here, and so
is the optional injection of small Gaussian noise into training inputs and sampling steps (Rissanen et al.,
2023, "Generative Modelling With Inverse Heat Dissipation"), which makes deterministic degradations generate
more varied samples.

Like every file of this package it imports only torch, numpy and diffusers (plus same-folder siblings), so a
saved pipeline can ship it as custom code for ``trust_remote_code=True``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal, TypeVar, get_args

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

Sampling = Literal["improved", "naive", "direct"]
SAMPLING_METHODS: tuple[str, ...] = get_args(Sampling)
T = TypeVar("T")
PRIOR_FILE_NAME = "prior.npz"
# The noise options every cold scheduler shares; one that a subclass's __init__ does not take is 0 (off).
NOISE_OPTIONS = ("start_noise", "train_noise", "sample_noise")
# A prior over D(x, T) whose mean variance per feature is below this (an RMS spread of 1e-3 in [-1, 1], an
# eighth of one 8-bit grey level) is a point: every unconditional sample starts from the same image.
PRIOR_MIN_VARIANCE = 1e-6


@dataclass
class ColdSchedulerOutput(BaseOutput):
    """Output of a cold scheduler's ``step``.

    Args:
        prev_sample: ``x_{s'}``, the sample at the next (smaller) timestep; the next model input.
        pred_original_sample: ``x0_hat``, the clean image predicted at this step.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise a ``ValueError`` naming ``value`` and the allowed choices unless ``value`` is one of them."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {', '.join(allowed)}")


Generators = torch.Generator | list[torch.Generator] | None


def generator_device(generator: torch.Generator | None) -> torch.device:
    """Where random draws with ``generator`` must be made (the CPU without one)."""
    return generator.device if generator is not None else torch.device("cpu")


def per_image(generator: Generators, batch_size: int, draw: Callable[[int, torch.Generator | None], T]) -> T:
    """``draw(batch_size, generator)``; with a list of generators, one per image (as Diffusers pipelines
    accept), ``draw(1, generator)`` for each image, concatenated: an image's randomness then depends only on
    its own generator, not on the batch it is drawn in.

    Raises:
        ValueError: if a list does not hold one generator per image.
    """
    if not isinstance(generator, list):
        return draw(batch_size, generator)
    if len(generator) != batch_size:
        raise ValueError(f"{len(generator)} generators given for a batch of {batch_size}; pass one per image")
    draws = [draw(1, single) for single in generator]
    return None if draws[0] is None else torch.cat(draws)


def uniform_tensor(
    shape: tuple[int, ...], generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Uniform ``[0, 1)`` draws made on the generator's device, so a CPU generator can drive GPU runs."""
    return torch.rand(shape, generator=generator, device=generator_device(generator)).to(device or "cpu")


def normal_tensor(
    shape: tuple[int, ...], generator: Generators = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Standard normal draws made on the generator's device (deterministic per seed), moved to ``device``.

    Example:
        >>> from mnist_diffusion.schedulers.cold import normal_tensor
        >>> first = normal_tensor((2, 3), torch.Generator().manual_seed(0))
        >>> torch.equal(first, normal_tensor((2, 3), torch.Generator().manual_seed(0)))
        True
    """
    return per_image(
        generator,
        shape[0],
        lambda count, single: torch.randn(
            (count, *shape[1:]), generator=single, device=generator_device(single)
        ).to(device or "cpu"),
    )


# Marks a prior fitted on clean images (see ColdDiffusionScheduler.prior_of_clean_images).
CLEAN_PRIOR_KEY = "of_clean_images"


def class_mixture(
    prior: dict[str, torch.Tensor], labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mixture each start of a batch is drawn from: its label's (``class_*`` of a prior fitted with
    labels), or the unconditional one for a label without a mixture (the null label of classifier-free
    guidance, a class the fit did not see).

    Returns:
        ``(weights, means, cholesky)``: ``(batch, M)`` per-start weights over ``M`` components (the
        unconditional ones, then every class's), their ``(M, d)`` means and ``(M, d, d)`` Cholesky factors.
    """
    pooled, rows = prior["weights"], prior["class_weights"]
    classes, components = rows.shape
    index = labels.long().clamp(0, classes - 1)
    known = (labels >= 0) & (labels < classes) & (rows[index].sum(1) > 0)
    own = torch.zeros(len(labels), classes, components, dtype=rows.dtype, device=rows.device)
    own[torch.arange(len(labels)), index] = rows[index] * known.unsqueeze(1)
    weights = torch.cat([pooled * ~known.unsqueeze(1), own.flatten(1)], dim=1)
    means = torch.cat([prior["means"], prior["class_means"].flatten(0, 1)])
    cholesky = torch.cat([prior["cholesky"], prior["class_cholesky"].flatten(0, 1)])
    return weights, means, cholesky


class ColdDiffusionScheduler(SchedulerMixin, ConfigMixin):
    """Base of the cold-diffusion schedulers: ``D(x_0, t)`` for ``t = 0 .. T`` with ``D(x_0, 0) = x_0``.

    The model ``R(x_t, t)`` predicts ``x_0``; :meth:`step` turns that prediction into the next sample with
    Bansal's Algorithm 2 (``improved``, ``x_{s-1} = x_s - D(x0_hat, s) + D(x0_hat, s-1)``), Algorithm 1
    (``naive``, ``x_{s-1} = D(x0_hat, s-1)``) or ``direct`` (``x0_hat`` itself). Stochastic degradations
    draw their randomness once per sampling run (:meth:`sampling_draw`), so ``D(x0_hat, s)`` and
    ``D(x0_hat, s-1)`` share it and severity grows monotonically in ``t``.

    Noise injection (Rissanen et al., 2023) is shared by every subclass: ``train_noise`` is the standard
    deviation of Gaussian noise added to ``D(x0, t)`` in training examples (``t >= 1``,
    :meth:`training_example`), ``sample_noise`` that of noise added after every sampling step but the last
    (:meth:`step`); both are drawn with the run's generator on its device, and at 0 (the default) nothing is
    drawn, so results are exactly those without the options. ``start_noise`` adds noise to prior samples
    (:meth:`prior_sample`).

    Subclasses set :attr:`degradation_name` (the command-line name, also saved in the config as
    ``_degradation``), decorate their ``__init__`` with ``@register_to_config`` (its config must include
    ``num_train_timesteps`` and ``sampling``; the noise options :data:`NOISE_OPTIONS` are taken by every
    built-in degradation, and one a subclass leaves out is off), call ``super().__init__()`` last, and
    implement :meth:`_degrade`; stochastic ones also implement :meth:`draw`.

    Example:
        >>> import torch
        >>> from mnist_diffusion.schedulers import GaussianBlurScheduler
        >>> scheduler = GaussianBlurScheduler(num_train_timesteps=4, train_noise=0.01, sample_noise=0.013)
        >>> x0 = torch.zeros(2, 1, 28, 28)
        >>> model_input, target = scheduler.training_example(x0, torch.tensor([1, 4]), torch.Generator())
        >>> bool(model_input.std() > 0), torch.equal(target, x0)
        (True, True)
        >>> type(scheduler).from_config(scheduler.config).config.sample_noise
        0.013
    """

    order = 1
    degradation_name: ClassVar[str]
    # What the network predicts, in words (model cards), and the loss that suits it: l1 for predicted clean
    # images (Bansal et al.).
    prediction_target: ClassVar[str] = "the clean image `x0`"
    default_loss: ClassVar[Literal["l1", "l2"]] = "l1"
    # Prior: a Gaussian mixture fitted on at most this many D(x, T), in at most this many PCA dimensions; with
    # labels, also one of class_prior_components per class.
    prior_components = 20
    class_prior_components = 5
    prior_max_dim = 32
    prior_fit_images = 10_000
    # Fit the mixture on clean images and start from D(x0, T) of a drawn x0 with the run's draw, instead of on
    # D(x, T): for a D(x, T) that a mixture cannot draw (salt-and-pepper pixels), so starts look like what the
    # network saw at T in training. Saved in the prior (CLEAN_PRIOR_KEY), so older folders keep their starts.
    prior_of_clean_images: ClassVar[bool] = False
    # What to do when D(x, T) is one image for every x (the end of the fit_prior warning).
    collapsed_prior_advice: ClassVar[str] = (
        "give the starts and the sampling steps noise (start_noise or sample_noise > 0, with train_noise > 0 "
        "in training) or restore degraded images (start_images) instead"
    )

    def __init__(self):
        # The settings every cold scheduler shares, checked once here for all of them.
        if self.config.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps={self.config.num_train_timesteps} must be >= 1")
        self._resolve_sampling(self.config.sampling)
        for name in NOISE_OPTIONS:
            if self.noise_std(name) < 0:
                raise ValueError(f"{name}={self.noise_std(name)} must be >= 0")
        # Derived, never read back: the saved folder says which degradation it holds.
        self.register_to_config(_degradation=self.degradation_name)
        self.prior: dict[str, torch.Tensor] = {}
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(self.config.num_train_timesteps, 0, -1)
        self._sampling_draw: torch.Tensor | None = None
        self._sampling_shape: tuple[int, ...] | None = None

    def noise_std(self, name: Literal["start_noise", "train_noise", "sample_noise"]) -> float:
        """The configured standard deviation of a noise option (0 when the subclass does not take it)."""
        return float(self.config.get(name, 0.0))

    # ----- the degradation --------------------------------------------------------------------------------

    def draw(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
    ) -> torch.Tensor | None:
        """The random numbers that fix a stochastic degradation of a batch (``None``: deterministic).

        The first dimension is the batch (one draw per image), so that a run with one generator per image
        draws each image's part with its own generator.
        """
        return None

    def _degrade(self, x0: torch.Tensor, t: torch.Tensor, draw: torch.Tensor | None) -> torch.Tensor:
        """``D(x0, t)`` for a ``(batch,)`` long tensor ``t`` in ``[0, T]`` and a draw from :meth:`draw`."""
        raise NotImplementedError

    def degrade(
        self,
        x0: torch.Tensor,
        t: int | torch.Tensor,
        generator: torch.Generator | None = None,
        draw: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Degrade clean images: ``x_t = D(x0, t)``.

        Args:
            x0: images in ``[-1, 1]``, shape ``(batch, channels, height, width)``.
            t: a timestep in ``[0, T]`` or one per image, shape ``(batch,)``.
            generator: drives a fresh random draw when ``draw`` is not given.
            draw: the randomness to reuse (from :meth:`draw` or :meth:`sampling_draw`).

        Returns:
            The degraded images, same shape as ``x0``.

        Raises:
            ValueError: if a timestep is outside ``[0, T]``.
        """
        num_train_timesteps = self.config.num_train_timesteps
        t = torch.as_tensor(t, device=x0.device).long().reshape(-1).expand(x0.shape[0])
        if t.numel() and (t.min() < 0 or t.max() > num_train_timesteps):
            raise ValueError(f"timesteps {t.tolist()} must lie in [0, {num_train_timesteps}]")
        if draw is None:
            draw = self.draw(tuple(x0.shape), generator, x0.device)
        return self._degrade(x0, t, draw)

    # ----- sampling ---------------------------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int | None = None, device: torch.device | str | None = None):
        """Choose the descending timesteps of a sampling run (``T`` down to 1) and start a new random draw.

        Args:
            num_inference_steps: number of model calls, in ``[1, T]``; ``None`` means ``T``.
            device: where the timesteps live.

        Raises:
            ValueError: if ``num_inference_steps`` is outside ``[1, T]``.
        """
        num_train_timesteps = self.config.num_train_timesteps
        steps = num_train_timesteps if num_inference_steps is None else num_inference_steps
        if not 1 <= steps <= num_train_timesteps:
            raise ValueError(f"num_inference_steps={steps} must lie in [1, {num_train_timesteps}]")
        grid = np.linspace(num_train_timesteps, 1, steps).round().astype(np.int64)
        self.num_inference_steps = steps
        self.timesteps = torch.from_numpy(grid).to(device)
        self._sampling_draw = None

    def sampling_draw(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
    ) -> torch.Tensor | None:
        """The draw of the current run: made on first use after :meth:`set_timesteps`, then reused.

        ``generator`` may be a list, one per image (see :func:`per_image`).
        """
        if self._sampling_draw is None or self._sampling_shape != tuple(shape):
            self._sampling_draw = per_image(
                generator, shape[0], lambda count, single: self.draw((count, *shape[1:]), single, device)
            )
            self._sampling_shape = tuple(shape)
        return self._sampling_draw

    def previous_timestep(self, timestep: int | torch.Tensor) -> int:
        """The timestep after ``timestep`` in the current run (0 after the last)."""
        later = self.timesteps[self.timesteps < int(timestep)]
        return int(later.max()) if len(later) else 0

    def _resolve_sampling(self, sampling: str | None) -> str:
        sampling = sampling or self.config.sampling
        check_choice("sampling", sampling, SAMPLING_METHODS)
        return sampling

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        sampling: str | None = None,
        return_dict: bool = True,
    ) -> ColdSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One reverse step from ``timestep`` ``s`` to the run's next timestep ``s'``.

        With ``sample_noise > 0`` (and ``s' > 0``), ``sample_noise * N(0, I)`` is added to the result (see
        :meth:`add_sampling_noise`); ``improved`` carries earlier noise forward in ``x_s - D(x0_hat, s)``, so
        there its total grows like ``sample_noise * sqrt(steps)``, while ``naive`` replaces it every step.

        Args:
            model_output: ``x0_hat = R(x_s, s)``, the predicted clean images.
            timestep: the current timestep ``s``.
            sample: the current sample ``x_s``.
            generator: drives the run's random draw if it has not been made yet, and the injected noise.
            sampling: ``improved`` (``x_s - D(x0_hat, s) + D(x0_hat, s')``), ``naive`` (``D(x0_hat, s')``) or
                ``direct`` (``x0_hat``); ``None`` uses the config.
            return_dict: return a :class:`ColdSchedulerOutput` instead of a tuple.

        Returns:
            ``(prev_sample, pred_original_sample)``.
        """
        sampling = self._resolve_sampling(sampling)
        x0_hat = model_output
        if sampling == "direct":
            prev_sample = x0_hat
        else:
            draw = self.sampling_draw(tuple(sample.shape), generator, sample.device)
            previous = self.previous_timestep(timestep)
            prev_sample = self.degrade(x0_hat, previous, draw=draw)
            if sampling == "improved":
                prev_sample = prev_sample + sample - self.degrade(x0_hat, timestep, draw=draw)
            prev_sample = self.add_sampling_noise(prev_sample, previous, generator)
        if not return_dict:
            return (prev_sample, x0_hat)
        return ColdSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0_hat)

    def add_sampling_noise(
        self, prev_sample: torch.Tensor, previous_timestep: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``prev_sample + sample_noise * N(0, I)``, or ``prev_sample`` itself after the last step.

        Args:
            prev_sample: the result of a reverse step.
            previous_timestep: the timestep ``prev_sample`` belongs to; 0 (the run's end) adds nothing.
            generator: drives the noise, drawn on its device (nothing is drawn when ``sample_noise`` is 0).
        """
        std = self.noise_std("sample_noise")
        if std == 0 or previous_timestep == 0:
            return prev_sample
        noise = normal_tensor(tuple(prev_sample.shape), generator, prev_sample.device)
        return prev_sample + std * noise.to(prev_sample.dtype)

    # ----- training ---------------------------------------------------------------------------------------

    def training_timesteps(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Timesteps for a training batch, uniform in ``[1, T]``."""
        source = generator_device(generator)
        high = self.config.num_train_timesteps + 1
        return torch.randint(1, high, (batch_size,), generator=generator, device=source).to(device or "cpu")

    def training_example(
        self, x0: torch.Tensor, timesteps: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(model_input, target)`` for a training batch: ``(D(x0, t) + train_noise * eps, x0)``.

        The degradation gets a fresh draw per image; the noise (see :meth:`add_training_noise`) is drawn after
        it, with the same generator.
        """
        return self.add_training_noise(self.degrade(x0, timesteps, generator), timesteps, generator), x0

    def add_training_noise(
        self, model_input: torch.Tensor, timesteps: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Add ``train_noise * N(0, I)`` to the images of a training batch whose timestep is at least 1.

        Args:
            model_input: degraded images ``D(x0, t)``, shape ``(batch, channels, height, width)``.
            timesteps: their timesteps, shape ``(batch,)`` (or one for all).
            generator: drives the noise, drawn on its device (nothing is drawn when ``train_noise`` is 0).
        """
        std = self.noise_std("train_noise")
        if std == 0:
            return model_input
        t = torch.as_tensor(timesteps, device=model_input.device).reshape(-1).expand(model_input.shape[0])
        noise = normal_tensor(tuple(model_input.shape), generator, model_input.device).to(model_input.dtype)
        return model_input + std * noise * (t > 0).to(model_input.dtype).view(-1, 1, 1, 1)

    # ----- the prior over D(x, T), for unconditional generation --------------------------------------------

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``D(x, T)`` to the features the prior is fitted in (default: all pixels)."""
        return x.flatten(1)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`encode`: features back to ``(batch, 1, H, W)`` images."""
        size = int(round(features.shape[1] ** 0.5))
        return features.reshape(-1, 1, size, size)

    def fit_prior(
        self,
        x0_train: torch.Tensor,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
    ) -> None:
        """Fit the Gaussian mixture over ``encode(D(x, T))`` that :meth:`prior_sample` draws starts from (over
        ``encode(x)`` with :attr:`prior_of_clean_images`, whose starts are then degraded to ``T``).

        Features with more than ``prior_max_dim`` dimensions are first projected on their principal axes.
        When ``D(x, T)`` is (nearly) the same image for every ``x`` (a mask that covers everything), the prior
        is a point and so would be every start: unless ``start_noise`` or ``sample_noise`` is set, a
        ``UserWarning`` says so and what to do (:attr:`collapsed_prior_advice`).

        With ``labels`` (a class-conditional model) each class also gets its own mixture, fitted on its
        images' ``D(x, T)`` in the same coordinates. A degraded image still shows much of its digit at
        ``t = T`` (impulse noise, rows, a blur), so a network trained on such inputs learns to restore what
        the start shows and to ignore its label: asked for a 7, it must start from a 7's ``D(x, T)``.

        Args:
            x0_train: training images in ``[-1, 1]``, shape ``(N, 1, H, W)``; ``prior_fit_images`` are used.
            generator: picks the subsample, the stochastic draws and the mixture's initialisation.
            labels: ``(N,)`` the class of each training image (``0 .. C - 1``), or ``None``.
        """
        from sklearn.mixture import GaussianMixture
        from threadpoolctl import threadpool_limits

        if labels is not None and len(labels) != len(x0_train):
            raise ValueError(f"{len(labels)} labels given for {len(x0_train)} training images")
        subset = torch.randperm(len(x0_train), generator=generator)[: self.prior_fit_images]
        x0 = x0_train[subset].float().cpu()
        num_train_timesteps = self.config.num_train_timesteps
        fitted = x0 if self.prior_of_clean_images else self.degrade(x0, num_train_timesteps, generator)
        features = self.encode(fitted).double()
        mean = features.mean(0)
        centred = features - mean
        self._warn_if_point(centred.pow(2).mean().item())
        if features.shape[1] > self.prior_max_dim:
            basis = torch.linalg.svd(centred, full_matrices=False).Vh[: self.prior_max_dim]
        else:
            basis = torch.eye(features.shape[1], dtype=features.dtype)
        coordinates = (centred @ basis.T).numpy()
        distinct = len(np.unique(coordinates.round(6), axis=0))
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        mixture = GaussianMixture(
            min(self.prior_components, distinct), covariance_type="full", random_state=seed
        )
        # Threaded BLAS makes EM many times slower on a small, shared machine.
        with threadpool_limits(1):
            mixture.fit(coordinates)
        self.prior = {
            "feature_mean": mean.float(),
            "basis": basis.float(),
            "weights": torch.from_numpy(mixture.weights_).float(),
            "means": torch.from_numpy(mixture.means_).float(),
            "cholesky": torch.linalg.cholesky(torch.from_numpy(mixture.covariances_)).float(),
        }
        if self.prior_of_clean_images:
            self.prior[CLEAN_PRIOR_KEY] = torch.ones(1)
        if labels is not None:
            with threadpool_limits(1):
                self.prior |= self._class_mixtures(coordinates, labels[subset].cpu().numpy(), seed)

    def _class_mixtures(
        self, coordinates: np.ndarray, labels: np.ndarray, seed: int
    ) -> dict[str, torch.Tensor]:
        """One mixture of at most ``class_prior_components`` per class; a class with fewer distinct points
        gets fewer (the rest weigh 0), one without any gets none (all weights 0)."""
        from sklearn.mixture import GaussianMixture

        classes, components, dim = int(labels.max()) + 1, self.class_prior_components, coordinates.shape[1]
        weights = np.zeros((classes, components))
        means = np.zeros((classes, components, dim))
        covariances = np.tile(np.eye(dim), (classes, components, 1, 1))
        for digit in range(classes):
            points = coordinates[labels == digit]
            count = min(components, len(np.unique(points.round(6), axis=0)))
            if count == 0:
                continue
            mixture = GaussianMixture(count, covariance_type="full", random_state=seed).fit(points)
            weights[digit, :count] = mixture.weights_
            means[digit, :count] = mixture.means_
            covariances[digit, :count] = mixture.covariances_
        return {
            "class_weights": torch.from_numpy(weights).float(),
            "class_means": torch.from_numpy(means).float(),
            "class_cholesky": torch.linalg.cholesky(torch.from_numpy(covariances)).float(),
        }

    def _warn_if_point(self, variance_per_feature: float) -> None:
        """Warn when the prior's features barely vary and neither start nor sampling noise makes up for it."""
        if variance_per_feature >= PRIOR_MIN_VARIANCE:
            return
        if self.noise_std("start_noise") > 0 or self.noise_std("sample_noise") > 0:
            return
        warnings.warn(
            f"The prior of the {self.degradation_name} degradation has (near) zero variance "
            f"({variance_per_feature:.2g} per feature), so every unconditional sample starts from (nearly) "
            f"the same image D(x, T); {self.collapsed_prior_advice}.",
            UserWarning,
            stacklevel=3,
        )

    def prior_sample(
        self,
        batch_size: int,
        generator: Generators = None,
        device: torch.device | str | None = None,
        start_noise: float | None = None,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draw sampling starts ``x_T`` from the fitted prior, plus ``start_noise * N(0, I)``.

        A degradation whose start fixes the run's random draw (``morph``, ``mask`` with ``fill="noise"``)
        sets it here too; with a list of generators each image's start and draw come from its own.

        Args:
            batch_size: number of starts.
            generator: drives the draw; a list holds one generator per image (see :func:`per_image`).
            device: where the starts live.
            start_noise: standard deviation of the added noise; ``None`` uses the config.
            class_labels: ``(batch_size,)`` the class of each start, for a prior fitted with labels: each
                start is drawn from its class's components (a label without weights, such as the null label
                of classifier-free guidance, from all of them). ``None``, or a prior fitted without labels:
                the unconditional starts.

        Raises:
            ValueError: if no prior has been fitted or loaded.
        """
        if not isinstance(generator, list):
            return self._prior_sample(batch_size, generator, device, start_noise, class_labels)
        draws = []

        def one_start(count: int, single: torch.Generator) -> torch.Tensor:
            self._sampling_draw = None
            index = len(draws)  # one image per call
            labels = None if class_labels is None else class_labels[index : index + count]
            start = self._prior_sample(count, single, device, start_noise, labels)
            draws.append(self._sampling_draw)
            return start

        starts = per_image(generator, batch_size, one_start)
        if draws[0] is not None:
            self._sampling_draw = torch.cat(draws)
            self._sampling_shape = tuple(self._sampling_draw.shape)
        return starts

    def _prior_sample(
        self,
        batch_size: int,
        generator: torch.Generator | None,
        device: torch.device | str | None,
        start_noise: float | None,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`prior_sample` for one generator; a degradation with its own starts overrides it."""
        if not self.prior:
            raise ValueError(
                f"{type(self).__name__} has no prior to sample starts from; call fit_prior(train_images) "
                "before saving, or pass start_images to restore"
            )
        # Drawn where the generator lives, so that a CUDA generator gives the same starts on every run.
        source = generator_device(generator)
        prior = {name: value.to(source) for name, value in self.prior.items()}
        if class_labels is None or "class_weights" not in prior:
            means, cholesky = prior["means"], prior["cholesky"]
            component = torch.multinomial(prior["weights"], batch_size, replacement=True, generator=generator)
        else:
            weights, means, cholesky = class_mixture(prior, class_labels.to(source))
            component = torch.multinomial(weights, 1, generator=generator).squeeze(1)
        normal = randn_tensor((batch_size, means.shape[1], 1), generator=generator, device=source)
        coordinates = means[component] + (cholesky[component] @ normal).squeeze(-1)
        starts = self.decode(coordinates @ prior["basis"] + prior["feature_mean"]).clamp(-1, 1)
        starts = starts.to(device or "cpu")
        if CLEAN_PRIOR_KEY in prior:
            # Drawn clean images degraded to T with the run's draw, which the sampling steps then reuse: made
            # where the samples live, as the steps make theirs.
            self._sampling_draw = None
            draw = self.sampling_draw(tuple(starts.shape), generator, starts.device)
            starts = self.degrade(starts, self.config.num_train_timesteps, draw=draw)
        return self._add_start_noise(starts, generator, start_noise)

    def _add_start_noise(
        self, starts: torch.Tensor, generator: torch.Generator | None, start_noise: float | None
    ) -> torch.Tensor:
        start_noise = self.config.start_noise if start_noise is None else start_noise
        if start_noise < 0:
            raise ValueError(f"start_noise={start_noise} must be >= 0")
        if start_noise == 0:
            return starts
        return starts + start_noise * normal_tensor(tuple(starts.shape), generator, starts.device)

    # ----- saving the prior beside the config --------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> None:
        """Save the config and, when fitted, the prior as ``prior.npz`` in ``save_directory``."""
        os.makedirs(save_directory, exist_ok=True)
        if self.prior:
            arrays = {name: value.cpu().numpy() for name, value in self.prior.items()}
            np.savez(os.path.join(save_directory, PRIOR_FILE_NAME), **arrays)
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None = None,
        subfolder: str | None = None,
        return_unused_kwargs: bool = False,
        **kwargs,
    ):
        """Load the config and, when present, the prior saved by :meth:`save_pretrained`."""
        loaded = super().from_pretrained(
            pretrained_model_name_or_path,
            subfolder=subfolder,
            return_unused_kwargs=return_unused_kwargs,
            **kwargs,
        )
        scheduler = loaded[0] if return_unused_kwargs else loaded
        prior_file = _find_file(str(pretrained_model_name_or_path), subfolder, PRIOR_FILE_NAME, kwargs)
        if prior_file is not None:
            with np.load(prior_file, allow_pickle=False) as arrays:
                scheduler.prior = {name: torch.from_numpy(arrays[name]) for name in arrays.files}
        return loaded

    def __len__(self) -> int:
        return self.config.num_train_timesteps


def _find_file(repo_or_folder: str, subfolder: str | None, file_name: str, hub_kwargs: dict) -> str | None:
    """The local path of ``file_name`` in a folder or Hub repository, or ``None`` if it has none."""
    local = os.path.join(repo_or_folder, subfolder or "", file_name)
    if os.path.isdir(repo_or_folder):
        return local if os.path.isfile(local) else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError

    allowed = ("cache_dir", "revision", "token", "local_files_only", "force_download", "proxies")
    try:
        options = {key: hub_kwargs[key] for key in allowed if key in hub_kwargs}
        return hf_hub_download(repo_or_folder, file_name, subfolder=subfolder, **options)
    except EntryNotFoundError:
        return None
