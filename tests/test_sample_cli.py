"""``scripts/sample.py`` on a saved Gaussian pipeline: outputs, determinism, samplers and bad input."""

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_python


def sample(folder, output, *flags):
    return run_python("scripts/sample.py", "--model", str(folder), "--output", str(output), *flags)


def test_npy_and_png_outputs_are_deterministic_per_seed(tiny_ddpm_folder, tmp_path):
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        result = sample(tiny_ddpm_folder, tmp_path / f"{name}.npy", "--num_images", "5", "--seed", seed)
        assert result.returncode == 0, result.stderr[-2000:]
    first, again, other = (np.load(tmp_path / f"{name}.npy") for name in "abc")
    assert first.shape == (5, 28, 28) and first.dtype == np.float32
    assert first.min() >= 0 and first.max() <= 1
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)

    result = sample(tiny_ddpm_folder, tmp_path / "grid.png", "--num_images", "4", "--sampler", "ddim",
                    "--num_inference_steps", "5")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert Image.open(tmp_path / "grid.png").size == (2 * 28 + 3 * 2, 2 * 28 + 3 * 2)  # 2x2 grid, 2px padding


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmsolver"])
def test_every_gaussian_sampler_runs(sampler, tiny_ddpm_folder, tmp_path):
    result = sample(tiny_ddpm_folder, tmp_path / "x.npy", "--num_images", "2", "--sampler", sampler,
                    "--num_inference_steps", "10")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert np.isfinite(np.load(tmp_path / "x.npy")).all()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num_images", "0"], "--num_images and --batch_size must be at least 1, got 0 and 256"),
        (
            ["--sampler", "improved"],
            "sampler 'improved' is not available for the gaussian process; "
            "choose one of ddpm, ddim, dpmsolver",
        ),
        (["--num_inference_steps", "21"], "num_inference_steps=21 must be between 1 and 20"),
        (["--sampler", "euler"], "invalid choice: 'euler'"),
        (["--scheduler", "ddim"], "unrecognized arguments: --scheduler ddim"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(flags, message, tiny_ddpm_folder, tmp_path):
    result = sample(tiny_ddpm_folder, tmp_path / "x.png", *flags)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "x.png").exists()
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_missing_model_and_bad_output_suffix(tiny_ddpm_folder, tmp_path):
    missing = sample(tmp_path / "no_model", tmp_path / "x.png")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    suffix = sample(tiny_ddpm_folder, tmp_path / "x.jpg")
    assert suffix.returncode == 2 and "must end in one of .png, .npy" in suffix.stderr
