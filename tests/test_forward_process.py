"""The forward-process protocol: every process answers it, options cannot collide, names are saved."""

from __future__ import annotations

import re
import subprocess
from functools import partial

import pytest
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

from mnist_diffusion.models import CourseworkCNN
from mnist_diffusion.schedulers import (
    FORWARD_PROCESSES,
    NOISE_SCHEDULES,
    AveragingScheduler,
    factory_options,
    forward_process,
)
from mnist_diffusion.training.objective import training_batch
from mnist_diffusion.training.train import build_parser, make_process, parse_args
from tests.conftest import PROJECT_ROOT

NAMES = sorted(FORWARD_PROCESSES)


def small_process(name: str):
    factory = FORWARD_PROCESSES[name]
    options = factory_options(factory)
    # Short processes keep the tests fast where T is free; derived ones (rows, pixelate) keep theirs.
    kwargs = {"num_train_timesteps": 10} if name not in ("rows", "columns", "pixelate") else {}
    process = forward_process(factory(**{k: v for k, v in kwargs.items() if k in options}))
    if name == "morph":  # random targets stand in for Fashion-MNIST
        bank = torch.randint(
            0, 256, (20, 28, 28), generator=torch.Generator().manual_seed(1), dtype=torch.uint8
        )
        process.scheduler.dataset_targets = lambda: bank
    return process


def clean_images(batch: int = 3) -> torch.Tensor:
    return torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize("name", NAMES)
def test_every_process_answers_the_protocol(name):
    process = small_process(name)
    assert process.name == name
    assert process.default_loss in ("l1", "l2")
    assert process.default_sampler in process.samplers
    first, last = process.timestep_range
    x0 = clean_images()
    timesteps = process.training_timesteps(64, generator=torch.Generator().manual_seed(0))
    assert timesteps.shape == (64,) and first <= timesteps.min() and timesteps.max() <= last
    model_input, timesteps, target = training_batch(process, x0, torch.Generator().manual_seed(0))
    assert model_input.shape == x0.shape == target.shape and timesteps.shape == (3,)
    assert process.degrade(x0, last, torch.Generator().manual_seed(0)).shape == x0.shape
    for sampler, entry in process.samplers.items():
        assert entry.label and process.default_steps(sampler) <= process.num_train_timesteps


@pytest.mark.parametrize("name", NAMES)
def test_sampler_registry_builds_pipelines_and_leaves_the_trained_scheduler(name, synthetic_mnist):
    process = small_process(name)
    process.fit(clean_images(40), generator=torch.Generator().manual_seed(0))
    unet = CourseworkCNN(n_hidden=(4, 4), num_train_timesteps=process.num_train_timesteps)
    pipeline = process.make_pipeline(unet)
    config = dict(pipeline.scheduler.config)
    for sampler in process.samplers:
        sampling = process.with_sampler(pipeline, sampler)
        assert sampling.unet is unet and type(sampling.scheduler) is not None
        images = sampling(batch_size=2, num_inference_steps=2, output_type="np").images
        assert images.shape == (2, 28, 28, 1)
    assert dict(pipeline.scheduler.config) == config and forward_process(pipeline).name == name
    with pytest.raises(ValueError, match="choose one of"):
        process.with_sampler(pipeline, "euler")


def test_gaussian_defaults_and_sampling_schedulers_are_not_trained_ones():
    process = forward_process(FORWARD_PROCESSES["gaussian"]())
    assert isinstance(process.scheduler, DDPMScheduler) and process.default_loss == "l2"
    assert (process.default_sampler, process.default_steps(), process.default_steps("ddpm")) == (
        "dpmsolver",
        25,
        1000,
    )
    with pytest.raises(
        ValueError, match="no forward process answers for the scheduler DPMSolverMultistepScheduler"
    ):
        forward_process(DPMSolverMultistepScheduler())


def test_des_declares_its_own_default_loss():
    assert small_process("des").default_loss == "l2"
    assert small_process("blur").default_loss == "l1"


@pytest.mark.parametrize("name", NAMES)
def test_the_degradation_name_survives_save_and_load(name, tmp_path):
    scheduler = small_process(name).scheduler
    scheduler.save_pretrained(tmp_path)
    reloaded = type(scheduler).from_pretrained(tmp_path)
    assert forward_process(reloaded).name == name


def test_an_option_named_like_a_trainer_flag_is_refused_when_the_parser_is_built():
    def fog(num_train_timesteps: int = 10, seed: int = 0):
        """A process whose option would collide with the training seed."""
        return AveragingScheduler(order_seed=seed)

    with pytest.raises(
        ValueError, match=r"option 'seed' of the forward process fog has the name of a trainer flag"
    ):
        build_parser({**FORWARD_PROCESSES, "fog": fog})
    build_parser()  # the project's own registry has no collision


def test_an_option_with_two_types_is_refused():
    def fog(num_train_timesteps: float = 1.5):
        return AveragingScheduler()

    with pytest.raises(ValueError, match="option 'num_train_timesteps' has different types"):
        build_parser({**FORWARD_PROCESSES, "fog": fog})


def test_the_training_seed_does_not_change_the_rows_order():
    def line_order(*flags):
        return make_process(parse_args(["--degradation", "rows", *flags])).scheduler.config["_line_order"]

    assert line_order("--seed", "0") == line_order("--seed", "123")
    assert line_order("--order_seed", "0") != line_order("--order_seed", "123")


def test_options_carry_types_choices_and_help_from_the_factories():
    gaussian = factory_options(FORWARD_PROCESSES["gaussian"])
    assert gaussian["noise_schedule"].choices == NOISE_SCHEDULES
    assert gaussian["prediction_type"].choices == ("epsilon", "sample", "v_prediction")
    rows = factory_options(FORWARD_PROCESSES["rows"])
    assert "axis" not in rows  # fixed by the registry's partial
    assert "sampling" not in rows  # the sampler is chosen when sampling
    assert rows["order_seed"].type is int and "seed of the" in rows["order_seed"].help
    assert factory_options(partial(AveragingScheduler, axis="columns"))["order"].choices == (
        "random",
        "outside_in",
        "inside_out",
    )
    help_text = build_parser().format_help()
    assert re.search(r"--order_seed INT\s+rows, columns: seed of the random order", help_text)


def test_only_the_protocol_asks_which_kind_a_process_is():
    """Tools ask the protocol; only its implementations name their scheduler classes."""
    found = subprocess.run(
        ["git", "grep", "--untracked", "-n", r"isinstance(.*DDPM\|is_gaussian", "--", "models", "schedulers",
         "pipelines", "training", "scripts", "evaluation", "publishing", "app"],
        cwd=PROJECT_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert found.returncode in (0, 1), found.stderr
    assert found.stdout == "", found.stdout


@pytest.mark.parametrize("name", NAMES)
def test_a_seed_gives_the_same_images_whatever_the_batch_size(name):
    from mnist_diffusion.pipelines.sampling import generate

    process = small_process(name)
    process.fit(clean_images(40), generator=torch.Generator().manual_seed(0))
    unet = CourseworkCNN(n_hidden=(4, 4), num_train_timesteps=process.num_train_timesteps)
    pipeline = process.make_pipeline(unet)
    for sampler in process.samplers:
        whole = generate(pipeline, 5, sampler, 3, seed=1, batch_size=5)
        # Convolutions of different batch sizes may round differently; the random draws must not differ.
        torch.testing.assert_close(
            generate(pipeline, 5, sampler, 3, seed=1, batch_size=2), whole, atol=1e-5, rtol=0
        )
        assert not torch.allclose(generate(pipeline, 5, sampler, 3, seed=2, batch_size=5), whole)
