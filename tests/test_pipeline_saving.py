"""``save_pipeline``: one portable folder format, written so that a failed save leaves no half pipeline."""

from __future__ import annotations

import json

import pytest
import torch

from mnist_diffusion.models import CourseworkCNN
from mnist_diffusion.pipelines import load_pipeline, save_pipeline
from mnist_diffusion.schedulers import FORWARD_PROCESSES, forward_process


def tiny_pipeline(name: str = "gaussian", num_train_timesteps: int = 10):
    process = forward_process(FORWARD_PROCESSES[name](num_train_timesteps=num_train_timesteps))
    return process.make_pipeline(CourseworkCNN(n_hidden=(4, 4), num_train_timesteps=num_train_timesteps))


def test_the_saved_folder_is_portable_and_loads(tmp_path):
    pipeline = tiny_pipeline()
    save_pipeline(pipeline, tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline" and index["unet"] == ["coursework_cnn", "CourseworkCNN"]
    assert (tmp_path / "unet" / "coursework_cnn.py").is_file()
    loaded = load_pipeline(tmp_path)
    for name, tensor in pipeline.unet.state_dict().items():
        torch.testing.assert_close(loaded.unet.state_dict()[name], tensor, rtol=0, atol=0)
    assert not list(tmp_path.glob(".partial-*"))


def test_a_failed_save_leaves_no_pipeline_and_keeps_the_rest(tmp_path, monkeypatch):
    save_pipeline(tiny_pipeline(), tmp_path)
    (tmp_path / "checkpoint-5").mkdir()
    pipeline = tiny_pipeline("blur")
    original = type(pipeline).save_pretrained

    def disk_full(self, directory, **kwargs):
        original(self, directory, **kwargs)  # the config and weights are half written when the disk fills
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(pipeline), "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_pipeline(pipeline, tmp_path)
    # The earlier pipeline is still whole (nothing of the failed save was moved in), the checkpoint is kept.
    assert load_pipeline(tmp_path).scheduler.config.num_train_timesteps == 10
    assert forward_process(load_pipeline(tmp_path)).name == "gaussian"
    assert (tmp_path / "checkpoint-5").is_dir() and not list(tmp_path.glob(".partial-*"))


def test_saving_again_replaces_every_component(tmp_path):
    save_pipeline(tiny_pipeline(), tmp_path)
    save_pipeline(tiny_pipeline("rows", num_train_timesteps=28), tmp_path)
    loaded = load_pipeline(tmp_path)
    assert forward_process(loaded).name == "rows"
    assert not (tmp_path / "scheduler" / "scheduler_config.json").read_text().count("trained_betas")
