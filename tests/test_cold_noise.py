"""Noise injection in cold diffusion, start distributions that are not a point, the cold-diversity study."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from mnist_diffusion.evaluation.cold_diversity import (
    SCORES,
    Study,
    quick_settings,
    select_variants,
    study_variants,
)
from mnist_diffusion.models import CourseworkCNN
from mnist_diffusion.pipelines import ColdDiffusionPipeline, load_pipeline
from mnist_diffusion.pipelines.sampling import generate
from mnist_diffusion.schedulers import MaskScheduler, forward_process
from mnist_diffusion.training.train import parse_args, train
from tests.conftest import COLD_DEGRADATIONS, run_python
from tests.test_cold_schedulers import images, make

SAMPLERS = ("improved", "naive", "direct")
NOISE = {"train_noise": 0.01, "sample_noise": 0.013}


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_cnn(num_train_timesteps: int) -> CourseworkCNN:
    torch.manual_seed(0)
    return CourseworkCNN(
        n_hidden=(4, 4), time_embedding_frequencies=2, num_train_timesteps=num_train_timesteps
    )


def pipeline_for(scheduler) -> ColdDiffusionPipeline:
    """An untrained pipeline (the same weights for every scheduler of one T), its starts fitted."""
    forward_process(scheduler).fit(images(64), generator(0))
    pipeline = ColdDiffusionPipeline(tiny_cnn(scheduler.config.num_train_timesteps), scheduler)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def samples(pipeline, sampler: str, seed: int = 0) -> torch.Tensor:
    steps = min(4, pipeline.scheduler.config.num_train_timesteps)
    return pipeline(
        batch_size=3, generator=generator(seed), sampler=sampler, num_inference_steps=steps, output_type="pt"
    ).images


# ----- noise injection off: exactly what the schedulers did before ------------------------------------------


@pytest.mark.parametrize("name", COLD_DEGRADATIONS)
def test_noise_options_at_zero_reproduce_the_samples_and_on_change_them(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the mask's point prior
        default = pipeline_for(make(name))
        zero = pipeline_for(make(name, train_noise=0.0, sample_noise=0.0))
        noisy = pipeline_for(make(name, sample_noise=0.05))
    for sampler in SAMPLERS:
        reference = samples(default, sampler)
        assert torch.equal(samples(zero, sampler), reference), sampler
        if sampler == "direct":  # one step, the last: nothing is injected
            assert torch.equal(samples(noisy, sampler), reference)
        else:
            assert not torch.equal(samples(noisy, sampler), reference), sampler
            assert torch.equal(samples(noisy, sampler), samples(noisy, sampler))


@pytest.mark.parametrize("name", COLD_DEGRADATIONS)
def test_training_examples_without_noise_draw_nothing_more(name):
    scheduler, x0 = make(name, train_noise=0.0), images(4)
    t = torch.tensor([1, 2, 3, scheduler.config.num_train_timesteps])
    first, second = generator(3), generator(3)
    model_input, target = scheduler.training_example(x0, t, first)
    old_input, old_target = make(name).training_example(x0, t, second)
    assert torch.equal(model_input, old_input) and torch.equal(target, old_target)
    assert torch.equal(first.get_state(), second.get_state())
    if name != "des":  # the old example, written out: (D(x0, t), x0)
        assert torch.equal(model_input, scheduler.degrade(x0, t, generator(3))) and torch.equal(target, x0)


@pytest.mark.parametrize("sampler", ["improved", "naive"])
def test_sampling_without_noise_is_the_old_update_written_out(sampler):
    scheduler = make("blur")  # T = 8, deterministic
    pipeline = pipeline_for(scheduler)
    generated = pipeline(batch_size=3, generator=generator(0), sampler=sampler, output_type="pt").images
    # Bansal et al.'s Algorithms 1 and 2, as the base class implemented them before noise injection.
    with torch.no_grad():
        x = scheduler.prior_sample(3, generator(0))
        for s in range(scheduler.config.num_train_timesteps, 0, -1):
            x0_hat = pipeline.unet(x, torch.tensor(s)).sample
            previous = scheduler.degrade(x0_hat, s - 1)
            x = previous if sampler == "naive" else x - scheduler.degrade(x0_hat, s) + previous
    torch.testing.assert_close(generated, (x / 2 + 0.5).clamp(0, 1), atol=1e-6, rtol=0)


# ----- noise injection on ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["blur", "impulse"])
def test_sample_noise_comes_from_the_run_generator_after_every_step_but_the_last(name):
    scheduler, x0 = make(name, sample_noise=0.05), images()
    scheduler.set_timesteps()
    first_t = scheduler.timesteps[0]
    result = scheduler.step(x0, first_t, torch.zeros_like(x0), generator=generator(0), sampling="naive")
    # The same generator, in the same order: the run's degradation draw (if any), then the noise.
    replay = generator(0)
    draw = scheduler.draw(tuple(x0.shape), replay)
    expected = scheduler.degrade(x0, scheduler.previous_timestep(first_t), draw=draw)
    expected = expected + 0.05 * torch.randn(x0.shape, generator=replay)
    torch.testing.assert_close(result.prev_sample, expected)

    last = generator(1)
    state = last.get_state()
    final = scheduler.step(x0, scheduler.timesteps[-1], result.prev_sample, generator=last, sampling="naive")
    assert torch.equal(final.prev_sample, x0) and torch.equal(last.get_state(), state)
    direct = scheduler.step(x0, first_t, torch.zeros_like(x0), generator=last, sampling="direct")
    assert torch.equal(direct.prev_sample, x0) and torch.equal(last.get_state(), state)


@pytest.mark.parametrize("name", COLD_DEGRADATIONS)
def test_training_noise_is_added_at_t_of_at_least_one_only(name):
    scheduler, x0 = make(name, train_noise=0.05), images(4)
    t = torch.tensor([0, 1, scheduler.config.num_train_timesteps, 0])
    model_input, target = scheduler.training_example(x0, t, generator(2))
    # Replayed: the degradation's own draw first, then the noise, from the same generator.
    replay = generator(2)
    degraded = scheduler.degrade(x0, t, replay)
    noise = torch.randn(x0.shape, generator=replay)
    expected = degraded + 0.05 * noise * (t > 0).float().view(-1, 1, 1, 1)
    torch.testing.assert_close(model_input, expected)
    assert torch.equal(model_input[[0, 3]], x0[[0, 3]])
    assert not torch.equal(model_input[1:3], degraded[1:3])
    # The target does not change (x0; for DES its scaled noise).
    assert torch.equal(target, make(name).training_example(x0, t, generator(2))[1])


def test_training_noise_has_the_configured_size():
    scheduler, x0 = make("blur", train_noise=0.01), images(64)
    t = torch.full((64,), 3)
    model_input, _ = scheduler.training_example(x0, t, generator(0))
    assert abs((model_input - scheduler.degrade(x0, t)).std().item() - 0.01) < 5e-4


@pytest.mark.parametrize("name", COLD_DEGRADATIONS)
def test_noise_settings_survive_saving_from_config_and_the_samplers(name, tmp_path):
    scheduler = make(name, **NOISE)
    scheduler.save_pretrained(tmp_path)
    for copy in (
        type(scheduler).from_pretrained(tmp_path),
        type(scheduler).from_config(scheduler.config),
        *(sampler.build(scheduler) for sampler in forward_process(scheduler).samplers.values()),
    ):
        assert (copy.config.train_noise, copy.config.sample_noise) == (0.01, 0.013)


def test_the_model_card_summary_says_when_noise_was_injected():
    assert "noise injection" not in forward_process(make("blur")).summary()
    summary = forward_process(make("blur", **NOISE)).summary()
    assert (
        "std 0.01 added to the degraded training inputs and of std 0.013 after every sampling step" in summary
    )


def test_a_subclass_without_the_noise_options_has_them_off():
    from diffusers.configuration_utils import register_to_config

    from mnist_diffusion.schedulers import ColdDiffusionScheduler

    class Fade(ColdDiffusionScheduler):
        degradation_name = "fade"

        @register_to_config
        def __init__(
            self, num_train_timesteps: int = 4, sampling: str = "improved", start_noise: float = 0.0
        ):
            super().__init__()

        def _degrade(self, x0, t, draw):
            return x0 * (1 - t.float() / self.config.num_train_timesteps).view(-1, 1, 1, 1)

    scheduler, x0 = Fade(), images()
    assert scheduler.noise_std("train_noise") == scheduler.noise_std("sample_noise") == 0
    state = generator(0)
    model_input, _ = scheduler.training_example(x0, torch.tensor(2), state)
    assert torch.equal(model_input, scheduler.degrade(x0, 2)) and torch.equal(
        state.get_state(), generator(0).get_state()
    )


# ----- start distributions that are not a point -------------------------------------------------------------


def test_a_point_prior_warns_naming_the_degradation_and_what_to_do():
    with pytest.warns(UserWarning, match=r"mask degradation has \(near\) zero variance.*fill='noise'"):
        make("mask").fit_prior(images(64), generator(0))


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("rows", {}),
        ("blur", {}),
        ("mask", {"start_noise": 0.01}),
        ("mask", {"sample_noise": 0.013}),
        ("mask", {"fill": "noise"}),
    ],
)
def test_priors_that_vary_or_are_made_up_for_do_not_warn(name, options):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        forward_process(make(name, **options)).fit(images(64), generator(0))


def test_noise_filled_masks_start_from_gaussian_noise_that_the_run_then_unmasks():
    scheduler = MaskScheduler(num_train_timesteps=6, fill="noise")
    scheduler.fit_prior(images(64), generator(0))
    assert scheduler.prior == {}
    scheduler.set_timesteps()
    start = scheduler.prior_sample(64, generator(0))
    assert abs(start.std().item() - 1) < 0.02 and abs(start.mean().item()) < 0.02
    assert not torch.equal(start, scheduler.prior_sample(64, generator(1)))
    # The start is the run's draw: a perfect restorer unmasks the same noise image back to x0.
    x0 = images(3)
    for sampler in ("improved", "naive"):
        scheduler.set_timesteps(3)
        sample = scheduler.prior_sample(3, generator(5))
        for t in scheduler.timesteps:
            sample = scheduler.step(x0, t, sample, sampling=sampler).prev_sample
        torch.testing.assert_close(sample, x0)


@pytest.mark.parametrize("order", ["gaussian", "random"])
def test_noise_filled_masks_are_nested_over_one_noise_image(order):
    scheduler, x = MaskScheduler(num_train_timesteps=7, order=order, fill="noise"), images()
    draw = scheduler.draw(tuple(x.shape), generator(0))
    assert draw.shape == (2, *x.shape)
    masked = [scheduler.degrade(x, t, draw=draw) != x for t in range(8)]
    for fewer, more in zip(masked, masked[1:], strict=False):
        assert torch.all(more | ~fewer)
    assert torch.equal(scheduler.degrade(x, 7, draw=draw), draw[1])
    assert forward_process(scheduler).stochastic


def test_noise_filled_mask_round_trip(tmp_path):
    scheduler = MaskScheduler(num_train_timesteps=5, fill="noise", **NOISE)
    pipeline = pipeline_for(scheduler)
    pipeline.save_pretrained(tmp_path)
    loaded = load_pipeline(str(tmp_path))
    assert loaded.scheduler.config.fill == "noise" and loaded.scheduler.config.sample_noise == 0.013
    for sampler in SAMPLERS:
        torch.testing.assert_close(
            generate(loaded, 3, sampler, seed=4), generate(pipeline, 3, sampler, seed=4)
        )


# ----- the command line -----------------------------------------------------------------------------------


def test_train_blur_with_noise_injection_from_the_command_line_and_sample(synthetic_mnist, tmp_path):
    output = tmp_path / "blur"
    flags = ["--degradation", "blur", "--train_noise", "0.01", "--sample_noise", "0.013"]
    flags += [
        "--num_train_timesteps",
        "6",
        "--dataset_name",
        str(synthetic_mnist),
        "--output_dir",
        str(output),
    ]
    flags += ["--n_hidden", "8", "8", "--train_batch_size", "32", "--max_train_steps", "3"]
    flags += ["--num_sample_images", "4", "--num_validation_images", "32"]
    train(parse_args(flags))
    assert (output / "samples" / "epoch_000.png").is_file()
    pipeline = load_pipeline(str(output))
    config = json.loads((output / "scheduler" / "scheduler_config.json").read_text())
    assert (config["train_noise"], config["sample_noise"]) == (0.01, 0.013)
    quiet = ColdDiffusionPipeline(
        pipeline.unet, type(pipeline.scheduler).from_config(pipeline.scheduler.config, sample_noise=0.0)
    )
    quiet.scheduler.prior = pipeline.scheduler.prior
    for sampler in SAMPLERS:
        images01 = generate(pipeline, 4, sampler, seed=1)
        assert images01.shape == (4, 1, 28, 28) and images01.min() >= 0 and images01.max() <= 1
        torch.testing.assert_close(images01, generate(pipeline, 4, sampler, seed=1))
        assert torch.equal(images01, generate(quiet, 4, sampler, seed=1)) == (sampler == "direct")


def test_noise_injection_is_refused_for_gaussian_noise(synthetic_mnist, tmp_path):
    with pytest.raises(ValueError, match="--train_noise is an option of .*not of --degradation gaussian"):
        parse_args(["--train_noise", "0.01", "--output_dir", str(tmp_path)])


# ----- the cold-diversity study -----------------------------------------------------------------------------


def test_study_variants_cover_every_degradation_with_and_without_noise():
    variants = study_variants(0.01, 0.013)
    names = [variant.name for variant in variants]
    assert names[0] == "gaussian" and variants[0].samplers == ("dpmsolver",)
    for degradation in COLD_DEGRADATIONS:
        assert degradation in names and f"{degradation}+noise" in names
    plus = next(variant for variant in variants if variant.name == "mask[fill=noise]+noise")
    assert plus.options == {"fill": "noise", **NOISE} and plus.folder_name == "mask_fill_noise_noise"
    des = [variant.options for variant in variants if variant.degradation == "des"]
    assert des == [{"prediction_type": "v_prediction"}, {"prediction_type": "v_prediction", **NOISE}]
    with pytest.raises(ValueError, match="unknown variants \\['nope'\\]"):
        select_variants(variants, ["nope"])


def test_quick_study_writes_the_schema_and_resumes(synthetic_mnist, tmp_path):
    settings = quick_settings(str(synthetic_mnist))
    variants = select_variants(study_variants(0.01, 0.013), ["gaussian", "mask", "mask[fill=noise]+noise"])
    output, work = tmp_path / "cold_diversity.json", tmp_path / "work"
    results = Study(settings, variants, output, work, "test").run()

    saved = json.loads(output.read_text())
    assert saved == json.loads(json.dumps(results))
    assert {"command", "quick", "settings", "machine", "variants", "reference", "rows"} <= saved.keys()
    assert saved["quick"] and saved["settings"]["num_images"] == 16
    keys = [(row["variant"], row["sampler"]) for row in saved["rows"]]
    assert keys == [("gaussian", "dpmsolver")] + [
        (name, sampler) for name in ("mask", "mask[fill=noise]+noise") for sampler in SAMPLERS
    ]
    for row in saved["rows"]:
        assert all(math.isfinite(row[score]) for score in (*SCORES, "pixel_diversity"))
        assert sum(row["class_histogram"]) == 16 and row["noise_injection"] == ("+noise" in row["variant"])
    table = output.with_suffix(".md").read_text()
    assert (
        "| variant | sampler | steps | FID | floor |" in table
        and "| mask[fill=noise]+noise | naive |" in table
    )

    # A killed study: the row it was scoring is missing. Called again, it scores only that row, the same way.
    lost = saved["rows"].pop(2)
    output.write_text(json.dumps(saved))
    lines: list[str] = []
    resumed = Study(settings, variants, output, work, "test", log=lines.append).run()
    assert not any("training" in line for line in lines)
    assert [line for line in lines if "sampling" in line] == [
        f"[{lost['variant']}] sampling 16 images with {lost['sampler']}, {lost['steps']} steps"
    ]
    restored = resumed["rows"][2]
    assert {key: restored[key] for key in SCORES} == {key: lost[key] for key in SCORES}

    with pytest.raises(ValueError, match="other settings"):
        Study(quick_settings(str(synthetic_mnist), seed=1), variants, output, tmp_path / "other", "test")


def test_quick_study_from_the_command_line(tmp_path):
    work = tmp_path / "work"
    result = run_python(
        "scripts/cold_diversity.py",
        "--quick",
        "--work_dir",
        str(work),
        "--variants",
        "gaussian",
        "blur+noise",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((work / "cold_diversity.json").read_text())
    assert [row["variant"] for row in saved["rows"]] == ["gaussian"] + ["blur+noise"] * 3
    assert "| blur+noise | improved |" in result.stdout
    bad = run_python("scripts/cold_diversity.py", "--quick", "--work_dir", str(work), "--variants", "nope")
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown variants ['nope']")
