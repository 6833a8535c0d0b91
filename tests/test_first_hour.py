"""What a new user meets in the first hour: restoring digits as ``load_dataset`` gives them, a mistyped model
folder, long phases that say what they are doing, and plots of a one-epoch run."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from PIL import Image

from mnist_diffusion.evaluation.training_logs import plot_runs, runs_figure
from mnist_diffusion.models import CourseworkCNN
from mnist_diffusion.pipelines import ColdDiffusionPipeline
from mnist_diffusion.pipelines.cold_diffusion import local_folder, start_images_tensor
from mnist_diffusion.schedulers import (
    AveragingScheduler,
    ImpulseNoiseScheduler,
    ddpm_scheduler,
    forward_process,
)
from mnist_diffusion.training.train import LONG_SAMPLING_IMAGE_STEPS, long_sampling_notice
from tests.conftest import PROJECT_ROOT, run_python

# ----- start_images: any sequence of images ----------------------------------------------------------------


def uint8_digits(batch: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    background = rng.integers(0, 40, (batch, 28, 28))
    return np.where(rng.random((batch, 28, 28)) > 0.7, 255, background).astype(np.uint8)


def datasets_column(images: np.ndarray):
    """``dataset["image"]`` as datasets 5.x gives it: a lazy ``Column`` of PIL images, not a list."""
    from datasets import Dataset, Features
    from datasets import Image as ImageFeature

    dataset = Dataset.from_dict({"image": list(images)}, features=Features({"image": ImageFeature()}))
    return dataset["image"]


DIGITS = uint8_digits()
FLOAT_DIGITS = DIGITS.astype(np.float32) / 255.0
START_IMAGE_FORMS = {
    "datasets Column of PIL images": lambda: datasets_column(DIGITS),
    "list of PIL images": lambda: [Image.fromarray(d) for d in DIGITS],
    "tuple of PIL RGB images": lambda: tuple(Image.fromarray(d).convert("RGB") for d in DIGITS),
    "list of uint8 arrays": lambda: list(DIGITS),
    "tensor (N, 1, H, W) float": lambda: torch.from_numpy(FLOAT_DIGITS[:, None]),
    "tensor (N, H, W) uint8": lambda: torch.from_numpy(DIGITS),
    "array (N, H, W) uint8": lambda: DIGITS,
    "array (N, H, W) float": lambda: FLOAT_DIGITS,
    "array (N, H, W, 1) uint8": lambda: DIGITS[..., None],
    "array (N, H, W, 1) float64": lambda: FLOAT_DIGITS[..., None].astype(np.float64),
    "array (N, 1, H, W) float": lambda: FLOAT_DIGITS[:, None],
}


@pytest.mark.parametrize("form", START_IMAGE_FORMS)
def test_start_images_in_any_form_restore_like_a_float_tensor(form: str) -> None:
    scheduler = AveragingScheduler(group_size=4)
    scheduler.fit_prior(torch.from_numpy(FLOAT_DIGITS[:, None]) * 2 - 1, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    unet = CourseworkCNN(n_hidden=(4, 4), time_embedding_frequencies=2, num_train_timesteps=7)
    pipeline = ColdDiffusionPipeline(unet, scheduler)
    pipeline.set_progress_bar_config(disable=True)

    def restore(images) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        return pipeline(start_images=images, start_timestep=4, generator=generator, output_type="pt").images

    expected = restore(torch.from_numpy(FLOAT_DIGITS[:, None]))
    assert start_images_tensor(START_IMAGE_FORMS[form]()).shape == (3, 1, 28, 28)
    torch.testing.assert_close(restore(START_IMAGE_FORMS[form]()), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (FLOAT_DIGITS * 2 - 1, r"float start_images must lie in \[0, 1\], got \[-1, 1\]"),
        (np.repeat(DIGITS[..., None], 3, axis=-1), r"shape \(3, 28, 28, 3\) are not a grayscale batch"),
        (DIGITS[0], r"shape \(28, 28\) are not a grayscale batch"),
        ([], "start_images is empty"),
        ([DIGITS[0], DIGITS[0, :14]], "start_images differ in shape"),
        (DIGITS.astype(np.int64) * 2, r"integer start_images must be uint8 in \[0, 255\]"),
        ("digits.png", "start_images must be images"),
    ],
)
def test_start_images_that_are_not_a_grayscale_batch_are_refused(images, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        start_images_tensor(images)


# ----- a mistyped local folder is not a failed Hub download ------------------------------------------------


def test_a_mistyped_model_folder_is_reported_as_missing_by_sample_py(tmp_path: Path) -> None:
    (tmp_path / "outputs" / "quickstart").mkdir(parents=True)
    flags = ["--model", "outputs/nope", "--output", "x.png"]
    result = run_python(str(PROJECT_ROOT / "scripts" / "sample.py"), *flags, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: pipeline folder 'outputs/nope' does not exist (outputs/ holds quickstart)"
    ), result.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "name", ["./nope", "../nope", "/no/such/folder", "~/no_such_folder", "a/b/c", "nope", "owner/bad name"]
)
def test_names_that_look_like_paths_are_never_looked_up_on_the_hub(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    def no_download(*args, **kwargs):
        raise AssertionError(f"{name!r} was looked up on the Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=rf"^pipeline folder '{re.escape(name)}' does not exist"):
        local_folder(name)


def test_an_owner_slash_name_id_is_still_looked_up_on_the_hub(tmp_path, monkeypatch) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda name: str(tmp_path / name))
    monkeypatch.chdir(tmp_path)
    assert local_folder("someone/ddpm-mnist") == str(tmp_path / "someone/ddpm-mnist")
    (tmp_path / "someone").mkdir()  # now a local folder of that name exists: the user meant a path
    with pytest.raises(ValueError, match="does not exist"):
        local_folder("someone/ddpm-mnist")


# ----- long phases say so ----------------------------------------------------------------------------------


def test_long_sampling_gets_a_notice_naming_a_faster_sampler() -> None:
    gaussian = forward_process(ddpm_scheduler("linear", num_train_timesteps=1000))
    notice = long_sampling_notice(gaussian, "ddpm", 1000, 64)
    assert notice == (
        "notice: 64 images x 1000 ddpm steps = 64,000 image-steps, which can take many minutes on a CPU; "
        "--sampler dpmsolver --num_inference_steps 25 takes 40x fewer network calls"
    )
    assert long_sampling_notice(gaussian, "dpmsolver", 25, 1000) is None  # 25,000 image-steps
    assert long_sampling_notice(gaussian, "ddpm", 1000, LONG_SAMPLING_IMAGE_STEPS // 1000) is None
    cold = forward_process(ImpulseNoiseScheduler())  # T = 150
    steps = cold.default_steps("improved")
    assert "fewer --num_inference_steps (e.g. 30)" in long_sampling_notice(cold, "improved", steps, 500)


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", PROJECT_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sample_py_prints_the_notice_before_sampling(tiny_ddpm_folder, tmp_path, monkeypatch, capsys) -> None:
    script = load_script("sample")
    drawn = []

    def fake_generate(pipeline, num_images, *args, **kwargs):
        drawn.append(capsys.readouterr().err)  # what was printed before sampling started
        return torch.zeros(num_images, 1, 28, 28)

    monkeypatch.setattr(script, "generate", fake_generate)
    # The tiny model has T = 20: 2600 images x 20 DDPM steps = 52,000 image-steps.
    flags = ["--model", str(tiny_ddpm_folder), "--sampler", "ddpm", "--output", str(tmp_path / "x.npy")]
    script.main([*flags, "--num_images", "2600"])
    assert drawn[0].startswith("notice: 2600 images x 20 ddpm steps = 52,000 image-steps"), drawn
    script.main([*flags, "--num_images", "2500"])
    assert "notice" not in drawn[1]


def test_training_logs_every_long_phase_and_shows_sampling_progress(synthetic_mnist: Path, tmp_path: Path):
    flags = ["--degradation", "rows", "--group_size", "4", "--n_hidden", "8", "8", "--train_batch_size", "32"]
    flags += ["--max_train_steps", "2", "--num_sample_images", "4", "--eval_epochs", "1"]
    flags += ["--eval_num_images", "4", "--dataset_name", str(synthetic_mnist), "--output_dir", str(tmp_path)]
    result = run_python("training/train.py", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr
    expected_in_order = [
        f"Loading {synthetic_mnist} ...",
        "Loaded 256 training and 64 validation images in",
        "Fitting the rows process to the training images ...",
        "Fitted the rows process in",
        "epoch 0: validation loss on 64 images ...",
        "epoch 0: sampling 4 images for the grid",
        "7/7 [",  # the sampling progress bar: T = 28 rows in groups of 4
        "Computing the reference features of the validation images for FID ...",
        "Sampling 4 images for FID, KID and IS ...",
        "7/7 [",
        "epoch 0: FID",
    ]
    position = 0
    for text in expected_in_order:
        found = log.find(text, position)
        assert found >= 0, f"{text!r} missing after position {position} of:\n{log}"
        position = found + len(text)


# ----- plots of a short run --------------------------------------------------------------------------------


def write_one_epoch_run(folder: Path) -> Path:
    records = [{"step": step, "epoch": 0, "loss": 1.0 / step} for step in range(1, 6)]
    records.append({"step": 5, "epoch": 0, "val_loss": 0.3})
    records.append({"step": 5, "epoch": 0, "fid": 80.0, "fid_floor": 2.0})
    (folder / "logs").mkdir(parents=True)
    (folder / "logs" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_a_series_of_one_point_is_drawn(tmp_path: Path) -> None:
    run = write_one_epoch_run(tmp_path / "short")
    figure = runs_figure([run])
    fid_axis = figure.axes[2]
    assert fid_axis.get_title() == "FID"
    assert all(line.get_marker() == "o" for axis in figure.axes for line in axis.get_lines())
    fid_axis.get_legend().remove()  # the legend's swatch is drawn in any case; the point itself must be too
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].astype(float) / 255
    box = fid_axis.get_window_extent()
    height = pixels.shape[0]
    inside = pixels[int(height - box.y1) : int(height - box.y0), int(box.x0) : int(box.x1)]
    coloured = np.abs(inside - np.array(to_rgb("C0"))).max(axis=-1) < 0.1
    assert coloured.sum() > 10, "the run's single FID point is invisible"
    plot_runs([run], tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0


# ----- browser tests on a machine without Chromium ---------------------------------------------------------


def test_without_chromium_browser_tests_skip_unless_required(tmp_path: Path, monkeypatch) -> None:
    from tests import conftest

    monkeypatch.setattr(conftest, "CHROMIUM_CANDIDATES", (str(tmp_path / "chromium"), "no-such-chromium"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(conftest.REQUIRE_BROWSER_TESTS, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no system Chromium .*REQUIRE_BROWSER_TESTS=1 makes"):
        conftest.require_chromium()
    assert conftest.pytest_report_header(None).startswith("browser tests: skipped: no system Chromium")
    monkeypatch.setenv(conftest.REQUIRE_BROWSER_TESTS, "1")
    with pytest.raises(pytest.fail.Exception, match="Chromium .*, and REQUIRE_BROWSER_TESTS is set"):
        conftest.require_chromium()
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert conftest.require_chromium() == str(fake)
