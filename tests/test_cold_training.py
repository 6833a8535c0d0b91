"""A few training steps per cold degradation, then sampling with every algorithm from the saved folder."""

import numpy as np
import pytest
import torch

from mnist_diffusion.pipelines import ColdDiffusionPipeline, load_pipeline
from mnist_diffusion.pipelines.sampling import generate
from mnist_diffusion.schedulers import FORWARD_PROCESSES, ColdProcess, forward_process
from mnist_diffusion.training.train import parse_args, train
from tests.conftest import COLD_DEGRADATIONS, run_python

# Short processes keep the sample grids and the test fast; the rest are each scheduler's defaults.
SHORT_T = {"impulse": 10, "morph": 10, "des": 10, "blur": 10, "mask": 10}


@pytest.mark.parametrize("degradation", COLD_DEGRADATIONS)
def test_each_degradation_trains_saves_and_samples(degradation, synthetic_mnist, tmp_path):
    output = tmp_path / degradation
    flags = [
        "--degradation",
        degradation,
        "--dataset_name",
        str(synthetic_mnist),
        "--output_dir",
        str(output),
    ]
    flags += ["--n_hidden", "8", "8", "--train_batch_size", "32", "--max_train_steps", "3"]
    flags += ["--num_sample_images", "4", "--logging_steps", "1"]
    if degradation in SHORT_T:
        flags += ["--num_train_timesteps", str(SHORT_T[degradation])]
    if degradation == "morph":  # the synthetic set stands in for Fashion-MNIST
        flags += ["--target_dataset", str(synthetic_mnist)]
    model = train(parse_args(flags))

    assert (output / "samples" / "epoch_000.png").is_file()
    pipeline = load_pipeline(str(output))
    assert isinstance(pipeline, ColdDiffusionPipeline)
    factory = FORWARD_PROCESSES[degradation]
    assert isinstance(pipeline.scheduler, getattr(factory, "func", factory))
    # The saved folder names its degradation exactly as --degradation does.
    assert forward_process(pipeline).name == degradation == pipeline.scheduler.config["_degradation"]
    assert pipeline.unet.config.num_train_timesteps == pipeline.scheduler.config.num_train_timesteps
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(pipeline.unet.state_dict()[name], tensor)
    for sampler in ColdProcess.samplers:
        images = generate(pipeline, 3, sampler, seed=1)
        assert images.shape == (3, 1, 28, 28) and torch.isfinite(images).all()
        assert images.min() >= 0 and images.max() <= 1
        torch.testing.assert_close(images, generate(pipeline, 3, sampler, seed=1))


def test_cold_run_from_the_command_line_and_sample_script(synthetic_mnist, tmp_path):
    output = tmp_path / "rows"
    train_flags = ["--config", "training/configs/cold_columns.yaml", "--dataset_name", str(synthetic_mnist)]
    train_flags += ["--output_dir", str(output), "--n_hidden", "8", "8", "--max_train_steps", "2"]
    train_flags += ["--train_batch_size", "32", "--num_sample_images", "4", "--eval_epochs", "1"]
    train_flags += ["--eval_num_images", "16"]
    result = run_python("training/train.py", *train_flags)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FID" in result.stderr
    for sampler in ColdProcess.samplers:
        npy = tmp_path / f"{sampler}.npy"
        flags = ["--model", str(output), "--num_images", "5", "--sampler", sampler, "--output", str(npy)]
        sample = run_python("scripts/sample.py", *flags)
        assert sample.returncode == 0, sample.stderr[-3000:]
        images = np.load(npy)
        assert (
            images.shape == (5, 28, 28)
            and images.dtype == np.float32
            and 0 <= images.min() <= images.max() <= 1
        )
    flags = [
        "--model",
        str(output),
        "--num_images",
        "2",
        "--sampler",
        "ddim",
        "--output",
        str(tmp_path / "x.png"),
    ]
    wrong = run_python("scripts/sample.py", *flags)
    assert wrong.returncode == 2 and "sampler 'ddim' is not available for the columns process" in wrong.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--degradation", "rows", "--group_size", "5"], "group_size"),
        (["--degradation", "impulse", "--rho_end", "0.6"], "rho_end"),
        (["--degradation", "rows", "--order", "diagonal"], "diagonal"),
        # An option of another process would be silently ignored: it is refused instead.
        (
            ["--degradation", "rows", "--noise_schedule", "cosine"],
            "--noise_schedule is an option of gaussian",
        ),
        (["--degradation", "blur", "--order", "random"], "--order is an option of rows, columns, mask"),
        (
            ["--degradation", "blur", "--prediction_type", "sample"],
            "--prediction_type is an option of gaussian, des, not of --degradation blur",
        ),
        (["--degradation", "blur", "--sampler", "ddim"], "sampler 'ddim' is not available for the blur"),
    ],
)
def test_invalid_degradation_options_are_one_line_errors(flags, message, synthetic_mnist, tmp_path):
    result = run_python("training/train.py", "--dataset_name", str(synthetic_mnist), "--output_dir",
                        str(tmp_path / "out"), *flags)  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
