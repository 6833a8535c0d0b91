"""ColdDiffusionPipeline: sampling, saving, and loading with and without this project installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, DiffusionPipeline
from diffusers.callbacks import PipelineCallback
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from PIL import Image

from mnist_diffusion.models import CourseworkCNN
from mnist_diffusion.pipelines import ColdDiffusionPipeline, load_pipeline, make_portable
from mnist_diffusion.schedulers import AveragingScheduler, EntropyScaledNoiseScheduler, ImpulseNoiseScheduler
from tests.conftest import run_without_the_project


def tiny_cnn(num_train_timesteps: int) -> CourseworkCNN:
    torch.manual_seed(0)
    return CourseworkCNN(
        n_hidden=(4, 4), time_embedding_frequencies=2, num_train_timesteps=num_train_timesteps
    )


def digits(batch: int = 3) -> torch.Tensor:
    """Synthetic images in [0, 1] (the pipeline's input and output range)."""
    return (torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.7).float()


def rows_pipeline() -> ColdDiffusionPipeline:
    scheduler = AveragingScheduler(group_size=4)
    scheduler.fit_prior(digits(64) * 2 - 1, torch.Generator().manual_seed(0))
    pipeline = ColdDiffusionPipeline(tiny_cnn(7), scheduler)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


class Oracle(ModelMixin, ConfigMixin):
    """A perfect restorer for one batch of known clean images (model space)."""

    @register_to_config
    def __init__(self):
        super().__init__()
        self.register_buffer("clean", torch.zeros(1, 1, 28, 28))

    def forward(self, sample, timestep):
        return BaseOutput(sample=self.clean)


def sample(pipeline, seed: int = 0, **kwargs) -> np.ndarray:
    return pipeline(
        batch_size=2, generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs
    ).images


def test_sampling_is_deterministic_for_a_generator_and_has_every_output_type():
    pipeline = rows_pipeline()
    first = sample(pipeline)
    assert first.shape == (2, 28, 28, 1) and first.min() >= 0 and first.max() <= 1
    np.testing.assert_array_equal(first, sample(pipeline))
    assert not np.array_equal(first, sample(pipeline, seed=1))
    pil = pipeline(batch_size=2, generator=torch.Generator().manual_seed(0)).images
    assert len(pil) == 2 and pil[0].size == (28, 28) and pil[0].mode == "L"
    pt = pipeline(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), first)


class StepRecorder:
    """A ``callback_on_step_end`` that keeps every call's arguments (tensors cloned)."""

    def __init__(self, replace: dict[int, torch.Tensor] | None = None):
        self.calls: list[tuple[int, int, dict[str, torch.Tensor]]] = []
        self.replace = replace or {}

    def __call__(self, pipeline, step_index, timestep, callback_kwargs):
        self.calls.append((step_index, int(timestep), {k: v.clone() for k, v in callback_kwargs.items()}))
        if step_index in self.replace:
            callback_kwargs["latents"] = self.replace[step_index]
        return callback_kwargs


def record_inputs(model: torch.nn.Module) -> list[torch.Tensor]:
    """The sample of each later call of ``model``, in order (a forward pre-hook)."""
    inputs: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda module, args: inputs.append(args[0].clone()))
    return inputs


@pytest.mark.parametrize(
    ("sampler", "steps", "calls"), [("improved", None, 7), ("naive", 3, 3), ("direct", 5, 1)]
)
def test_callback_gets_each_step_and_its_tensors(sampler, steps, calls):
    pipeline = rows_pipeline()
    recorder = StepRecorder()
    output = pipeline(
        batch_size=2,
        num_inference_steps=steps,
        sampler=sampler,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
        callback_on_step_end=recorder,
        callback_on_step_end_tensor_inputs=["latents", "pred_original_sample"],
    )
    assert [index for index, _, _ in recorder.calls] == list(range(calls)) and pipeline.num_timesteps == calls
    assert [t for _, t, _ in recorder.calls] == pipeline.scheduler.timesteps.tolist()

    # The same run by hand: the callback sees each step's new sample and its x0 estimate.
    scheduler = pipeline.scheduler
    generator = torch.Generator().manual_seed(0)
    scheduler.set_timesteps(1 if sampler == "direct" else steps)
    sample = scheduler.prior_sample(2, generator)
    for (_, t, tensors), expected_t in zip(recorder.calls, scheduler.timesteps.tolist(), strict=True):
        assert t == expected_t
        x0_hat = pipeline.unet(sample, torch.tensor(t)).sample
        sample = scheduler.step(x0_hat, t, sample, generator=generator, sampling=sampler).prev_sample
        torch.testing.assert_close(tensors["pred_original_sample"], x0_hat, rtol=0, atol=0)
        torch.testing.assert_close(tensors["latents"], sample, rtol=0, atol=0)
    torch.testing.assert_close(output.images, (sample / 2 + 0.5).clamp(0, 1), rtol=0, atol=0)


def test_callback_can_replace_the_sample_and_interrupt_the_run():
    pipeline = rows_pipeline()
    inputs = record_inputs(pipeline.unet)
    replacement = torch.full((2, 1, 28, 28), -0.5)
    recorder = StepRecorder(replace={2: replacement})
    pipeline(
        batch_size=2,
        generator=torch.Generator().manual_seed(0),
        callback_on_step_end=recorder,
        output_type="pt",
    )
    assert set(recorder.calls[0][2]) == {"latents"}  # the default tensor inputs
    torch.testing.assert_close(inputs[3], replacement, rtol=0, atol=0)  # the next step starts from it

    # Replaced at the last step, the replacement is the output.
    last = StepRecorder(replace={6: replacement})
    images = pipeline(batch_size=2, callback_on_step_end=last, output_type="pt").images
    torch.testing.assert_close(images, torch.full_like(images, 0.25), rtol=0, atol=0)

    def stop_after_two(pipe, step_index, timestep, callback_kwargs):
        pipe._interrupt = step_index == 1
        return callback_kwargs

    inputs.clear()
    pipeline(batch_size=2, callback_on_step_end=stop_after_two, output_type="pt")
    assert len(inputs) == 2 and pipeline.num_timesteps == 7


def test_a_diffusers_pipeline_callback_brings_its_own_tensor_inputs():
    class KeepEstimates(PipelineCallback):
        tensor_inputs = ["pred_original_sample"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            seen.append(sorted(callback_kwargs))
            return callback_kwargs

    seen = []
    rows_pipeline()(batch_size=1, num_inference_steps=2, callback_on_step_end=KeepEstimates())
    assert seen == [["pred_original_sample"]] * 2


def old_restoration_loop(model, scheduler, x0, t, steps, sampler, seed):
    """The loop ``restoration_quality`` ran before the pipeline had a start timestep (the reference)."""
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    draw = scheduler.sampling_draw(tuple(x0.shape), generator, x0.device)
    sample = scheduler.degrade(x0, t, draw=draw)
    direct = model(sample, torch.tensor([t])).sample
    for s in [t, *(int(s) for s in scheduler.timesteps if s < t)]:
        x0_hat = model(sample, torch.tensor([s])).sample
        sample = scheduler.step(x0_hat, s, sample, sampling=sampler).prev_sample
    return direct, sample


# Impulse noise is random: the run must degrade and restore with one draw, as the old loop did.
@pytest.mark.parametrize(
    "make_scheduler",
    [lambda: ImpulseNoiseScheduler(num_train_timesteps=10), lambda: AveragingScheduler(group_size=4)],
    ids=["impulse", "rows"],
)
@pytest.mark.parametrize("sampler", ["improved", "naive"])
def test_restoring_from_a_start_timestep_equals_the_old_loop(make_scheduler, sampler):
    scheduler = make_scheduler()
    num_train_timesteps = scheduler.config.num_train_timesteps
    pipeline = ColdDiffusionPipeline(tiny_cnn(num_train_timesteps), scheduler)
    pipeline.set_progress_bar_config(disable=True)
    inputs = record_inputs(pipeline.unet)
    clean = digits(3)
    for t in sorted({1, 3, num_train_timesteps // 2 + 1, num_train_timesteps}):
        inputs.clear()
        recorder = StepRecorder()
        restored = pipeline(
            start_images=clean,
            start_timestep=t,
            num_inference_steps=4,
            sampler=sampler,
            generator=torch.Generator().manual_seed(5),
            output_type="pt",
            callback_on_step_end=recorder,
            callback_on_step_end_tensor_inputs=["pred_original_sample"],
        ).images
        pipeline_inputs = list(inputs)
        direct, expected = old_restoration_loop(
            pipeline.unet, scheduler, clean * 2 - 1, t, 4, sampler, seed=5
        )
        torch.testing.assert_close(restored, (expected / 2 + 0.5).clamp(0, 1), rtol=0, atol=1e-6)
        torch.testing.assert_close(recorder.calls[0][2]["pred_original_sample"], direct, rtol=0, atol=1e-6)
        grid_below = [s for s in scheduler.timesteps.tolist() if s < t]
        assert [s for _, s, _ in recorder.calls] == [t, *grid_below]
        assert len(pipeline_inputs) == 1 + len(grid_below)
        # A start timestep really changes the start: D(x0, t), not D(x0, T).
        start = scheduler.degrade(clean * 2 - 1, t, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(pipeline_inputs[0], start, rtol=0, atol=1e-6)

    # From t = T the run is the ordinary restoration run.
    from_t = pipeline(start_images=clean, start_timestep=num_train_timesteps, **restore_kwargs(sampler))
    plain = pipeline(start_images=clean, **restore_kwargs(sampler))
    torch.testing.assert_close(from_t.images, plain.images, rtol=0, atol=0)


def restore_kwargs(sampler: str) -> dict:
    return {
        "num_inference_steps": 4,
        "sampler": sampler,
        "generator": torch.Generator().manual_seed(5),
        "output_type": "pt",
    }


def test_direct_restoration_from_a_start_timestep_is_one_network_call():
    scheduler = ImpulseNoiseScheduler(num_train_timesteps=10)
    pipeline = ColdDiffusionPipeline(tiny_cnn(10), scheduler)
    pipeline.set_progress_bar_config(disable=True)
    inputs = record_inputs(pipeline.unet)
    clean = digits(2)
    restored = pipeline(start_images=clean, start_timestep=4, **restore_kwargs("direct")).images
    assert len(inputs) == 1
    direct, _ = old_restoration_loop(pipeline.unet, scheduler, clean * 2 - 1, 4, 1, "naive", seed=5)
    torch.testing.assert_close(restored, (direct / 2 + 0.5).clamp(0, 1), rtol=0, atol=1e-6)


def test_restoring_start_images_with_a_perfect_restorer_returns_them():
    clean = digits(2)
    oracle = Oracle()
    oracle.clean = clean * 2 - 1
    pipeline = ColdDiffusionPipeline(oracle, ImpulseNoiseScheduler(num_train_timesteps=10))
    pipeline.set_progress_bar_config(disable=True)
    inputs = record_inputs(oracle)
    for start_timestep in (None, 4):
        inputs.clear()
        generator = torch.Generator().manual_seed(0)
        restored = pipeline(
            start_images=clean, start_timestep=start_timestep, generator=generator, output_type="pt"
        )
        torch.testing.assert_close(restored.images, clean, atol=1e-5, rtol=0)
        assert not torch.allclose(inputs[0], clean * 2 - 1)  # the start really was degraded
    as_pil = [Image.fromarray((image[0].numpy() * 255).astype(np.uint8)) for image in clean]
    from_pil = pipeline(
        start_images=as_pil, generator=torch.Generator().manual_seed(0), output_type="pt"
    ).images
    torch.testing.assert_close(from_pil, clean, atol=1e-5, rtol=0)


def test_des_pipeline_samples():
    scheduler = EntropyScaledNoiseScheduler(num_train_timesteps=20)
    scheduler.fit_prior(digits(16) * 2 - 1)
    pipeline = ColdDiffusionPipeline(tiny_cnn(20), scheduler)
    pipeline.set_progress_bar_config(disable=True)
    first = sample(pipeline, num_inference_steps=5)
    assert first.shape == (2, 28, 28, 1)
    np.testing.assert_array_equal(first, sample(pipeline, num_inference_steps=5))


def test_invalid_arguments_are_clear_value_errors():
    pipeline = rows_pipeline()
    with pytest.raises(ValueError, match="sampler='ddim'"):
        pipeline(sampler="ddim")
    with pytest.raises(ValueError, match="output_type='latent'"):
        pipeline(output_type="latent")
    with pytest.raises(ValueError, match="num_inference_steps=8"):
        pipeline(num_inference_steps=8)
    unfitted = ColdDiffusionPipeline(tiny_cnn(7), AveragingScheduler(group_size=4))
    with pytest.raises(ValueError, match="no prior"):
        unfitted(batch_size=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"callback_on_step_end_tensor_inputs": ["latents", "x0"]}, r"has to be in .*found \['x0'\]"),
        ({"callback_on_step_end_tensor_inputs": ["prompt_embeds"]}, "callback_on_step_end_tensor_inputs"),
        ({"start_timestep": 0, "start_images": digits(1)}, r"start_timestep=0 must lie in \[1, 7\]"),
        ({"start_timestep": 8, "start_images": digits(1)}, r"start_timestep=8 must lie in \[1, 7\]"),
        ({"start_timestep": 2.5, "start_images": digits(1)}, "start_timestep must be an int"),
        ({"start_timestep": True, "start_images": digits(1)}, "start_timestep must be an int"),
        ({"start_timestep": 3}, "start_timestep needs start_images"),
    ],
)
def test_bad_callback_inputs_and_start_timesteps_fail_before_any_network_call(kwargs, message):
    pipeline = rows_pipeline()
    inputs = record_inputs(pipeline.unet)
    with pytest.raises(ValueError, match=message):
        pipeline(callback_on_step_end=StepRecorder(), **kwargs)
    assert inputs == []


def test_saved_pipeline_loads_with_the_installed_classes(tmp_path):
    pipeline = rows_pipeline()
    pipeline.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == ["cold_diffusion", "ColdDiffusionPipeline"]
    assert index["unet"] == ["coursework_cnn", "CourseworkCNN"]
    assert {"averaging.py", "cold.py", "prior.npz"} <= set(os.listdir(tmp_path / "scheduler"))
    expected = sample(pipeline)
    for loaded in (ColdDiffusionPipeline.from_pretrained(tmp_path), load_pipeline(tmp_path)):
        assert type(loaded) is ColdDiffusionPipeline and type(loaded.unet) is CourseworkCNN
        loaded.set_progress_bar_config(disable=True)
        np.testing.assert_array_equal(sample(loaded), expected)


def test_load_pipeline_rejects_unknown_classes(tmp_path):
    rows_pipeline().save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    index["unet"] = ["mystery", "MysteryNet"]
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="'MysteryNet' is not imported"):
        load_pipeline(tmp_path)


# Runs where the project cannot be imported, as for someone who only downloaded the folders.
FRESH_PROCESS = textwrap.dedent(
    """
    import sys

    import numpy as np
    import torch
    from diffusers import DiffusionPipeline

    for folder, steps, output in zip(sys.argv[1::3], sys.argv[2::3], sys.argv[3::3]):
        pipeline = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
        assert type(pipeline.unet).__module__.startswith("diffusers_modules"), type(pipeline.unet)
        pipeline.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(0)
        images = pipeline(batch_size=2, num_inference_steps=int(steps), generator=generator, output_type="np")
        np.save(output, images.images)
    """
)


def run_fresh_process(tmp_path, *folders_steps_outputs: str) -> subprocess.CompletedProcess:
    """Run :data:`FRESH_PROCESS` on ``folder, steps, output.npy`` triples."""
    return run_without_the_project(FRESH_PROCESS, tmp_path, *folders_steps_outputs)


def test_portable_folders_load_with_trust_remote_code_in_a_fresh_process(tmp_path):
    cold = rows_pipeline()
    cold.save_pretrained(tmp_path / "cold")
    ddpm = DDPMPipeline(unet=tiny_cnn(10), scheduler=DDPMScheduler(num_train_timesteps=10))
    ddpm.set_progress_bar_config(disable=True)
    ddpm.save_pretrained(tmp_path / "ddpm")
    assert (
        json.loads((tmp_path / "ddpm" / "model_index.json").read_text())["unet"][0]
        == "mnist_diffusion.models.coursework_cnn"
    )
    assert type(load_pipeline(tmp_path / "ddpm").unet) is CourseworkCNN
    make_portable(tmp_path / "ddpm")
    make_portable(tmp_path / "ddpm")  # idempotent
    assert json.loads((tmp_path / "ddpm" / "model_index.json").read_text())["unet"] == [
        "coursework_cnn",
        "CourseworkCNN",
    ]
    assert type(load_pipeline(tmp_path / "ddpm").unet) is CourseworkCNN

    outputs = [tmp_path / "cold.npy", tmp_path / "ddpm.npy"]
    args = [str(tmp_path / "cold"), "7", str(outputs[0]), str(tmp_path / "ddpm"), "10", str(outputs[1])]
    result = run_fresh_process(tmp_path, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(np.load(outputs[0]), sample(cold))
    expected = ddpm(
        batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=10, output_type="np"
    )
    np.testing.assert_array_equal(np.load(outputs[1]), expected.images)


def test_a_folder_saved_before_the_rename_loads_and_becomes_portable(tmp_path):
    # Before the packages were installed as mnist_diffusion.*, a plain save_pretrained named the modules of
    # the custom components by their old top-level names: models.coursework_cnn, schedulers.averaging.
    cold = rows_pipeline()
    folder = tmp_path / "old"
    DiffusionPipeline.save_pretrained(cold, folder)  # without make_portable
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text())
    assert [index["unet"][0], index["scheduler"][0]] == [
        "mnist_diffusion.models.coursework_cnn",
        "mnist_diffusion.schedulers.averaging",
    ]
    for name in ("unet", "scheduler"):
        index[name][0] = index[name][0].removeprefix("mnist_diffusion.")
    index_file.write_text(json.dumps(index))

    expected = sample(cold)
    loaded = load_pipeline(folder)
    assert type(loaded.unet) is CourseworkCNN and type(loaded.scheduler) is AveragingScheduler
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(sample(loaded), expected)

    make_portable(folder)  # reads models.coursework_cnn as mnist_diffusion.models.coursework_cnn
    # ... and not as the project root's folder under its old name (the root is on sys.path in the tests)
    assert not {"models", "schedulers"} & set(sys.modules)
    index = json.loads(index_file.read_text())
    assert index["unet"] == ["coursework_cnn", "CourseworkCNN"]
    assert index["scheduler"] == ["averaging", "AveragingScheduler"]
    assert index["_class_name"] == ["cold_diffusion", "ColdDiffusionPipeline"]
    assert type(load_pipeline(folder).unet) is CourseworkCNN
    result = run_fresh_process(tmp_path, str(folder), "7", str(tmp_path / "old.npy"))
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "old.npy"), expected)
