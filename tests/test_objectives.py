"""The objective's options on tiny tensors: min-SNR-gamma weights, targets, immiscible noise, bf16 refusal.

Each weight is checked against its definition (``min(SNR, gamma)`` on the clean image's squared error) with
the clean-image estimate computed by Diffusers' own scheduler step, not by the code under test.
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from diffusers import DDPMScheduler

from mnist_diffusion.schedulers import (
    FORWARD_PROCESSES,
    GaussianBlurScheduler,
    ddpm_scheduler,
    forward_process,
)
from mnist_diffusion.training import train as train_module
from mnist_diffusion.training.objective import assign_noise, compute_loss, per_image_loss, training_batch
from mnist_diffusion.training.train import check_mixed_precision, cpu_has_native_bf16, parse_args
from tests.conftest import run_python

T = 50
GAMMA = 5.0


def images(batch: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def gaussian(prediction_type: str):
    return forward_process(ddpm_scheduler("cosine", num_train_timesteps=T, prediction_type=prediction_type))


def flow():
    return forward_process(FORWARD_PROCESSES["flow"](num_train_timesteps=T))


def snr_of(process, timesteps: torch.Tensor) -> torch.Tensor:
    """The signal-to-noise ratio of ``x_t``, from its definition."""
    if process.name == "gaussian":
        alpha_bar = process.scheduler.alphas_cumprod[timesteps].double()
        return alpha_bar / (1 - alpha_bar)
    s = timesteps.double() / process.num_train_timesteps
    return ((1 - s) / s) ** 2


def clean_estimate(process, prediction: torch.Tensor, timesteps: torch.Tensor, x_t: torch.Tensor):
    """The clean image a prediction stands for: Diffusers' DDPM step (unclipped), or ``x_s - s v``."""
    if process.name == "gaussian":
        scheduler = DDPMScheduler.from_config(process.scheduler.config, clip_sample=False)
        return torch.cat(
            [
                scheduler.step(p[None], int(t), x[None]).pred_original_sample
                for p, t, x in zip(prediction, timesteps, x_t, strict=True)
            ]
        )
    s = (timesteps / process.num_train_timesteps).reshape(-1, 1, 1, 1)
    return x_t - s * prediction


PROCESSES = {
    "epsilon": lambda: gaussian("epsilon"),
    "sample": lambda: gaussian("sample"),
    "v_prediction": lambda: gaussian("v_prediction"),
    "flow": flow,
}


@pytest.mark.parametrize("kind", sorted(PROCESSES))
def test_min_snr_weight_is_min_snr_gamma_on_the_clean_image_error(kind):
    process = PROCESSES[kind]()
    x0 = images()
    timesteps = torch.tensor([1, 5, 10, 20, 35, 48])
    if process.name == "flow":
        timesteps = timesteps.float() + 0.5  # continuous, as flow matching draws them
    x_t, target = process.training_example(x0, timesteps, torch.Generator().manual_seed(2))
    prediction = target + 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(3))

    weights = process.loss_weights(timesteps, GAMMA)
    weighted = weights.double() * per_image_loss(prediction, target, "l2").double()
    clean_error = per_image_loss(clean_estimate(process, prediction, timesteps, x_t), x0, "l2").double()
    expected = (
        torch.minimum(snr_of(process, timesteps), torch.tensor(GAMMA, dtype=torch.float64)) * clean_error
    )
    torch.testing.assert_close(weighted, expected, rtol=2e-3, atol=1e-7)
    # Both regimes occur: capped (SNR > gamma, weight below the uncapped one) and uncapped.
    snr = snr_of(process, timesteps)
    assert (snr > GAMMA).any() and (snr < GAMMA).any()


def test_gaussian_weights_have_the_diffusers_forms():
    timesteps = torch.tensor([0, 3, 10, 30, 49])
    for prediction_type in ("epsilon", "sample", "v_prediction"):
        process = gaussian(prediction_type)
        alpha_bar = process.scheduler.alphas_cumprod[timesteps]
        snr = alpha_bar / (1 - alpha_bar)
        capped = torch.clamp(snr, max=GAMMA)
        expected = {"epsilon": capped / snr, "sample": capped, "v_prediction": capped / (snr + 1)}
        torch.testing.assert_close(process.loss_weights(timesteps, GAMMA), expected[prediction_type])
    # Epsilon: high-SNR (early) timesteps are down-weighted, late ones keep weight 1.
    weights = gaussian("epsilon").loss_weights(timesteps, GAMMA)
    assert weights[0] < 0.01 and weights[-1] == 1.0


def test_cold_processes_have_no_snr():
    process = forward_process(GaussianBlurScheduler())
    assert process.loss_weights(torch.tensor([1, 2]), GAMMA) is None


@pytest.mark.parametrize("kind", sorted(PROCESSES))
def test_a_perfect_predictor_has_zero_loss_and_the_targets_are_the_textbook_ones(kind):
    process = PROCESSES[kind]()
    x0 = images()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    timesteps = torch.tensor([0, 7, 15, 25, 40, 49])
    model_input, target = process.training_example(x0, timesteps, noise=noise)
    if process.name == "gaussian":
        a = process.scheduler.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)
        expected_input = a.sqrt() * x0 + (1 - a).sqrt() * noise
        expected_target = {
            "epsilon": noise,
            "sample": x0,
            "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * x0,
        }
        expected_target = expected_target[kind]
    else:
        s = (timesteps / T).reshape(-1, 1, 1, 1)
        expected_input, expected_target = (1 - s) * x0 + s * noise, noise - x0
    torch.testing.assert_close(model_input, expected_input, rtol=1e-5, atol=1e-5)
    weights = process.loss_weights(timesteps, GAMMA)
    for loss in ("l1", "l2"):
        assert compute_loss(expected_target, target, loss, weights).item() == pytest.approx(0.0, abs=1e-10)
        assert compute_loss(expected_target + 0.5, target, loss).item() > 0.1


def test_weighted_loss_is_the_mean_of_weighted_per_image_losses():
    prediction, target = torch.zeros(3, 1, 2, 2), torch.ones(3, 1, 2, 2)
    target[1] *= 2
    weights = torch.tensor([1.0, 0.5, 0.0])
    # Per-image L2: 1, 4, 1; weighted: 1, 2, 0; mean 1 (not normalised by the weights' sum).
    assert compute_loss(prediction, target, "l2", weights).item() == pytest.approx(1.0)
    assert compute_loss(prediction, target, "l2").item() == pytest.approx(2.0)


# ----- immiscible diffusion: noise assigned to images by linear assignment ----------------------------------


def total_distance(x0: torch.Tensor, noise: torch.Tensor) -> float:
    return (x0.flatten(1) - noise.flatten(1)).norm(dim=1).sum().item()


def test_assigned_noise_is_a_permutation_with_the_smallest_total_distance():
    x0 = images(5)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    assigned = assign_noise(x0, noise)
    # Every noise sample is used once.
    assert sorted(map(tuple, assigned.flatten(1)[:, :4].tolist())) == sorted(
        map(tuple, noise.flatten(1)[:, :4].tolist())
    )
    best = min(total_distance(x0, noise[list(order)]) for order in itertools.permutations(range(5)))
    assert total_distance(x0, assigned) == pytest.approx(best, rel=1e-6)
    assert total_distance(x0, assigned) < total_distance(x0, noise)  # the draw's own order is not the best


def test_noise_next_to_its_image_keeps_it():
    x0 = images(4) * 10
    noise = (x0 + 0.01)[[2, 0, 3, 1]]
    torch.testing.assert_close(assign_noise(x0, noise), x0 + 0.01)


@pytest.mark.parametrize("kind", ["epsilon", "flow"])
def test_immiscible_batches_noise_with_the_assigned_noise(kind):
    process = PROCESSES[kind]()
    x0 = images(6)
    model_input, timesteps, target = training_batch(
        process, x0, torch.Generator().manual_seed(6), immiscible=True
    )
    # The same draws, in the same order: timesteps first, then the noise that was assigned.
    generator = torch.Generator().manual_seed(6)
    same_timesteps = process.training_timesteps(6, generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    torch.testing.assert_close(timesteps, same_timesteps)
    expected_input, expected_target = process.training_example(x0, timesteps, noise=assign_noise(x0, noise))
    torch.testing.assert_close(model_input, expected_input)
    torch.testing.assert_close(target, expected_target)
    plain_input, _ = process.training_example(x0, timesteps, noise=noise)
    assert not torch.allclose(model_input, plain_input)  # the assignment changed which noise each image got


def test_immiscible_is_refused_for_a_process_without_gaussian_noise():
    process = forward_process(GaussianBlurScheduler())
    with pytest.raises(ValueError, match="the blur process draws no Gaussian noise to assign"):
        training_batch(process, images(2), immiscible=True)


# ----- the trainer's flags ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--degradation", "blur", "--snr_gamma", "5"], "which the blur process does not have"),
        (["--degradation", "rows", "--immiscible"], "the rows process draws no Gaussian noise to assign"),
        (["--snr_gamma", "0"], "--snr_gamma must be positive, got 0.0"),
        (["--checkpoint_minutes", "5", "-1"], "--checkpoint_minutes must all be positive"),
        (["--max_train_minutes", "0"], "--max_train_minutes must be positive"),
    ],
)
def test_flags_that_do_not_apply_are_refused(flags, message):
    with pytest.raises(ValueError, match=message):
        parse_args(flags)


def test_flags_that_apply_are_accepted():
    for flags in (
        ["--snr_gamma", "5", "--immiscible"],
        ["--prediction_type", "v_prediction", "--snr_gamma", "1"],
        ["--degradation", "flow", "--snr_gamma", "5", "--immiscible"],
        ["--checkpoint_minutes", "2.5", "5", "--max_train_minutes", "5"],
    ):
        parse_args(flags)


def test_snr_gamma_refusal_is_one_line_on_the_command_line():
    result = run_python("training/train.py", "--degradation", "pixelate", "--snr_gamma", "5")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --snr_gamma weights the loss by the signal-to-noise ratio of x_t, which the pixelate process "
        "does not have; leave --snr_gamma out for it"
    ]


# ----- bf16 only where the CPU computes it natively ---------------------------------------------------------


def test_native_bf16_is_read_from_the_cpu_flags():
    assert not cpu_has_native_bf16("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma f16c\n")
    assert cpu_has_native_bf16("flags\t\t: fpu avx2 avx512f avx512bw avx512_bf16\n")
    assert cpu_has_native_bf16("flags\t\t: fpu avx2 amx_tile amx_bf16\n")
    assert cpu_has_native_bf16("Features\t: fp asimd bf16 i8mm\n")  # Arm
    assert not cpu_has_native_bf16("Features\t: fp asimd\n")


def test_emulated_bf16_is_refused_unless_allowed(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda cpuinfo=None: False)
    with pytest.raises(ValueError, match="this CPU has none: bf16 would be emulated"):
        check_mixed_precision("bf16")
    with pytest.raises(ValueError, match="--allow_emulated_bf16 to run it anyway"):
        parse_args(["--mixed_precision", "bf16"])
    check_mixed_precision("bf16", allow_emulated_bf16=True)
    parse_args(["--mixed_precision", "bf16", "--allow_emulated_bf16"])
    check_mixed_precision("no")
    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda cpuinfo=None: True)
    parse_args(["--mixed_precision", "bf16"])


# ----- the options train end to end -------------------------------------------------------------------------


def test_training_with_min_snr_and_immiscible_saves_a_pipeline_that_samples(synthetic_mnist, tmp_path):
    from mnist_diffusion.pipelines import load_pipeline
    from mnist_diffusion.pipelines.sampling import generate

    output = tmp_path / "run"
    result = run_python(
        "training/train.py",
        "--dataset_name", str(synthetic_mnist), "--output_dir", str(output), "--n_hidden", "8", "8",
        "--num_train_timesteps", "20", "--prediction_type", "v_prediction", "--snr_gamma", "5",
        "--immiscible", "--train_batch_size", "32", "--max_train_steps", "3", "--num_sample_images", "2",
        "--sample_inference_steps", "2", "--logging_steps", "1", "--eval_batch_size", "64",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    pipeline = load_pipeline(output)
    assert forward_process(pipeline).name == "gaussian"
    assert generate(pipeline, 2, "ddim", 3).isfinite().all()
    records = [json.loads(line) for line in (output / "logs" / "metrics.jsonl").read_text().splitlines()]
    losses = [record for record in records if "loss" in record]
    assert [record["step"] for record in losses] == [1, 2, 3]
    assert all(record["loss"] > 0 and record["train_seconds"] > 0 for record in losses)
    seconds = [record["train_seconds"] for record in losses]
    assert seconds == sorted(seconds)
