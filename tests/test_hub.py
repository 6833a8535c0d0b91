"""Hub publishing without a Hub: the exact files staged for upload, the model card, and the error paths.

The staged folder is loaded in a fresh process that cannot import this project, with the usage snippet of
its own model card, which is how a Hub user would load it.
"""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard
from PIL import Image

from tests.conftest import run_python
from training import hub

REPO_ID = "someone/tiny-ddpm"
# The shape of scripts/evaluate.py's output.
METRICS = {
    "model": "outputs/run",
    "samples": None,
    "feature_network": "mnist",
    "scheduler": "ddim",
    "num_inference_steps": 10,
    "seed": 0,
    "sampling_seconds": 1.5,
    "images_per_second": 666.7,
    "num_images": 1000.0,
    "fid": 12.5,
    "fid_floor": 1.25,
    "kid_mean": 0.0123,
    "kid_std": 0.0011,
    "inception_score_mean": 8.25,
    "inception_score_std": 0.1,
    "class_entropy": 0.97,
    "mean_confidence": 0.9,
    "class_histogram": [100] * 10,
    "per_t": {"timesteps": [1, 10], "ks_pvalue": [0.0, 0.5]},
    "figures": {"samples": "outputs/run/eval/metrics_samples.png"},
}
# Importing any of these in the loading process would mean the upload is not self-contained.
PROJECT_PACKAGES = ("models", "schedulers", "pipelines", "training")


@pytest.fixture
def trained_folder(tiny_ddpm_folder: Path, tmp_path: Path) -> Path:
    """The tiny pipeline plus everything the trainer and the evaluator write beside it."""
    folder = shutil.copytree(tiny_ddpm_folder, tmp_path / "run")
    config = {"dataset_name": "../shared/data/mnist", "model": "cnn", "n_hidden": [4, 4], "num_epochs": 2}
    (folder / "training_config.yaml").write_text(yaml.safe_dump({**config, "noise_schedule": "linear"}))
    (folder / "eval").mkdir()
    (folder / "eval" / "metrics.json").write_text(json.dumps(METRICS))
    (folder / "logs").mkdir()
    (folder / "logs" / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    (folder / "samples").mkdir()
    for epoch, shade in ((0, 40), (1, 200)):
        Image.new("L", (62, 62), shade).save(folder / "samples" / f"epoch_{epoch:03d}.png")
    (folder / "checkpoint-10").mkdir()
    (folder / "checkpoint-10" / "optimizer.bin").write_bytes(b"state")
    return folder


def _files(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}


def test_stage_holds_exactly_the_upload(trained_folder: Path, tmp_path: Path) -> None:
    staged = hub.stage_pipeline(trained_folder, tmp_path / "upload", REPO_ID)

    files = _files(staged)
    expected = {
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
        "training_config.yaml",
        "metrics.json",
        "samples.png",
        "README.md",
    }
    assert expected <= files
    extra = files - expected
    assert all(name.endswith(".py") for name in extra), f"only custom code may be added: {extra}"
    assert not any(name.startswith(("logs", "eval", "samples/", "checkpoint")) for name in files)
    # The newest trainer grid is the card's picture.
    assert Image.open(staged / "samples.png").getpixel((0, 0)) == 200
    assert json.loads((staged / "metrics.json").read_text()) == METRICS
    assert not list(tmp_path.glob(".upload-partial-*"))


def test_model_card_metadata_and_content(trained_folder: Path, tmp_path: Path) -> None:
    card = ModelCard.load(hub.stage_pipeline(trained_folder, tmp_path / "upload", REPO_ID) / "README.md")

    data = card.data.to_dict()
    assert data["library_name"] == "diffusers"
    assert data["pipeline_tag"] == "unconditional-image-generation"
    assert data["datasets"] == ["ylecun/mnist"]
    assert data["license"] == "mit"
    assert {"diffusion", "mnist", "ddpm", "gaussian"} <= set(data["tags"])
    text = card.text
    assert "![Samples drawn from the model](samples.png)" in text
    assert f'DiffusionPipeline.from_pretrained("{REPO_ID}", trust_remote_code=True)' in text
    assert "| Denoiser | `CourseworkCNN` |" in text
    assert "| `num_train_timesteps` | `20` |" in text
    assert "20 values, 0.0001 … 0.02" in text
    assert "| FID ↓ | 12.5 |" in text
    assert "| FID of as many real training images (floor) | 1.25 |" in text
    assert "| KID ↓ | 0.0123 ± 0.0011 |" in text
    assert "| Inception-style score ↑ (max 10) | 8.25 ± 0.1 |" in text
    assert "| Class balance: normalised entropy of the predicted digits ↑ (1 = uniform) | 0.97 |" in text
    assert "features from the project's MNIST classifier" in text
    assert "`scheduler` = ddim, `num_inference_steps` = 10" in text
    assert "num_epochs: 2" in text


def test_card_without_metrics_says_how_to_evaluate(tiny_ddpm_folder: Path) -> None:
    card = hub.build_model_card(tiny_ddpm_folder, REPO_ID, metrics=None)
    assert "Not evaluated yet: run `scripts/evaluate.py`" in card.text
    assert "No `training_config.yaml`" in card.text


def test_staged_folder_loads_in_a_fresh_process_without_the_project(
    trained_folder: Path, tmp_path: Path
) -> None:
    staged = hub.stage_pipeline(trained_folder, tmp_path / "upload", REPO_ID)
    snippet = re.search(r"```python\n(.*?)```", (staged / "README.md").read_text(), re.DOTALL).group(1)
    block_project = textwrap.dedent(
        f"""
        import sys

        class BlockProject:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {PROJECT_PACKAGES!r}:
                    raise ImportError(f"{{name}} belongs to the project, which a Hub user does not have")

        sys.meta_path.insert(0, BlockProject())
        """
    )
    script = tmp_path / "use_card_snippet.py"
    script.write_text(block_project + snippet.replace(REPO_ID, str(staged)))

    result = run_python(str(script), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "sample.png").size == (28, 28)


def test_make_model_card_writes_card_and_grid_in_place(trained_folder: Path) -> None:
    result = run_python("scripts/make_model_card.py", str(trained_folder))

    assert result.returncode == 0, result.stderr
    card = ModelCard.load(trained_folder / "README.md")
    assert f'from_pretrained("{trained_folder}"' in card.text
    assert (trained_folder / "samples.png").is_file()
    assert not list(trained_folder.glob(".card-*"))


def test_failed_staging_leaves_nothing(trained_folder: Path, tmp_path: Path, monkeypatch) -> None:
    def broken(folder: Path) -> None:
        raise RuntimeError("interrupted")

    monkeypatch.setattr(hub, "make_portable", broken)
    with pytest.raises(RuntimeError, match="interrupted"):
        hub.stage_pipeline(trained_folder, tmp_path / "upload", REPO_ID)
    assert not (tmp_path / "upload").exists()
    assert not list(tmp_path.glob(".upload-partial-*"))


def test_push_uploads_the_staged_folder(trained_folder: Path, tmp_path: Path, monkeypatch) -> None:
    uploads = []

    def upload_folder(repo_id: str, folder_path: Path, token: str, commit_message: str):
        uploads.append((repo_id, _files(Path(folder_path)), token))
        return type("CommitInfo", (), {"commit_url": f"https://hub.example/{repo_id}/commit/1"})()

    monkeypatch.setattr(hub.hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "create_repo", lambda repo_id, token, private, exist_ok: None)
    monkeypatch.setattr(hub, "upload_folder", upload_folder)
    before = _files(trained_folder)

    url = hub.push_pipeline(trained_folder, REPO_ID, token="hf_test")

    assert url.endswith(f"{REPO_ID}/commit/1")
    [(repo_id, files, token)] = uploads
    assert (repo_id, token) == (REPO_ID, "hf_test")
    assert files == _files(hub.stage_pipeline(trained_folder, tmp_path / "expected", REPO_ID))
    assert _files(trained_folder) == before


def test_push_without_network_is_a_clear_error(trained_folder: Path, monkeypatch) -> None:
    def unreachable(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(hub.hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "create_repo", unreachable)
    before = _files(trained_folder)
    with pytest.raises(
        ValueError, match="could not upload to the Hugging Face Hub repo .*network connection"
    ):
        hub.push_pipeline(trained_folder, REPO_ID, token="hf_test")
    assert _files(trained_folder) == before


def test_push_cli_without_token_is_one_line_and_exit_2(
    trained_folder: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no token saved by `hf auth login` either
    before = _files(trained_folder)

    result = run_python("scripts/push_to_hub.py", str(trained_folder), REPO_ID)

    assert result.returncode == 2
    assert result.stderr.startswith("error: no Hugging Face token found: run `hf auth login`, set HF_TOKEN")
    assert len(result.stderr.strip().splitlines()) == 1
    assert _files(trained_folder) == before


@pytest.mark.parametrize(
    ("folder", "repo_id", "message"),
    [
        (None, "not a repo id", "invalid Hub repo id 'not a repo id'"),
        (None, "tiny-ddpm", "must have the form USER/NAME"),
        ("missing-folder", REPO_ID, "pipeline folder 'missing-folder' does not exist; train one first"),
    ],
)
def test_push_rejects_bad_arguments_before_staging(trained_folder: Path, folder, repo_id, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        hub.push_pipeline(folder or trained_folder, repo_id, token="hf_test")


def test_read_metrics_rejects_bad_files(tmp_path: Path) -> None:
    assert hub.read_metrics(tmp_path) == {}
    with pytest.raises(ValueError, match="does not exist; run scripts/evaluate.py"):
        hub.read_metrics(tmp_path, tmp_path / "metrics.json")
    (tmp_path / "metrics.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        hub.read_metrics(tmp_path)
