"""DDPMCallbackPipeline: the Gaussian sampling pipeline the tools get, with Diffusers' step callback."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDPMPipeline

from mnist_diffusion.pipelines import DDPMCallbackPipeline, load_pipeline
from mnist_diffusion.pipelines.sampling import generate, image_generators
from mnist_diffusion.schedulers import GaussianProcess, forward_process

STEPS = 5


@pytest.fixture
def saved(tiny_ddpm_folder) -> DDPMPipeline:
    """The tiny untrained Gaussian pipeline (CourseworkCNN, T = 20), as a stock ``DDPMPipeline``."""
    pipeline = load_pipeline(tiny_ddpm_folder)
    assert type(pipeline) is DDPMPipeline
    return pipeline


def sampling_pipeline(saved: DDPMPipeline, sampler: str) -> DDPMCallbackPipeline:
    pipeline = forward_process(saved).with_sampler(saved, sampler)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def run(pipeline, **kwargs) -> torch.Tensor:
    return pipeline(
        batch_size=2,
        generator=torch.Generator().manual_seed(0),
        num_inference_steps=STEPS,
        output_type="pt",
        **kwargs,
    ).images


class StepRecorder:
    """A ``callback_on_step_end`` that keeps every call's arguments and may replace the sample."""

    def __init__(self, replace: dict[int, torch.Tensor] | None = None):
        self.calls: list[tuple[int, int, dict[str, torch.Tensor]]] = []
        self.replace = replace or {}

    def __call__(self, pipeline, step_index, timestep, callback_kwargs):
        self.calls.append((step_index, int(timestep), {k: v.clone() for k, v in callback_kwargs.items()}))
        if step_index in self.replace:
            callback_kwargs["latents"] = self.replace[step_index]
        return callback_kwargs


@pytest.mark.parametrize("sampler", list(GaussianProcess.samplers))
def test_every_sampler_gets_the_callback_and_samples_as_the_stock_pipeline(saved, sampler):
    pipeline = sampling_pipeline(saved, sampler)
    assert type(pipeline) is DDPMCallbackPipeline and pipeline.unet is saved.unet
    stock = DDPMPipeline(
        unet=saved.unet, scheduler=type(pipeline.scheduler).from_config(pipeline.scheduler.config)
    )
    stock.set_progress_bar_config(disable=True)
    expected = run(stock)
    torch.testing.assert_close(run(pipeline), expected, rtol=0, atol=0)

    recorder = StepRecorder()
    torch.testing.assert_close(run(pipeline, callback_on_step_end=recorder), expected, rtol=0, atol=0)
    timesteps = pipeline.scheduler.timesteps.tolist()
    assert [index for index, _, _ in recorder.calls] == list(range(len(timesteps)))
    assert [t for _, t, _ in recorder.calls] == timesteps and pipeline.num_timesteps == len(timesteps)
    assert all(set(tensors) == {"latents"} for _, _, tensors in recorder.calls)
    final = recorder.calls[-1][2]["latents"]
    torch.testing.assert_close((final / 2 + 0.5).clamp(0, 1), expected, rtol=0, atol=0)


def test_the_callback_sees_each_step_of_the_ddpm_loop(saved):
    pipeline = sampling_pipeline(saved, "ddpm")
    recorder = StepRecorder()
    run(pipeline, callback_on_step_end=recorder)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn((2, 1, 28, 28), generator=generator)
    scheduler = pipeline.scheduler
    scheduler.set_timesteps(STEPS)
    for (_, t, tensors), expected_t in zip(recorder.calls, scheduler.timesteps.tolist(), strict=True):
        assert t == expected_t
        noise = pipeline.unet(sample, torch.tensor(t)).sample
        sample = scheduler.step(noise, t, sample, generator=generator).prev_sample
        torch.testing.assert_close(tensors["latents"], sample, rtol=0, atol=0)


def test_the_callback_can_replace_the_sample_and_interrupt_the_run(saved):
    pipeline = sampling_pipeline(saved, "ddim")
    inputs: list[torch.Tensor] = []
    pipeline.unet.register_forward_pre_hook(lambda module, args: inputs.append(args[0].clone()))
    replacement = torch.full((2, 1, 28, 28), 0.5)
    run(pipeline, callback_on_step_end=StepRecorder(replace={1: replacement}))
    torch.testing.assert_close(inputs[2], replacement, rtol=0, atol=0)  # the next step starts from it

    images = run(pipeline, callback_on_step_end=StepRecorder(replace={STEPS - 1: replacement}))
    torch.testing.assert_close(images, torch.full_like(images, 0.75), rtol=0, atol=0)

    def stop_after_two(pipe, step_index, timestep, callback_kwargs):
        pipe._interrupt = step_index == 1
        return callback_kwargs

    inputs.clear()
    run(pipeline, callback_on_step_end=stop_after_two)
    assert len(inputs) == 2


@pytest.mark.parametrize("names", [["latents", "image"], ["prompt_embeds"]])
def test_unknown_callback_tensors_are_a_value_error_before_sampling(saved, names):
    pipeline = sampling_pipeline(saved, "ddpm")
    inputs: list[torch.Tensor] = []
    pipeline.unet.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    with pytest.raises(ValueError, match=r"callback_on_step_end_tensor_inputs.*has to be in \['latents'\]"):
        run(pipeline, callback_on_step_end=StepRecorder(), callback_on_step_end_tensor_inputs=names)
    assert inputs == []


def test_generate_samples_as_the_stock_pipeline_and_saving_writes_a_stock_folder(saved, tmp_path):
    stock = DDPMPipeline(unet=saved.unet, scheduler=GaussianProcess.samplers["ddim"].build(saved.scheduler))
    stock.set_progress_bar_config(disable=True)
    # generate() gives each image its own generator; the stock pipeline takes the same list.
    generators = image_generators(4, 3)
    expected = stock(batch_size=3, generator=generators, num_inference_steps=STEPS, output_type="pt").images
    torch.testing.assert_close(generate(saved, 3, "ddim", STEPS, seed=4), expected, rtol=0, atol=1e-7)

    sampling_pipeline(saved, "dpmsolver").save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    assert type(DDPMPipeline.from_pretrained(tmp_path)) is DDPMPipeline
