"""Shared fixtures: a small synthetic MNIST-like dataset in the Hub's parquet layout, and paths."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mnist_diffusion.training.data import write_synthetic_mnist

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def _cold_degradations() -> list[str]:
    from mnist_diffusion.schedulers import FORWARD_PROCESSES, ColdProcess, forward_process

    return sorted(
        name
        for name, factory in FORWARD_PROCESSES.items()
        if isinstance(forward_process(factory()), ColdProcess)
    )


# The registered processes whose scheduler is a cold degradation (everything but Gaussian noise).
COLD_DEGRADATIONS = _cold_degradations()


# No test may depend on the machine's speed: a subprocess's time limit only stops a hung process, so it is an
# hour, far beyond any run of this suite on a busy 2-core machine. Browser tests wait as long for the page.
SUBPROCESS_TIMEOUT_S = 3600


def run_python(
    *args: str,
    timeout: float = SUBPROCESS_TIMEOUT_S,
    cwd: Path = PROJECT_ROOT,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` (a script or ``-m``/``-c``) offline in a fresh process; output is captured.

    ``timeout`` is a safety net against a hung process, not a speed requirement.
    """
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={**full_env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# The installed package, and the top-level names its folders have where the project root is on sys.path.
PROJECT_PACKAGES = (
    "mnist_diffusion", "models", "schedulers", "pipelines", "training", "evaluation", "publishing", "app"
)  # fmt: skip
# Prepended to a script run by `run_without_the_project`: any import of the project fails.
BLOCK_THE_PROJECT = f"""
import sys


class BlockProject:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {PROJECT_PACKAGES!r}:
            raise ImportError(f"{{name}} belongs to the project, which a saved folder's user lacks")


sys.meta_path.insert(0, BlockProject())
"""


def run_without_the_project(code: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``code`` with ``args`` in a fresh process in ``cwd`` that cannot import any package of this
    project, as for someone who only downloaded a saved folder (remote code goes to ``cwd/modules``)."""
    script = cwd / "use_without_the_project.py"
    script.write_text(BLOCK_THE_PROJECT + textwrap.dedent(code))
    return run_python(str(script), *args, cwd=cwd, env={"HF_MODULES_CACHE": str(cwd / "modules")})


@pytest.fixture(scope="session")
def synthetic_mnist(tmp_path_factory) -> Path:
    """A 256/64-image MNIST look-alike folder that ``datasets.load_dataset`` reads offline."""
    return write_synthetic_mnist(tmp_path_factory.mktemp("synthetic_mnist"), 256, 64)


@pytest.fixture(scope="session")
def real_mnist() -> Path:
    """The full MNIST copy beside the project (CI has it); a missing copy is a failure, not a skip."""
    path = SHARED_DATA / "mnist"
    assert path.is_dir(), f"integration data missing: expected MNIST in the Hub layout at {path}"
    return path


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives the Gradio demo in headless Chromium")


# The browser tests drive the system's Chromium (Playwright never downloads one). On a machine without it they
# are skipped with this reason; where they must run (CI: `.ci/run` exports REQUIRE_BROWSER_TESTS=1) a missing
# browser is a failure instead.
REQUIRE_BROWSER_TESTS = "REQUIRE_BROWSER_TESTS"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")


def find_chromium() -> str | None:
    """The system Chromium's executable (Debian's ``/usr/bin/chromium`` or one on the PATH), or ``None``."""
    for candidate in CHROMIUM_CANDIDATES:
        found = candidate if os.path.isfile(candidate) else shutil.which(candidate)
        if found and os.access(found, os.X_OK):
            return found
    return None


def browser_tests_required() -> bool:
    return os.environ.get(REQUIRE_BROWSER_TESTS, "").strip().lower() not in ("", "0", "false", "no")


NO_CHROMIUM = "no system Chromium (apt-get install chromium)"


def pytest_report_header(config: pytest.Config) -> str:
    chromium = find_chromium()
    if chromium:
        return f"browser tests: {chromium}"
    if browser_tests_required():
        return f"browser tests: FAIL: {NO_CHROMIUM}, and {REQUIRE_BROWSER_TESTS} is set"
    return f"browser tests: skipped: {NO_CHROMIUM}; {REQUIRE_BROWSER_TESTS}=1 makes this a failure"


def require_chromium() -> str:
    """The system Chromium; skips the calling test without one, or fails it under REQUIRE_BROWSER_TESTS."""
    found = find_chromium()
    if found is None:
        if browser_tests_required():
            pytest.fail(f"{NO_CHROMIUM}, and {REQUIRE_BROWSER_TESTS} is set", pytrace=False)
        pytest.skip(f"{NO_CHROMIUM}; {REQUIRE_BROWSER_TESTS}=1 makes this a failure")
    return found


@pytest.fixture(scope="session")
def chromium() -> str:
    """The system Chromium for Playwright (see :func:`require_chromium`)."""
    return require_chromium()


@pytest.fixture(scope="session")
def tiny_ddpm_folder(tmp_path_factory) -> Path:
    """An untrained, tiny Gaussian ``DDPMPipeline`` (CourseworkCNN, T = 20) saved with ``save_pretrained``."""
    from diffusers import DDPMPipeline

    from mnist_diffusion.models import CourseworkCNN
    from mnist_diffusion.schedulers import ddpm_scheduler

    steps = 20
    unet = CourseworkCNN(
        n_hidden=(4, 4), time_embedding_frequencies=4, time_embedding_dim=8, num_train_timesteps=steps
    )
    folder = tmp_path_factory.mktemp("tiny_ddpm")
    pipeline = DDPMPipeline(unet=unet, scheduler=ddpm_scheduler("linear", num_train_timesteps=steps))
    pipeline.save_pretrained(folder)
    return folder


# ----- tiny class-conditional models ------------------------------------------------------------------------

TINY_T = 10


def tiny_cnn(conditional: bool = True, num_train_timesteps: int = TINY_T):
    """An untrained 4-4 coursework CNN (seeded); conditional: the labels 0-9 and the no-class label 10."""
    import torch

    from mnist_diffusion.models import CourseworkCNN
    from mnist_diffusion.training.train import NUM_CLASS_EMBEDS

    torch.manual_seed(0)
    return CourseworkCNN(
        n_hidden=(4, 4),
        time_embedding_frequencies=2,
        time_embedding_dim=8,
        num_train_timesteps=num_train_timesteps,
        num_class_embeds=NUM_CLASS_EMBEDS if conditional else None,
    )


def tiny_pipeline(name: str = "gaussian", conditional: bool = True, class_embedding_std: float | None = None):
    """An untrained tiny pipeline of process ``name`` around :func:`tiny_cnn` (cold ones fitted to random
    digits, so they sample); ``class_embedding_std`` draws the class embedding that large, so that the labels
    change the samples."""
    import torch

    from mnist_diffusion.schedulers import FORWARD_PROCESSES, forward_process

    process = forward_process(FORWARD_PROCESSES[name](num_train_timesteps=TINY_T))
    process.fit(torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    unet = tiny_cnn(conditional)
    if class_embedding_std is not None:
        torch.nn.init.normal_(unet.class_embedding.weight, std=class_embedding_std)
    pipeline = process.make_pipeline(unet)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


class CallRecorder:
    """A forward hook that keeps the batch size and the ``class_labels`` of every network call."""

    def __init__(self, network) -> None:
        self.calls: list[tuple[int, list[int] | None]] = []
        self.handle = network.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs, output) -> None:
        labels = kwargs.get("class_labels")
        self.calls.append((len(args[0]), None if labels is None else labels.tolist()))


# ----- checks that a process's saved folder passes through the tools (flow, EDM) ----------------------------


def check_sample_script_draws(folder: Path, samplers: tuple[str, ...], tmp_path: Path) -> None:
    """``scripts/sample.py`` draws 3 images in 4 steps from ``folder`` with each sampler, in ``[0, 1]``."""
    import numpy as np

    for sampler in samplers:
        result = run_python("scripts/sample.py", "--model", str(folder), "--num_images", "3",
                            "--sampler", sampler, "--num_inference_steps", "4", "--output",
                            str(tmp_path / f"{sampler}.npy"))  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        array = np.load(tmp_path / f"{sampler}.npy")
        assert array.shape == (3, 28, 28) and array.min() >= 0 and array.max() <= 1


def check_card_snippet_runs_without_the_project(folder: Path, repo_id: str, tmp_path: Path) -> None:
    """The usage snippet of ``folder``'s staged model card draws a 28 x 28 sample where the project is not
    installed."""
    from PIL import Image

    from mnist_diffusion.publishing import hub

    staged = hub.stage_pipeline(folder, tmp_path / "upload", repo_id)
    snippet = (staged / "README.md").read_text().split("```python\n")[1].split("```")[0]
    result = run_without_the_project(snippet.replace(repo_id, str(staged)), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert Image.open(tmp_path / "sample.png").size == (28, 28)


def check_train_script_trains_and_resumes(flags: list[str], output: Path) -> None:
    """``training/train.py FLAGS`` trains 2 steps, resumes to 4, and logs the loss of each of the 4 steps."""
    import json

    result = run_python("training/train.py", *flags, "--max_train_steps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_python(
        "training/train.py", *flags, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resumed from" in result.stderr
    records = [json.loads(line) for line in (output / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
