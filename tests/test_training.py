"""End-to-end runs of ``training/train.py`` on a small synthetic dataset (subprocesses, a few steps)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import PROJECT_ROOT, run_python

TINY = [
    "--n_hidden", "8", "8", "--num_train_timesteps", "20", "--train_batch_size", "32",
    "--num_sample_images", "4", "--sampler", "ddim", "--sample_inference_steps", "4",
    "--logging_steps", "1", "--eval_batch_size", "64",
]  # fmt: skip


def tiny_run(dataset: Path, output: Path, *extra: str) -> list[str]:
    return ["--dataset_name", str(dataset), "--output_dir", str(output), *TINY, *extra]


def accelerate_launch(*args: str, processes: int = 1):
    launch = ["-m", "accelerate.commands.launch", "--num_processes", str(processes), "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    if processes > 1:
        launch.append("--multi_gpu")
    return run_python(*launch, *args)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_accelerate_launch_trains_saves_and_loads_in_a_fresh_process(synthetic_mnist, tmp_path):
    output = tmp_path / "run"
    result = accelerate_launch(
        "training/train.py", *tiny_run(synthetic_mnist, output, "--max_train_steps", "12", "--use_ema")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (output / "samples" / "epoch_000.png").is_file() and (
        output / "samples" / "epoch_001.png"
    ).is_file()
    records = read_jsonl(output / "logs" / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 13))
    assert [r["epoch"] for r in records if "val_loss" in r] == [0, 1]  # 256 images / 32 = 8 steps an epoch
    assert list((output / "logs").rglob("events.out.tfevents*")), "no TensorBoard log"
    assert yaml.safe_load((output / "training_config.yaml").read_text())["max_train_steps"] == 12
    load = (
        "import sys; import models; from diffusers import DiffusionPipeline; "
        "p = DiffusionPipeline.from_pretrained(sys.argv[1]); "
        "images = p(batch_size=2, num_inference_steps=3, output_type='np').images; "
        "print(type(p).__name__, type(p.unet).__name__, images.shape)"
    )
    loaded = run_python("-c", load, str(output), cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.split() == ["DDPMPipeline", "CourseworkCNN", "(2,", "28,", "28,", "1)"]


def test_resumed_run_ends_like_an_uninterrupted_one(synthetic_mnist, tmp_path):
    args = ["--max_train_steps", "12", "--checkpointing_steps", "4", "--checkpoints_total_limit", "5"]
    full = tmp_path / "full"
    result = run_python("training/train.py", *tiny_run(synthetic_mnist, full, *args))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in full.glob("checkpoint-*")) == [
        "checkpoint-12",
        "checkpoint-4",
        "checkpoint-8",
    ]

    # A run killed after step 10: its last checkpoint is step 8 and its log runs ahead of it.
    killed = tmp_path / "killed"
    (killed / "logs").mkdir(parents=True)
    shutil.copytree(full / "checkpoint-8", killed / "checkpoint-8")
    full_log = read_jsonl(full / "logs" / "metrics.jsonl")
    ahead = [r for r in full_log if r["step"] <= 10]
    (killed / "logs" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ahead))
    result = run_python(
        "training/train.py", *tiny_run(synthetic_mnist, killed, *args, "--resume_from_checkpoint", "latest")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resumed from" in result.stderr

    weights = "unet/diffusion_pytorch_model.safetensors"
    full_weights, resumed_weights = load_file(full / weights), load_file(killed / weights)
    for name, tensor in full_weights.items():
        torch.testing.assert_close(resumed_weights[name], tensor, rtol=0, atol=0)
    resumed_log = read_jsonl(killed / "logs" / "metrics.jsonl")
    assert [r["step"] for r in resumed_log] == [r["step"] for r in full_log]
    for expected, got in zip(full_log, resumed_log, strict=True):
        assert got.get("loss") == pytest.approx(expected.get("loss")) and got.get(
            "val_loss"
        ) == pytest.approx(expected.get("val_loss"))


def test_two_cpu_processes_train_data_parallel_with_identical_weights(synthetic_mnist, tmp_path):
    output = tmp_path / "ddp"
    result = accelerate_launch(
        "tests/distributed_train.py",
        *tiny_run(synthetic_mnist, output, "--max_train_steps", "3"),
        processes=2,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes" in result.stderr
    rank0, rank1 = load_file(output / "rank0.safetensors"), load_file(output / "rank1.safetensors")
    final_checkpoint = load_file(output / "checkpoint-3" / "model.safetensors")
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0)
    for name in rank0:  # the last checkpoint (saved by rank 0) holds the same final weights
        torch.testing.assert_close(final_checkpoint[name], rank0[name], rtol=0, atol=0)
    assert (output / "model_index.json").is_file()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--noise_schedule", "sigmoid"], "invalid choice: 'sigmoid'"),
        (["--dataset_name", "../no/such/mnist"], "dataset folder '../no/such/mnist' does not exist"),
        (["--degradation", "fog"], "argument --degradation: invalid choice: 'fog'"),
        (["--beta_start", "0.5", "--beta_end", "0.1"], "beta_start=0.5 must be smaller than beta_end=0.1"),
        (["--train_batch_size", "0"], "--train_batch_size must be at least 1, got 0"),
        (["--config", "no_such.yaml"], "config file 'no_such.yaml' does not exist"),
        (["--push_to_hub"], "--push_to_hub needs --hub_model_id USER/NAME"),
        (["--push_to_hub", "--hub_model_id", "me/ddpm"], "--push_to_hub needs a Hugging Face token"),
        (["--eval_epochs", "0"], "--eval_epochs must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(flags, message, synthetic_mnist, tmp_path):
    args = ["--dataset_name", str(synthetic_mnist), "--output_dir", str(tmp_path / "out"), *TINY, *flags]
    result = run_python("training/train.py", *args, env={"HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_unknown_config_key_is_rejected(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("learning_rate: 0.001\nlearnig_rate: 0.01\n")
    result = run_python("training/train.py", "--config", str(config))
    assert result.returncode == 2 and "unknown keys ['learnig_rate']" in result.stderr


def test_shipped_configs_parse():
    from training.train import parse_args

    for config in sorted((PROJECT_ROOT / "training" / "configs").glob("*.yaml")):
        parse_args(["--config", str(config)])
