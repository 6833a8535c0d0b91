"""Shared fixtures: a small synthetic MNIST-like dataset in the Hub's parquet layout, and paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def _cold_degradations() -> list[str]:
    from schedulers import FORWARD_PROCESSES, ColdProcess, forward_process

    return sorted(
        name
        for name, factory in FORWARD_PROCESSES.items()
        if isinstance(forward_process(factory()), ColdProcess)
    )


# The registered processes whose scheduler is a cold degradation (everything but Gaussian noise).
COLD_DEGRADATIONS = _cold_degradations()


def run_python(
    *args: str, timeout: float = 600, cwd: Path = PROJECT_ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` (a script or ``-m``/``-c``) offline in a fresh process; output is captured."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={**full_env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_image_dataset(folder: Path, num_train: int, num_test: int, seed: int = 0) -> Path:
    """Write random 28x28 'digits' (a bright bar whose position encodes the label) as Hub parquet files."""
    from datasets import ClassLabel, Dataset, Features, Image

    rng = np.random.default_rng(seed)
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    for split, count in (("train", num_train), ("test", num_test)):
        labels = rng.integers(0, 10, count)
        images = rng.integers(0, 40, (count, 28, 28), dtype=np.uint8)
        for image, label in zip(images, labels, strict=True):
            image[4 + 2 * label : 6 + 2 * label, 4:24] = 255
        dataset = Dataset.from_dict({"image": list(images), "label": labels.tolist()}, features=features)
        (folder / "data").mkdir(parents=True, exist_ok=True)
        dataset.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


@pytest.fixture(scope="session")
def synthetic_mnist(tmp_path_factory) -> Path:
    """A 256/64-image MNIST look-alike folder that ``datasets.load_dataset`` reads offline."""
    return write_image_dataset(tmp_path_factory.mktemp("synthetic_mnist"), 256, 64)


@pytest.fixture(scope="session")
def real_mnist() -> Path:
    """The full MNIST copy beside the project (CI has it); a missing copy is a failure, not a skip."""
    path = SHARED_DATA / "mnist"
    assert path.is_dir(), f"integration data missing: expected MNIST in the Hub layout at {path}"
    return path


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives the Gradio demo in headless Chromium")


@pytest.fixture(scope="session")
def tiny_ddpm_folder(tmp_path_factory) -> Path:
    """An untrained, tiny Gaussian ``DDPMPipeline`` (CourseworkCNN, T = 20) saved with ``save_pretrained``."""
    from diffusers import DDPMPipeline

    from models import CourseworkCNN
    from schedulers import ddpm_scheduler

    steps = 20
    unet = CourseworkCNN(
        n_hidden=(4, 4), time_embedding_frequencies=4, time_embedding_dim=8, num_train_timesteps=steps
    )
    folder = tmp_path_factory.mktemp("tiny_ddpm")
    pipeline = DDPMPipeline(unet=unet, scheduler=ddpm_scheduler("linear", num_train_timesteps=steps))
    pipeline.save_pretrained(folder)
    return folder
