"""Row or column averaging as a cold-diffusion degradation."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from diffusers.configuration_utils import register_to_config

from .cold import ColdDiffusionScheduler, Sampling, check_choice

Axis = Literal["rows", "columns"]
LineOrder = Literal["random", "outside_in", "inside_out"]
AXES: tuple[str, ...] = get_args(Axis)
ORDERS: tuple[str, ...] = get_args(LineOrder)


def line_order(order: str, size: int, seed: int = 0) -> list[int]:
    """The order (0-based) in which lines are averaged.

    ``outside_in`` is 1, 28, 2, 27, ... and ``inside_out`` 14, 15, 13, 16, ... (1-based, for 28 lines);
    ``random`` is a permutation seeded by ``seed``.
    """
    check_choice("order", order, ORDERS)
    if order == "random":
        return torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    half = size // 2
    if order == "outside_in":
        pairs = [(k, size - 1 - k) for k in range(half)]
    else:
        pairs = [(half - 1 - k, half + k) for k in range(half)]
    lines = [line for pair in pairs for line in pair]
    return lines + ([half] if size % 2 else [])


class AveragingScheduler(ColdDiffusionScheduler):
    """Replace rows (or columns) by their mean, ``group_size`` lines per step, in a fixed order.

    At step ``t`` the first ``t * group_size`` lines of the order are each replaced by their own mean, so
    ``T = sample_size / group_size`` and ``D(x, T)`` is described by the ``sample_size`` line means, the space
    the prior is fitted in. The order is stored in the config (``_line_order``), so a saved scheduler keeps
    its random permutation.

    Args:
        axis: ``rows`` or ``columns``.
        order: ``random`` (a permutation seeded by ``order_seed``), ``outside_in`` or ``inside_out``.
        group_size: lines averaged per step; must divide ``sample_size``.
        order_seed: seed of the ``random`` order (its own, so the training seed never changes the process).
        sample_size: image height and width.
        num_train_timesteps: ``T``; derived as ``sample_size // group_size`` (a given value must match).
        sampling: default sampler, ``improved`` or ``naive`` (or ``direct``).
        start_noise: standard deviation of Gaussian noise added to prior samples.
        train_noise: standard deviation of Gaussian noise added to degraded training inputs (t >= 1).
        sample_noise: standard deviation of Gaussian noise added after every sampling step but the last.
    """

    @register_to_config
    def __init__(
        self,
        axis: Axis = "rows",
        order: LineOrder = "random",
        group_size: int = 1,
        order_seed: int = 0,
        sample_size: int = 28,
        num_train_timesteps: int | None = None,
        sampling: Sampling = "improved",
        start_noise: float = 0.0,
        train_noise: float = 0.0,
        sample_noise: float = 0.0,
    ):
        check_choice("axis", axis, AXES)
        if group_size < 1 or sample_size % group_size:
            raise ValueError(
                f"group_size={group_size} must be a positive divisor of sample_size={sample_size}"
            )
        steps = sample_size // group_size
        if num_train_timesteps not in (None, steps):
            raise ValueError(
                f"num_train_timesteps={num_train_timesteps} must equal sample_size // group_size = {steps}"
            )
        self.register_to_config(
            num_train_timesteps=steps, _line_order=line_order(order, sample_size, order_seed)
        )
        super().__init__()

    @property
    def degradation_name(self) -> str:
        """``rows`` or ``columns``: the axis names the degradation."""
        return self.config.axis

    def _as_rows(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.config.axis == "rows" else x.transpose(-1, -2)

    def _degrade(self, x0: torch.Tensor, t: torch.Tensor, draw: None) -> torch.Tensor:
        rows = self._as_rows(x0)
        position = torch.empty(self.config.sample_size, dtype=torch.long, device=x0.device)
        position[torch.tensor(self.config["_line_order"], device=x0.device)] = torch.arange(
            self.config.sample_size, device=x0.device
        )
        # A line is averaged from the step of its group onwards.
        averaged = (position // self.config.group_size + 1)[None, :] <= t[:, None]
        means = rows.mean(dim=-1, keepdim=True).expand_as(rows)
        return self._as_rows(torch.where(averaged[:, None, :, None], means, rows))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Line means of ``D(x, T)``, shape ``(batch, sample_size)``."""
        return self._as_rows(x).mean(dim=-1).flatten(1)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """Constant lines from their means."""
        size = self.config.sample_size
        return self._as_rows(features.reshape(-1, 1, size, 1).expand(-1, 1, size, size))
