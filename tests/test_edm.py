"""EDM (Karras et al., 2022) as a forward process: its preconditioning on tiny tensors, sampling with an exact
network, the saved folder without the project, and the trainer and tools on a tiny model."""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from mnist_diffusion.models import CourseworkCNN
from mnist_diffusion.pipelines import EDMPipeline, load_pipeline, save_pipeline
from mnist_diffusion.pipelines.edm import network_timestep
from mnist_diffusion.pipelines.sampling import generate
from mnist_diffusion.publishing import hub
from mnist_diffusion.schedulers import FORWARD_PROCESSES, EDMProcess, forward_process
from mnist_diffusion.training.objective import training_batch
from mnist_diffusion.training.train import make_process, parse_args
from tests.conftest import (
    check_card_snippet_runs_without_the_project,
    check_sample_script_draws,
    check_train_script_trains_and_resumes,
    run_without_the_project,
)

T = 20
SIGMA_MIN, SIGMA_MAX, SIGMA_DATA = 0.01, 20.0, 0.5


def edm_process(**options) -> EDMProcess:
    settings = {"num_train_timesteps": T, "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, **options}
    return forward_process(FORWARD_PROCESSES["edm"](**settings))


def images(batch: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ----- the forward process ----------------------------------------------------------------------------------


def test_the_edm_process_answers_the_protocol():
    process = edm_process()
    assert isinstance(process, EDMProcess) and isinstance(process.scheduler, EDMEulerScheduler)
    assert (process.name, process.default_loss, process.default_sampler) == ("edm", "l2", "edm_dpmsolver")
    assert list(process.samplers) == ["edm_euler", "edm_dpmsolver"]
    assert process.timestep_range == (0, T) and process.draws_gaussian_noise and not process.restores
    assert isinstance(
        process.samplers["edm_dpmsolver"].build(process.scheduler), EDMDPMSolverMultistepScheduler
    )
    # An EDM scheduler built for sampling, without the mark, is no process's.
    with pytest.raises(ValueError, match="no forward process answers for the scheduler EDMEulerScheduler"):
        forward_process(EDMEulerScheduler())


def test_timesteps_map_log_sigma_onto_0_to_T_both_ways():
    process = edm_process()
    timesteps = torch.tensor([0.0, 5.0, 10.0, 20.0])
    sigma = process.noise_level(timesteps)
    torch.testing.assert_close(sigma[[0, -1]], torch.tensor([SIGMA_MIN, SIGMA_MAX]))
    assert sigma[2].item() == pytest.approx(math.sqrt(SIGMA_MIN * SIGMA_MAX))  # halfway in log sigma
    torch.testing.assert_close(network_timestep(sigma, process.scheduler.config), timesteps)


def test_the_target_is_edm_f_and_a_perfect_prediction_gives_the_clean_image():
    process = edm_process()
    x0 = images()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    timesteps = torch.tensor([0.0, 7.0, 13.0, 20.0])
    model_input, target = process.training_example(x0, timesteps, noise=noise)
    sigma = process.noise_level(timesteps).reshape(-1, 1, 1, 1)
    noisy = x0 + sigma * noise
    norm = (sigma**2 + SIGMA_DATA**2).sqrt()
    torch.testing.assert_close(model_input, noisy / norm)  # c_in x
    # The stock scheduler's output preconditioning turns the target back into x0: zero loss for F = target.
    config = process.scheduler.config
    for i in range(4):
        estimate = process.scheduler.precondition_outputs(noisy[i], target[i], sigma[i].squeeze())
        torch.testing.assert_close(estimate, x0[i], rtol=0, atol=1e-5)
    assert config.prediction_type == "epsilon"  # Diffusers' name for EDM's F
    # The target has about unit variance at every noise level (EDM's point): here at the extremes.
    assert 0.5 < target[3].std().item() < 1.5 and 0.5 < target[0].std().item() < 2.5
    # degrade() pictures x in its variance-preserving form: about x0 at t = 0 and N(0, 1) at T.
    start = process.degrade(x0, 0, torch.Generator().manual_seed(2))
    torch.testing.assert_close(start, x0, rtol=0, atol=0.06)
    end = process.degrade(x0, T, torch.Generator().manual_seed(2))
    assert abs(end.mean().item()) < 0.1 and end.std().item() == pytest.approx(1.0, abs=0.05)


def test_training_timesteps_draw_log_sigma_from_the_normal_density():
    process = edm_process(sigma_min=0.002, sigma_max=80.0, p_mean=-1.0, p_std=0.5)
    timesteps = process.training_timesteps(20_000, torch.Generator().manual_seed(0))
    assert timesteps.dtype == torch.float32 and timesteps.min() >= 0 and timesteps.max() <= T
    log_sigma = process.noise_level(timesteps).log()
    assert log_sigma.mean().item() == pytest.approx(-1.0, abs=0.02)
    assert log_sigma.std().item() == pytest.approx(0.5, abs=0.02)
    model_input, drawn, target = training_batch(process, images(8), torch.Generator().manual_seed(0))
    assert model_input.shape == target.shape == (8, 1, 28, 28) and drawn.shape == (8,)


def test_min_snr_weights_are_min_snr_on_the_clean_image():
    process = edm_process()
    timesteps = torch.linspace(0, T, 9)
    weights = process.loss_weights(timesteps, snr_gamma=5.0)
    sigma = process.noise_level(timesteps)
    snr = SIGMA_DATA**2 / sigma**2
    c_out = sigma * SIGMA_DATA / (sigma**2 + SIGMA_DATA**2).sqrt()
    # The clean image errs by c_out times F's error: weights * F error^2 == min(SNR, 5) / sigma_data^2 * x0's.
    torch.testing.assert_close(
        weights / c_out**2, torch.minimum(snr, torch.tensor(5.0)) / SIGMA_DATA**2, rtol=1e-4, atol=0
    )


@pytest.mark.parametrize(
    "options, message",
    [
        ({"sigma_min": 1.0, "sigma_max": 0.5}, "sigma_min=1.0 and sigma_max=0.5 must be 0 < sigma_min"),
        ({"p_std": 0.0}, "p_std=0.0 must be positive"),
        ({"sigma_data": -1.0}, "sigma_data=-1.0 must be positive"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        FORWARD_PROCESSES["edm"](**options)


def test_edm_options_are_flags_and_survive_save_and_load(tmp_path):
    process = make_process(parse_args(["--degradation", "edm", "--p_mean", "-0.5", "--sigma_max", "40"]))
    assert process.name == "edm" and process.scheduler.config.sigma_max == 40.0
    process.scheduler.save_pretrained(tmp_path)
    reloaded = forward_process(EDMEulerScheduler.from_pretrained(tmp_path))
    assert reloaded.name == "edm" and reloaded.scheduler.config["_p_mean"] == -0.5
    with pytest.raises(ValueError, match="--p_mean is an option of edm, not of --degradation flow"):
        parse_args(["--degradation", "flow", "--p_mean", "0"])


# ----- sampling with an exact network -----------------------------------------------------------------------


@dataclass
class FOutput(BaseOutput):
    sample: torch.Tensor


class ExactF(ModelMixin, ConfigMixin):
    """EDM's exact ``F`` for data that is one image ``x0``, from the scaled input ``c_in x`` and ``t``."""

    @register_to_config
    def __init__(self, sample_size: int = 28, in_channels: int = 1):
        super().__init__()
        self.register_buffer("x0", torch.zeros(1, in_channels, sample_size, sample_size))
        self.calls = 0

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> FOutput:
        self.calls += 1
        sigma = edm_process().noise_level(timestep).reshape(-1, 1, 1, 1)
        norm = (sigma**2 + SIGMA_DATA**2).sqrt()
        noisy = sample * norm
        c_skip, c_out = SIGMA_DATA**2 / norm**2, sigma * SIGMA_DATA / norm
        return FOutput(sample=(self.x0 - c_skip * noisy) / c_out)


@pytest.mark.parametrize("sampler", ["edm_euler", "edm_dpmsolver"])
@pytest.mark.parametrize("steps", [1, 4])
def test_sampling_with_the_exact_network_reproduces_the_data(sampler, steps):
    x0 = images(1, seed=3).clamp(-1, 1)
    process = edm_process()
    model = ExactF()
    model.x0.copy_(x0)
    pipeline = EDMPipeline(unet=model, scheduler=process.samplers[sampler].build(process.scheduler))
    estimates = []

    def record(pipeline, step_index, timestep, callback_kwargs):
        estimates.append(callback_kwargs["pred_original_sample"])
        return callback_kwargs

    output = pipeline(batch_size=3, num_inference_steps=steps, output_type="pt",
                      generator=torch.Generator().manual_seed(0), callback_on_step_end=record,
                      callback_on_step_end_tensor_inputs=["pred_original_sample"]).images  # fmt: skip
    torch.testing.assert_close(output, ((x0 + 1) / 2).expand(3, -1, -1, -1), rtol=0, atol=1e-4)
    assert model.calls == steps and len(estimates) == steps
    for estimate in estimates:
        torch.testing.assert_close(estimate, x0.expand(3, -1, -1, -1), rtol=0, atol=1e-4)
    model.x0.mul_(0.5)  # the field of another image
    other = pipeline(batch_size=1, num_inference_steps=steps, output_type="pt").images
    assert (other - (x0 + 1) / 2).abs().max() > 0.1


# ----- a tiny EDM model: saved folder, trainer and tools ----------------------------------------------------


@pytest.fixture(scope="module")
def tiny_edm_folder(tmp_path_factory) -> Path:
    """An untrained tiny EDM pipeline (CourseworkCNN, T = 20) saved the way the trainer saves it."""
    torch.manual_seed(0)
    unet = CourseworkCNN(
        n_hidden=(4, 4), time_embedding_frequencies=2, time_embedding_dim=8, num_train_timesteps=T
    )
    folder = tmp_path_factory.mktemp("tiny_edm")
    save_pipeline(edm_process().make_pipeline(unet), folder)
    return folder


def test_plain_diffusers_loads_and_samples_it_without_the_project(tiny_edm_folder, tmp_path):
    index = json.loads((tiny_edm_folder / "model_index.json").read_text())
    assert index["_class_name"] == ["edm", "EDMPipeline"]
    assert index["scheduler"] == ["diffusers", "EDMEulerScheduler"]
    loaded = load_pipeline(tiny_edm_folder)
    assert isinstance(loaded, EDMPipeline) and forward_process(loaded).name == "edm"
    code = textwrap.dedent(
        f"""
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained({str(tiny_edm_folder)!r}, trust_remote_code=True)
        images = pipe(batch_size=2, num_inference_steps=3, output_type="np").images
        print(type(pipe).__name__, type(pipe.scheduler).__name__, images.shape)
        """
    )
    result = run_without_the_project(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "EDMPipeline EDMEulerScheduler (2, 28, 28, 1)"


def test_sample_script_draws_with_both_samplers(tiny_edm_folder, tmp_path):
    check_sample_script_draws(tiny_edm_folder, ("edm_euler", "edm_dpmsolver"), tmp_path)


def test_model_card_snippet_runs_without_the_project(tiny_edm_folder, tmp_path):
    card = hub.build_model_card(tiny_edm_folder, "someone/tiny-edm")
    assert "# EDM on" in card.text and "| `--degradation` | `edm` |" in card.text
    check_card_snippet_runs_without_the_project(tiny_edm_folder, "someone/tiny-edm", tmp_path)


def test_train_script_trains_saves_and_resumes_an_edm_model(synthetic_mnist, tmp_path):
    output = tmp_path / "edm"
    flags = ["--dataset_name", str(synthetic_mnist), "--output_dir", str(output), "--degradation", "edm",
             "--num_train_timesteps", str(T), "--n_hidden", "8", "8", "--snr_gamma", "5",
             "--train_batch_size", "32", "--num_sample_images", "2", "--sample_inference_steps", "3",
             "--logging_steps", "1", "--eval_batch_size", "64", "--checkpointing_steps", "2"]  # fmt: skip
    check_train_script_trains_and_resumes(flags, output)
    pipeline = load_pipeline(output)
    assert forward_process(pipeline).name == "edm"
    assert generate(pipeline, 2, num_inference_steps=3).shape == (2, 1, 28, 28)
