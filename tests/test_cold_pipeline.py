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
from diffusers import DDPMPipeline, DDPMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from PIL import Image

from models import CourseworkCNN
from pipelines import ColdDiffusionPipeline, load_pipeline, make_portable
from schedulers import AveragingScheduler, EntropyScaledNoiseScheduler, ImpulseNoiseScheduler


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


@pytest.mark.parametrize(
    ("sampling", "steps", "calls"), [("improved", None, 7), ("naive", 3, 3), ("direct", 5, 1)]
)
def test_intermediates_and_model_calls(sampling, steps, calls):
    output = rows_pipeline()(
        batch_size=2, num_inference_steps=steps, sampling=sampling, return_intermediates=True
    )
    assert len(output.intermediates) == calls + 1
    assert output.intermediates[-1] == output.images


def test_restoring_start_images_with_a_perfect_restorer_returns_them():
    clean = digits(2)
    oracle = Oracle()
    oracle.clean = clean * 2 - 1
    pipeline = ColdDiffusionPipeline(oracle, ImpulseNoiseScheduler(num_train_timesteps=10))
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    restored = pipeline(start_images=clean, generator=generator, output_type="pt", return_intermediates=True)
    torch.testing.assert_close(restored.images, clean, atol=1e-5, rtol=0)
    assert not torch.allclose(restored.intermediates[0], clean)  # the start really was degraded
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
    with pytest.raises(ValueError, match="sampling='ddim'"):
        pipeline(sampling="ddim")
    with pytest.raises(ValueError, match="output_type='latent'"):
        pipeline(output_type="latent")
    with pytest.raises(ValueError, match="num_inference_steps=8"):
        pipeline(num_inference_steps=8)
    unfitted = ColdDiffusionPipeline(tiny_cnn(7), AveragingScheduler(group_size=4))
    with pytest.raises(ValueError, match="no prior"):
        unfitted(batch_size=1)


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
    import importlib.abc

    class BlockProject(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"models", "schedulers", "pipelines", "training"}:
                raise ImportError(f"{name} must not be imported")

    sys.meta_path.insert(0, BlockProject())
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


def test_portable_folders_load_with_trust_remote_code_in_a_fresh_process(tmp_path):
    cold = rows_pipeline()
    cold.save_pretrained(tmp_path / "cold")
    ddpm = DDPMPipeline(unet=tiny_cnn(10), scheduler=DDPMScheduler(num_train_timesteps=10))
    ddpm.set_progress_bar_config(disable=True)
    ddpm.save_pretrained(tmp_path / "ddpm")
    assert (
        json.loads((tmp_path / "ddpm" / "model_index.json").read_text())["unet"][0] == "models.coursework_cnn"
    )
    assert type(load_pipeline(tmp_path / "ddpm").unet) is CourseworkCNN
    make_portable(tmp_path / "ddpm")
    make_portable(tmp_path / "ddpm")  # idempotent
    assert json.loads((tmp_path / "ddpm" / "model_index.json").read_text())["unet"] == [
        "coursework_cnn",
        "CourseworkCNN",
    ]
    assert type(load_pipeline(tmp_path / "ddpm").unet) is CourseworkCNN

    script = tmp_path / "fresh.py"
    script.write_text(FRESH_PROCESS)
    outputs = [tmp_path / "cold.npy", tmp_path / "ddpm.npy"]
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    args = [str(tmp_path / "cold"), "7", str(outputs[0]), str(tmp_path / "ddpm"), "10", str(outputs[1])]
    result = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(np.load(outputs[0]), sample(cold))
    expected = ddpm(
        batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=10, output_type="np"
    )
    np.testing.assert_array_equal(np.load(outputs[1]), expected.images)
