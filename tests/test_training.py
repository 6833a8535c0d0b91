"""End-to-end runs of ``training/train.py`` on a small synthetic dataset (subprocesses, a few steps)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mnist_diffusion.models import CourseworkCNN
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
        # The saved folder carries the CNN's code: plain Diffusers loads it, no import of this project.
        "import sys; from diffusers import DiffusionPipeline; "
        "p = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True); "
        "images = p(batch_size=2, num_inference_steps=3, output_type='np').images; "
        "print(type(p).__name__, type(p.unet).__name__, images.shape)"
    )
    loaded = run_python("-c", load, str(output), cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.split() == ["DDPMPipeline", "CourseworkCNN", "(2,", "28,", "28,", "1)"]


@pytest.mark.parametrize(
    "checkpointing_steps, resumed_step",
    [(4, 8), (3, 9)],
    ids=["at an epoch boundary", "in the middle of an epoch"],
)
def test_resumed_run_ends_like_an_uninterrupted_one(
    checkpointing_steps, resumed_step, synthetic_mnist, tmp_path
):
    args = ["--max_train_steps", "12", "--checkpointing_steps", str(checkpointing_steps)]
    args += ["--checkpoints_total_limit", "5", "--use_ema"]  # 8 steps an epoch
    full = tmp_path / "full"
    result = run_python("training/train.py", *tiny_run(synthetic_mnist, full, *args))
    assert result.returncode == 0, result.stderr[-3000:]
    expected = {f"checkpoint-{step}" for step in range(checkpointing_steps, 13, checkpointing_steps)}
    assert {p.name for p in full.glob("checkpoint-*")} == expected
    # No pickled custom state: the EMA and the noise generator are safetensors.
    assert not list(full.glob("checkpoint-*/custom_checkpoint_*"))
    assert (full / f"checkpoint-{resumed_step}" / "noise_generator_0.safetensors").is_file()

    # A run killed two steps after its last checkpoint: its log runs ahead of it, a partial checkpoint lies
    # beside it.
    killed = tmp_path / "killed"
    (killed / "logs").mkdir(parents=True)
    shutil.copytree(full / f"checkpoint-{resumed_step}", killed / f"checkpoint-{resumed_step}")
    (killed / f".partial-checkpoint-{resumed_step + 2}").mkdir()
    full_log = read_jsonl(full / "logs" / "metrics.jsonl")
    ahead = [r for r in full_log if r["step"] <= resumed_step + 2]
    (killed / "logs" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ahead))
    result = run_python(
        "training/train.py", *tiny_run(synthetic_mnist, killed, *args, "--resume_from_checkpoint", "latest")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resumed from" in result.stderr
    assert not list(killed.glob(".partial-*")), "the stale partial checkpoint was not pruned"

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

    # Resuming the finished run does nothing: no step, no new pipeline, the log as it was.
    before = (full / weights).stat().st_mtime_ns, (full / "logs" / "metrics.jsonl").read_text()
    result = run_python(
        "training/train.py", *tiny_run(synthetic_mnist, full, *args, "--resume_from_checkpoint", "latest")
    )
    assert result.returncode == 0 and "has finished (step 12); nothing to do" in result.stderr, result.stderr
    assert ((full / weights).stat().st_mtime_ns, (full / "logs" / "metrics.jsonl").read_text()) == before


def test_a_fresh_run_starts_a_new_log(synthetic_mnist, tmp_path):
    output = tmp_path / "run"
    (output / "logs").mkdir(parents=True)
    (output / "logs" / "metrics.jsonl").write_text(json.dumps({"step": 99, "epoch": 5, "loss": 1.0}) + "\n")
    flags = ["--max_train_steps", "2", "--hub_token", "hf_not_to_be_written"]
    result = run_python("training/train.py", *tiny_run(synthetic_mnist, output, *flags))
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["step"] for r in read_jsonl(output / "logs" / "metrics.jsonl") if "loss" in r] == [1, 2]
    # A secret given on the command line is never written down with the run.
    for path in [output / "training_config.yaml", *(output / "logs").rglob("*")]:
        assert not path.is_file() or b"hf_not_to_be_written" not in path.read_bytes(), path


class CreatesAFile:
    """A pickle that, when unpickled, creates a file: what a crafted checkpoint could hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_crafted_pickle_in_a_checkpoint_is_never_executed(synthetic_mnist, tmp_path):
    output = tmp_path / "run"
    args = ["--max_train_steps", "2", "--checkpointing_steps", "2", "--use_ema", "--lr_scheduler", "plateau"]
    result = run_python("training/train.py", *tiny_run(synthetic_mnist, output, *args))
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = output / "checkpoint-2"
    marker = tmp_path / "pwned"
    # Where Accelerate keeps custom objects (which it unpickles with weights_only=False) and where it keeps
    # the optimizer state: neither may run code; the resume stops with one error line instead.
    for name, payload in (
        ("custom_checkpoint_0.pkl", CreatesAFile(marker)),
        ("optimizer.bin", {"state": CreatesAFile(marker)}),
    ):
        original = (checkpoint / name).read_bytes() if (checkpoint / name).exists() else None
        torch.save(payload, checkpoint / name)
        crafted = run_python(
            "training/train.py",
            *tiny_run(synthetic_mnist, output, *args, "--resume_from_checkpoint", "latest"),
        )
        assert not marker.exists(), f"{name} ran its code"
        assert crafted.returncode == 2, crafted.stderr[-3000:]
        last_line = crafted.stderr.strip().splitlines()[-1]
        assert last_line.startswith(f"error: checkpoint {checkpoint} could not be loaded"), crafted.stderr[
            -3000:
        ]
        (checkpoint / name).unlink()
        if original is not None:
            (checkpoint / name).write_bytes(original)


def test_two_cpu_processes_train_data_parallel_with_identical_weights(synthetic_mnist, tmp_path):
    output = tmp_path / "ddp"
    result = accelerate_launch(
        "tests/distributed_train.py",
        # With EMA: the final weights are the EMA's, which must be one on every rank too.
        *tiny_run(synthetic_mnist, output, "--max_train_steps", "3", "--use_ema"),
        processes=2,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes" in result.stderr
    rank0, rank1 = load_file(output / "rank0.safetensors"), load_file(output / "rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0)
    # The last checkpoint (saved by rank 0) holds the same EMA, in the order of the model's parameters.
    ema = load_file(output / "checkpoint-3" / "ema.safetensors")
    names = [name for name, _ in CourseworkCNN.from_pretrained(output / "unet").named_parameters()]
    assert len(ema) == len(names)
    for index, name in enumerate(names):
        torch.testing.assert_close(ema[str(index)], rank0[name], rtol=0, atol=0)
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
    from mnist_diffusion.training.train import parse_args

    # The distill_*.yaml configs are distill.py's (tests/test_distill.py parses them).
    for config in sorted((PROJECT_ROOT / "training" / "configs").glob("*.yaml")):
        if not config.name.startswith("distill_"):
            parse_args(["--config", str(config)])
