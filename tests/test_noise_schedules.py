import math

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from mnist_diffusion.schedulers import NOISE_SCHEDULES, ddpm_scheduler, make_betas


def test_linear_is_the_coursework_default():
    betas = make_betas("linear")
    assert betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert torch.all(betas.diff() > 0)


def test_inverse_linear_is_linear_reversed():
    torch.testing.assert_close(make_betas("inverse_linear"), make_betas("linear").flip(0))


def test_geometric_and_cosine_annealing_formulas():
    b1, b2, steps = 1e-4, 0.02, 11
    s = torch.arange(steps, dtype=torch.float64) / (steps - 1)
    torch.testing.assert_close(make_betas("geometric", steps, b1, b2), b1 * (b2 / b1) ** s)
    annealed = make_betas("cosine_annealing", steps, b1, b2)
    torch.testing.assert_close(annealed, b1 + (b2 - b1) * (1 - torch.cos(math.pi * s)) / 2)
    assert annealed[5].item() == pytest.approx((b1 + b2) / 2)
    assert torch.all(make_betas("geometric").diff() > 0) and torch.all(
        make_betas("cosine_annealing").diff() >= 0
    )


def test_cosine_follows_nichol_dhariwal_and_clips():
    betas = make_betas("cosine", 1000)
    alpha_bar = torch.cumprod(1 - betas, 0)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert alpha_bar[499].item() == pytest.approx(f(500) / f(0), rel=1e-5)
    assert betas.max().item() == pytest.approx(0.999)
    assert make_betas("cosine", 1000, max_beta=0.1).max().item() == pytest.approx(0.1)
    assert torch.all(betas.diff() >= 0)


def test_constant():
    torch.testing.assert_close(
        make_betas("constant", 7, constant_beta=0.01), torch.full((7,), 0.01, dtype=torch.float64)
    )


@pytest.mark.parametrize("name", NOISE_SCHEDULES)
def test_every_schedule_is_a_valid_forward_process(name):
    betas = make_betas(name, 50)
    assert betas.shape == (50,) and torch.all((betas > 0) & (betas < 1))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"schedule": "sigmoid"}, "unknown noise schedule 'sigmoid'"),
        ({"num_train_timesteps": 0}, "num_train_timesteps=0"),
        ({"beta_start": 0.0}, r"beta_start=0.0 is outside .*\(0, 1\)"),
        ({"beta_end": 1.5}, "beta_end=1.5"),
        ({"beta_start": 0.02, "beta_end": 1e-4}, "beta_start=0.02 must be smaller than beta_end=0.0001"),
        ({"schedule": "geometric", "beta_start": 0.1, "beta_end": 0.1}, "smaller than beta_end"),
        ({"schedule": "cosine", "max_beta": 1.0}, "max_beta=1.0"),
        ({"schedule": "constant", "constant_beta": -0.1}, "constant_beta=-0.1"),
    ],
)
def test_invalid_parameters_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_betas(**kwargs)


def test_schedule_travels_to_other_samplers_through_from_config():
    scheduler = ddpm_scheduler("cosine", 100, max_beta=0.1)
    for other in (DDIMScheduler, DPMSolverMultistepScheduler):
        clone = other.from_config(scheduler.config)
        torch.testing.assert_close(clone.betas, scheduler.betas)
    with pytest.raises(ValueError, match="prediction_type='noise'"):
        ddpm_scheduler(prediction_type="noise")


def test_saved_schedule_gives_few_step_samplers_the_whole_trajectory(tmp_path):
    ddpm_scheduler("linear", 20).save_pretrained(tmp_path)
    for other in (DDIMScheduler, DPMSolverMultistepScheduler):
        for steps in (5, 20):
            scheduler = other.from_pretrained(tmp_path)
            scheduler.set_timesteps(steps)
            assert scheduler.timesteps[0] == 19 and len(set(scheduler.timesteps.tolist())) == steps
