"""Flow matching as a forward process: its math on tiny tensors, its pipeline, and every tool on a tiny model.

The tools (``scripts/sample.py``, ``scripts/evaluate.py``, the demo's handlers, the model card and its usage
snippet) are the project's own, unchanged: a flow model must work in them through the protocol alone.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from PIL import Image

from mnist_diffusion.app import demo
from mnist_diffusion.models import CourseworkCNN
from mnist_diffusion.pipelines import FlowMatchingPipeline, load_pipeline, save_pipeline
from mnist_diffusion.pipelines.sampling import generate
from mnist_diffusion.publishing import hub
from mnist_diffusion.schedulers import FORWARD_PROCESSES, FlowMatchingProcess, forward_process
from mnist_diffusion.training.train import parse_args
from tests.conftest import (
    check_card_snippet_runs_without_the_project,
    check_sample_script_draws,
    check_train_script_trains_and_resumes,
    run_python,
    run_without_the_project,
)

T = 20


def flow_process(**options) -> FlowMatchingProcess:
    return forward_process(FORWARD_PROCESSES["flow"](num_train_timesteps=T, **options))


def images(batch: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ----- the forward process ----------------------------------------------------------------------------------


def test_the_flow_process_answers_the_protocol():
    process = flow_process()
    assert isinstance(process, FlowMatchingProcess) and isinstance(
        process.scheduler, FlowMatchEulerDiscreteScheduler
    )
    assert (process.name, process.default_loss, process.default_sampler) == ("flow", "l2", "flow_euler")
    assert list(process.samplers) == ["flow_euler", "flow_heun"]
    assert process.timestep_range == (0, T) and process.draws_gaussian_noise and not process.restores
    assert (process.default_steps("flow_euler"), process.default_steps("flow_heun")) == (20, 13)


def test_x_t_interpolates_from_the_image_to_the_noise_and_the_target_is_the_velocity():
    process = flow_process()
    x0 = images()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    timesteps = torch.tensor([0.0, 5.0, 10.0, 20.0])
    model_input, target = process.training_example(x0, timesteps, noise=noise)
    torch.testing.assert_close(model_input[0], x0[0])  # s = 0: the image
    torch.testing.assert_close(model_input[1], 0.75 * x0[1] + 0.25 * noise[1])
    torch.testing.assert_close(model_input[2], 0.5 * x0[2] + 0.5 * noise[2])
    torch.testing.assert_close(model_input[3], noise[3])  # s = 1: pure noise
    torch.testing.assert_close(target, noise - x0)
    # degrade() is the same line with fresh noise: exact at both ends.
    torch.testing.assert_close(process.degrade(x0, 0, torch.Generator().manual_seed(2)), x0)
    end = process.degrade(x0, T, torch.Generator().manual_seed(2))
    torch.testing.assert_close(end, torch.randn(x0.shape, generator=torch.Generator().manual_seed(2)))


def test_training_timesteps_follow_the_chosen_density_and_shift():
    def noise_levels(**options) -> torch.Tensor:
        timesteps = flow_process(**options).training_timesteps(20_000, torch.Generator().manual_seed(0))
        assert timesteps.dtype == torch.float32 and timesteps.min() >= 0 and timesteps.max() <= T
        return timesteps / T

    uniform = noise_levels(timestep_density="uniform")
    logit_normal = noise_levels(timestep_density="logit_normal")
    assert uniform.mean().item() == pytest.approx(0.5, abs=0.01)
    assert ((uniform < 0.1).float().mean().item()) == pytest.approx(0.1, abs=0.01)
    # The sigmoid of N(0, 1): P(s < 0.1) = P(z < logit(0.1) = -2.197) = 0.014.
    assert ((logit_normal < 0.1).float().mean().item()) == pytest.approx(0.014, abs=0.004)
    shifted = noise_levels(timestep_density="logit_normal", logit_mean=1.0)
    assert shifted.median().item() == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item(), abs=0.01)
    # shift = 3 maps u = 0.5 to 3 * 0.5 / (1 + 2 * 0.5) = 0.75.
    assert noise_levels(timestep_density="uniform", shift=3.0).median().item() == pytest.approx(
        0.75, abs=0.01
    )


@pytest.mark.parametrize(
    "options, message",
    [
        ({"timestep_density": "cosmap"}, "timestep_density='cosmap' is not one of uniform, logit_normal"),
        ({"logit_std": 0.0}, "logit_std=0.0 must be positive"),
        ({"shift": -1.0}, "shift=-1.0 must be positive"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        FORWARD_PROCESSES["flow"](**options)


def test_the_training_density_survives_save_and_load(tmp_path):
    scheduler = FORWARD_PROCESSES["flow"](num_train_timesteps=T, timestep_density="uniform", logit_std=2.0)
    scheduler.save_pretrained(tmp_path)
    reloaded = FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path)
    assert reloaded.config["_timestep_density"] == "uniform" and reloaded.config["_logit_std"] == 2.0
    assert forward_process(reloaded).describe().endswith("uniform training timesteps")


def test_flow_options_are_flags_and_other_processes_options_are_refused():
    args = parse_args(["--degradation", "flow", "--timestep_density", "uniform", "--shift", "2"])
    from mnist_diffusion.training.train import make_process

    process = make_process(args)
    assert process.name == "flow" and process.scheduler.config.shift == 2.0
    assert process.scheduler.config["_timestep_density"] == "uniform"
    with pytest.raises(ValueError, match="--noise_schedule is an option of gaussian, des, not of"):
        parse_args(["--degradation", "flow", "--noise_schedule", "cosine"])
    with pytest.raises(
        ValueError, match="--timestep_density is an option of flow, not of --degradation gaussian"
    ):
        parse_args(["--timestep_density", "uniform"])


# ----- sampling the flow ODE --------------------------------------------------------------------------------


@dataclass
class VelocityOutput(BaseOutput):
    sample: torch.Tensor


class ExactVelocity(ModelMixin, ConfigMixin):
    """The exact velocity field of data that is one image ``x0``: ``v(x, s) = (x - x0) / s``."""

    @register_to_config
    def __init__(self, sample_size: int = 28, in_channels: int = 1, num_train_timesteps: int = T):
        super().__init__()
        self.register_buffer("x0", torch.zeros(1, in_channels, sample_size, sample_size))
        self.calls = 0

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> VelocityOutput:
        self.calls += 1
        s = (torch.as_tensor(timestep, dtype=torch.float32) / self.config.num_train_timesteps).reshape(
            -1, 1, 1, 1
        )
        return VelocityOutput(sample=(sample - self.x0) / s)


def exact_pipeline(x0: torch.Tensor, scheduler) -> FlowMatchingPipeline:
    model = ExactVelocity()
    model.x0.copy_(x0)
    return FlowMatchingPipeline(unet=model, scheduler=scheduler)


@pytest.mark.parametrize("sampler", ["flow_euler", "flow_heun"])
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_sampling_with_the_exact_velocity_reproduces_the_data(sampler, steps):
    x0 = images(1, seed=3).clamp(-1, 1)
    process = flow_process()
    pipeline = exact_pipeline(x0, process.samplers[sampler].build(process.scheduler))
    output = pipeline(batch_size=3, num_inference_steps=steps, output_type="pt",
                      generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    torch.testing.assert_close(output, ((x0 + 1) / 2).expand(3, -1, -1, -1), rtol=0, atol=2e-5)
    # Euler calls the network once per step; Heun twice but for the last step.
    assert pipeline.unet.calls == (steps if sampler == "flow_euler" else 2 * steps - 1)


def test_a_wrong_velocity_does_not_reproduce_the_data():
    x0 = images(1, seed=3)
    process = flow_process()
    pipeline = exact_pipeline(x0, process.scheduler)
    pipeline.unet.x0.mul_(0.5)  # the field of another image
    output = pipeline(batch_size=1, num_inference_steps=5, output_type="pt").images
    assert (output - (x0 + 1) / 2).abs().max() > 0.1


def test_the_callback_sees_every_step_and_can_replace_the_sample():
    x0 = images(1, seed=3)
    process = flow_process()
    seen = []

    def record(pipeline, step_index, timestep, callback_kwargs):
        seen.append((step_index, float(timestep), callback_kwargs["pred_original_sample"].clone()))
        return callback_kwargs

    pipeline = exact_pipeline(x0, FlowMatchHeunDiscreteScheduler(num_train_timesteps=T))
    pipeline(batch_size=2, num_inference_steps=4, callback_on_step_end=record,
             callback_on_step_end_tensor_inputs=["latents", "pred_original_sample"])  # fmt: skip
    assert [index for index, _, _ in seen] == list(range(7)) and pipeline.num_timesteps == 7
    assert seen[0][1] == pytest.approx(T)
    for _, _, estimate in seen:  # the exact field points at x0 from everywhere
        torch.testing.assert_close(estimate, x0.expand(2, -1, -1, -1), rtol=0, atol=1e-5)

    def to_zero(pipeline, step_index, timestep, callback_kwargs):
        return {"latents": torch.zeros_like(callback_kwargs["latents"])}

    pipeline = exact_pipeline(x0, process.scheduler)
    output = pipeline(num_inference_steps=3, callback_on_step_end=to_zero, output_type="pt").images
    torch.testing.assert_close(output, torch.full_like(output, 0.5))
    with pytest.raises(ValueError, match="has to be in"):
        pipeline(callback_on_step_end=record, callback_on_step_end_tensor_inputs=["noise"])


# ----- a tiny flow model in every tool ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_flow_folder(tmp_path_factory) -> Path:
    """An untrained tiny flow pipeline (CourseworkCNN, T = 20) saved the way the trainer saves it."""
    torch.manual_seed(0)
    process = flow_process()
    unet = CourseworkCNN(
        n_hidden=(4, 4), time_embedding_frequencies=2, time_embedding_dim=8, num_train_timesteps=T
    )
    folder = tmp_path_factory.mktemp("tiny_flow")
    save_pipeline(process.make_pipeline(unet), folder)
    return folder


def test_the_saved_folder_is_portable(tiny_flow_folder):
    index = json.loads((tiny_flow_folder / "model_index.json").read_text())
    assert index["_class_name"] == ["flow_matching", "FlowMatchingPipeline"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert index["unet"] == ["coursework_cnn", "CourseworkCNN"]
    assert (tiny_flow_folder / "flow_matching.py").is_file()
    assert (tiny_flow_folder / "unet" / "coursework_cnn.py").is_file()

    def imports(name: str) -> list[str]:
        source = (tiny_flow_folder / f"{name}.py").read_text()
        return [line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))]

    # The sibling modules it imports relatively are shipped beside it; Diffusers copies only the pipeline
    # module's own relative imports into its module cache, so they import no further siblings.
    siblings = [module[1:] for module in imports("flow_matching") if module.startswith(".")]
    assert sorted(siblings) == ["guidance", "pipeline_utils"]
    sibling_imports = [module for name in siblings for module in imports(name)]
    assert not [module for module in sibling_imports if module.startswith(".")]
    modules = [m for m in imports("flow_matching") + sibling_imports if not m.startswith(".")]
    assert {module.split(".")[0] for module in modules} <= {
        "__future__",
        "collections",
        "dataclasses",
        "inspect",
        "json",
        "math",
        "numbers",
        "os",
        "shutil",
        "typing",
        "torch",
        "diffusers",
    }
    loaded = load_pipeline(tiny_flow_folder)
    assert isinstance(loaded, FlowMatchingPipeline) and forward_process(loaded).name == "flow"


def test_plain_diffusers_loads_and_samples_it_without_the_project(tiny_flow_folder, tmp_path):
    code = textwrap.dedent(
        f"""
        import torch
        from diffusers import DiffusionPipeline, FlowMatchHeunDiscreteScheduler

        pipe = DiffusionPipeline.from_pretrained({str(tiny_flow_folder)!r}, trust_remote_code=True)
        frames = []
        images = pipe(batch_size=2, num_inference_steps=3, output_type="np",
                      callback_on_step_end=lambda p, i, t, k: frames.append(i) or k).images
        num_train_timesteps = pipe.scheduler.config.num_train_timesteps
        pipe.scheduler = FlowMatchHeunDiscreteScheduler(num_train_timesteps=num_train_timesteps)
        heun = pipe(batch_size=1, num_inference_steps=3, output_type="np").images
        print(type(pipe).__name__, images.shape, frames, heun.shape)
        """
    )
    result = run_without_the_project(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "FlowMatchingPipeline (2, 28, 28, 1) [0, 1, 2] (1, 28, 28, 1)"


def test_sample_script_draws_with_both_samplers(tiny_flow_folder, tmp_path):
    check_sample_script_draws(tiny_flow_folder, ("flow_euler", "flow_heun"), tmp_path)
    result = run_python("scripts/sample.py", "--model", str(tiny_flow_folder), "--sampler", "ddim",
                        "--output", str(tmp_path / "x.png"))  # fmt: skip
    assert result.returncode == 2
    assert "sampler 'ddim' is not available for the flow process; choose one of flow_euler, flow_heun" in (
        result.stderr
    )


def test_evaluate_script_scores_it_with_forward_process_normality(
    tiny_flow_folder, synthetic_mnist, tmp_path
):
    output = tmp_path / "eval" / "metrics.json"
    result = run_python("scripts/evaluate.py", "--model", str(tiny_flow_folder), "--num_images", "16",
                        "--num_inference_steps", "3", "--dataset_name", str(synthetic_mnist),
                        "--per_t_images", "4", "--output", str(output))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(output.read_text())
    assert metrics["sampler"] == "flow_euler" and metrics["num_inference_steps"] == 3
    assert metrics["fid"] > 0 and 0 <= metrics["class_entropy"] <= 1
    per_t = metrics["per_t"]
    assert per_t["kind"] == "forward_process_normality" and per_t["timesteps"] == list(range(T + 1))
    assert per_t["ks_pvalue"][0] < 1e-6 and per_t["ks_pvalue"][-1] > 1e-3  # digits at t = 0, noise at T


def test_demo_samples_it_and_animates_every_step(tiny_flow_folder):
    pipeline = load_pipeline(tiny_flow_folder)
    process = forward_process(pipeline)
    assert demo.sampler_choices(process) == [
        ("Euler (flow ODE)", "flow_euler"),
        ("Heun (flow ODE, 2 calls per step)", "flow_heun"),
    ]
    images, frames = demo.run_pipeline(pipeline, "flow_heun", 3, seed=1, num_images=2)
    assert len(frames) == 5 and all(frame.shape == (2, 1, 28, 28) for frame in frames)
    torch.testing.assert_close(images, generate(pipeline, 2, "flow_heun", 3, seed=1), rtol=0, atol=1e-6)
    gallery, gif, report = demo.sample_images(pipeline, "flow_euler", 4, 2, 0)
    assert len(gallery) == 2 and report.startswith("2 image(s), Euler (flow ODE), 4 steps")
    with Image.open(gif) as animation:
        assert animation.n_frames == 4
    with pytest.raises(ValueError, match="flow does not"):
        demo.restore_digit(pipeline, "flow_euler", 3, np.zeros((28, 28), np.uint8), 5, 0)


def test_model_card_describes_it_and_its_snippet_runs_without_the_project(tiny_flow_folder, tmp_path):
    card = hub.build_model_card(tiny_flow_folder, "someone/tiny-flow")
    text = card.text
    assert "# Flow matching on" in text and "| `--degradation` | `flow` |" in text
    assert "| Training objective | predict the velocity `noise - x0`, L2 loss |" in text
    assert "| Randomness | stochastic: a fresh random draw per image |" in text
    assert {"flow-matching", "flow"} <= set(card.data.to_dict()["tags"])
    assert "`flow_euler`: Euler (flow ODE), 20 steps (the default" in text
    check_card_snippet_runs_without_the_project(tiny_flow_folder, "someone/tiny-flow", tmp_path)


def test_train_script_trains_saves_and_resumes_a_flow_model(synthetic_mnist, tmp_path):
    output = tmp_path / "flow"
    flags = ["--dataset_name", str(synthetic_mnist), "--output_dir", str(output), "--degradation", "flow",
             "--timestep_density", "uniform", "--num_train_timesteps", str(T), "--n_hidden", "8", "8",
             "--train_batch_size", "32", "--num_sample_images", "2", "--sample_inference_steps", "3",
             "--logging_steps", "1", "--eval_batch_size", "64", "--checkpointing_steps", "2"]  # fmt: skip
    check_train_script_trains_and_resumes(flags, output)
    pipeline = load_pipeline(output)
    process = forward_process(pipeline)
    assert process.name == "flow" and process.scheduler.config["_timestep_density"] == "uniform"
    assert generate(pipeline, 2, num_inference_steps=3).shape == (2, 1, 28, 28)
    assert (output / "samples" / "epoch_000.png").is_file()
