"""``scripts/evaluate.py`` and ``scripts/plot_run.py``: outputs, metrics.json schema and bad-input errors."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_diffusion.models import CourseworkCNN
from mnist_diffusion.pipelines import ColdDiffusionPipeline
from mnist_diffusion.schedulers import AveragingScheduler
from mnist_diffusion.training.cli import run_cli
from tests.conftest import PROJECT_ROOT, run_python

SCALARS = (
    "num_images",
    "fid",
    "fid_floor",
    "kid_mean",
    "kid_std",
    "inception_score_mean",
    "inception_score_std",
    "class_entropy",
    "mean_confidence",
)
FIGURES = ("samples", "class_histogram", "most_confident", "least_confident")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_schema(metrics: dict, num_images: int, folder: Path) -> None:
    for key in SCALARS:
        assert isinstance(metrics[key], float), key
    assert metrics["num_images"] == num_images
    assert len(metrics["class_histogram"]) == 10 and sum(metrics["class_histogram"]) == num_images
    assert 1.0 <= metrics["inception_score_mean"] <= 10.0
    assert 0.0 <= metrics["class_entropy"] <= 1.0 and 0.0 < metrics["mean_confidence"] <= 1.0
    assert metrics["feature_network"] == "mnist"
    for name in FIGURES:
        assert (folder / metrics["figures"][name]).stat().st_size > 0, name  # named beside the JSON


def test_scores_a_npy_of_samples(synthetic_mnist, tmp_path):
    samples = np.random.default_rng(0).random((40, 28, 28), dtype=np.float32)
    np.save(tmp_path / "samples.npy", samples)
    output = tmp_path / "eval" / "metrics.json"
    result = run_python(
        "scripts/evaluate.py", "--samples", str(tmp_path / "samples.npy"),
        "--dataset_name", str(synthetic_mnist), "--output", str(output),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "FID" in result.stdout and "floor" in result.stdout
    metrics = json.loads(output.read_text())
    check_schema(metrics, 40, output.parent)
    assert metrics["samples"].endswith("samples.npy") and metrics["model"] is None
    assert "per_t" not in metrics and "images_per_second" not in metrics


def test_samples_a_gaussian_pipeline_and_reports_speed_and_normality(
    tiny_ddpm_folder, synthetic_mnist, tmp_path
):
    output = tmp_path / "metrics.json"
    code = run_cli(
        load_script("evaluate").main,
        [
            "--model", str(tiny_ddpm_folder), "--num_images", "12", "--sampler", "ddim",
            "--num_inference_steps", "2", "--dataset_name", str(synthetic_mnist), "--per_t_images", "8",
            "--device", "cpu", "--output", str(output),
        ],
    )  # fmt: skip
    assert code == 0
    metrics = json.loads(output.read_text())
    check_schema(metrics, 12, output.parent)
    assert metrics["sampler"] == "ddim" and metrics["num_inference_steps"] == 2
    assert metrics["images_per_second"] > 0 and metrics["sampling_seconds"] > 0
    per_t = metrics["per_t"]
    assert per_t["kind"] == "forward_process_normality"
    assert per_t["timesteps"] == list(range(20)) and len(per_t["ks_pvalue"]) == 20
    assert all(0.0 <= p <= 1.0 for p in per_t["ks_pvalue"])
    assert (output.parent / metrics["figures"]["per_t"]).is_file()


# The curves set one restoration step against an iterative run: a one-step sampler is compared through the
# process's default sampler.
@pytest.mark.parametrize(("sampler", "curve_sampler"), [("naive", "naive"), ("direct", "improved")])
def test_samples_a_cold_pipeline_and_reports_restoration_per_t(
    sampler, curve_sampler, synthetic_mnist, tmp_path
):
    scheduler = AveragingScheduler(group_size=4)
    scheduler.fit_prior(torch.rand(64, 1, 28, 28) * 2 - 1, torch.Generator().manual_seed(0))
    steps = scheduler.config.num_train_timesteps
    unet = CourseworkCNN(n_hidden=(4, 4), time_embedding_frequencies=2, num_train_timesteps=steps)
    ColdDiffusionPipeline(unet, scheduler).save_pretrained(tmp_path / "cold")
    output = tmp_path / "metrics.json"
    code = run_cli(
        load_script("evaluate").main,
        [
            "--model", str(tmp_path / "cold"), "--num_images", "12", "--sampler", sampler,
            "--num_inference_steps", "3", "--dataset_name", str(synthetic_mnist), "--per_t_images", "8",
            "--per_t_points", "3", "--device", "cpu", "--output", str(output),
        ],
    )  # fmt: skip
    assert code == 0
    metrics = json.loads(output.read_text())
    check_schema(metrics, 12, output.parent)
    assert metrics["sampler"] == sampler and metrics["num_inference_steps"] == 3
    per_t = metrics["per_t"]
    assert per_t["kind"] == "restoration" and per_t["sampler"] == curve_sampler
    assert per_t["timesteps"][0] == 1 and per_t["timesteps"][-1] == steps and len(per_t["timesteps"]) == 3
    assert per_t["severity"][-1] == 1.0
    for key in ("psnr_direct", "ssim_direct", "psnr_iterative", "ssim_iterative"):
        assert len(per_t[key]) == 3 and all(np.isfinite(per_t[key])), key
    assert (output.parent / metrics["figures"]["per_t"]).is_file()


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.full((4, 28, 28), np.nan, np.float32), "NaN"),
        (np.zeros((4, 28), np.float32), "shape"),
        (np.zeros((0, 28, 28), np.float32), "empty"),
        (np.full((4, 28, 28), 3.0, np.float32), "[0, 1]"),
    ],
)
def test_bad_samples_are_one_line_errors(array, message, tmp_path, capsys):
    np.save(tmp_path / "bad.npy", array)
    code = run_cli(
        load_script("evaluate").main,
        ["--samples", str(tmp_path / "bad.npy"), "--output", str(tmp_path / "m.json")],
    )
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and message in error
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--samples", "missing.npy", "--output", "m.json"], "is not a file"),
        (["--samples", "x.npy", "--output", "metrics.txt"], ".json"),
        (["--model", "m", "--num_images", "0", "--output", "m.json"], "--num_images"),
    ],
)
def test_bad_arguments_are_one_line_errors(args, message, capsys):
    assert run_cli(load_script("evaluate").main, args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--sampler", "improved"],
            "sampler 'improved' is not available for the gaussian process; "
            "choose one of ddpm, ddim, dpmsolver",
        ),
        (["--num_inference_steps", "21"], "num_inference_steps=21 must be between 1 and 20"),
    ],
)
def test_a_sampler_the_model_lacks_is_refused_before_any_work(
    flags, message, tiny_ddpm_folder, tmp_path, capsys
):
    # A dataset that does not exist: the sampler is checked before the data is read or anything is sampled.
    argv = [
        "--model", str(tiny_ddpm_folder), *flags, "--dataset_name", str(tmp_path / "no_data"),
        "--device", "cpu", "--output", str(tmp_path / "m.json"),
    ]  # fmt: skip
    assert run_cli(load_script("evaluate").main, argv) == 2
    error = capsys.readouterr().err
    assert error == f"error: {message}\n"
    assert not list(tmp_path.iterdir())


def test_bad_input_exits_with_code_2_from_the_command_line(tmp_path):
    np.save(tmp_path / "bad.npy", np.full((4, 28, 28), np.nan, np.float32))
    result = run_python("scripts/evaluate.py", "--samples", str(tmp_path / "bad.npy"), "--output", "m.json")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "NaN" in result.stderr


def write_log(run_dir: Path, records: list[dict]) -> None:
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "logs" / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))


def test_plot_run_draws_several_runs(tmp_path, capsys):
    for index, name in enumerate(("linear", "cosine")):
        write_log(
            tmp_path / name,
            [
                {"step": 10, "epoch": 0, "loss": 0.5 + index},
                {"step": 20, "epoch": 0, "loss": 0.3},
                {"step": 20, "epoch": 0, "val_loss": 0.35, "fid": 40.0, "fid_floor": 1.0},
                {"step": 40, "epoch": 1, "val_loss": 0.3, "fid": 20.0 + index, "fid_floor": 1.0},
            ],
        )
    output = tmp_path / "plots" / "curves.png"
    plot_run = load_script("plot_run")
    assert (
        run_cli(plot_run.main, [str(tmp_path / "linear"), str(tmp_path / "cosine"), "--output", str(output)])
        == 0
    )
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run_cli(plot_run.main, [str(tmp_path / "missing")]) == 2
    assert "has no training log" in capsys.readouterr().err
