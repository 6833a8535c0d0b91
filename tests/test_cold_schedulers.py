"""Properties every cold-diffusion degradation must have, on small synthetic images (no trained net)."""

from __future__ import annotations

import pytest
import torch

from mnist_diffusion.schedulers import (
    FORWARD_PROCESSES,
    AveragingScheduler,
    EntropyScaledNoiseScheduler,
    MorphScheduler,
)
from mnist_diffusion.schedulers.averaging import line_order
from mnist_diffusion.schedulers.cold import CLEAN_PRIOR_KEY
from tests.conftest import COLD_DEGRADATIONS

# Small settings keep every test fast; morph gets synthetic targets instead of Fashion-MNIST.
SMALL = {
    "impulse": {"num_train_timesteps": 12},
    "des": {"num_train_timesteps": 40},
    "blur": {"num_train_timesteps": 8},
}
DEGRADATIONS = {name: FORWARD_PROCESSES[name] for name in COLD_DEGRADATIONS}
NAMES = sorted(DEGRADATIONS)


def make(name: str, **kwargs):
    scheduler = DEGRADATIONS[name](**{**SMALL.get(name, {}), **kwargs})
    if isinstance(scheduler, MorphScheduler):
        bank = torch.randint(
            0, 256, (50, 28, 28), generator=torch.Generator().manual_seed(1), dtype=torch.uint8
        )
        scheduler.dataset_targets = lambda: bank  # stands in for Fashion-MNIST
    return scheduler


def images(batch: int = 4, seed: int = 0) -> torch.Tensor:
    """Digit-like images in [-1, 1]: a bright random blob on a dark background."""
    g = torch.Generator().manual_seed(seed)
    blob = torch.nn.functional.avg_pool2d(torch.rand(batch, 1, 28, 28, generator=g), 5, 1, 2)
    return (blob > 0.5).float() * torch.rand(batch, 1, 28, 28, generator=g) * 2 - 1


def true_noise_model(scheduler: EntropyScaledNoiseScheduler, x0: torch.Tensor):
    """The perfect DES network: the scaled noise that is actually in ``x_t``."""

    def predict(sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = scheduler.alphas_cumprod[int(t)].float()
        return (sample - abar.sqrt() * x0) / (1 - abar).sqrt()

    return predict


def saved_config(scheduler) -> dict:
    # Diffusers' bookkeeping of defaults is not part of the config that is saved.
    return {key: value for key, value in scheduler.config.items() if key != "_use_default_values"}


@pytest.mark.parametrize("name", NAMES)
def test_zero_timestep_is_identity(name):
    x = images()
    assert torch.equal(make(name).degrade(x, 0, torch.Generator().manual_seed(0)), x)


@pytest.mark.parametrize("name", NAMES)
def test_severity_grows_with_t(name):
    scheduler, x = make(name), images()
    draw = scheduler.draw(tuple(x.shape), torch.Generator().manual_seed(0))
    steps = range(scheduler.config.num_train_timesteps + 1)
    errors = torch.stack([(scheduler.degrade(x, t, draw=draw) - x).pow(2).mean((1, 2, 3)) for t in steps])
    assert torch.all(errors[1:] >= errors[:-1] - 1e-6)
    assert torch.all(errors[-1] > 0)


@pytest.mark.parametrize("name", NAMES)
def test_degrade_is_deterministic_given_a_generator(name):
    scheduler, x = make(name), images()
    t = torch.tensor([1, 2, 3, scheduler.config.num_train_timesteps])
    first = scheduler.degrade(x, t, torch.Generator().manual_seed(3))
    assert torch.equal(first, scheduler.degrade(x, t, torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_inference_steps", [None, 3])
def test_improved_sampling_with_a_perfect_restorer_returns_x0(name, num_inference_steps):
    scheduler, x0 = make(name), images()
    generator = torch.Generator().manual_seed(0)
    restorer = true_noise_model(scheduler, x0) if name == "des" else lambda sample, t: x0
    scheduler.set_timesteps(num_inference_steps)
    draw = scheduler.sampling_draw(tuple(x0.shape), generator)
    sample = scheduler.degrade(x0, scheduler.config.num_train_timesteps, draw=draw)
    for t in scheduler.timesteps:
        sample = scheduler.step(restorer(sample, t), t, sample, generator=generator).prev_sample
    torch.testing.assert_close(sample, x0, atol=1e-4, rtol=0)


def test_improved_sampling_needs_the_same_draw_for_s_and_s_minus_1():
    # Guards the oracle test: a fresh draw per step must leave the impulse noise of x_T in place.
    scheduler, x0 = make("impulse"), images()
    scheduler.set_timesteps()
    sample = scheduler.degrade(x0, scheduler.config.num_train_timesteps, torch.Generator().manual_seed(0))
    for t in scheduler.timesteps:
        sample = scheduler.step(x0, t, sample, generator=torch.Generator().manual_seed(int(t))).prev_sample
    assert not torch.allclose(sample, x0)


@pytest.mark.parametrize("name", NAMES)
def test_each_sampling_method_is_its_update(name):
    scheduler, x0 = make(name), images()
    scheduler.set_timesteps()
    t, sample = scheduler.timesteps[0], torch.zeros_like(x0)
    output = x0 if name != "des" else torch.zeros_like(x0)
    direct = scheduler.step(output, t, sample, sampling="direct")
    assert torch.equal(direct.prev_sample, direct.pred_original_sample)
    if name != "des":
        naive = scheduler.step(x0, t, sample, generator=torch.Generator().manual_seed(0), sampling="naive")
        draw = scheduler.sampling_draw(tuple(x0.shape))
        previous = scheduler.degrade(x0, scheduler.previous_timestep(t), draw=draw)
        torch.testing.assert_close(naive.prev_sample, previous)
        improved = scheduler.step(x0, t, sample, sampling="improved").prev_sample
        torch.testing.assert_close(improved, sample - scheduler.degrade(x0, t, draw=draw) + previous)


def test_des_improved_sampling_is_ddim_and_naive_is_ancestral():
    # With the true noise, DDIM stays on the noise draw of x_T: every step lands on D(x0, s', eps), whatever
    # the generator; the ancestral sampler draws fresh posterior noise, so two generators part ways.
    scheduler, x0 = make("des"), images()
    eps = scheduler.draw(tuple(x0.shape), torch.Generator().manual_seed(0))
    predict = true_noise_model(scheduler, x0)
    scheduler.set_timesteps(5)
    ends = {}
    for sampling in ("improved", "naive"):
        for seed in (1, 2):
            sample = scheduler.degrade(x0, scheduler.config.num_train_timesteps, draw=eps)
            generator = torch.Generator().manual_seed(seed)
            for t in scheduler.timesteps[:-1]:
                step = scheduler.step(predict(sample, t), t, sample, generator, sampling=sampling)
                sample = step.prev_sample
                if sampling == "improved":
                    expected = scheduler.degrade(x0, scheduler.previous_timestep(t), draw=eps)
                    torch.testing.assert_close(sample, expected, atol=1e-4, rtol=0)
            ends[sampling, seed] = sample
    assert torch.equal(ends["improved", 1], ends["improved", 2])
    assert not torch.allclose(ends["naive", 1], ends["naive", 2])


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_des_recovers_x0_from_each_prediction_types_target(prediction_type):
    # The training target, given back as the network's output, is turned into the x0 it was made from, at
    # every noise level; the three targets differ, and the model card names the trained one.
    scheduler, x0 = make("des", prediction_type=prediction_type), images()
    timesteps = torch.tensor([1, 10, 25, 40])
    x_t, target = scheduler.training_example(x0, timesteps, torch.Generator().manual_seed(0))
    for index, t in enumerate(timesteps):
        x0_hat = scheduler.predicted_original_sample(target[index : index + 1], t, x_t[index : index + 1])
        torch.testing.assert_close(x0_hat, x0[index : index + 1], atol=2e-4, rtol=0)
    direct = scheduler.step(target[:1], timesteps[0], x_t[:1], sampling="direct").prev_sample
    torch.testing.assert_close(direct, x0[:1], atol=2e-4, rtol=0)
    epsilon = make("des").training_example(x0, timesteps, torch.Generator().manual_seed(0))[1]
    assert torch.equal(target, epsilon) == (prediction_type == "epsilon")
    assert scheduler.prediction_target == scheduler.prediction_targets[prediction_type]
    config = type(scheduler).from_config(scheduler.config).config
    assert config.prediction_type == prediction_type


def test_des_rejects_an_unknown_prediction_type():
    with pytest.raises(ValueError, match="prediction_type='velocity'.*epsilon, sample, v_prediction"):
        make("des", prediction_type="velocity")


def test_impulse_starts_are_drawn_digits_corrupted_with_the_runs_draw(tmp_path):
    scheduler, train = make("impulse"), images(200)
    scheduler.fit_prior(train, torch.Generator().manual_seed(0))
    assert scheduler.prior_of_clean_images and CLEAN_PRIOR_KEY in scheduler.prior
    scheduler.set_timesteps(3)
    starts = scheduler.prior_sample(64, torch.Generator().manual_seed(1))
    draw = scheduler.sampling_draw(tuple(starts.shape))  # the run's draw, made with the starts
    corrupted = draw[:, 0] < scheduler.density(torch.tensor(scheduler.config.num_train_timesteps))
    salt = torch.where(draw[:, 1] < 0.5, 1.0, -1.0)
    torch.testing.assert_close(starts[corrupted], salt[corrupted])  # salt and pepper exactly where it falls
    fraction = corrupted.float().mean()
    assert 0.2 < fraction < 0.3 and starts[~corrupted].abs().lt(1).float().mean() > 0.2  # a digit between
    # So Algorithm 2's first step, given back the start's own clean image, removes exactly its noise.
    clean = starts.clone()
    clean[corrupted] = 0.0
    t = scheduler.timesteps[0]
    stepped = scheduler.step(clean, t, starts, sampling="improved").prev_sample
    torch.testing.assert_close(stepped, scheduler.degrade(clean, scheduler.previous_timestep(t), draw=draw))
    # A folder saved before: its prior of D(x, T) keeps its starts as they were, not corrupted twice.
    scheduler.save_pretrained(tmp_path)
    loaded = type(scheduler).from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.prior_sample(64, torch.Generator().manual_seed(1)), starts)
    del loaded.prior[CLEAN_PRIOR_KEY]
    old = loaded.prior_sample(64, torch.Generator().manual_seed(1))
    assert (old[corrupted & (salt > 0)] < 1).float().mean() > 0.9  # hardly any salt


@pytest.mark.parametrize("name", NAMES)
def test_config_and_prior_round_trip(name, tmp_path):
    scheduler = make(name)
    scheduler.fit_prior(images(64), torch.Generator().manual_seed(0))
    scheduler.save_pretrained(tmp_path)
    loaded = type(scheduler).from_pretrained(tmp_path)
    assert saved_config(loaded) == saved_config(scheduler)
    assert loaded.prior.keys() == scheduler.prior.keys()
    for key, value in scheduler.prior.items():
        torch.testing.assert_close(loaded.prior[key], value)
    x, t = images(), torch.tensor([0, 1, 2, loaded.config.num_train_timesteps])
    torch.testing.assert_close(
        loaded.degrade(x, t, torch.Generator().manual_seed(5)),
        scheduler.degrade(x, t, torch.Generator().manual_seed(5)),
    )
    starts = [s.prior_sample(3, torch.Generator().manual_seed(2)) for s in (scheduler, loaded)]
    assert starts[0].shape == (3, 1, 28, 28)
    torch.testing.assert_close(starts[0], starts[1])


def test_random_order_is_stored_in_the_saved_config(tmp_path):
    scheduler = AveragingScheduler(order="random", order_seed=7)
    scheduler.save_pretrained(tmp_path)
    assert AveragingScheduler.from_pretrained(tmp_path).config["_line_order"] == line_order("random", 28, 7)
    assert sorted(line_order("random", 28, 7)) == list(range(28))


def test_line_orders():
    assert line_order("outside_in", 28)[:4] == [0, 27, 1, 26]
    assert line_order("inside_out", 28)[:4] == [13, 14, 12, 15]


def test_group_size_sets_the_number_of_steps():
    assert AveragingScheduler(group_size=4).config.num_train_timesteps == 7
    assert DEGRADATIONS["columns"]().config.num_train_timesteps == 28


@pytest.mark.parametrize("name", NAMES)
def test_training_examples(name):
    scheduler, x0 = make(name), images(6)
    t = scheduler.training_timesteps(6, torch.Generator().manual_seed(0))
    assert t.min() >= 1 and t.max() <= scheduler.config.num_train_timesteps
    model_input, target = scheduler.training_example(x0, t, torch.Generator().manual_seed(0))
    assert model_input.shape == target.shape == x0.shape
    if name == "des":
        torch.testing.assert_close(
            model_input, scheduler.degrade(x0, t, draw=target / scheduler.noise_scale(x0))
        )
    else:
        assert torch.equal(target, x0)


def test_des_entropy_scope():
    x = images(3)
    per_image = EntropyScaledNoiseScheduler(entropy_scope="image").noise_scale(x).flatten()
    per_batch = EntropyScaledNoiseScheduler(entropy_scope="batch").noise_scale(x).flatten()
    assert len(set(per_batch.tolist())) == 1 and len(set(per_image.tolist())) == 3
    assert torch.all((per_image > 0.5) & (per_image < 1))


def test_morph_start_mixes_bank_images_and_becomes_the_draw():
    scheduler = make("morph", start_mix=3, start_noise=0.1)
    scheduler.fit_prior(images(8))
    scheduler.set_timesteps()
    start = scheduler.prior_sample(2, torch.Generator().manual_seed(0))
    assert torch.equal(scheduler.sampling_draw((2, 1, 28, 28)), start)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("impulse", {"rho_start": 0.0}, "rho_start=0.0"),
        ("impulse", {"rho_end": 0.5}, "rho_end=0.5"),
        ("rows", {"group_size": 5}, "group_size=5"),
        ("rows", {"order": "spiral"}, "order='spiral'"),
        ("rows", {"num_train_timesteps": 10}, "num_train_timesteps=10"),
        ("mask", {"order": "outside_in"}, "order='outside_in'"),
        ("morph", {"alpha_schedule": "sqrt"}, "alpha_schedule='sqrt'"),
        ("des", {"entropy_scope": "pixel"}, "entropy_scope='pixel'"),
        ("des", {"noise_schedule": "quadratic"}, "quadratic"),
        ("blur", {"sigma_start": -1.0}, "sigma_start=-1.0"),
        ("pixelate", {"max_factor": 1}, "max_factor=1"),
        ("blur", {"sampling": "ddim"}, "sampling='ddim'"),
    ],
)
def test_invalid_configuration_is_a_clear_value_error(name, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        DEGRADATIONS[name](**kwargs)


def test_invalid_calls_are_clear_value_errors():
    scheduler = make("blur")
    with pytest.raises(ValueError, match="num_inference_steps=99"):
        scheduler.set_timesteps(99)
    with pytest.raises(ValueError, match=r"must lie in \[0, 8\]"):
        scheduler.degrade(images(), 9)
    with pytest.raises(ValueError, match="no prior"):
        scheduler.prior_sample(1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sampling": "reverse"}, "sampling='reverse'"),
        ({"start_noise": -0.1}, "start_noise=-0.1 must be >= 0"),
        ({"train_noise": -0.1}, "train_noise=-0.1 must be >= 0"),
        ({"sample_noise": -0.1}, "sample_noise=-0.1 must be >= 0"),
    ],
)
def test_shared_settings_are_checked_for_every_degradation(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        DEGRADATIONS[name](**kwargs)
