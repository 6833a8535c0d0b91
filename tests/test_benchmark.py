"""Smoke test of scripts/benchmark.py: ``--quick`` runs and writes the JSON schema and the markdown table.

The benchmark's numbers are not tested (they depend on the machine); only that every section is there.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from evaluation.benchmark import training_flops_per_image
from models import CourseworkCNN
from pipelines import ColdDiffusionPipeline
from schedulers import AveragingScheduler, forward_process
from tests.conftest import PROJECT_ROOT, run_python

SCRIPT = str(PROJECT_ROOT / "scripts" / "benchmark.py")


def test_quick_benchmark_writes_results_and_table(synthetic_mnist: Path, tmp_path: Path):
    # Run outside the project so that no outputs/quickstart is found: the smoke model path is exercised.
    result = run_python(
        SCRIPT,
        "--quick",
        f"--dataset_name={synthetic_mnist}",
        "--reference_num_workers=0",
        "--budget_seconds=2",
        "--output=out/results.json",
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["quick"] is True and results["schema_version"] == 1
    assert {"cpu", "logical_cpus", "torch_threads", "bf16_supported", "torch"} <= set(results["machine"])

    assert [section["model"] for section in results["training"]] == ["cnn", "unet-tiny"]
    for section in results["training"]:
        assert section["same_initial_weights"] is True
        assert section["training_flops_per_image"] > 0 and section["matmul_gflops"] > 0
        reference_gflops = section["loops"]["reference"]["gflops"]
        assert section["max_ratio_at_matmul_peak"] == section["matmul_gflops"] / reference_gflops
        assert set(section["loops"]) == {"reference", "default", "channels_last"}
        for loop in section["loops"].values():
            assert len(loop["window_images_per_second"]) == section["plan"]["windows"]
            assert loop["images_per_second"] > 0 and loop["peak_rss_after_warmup_mib"] > 0
            assert loop["held_out_loss"] > 0 and isinstance(loop["loss_within_noise"], bool)
        assert section["loops"]["reference"]["ratio_to_reference"] == 1.0

    sampling = results["sampling"]
    assert "smoke run" in sampling["model"]
    assert [(row["sampler"], row["steps"]) for row in sampling["rows"]] == [
        ("ddpm", 1000),
        ("ddim", 50),
        ("ddim", 20),
        ("dpmsolver", 20),
        ("dpmsolver", 10),
    ]
    for row in sampling["rows"]:
        assert row["images_per_second"] > 0 and row["fid"] > 0 and row["fid_floor"] >= 0

    assert [row["model"] for row in results["quality_per_budget"]] == ["cnn", "unet-tiny"]
    for row in results["quality_per_budget"]:
        assert row["steps"] >= 1 and row["wall_seconds"] > 0 and row["fid"] > 0

    table = (tmp_path / "out" / "README.md").read_text()
    assert table.strip() in result.stdout
    for heading in (
        "## Training throughput",
        "Ceiling:",
        "## Sampling",
        "## Quality per CPU-minute",
        "Smoke run",
    ):
        assert heading in table


def test_bad_flag_is_one_error_line(tmp_path: Path):
    result = run_python(SCRIPT, "--quick", "--windows=0", "--output=results.json", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: --windows must be at least 1, got 0"]
    assert not (tmp_path / "results.json").exists()


def test_a_model_without_the_timed_samplers_is_refused_before_training(tmp_path: Path):
    scheduler = AveragingScheduler(group_size=4)
    scheduler.fit_prior(torch.rand(16, 1, 28, 28) * 2 - 1, torch.Generator().manual_seed(0))
    unet = CourseworkCNN(n_hidden=(4,), num_train_timesteps=scheduler.config.num_train_timesteps)
    ColdDiffusionPipeline(unet, scheduler).save_pretrained(tmp_path / "cold")
    result = run_python(SCRIPT, "--quick", "--model=cold", "--output=results.json", cwd=tmp_path)
    assert result.returncode == 2
    process = forward_process(scheduler)
    assert result.stderr.strip().splitlines() == [
        f"error: sampler 'ddpm' is not available for the {process.name} process; "
        f"choose one of {', '.join(process.samplers)}"
    ]
    assert not (tmp_path / "results.json").exists()


def test_training_flops_are_forward_and_backward_per_image():
    # 8x8 images, one 3x3 conv 1 -> 4 and the 3x3 conv_out 4 -> 1: 2 * 64 * 36 = 4608 FLOPs forward each.
    # Backward: both weight gradients, and the input gradient of conv_out only (the images need none).
    # The time MLP: four 4x4 linear layers, 2 * 16 = 32 FLOPs each forward, the first without input grad.
    network = CourseworkCNN(
        sample_size=8, n_hidden=(4,), kernel_size=3, time_embedding_frequencies=2, time_embedding_dim=4
    )
    expected = 2 * 4608 + 3 * 4608 + 3 * 4 * 32 - 32
    for batch_size in (2, 5):
        images = torch.rand(batch_size, 1, 8, 8) * 2 - 1
        assert training_flops_per_image(network, forward_process(DDPMScheduler()), images) == expected
    assert all(parameter.grad is None for parameter in network.parameters())
