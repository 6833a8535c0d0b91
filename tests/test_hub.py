"""Hub publishing without a Hub: the exact files staged for upload, the model card, and the error paths.

The staged folder is loaded in a fresh process that cannot import this project, with the usage snippet of
its own model card, which is how a Hub user would load it. Every registered forward process gets a card
from a tiny untrained pipeline, which must name the process as ``--degradation`` does and tell the truth
about it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import DDIMScheduler
from huggingface_hub import ModelCard
from PIL import Image

from mnist_diffusion.models import CourseworkCNN, unet_preset
from mnist_diffusion.publishing import hub
from mnist_diffusion.schedulers import FORWARD_PROCESSES, forward_process
from mnist_diffusion.training.train import build_parser, parse_args, process_options
from tests.conftest import run_python, run_without_the_project

REPO_ID = "someone/tiny-ddpm"
# The shape of scripts/evaluate.py's output.
METRICS = {
    "model": "outputs/run",
    "samples": None,
    "feature_network": "mnist",
    "sampler": "ddim",
    "num_inference_steps": 10,
    "start": "prior",
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
# The names --degradation accepts, from the trainer's own parser.
DEGRADATION_NAMES = tuple(build_parser()._option_string_actions["--degradation"].choices)
# Small settings keep the tiny pipelines fast (T, and the sizes that follow from it).
SMALL = {
    "gaussian": {"num_train_timesteps": 20},
    "impulse": {"num_train_timesteps": 12},
    "morph": {"num_train_timesteps": 10, "bank_size": 16},
    "des": {"num_train_timesteps": 40},
    "blur": {"num_train_timesteps": 8},
    "mask": {"num_train_timesteps": 10},
    "rows": {"group_size": 4},
    "columns": {"group_size": 4},
}
# Each registered process by whether it draws randomness (a fresh draw per image) with its default options.
STOCHASTIC = {"gaussian", "impulse", "morph", "des", "flow", "edm"}
DETERMINISTIC = {"rows", "columns", "blur", "mask", "pixelate"}
# Model options of the trainer, by --model: only the chosen model's may appear in a card.
CNN_OPTIONS = ("n_hidden", "kernel_size", "act_fn", "dropout", "time_embedding_in_every_block")
UNET_OPTIONS = ("unet_preset",)


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


def save_tiny_pipeline(
    folder: Path, degradation: str, unet: torch.nn.Module | None = None, **options
) -> Path:
    """An untrained pipeline of ``degradation`` (a registry entry) saved in ``folder``, its prior fitted.

    Morph draws its targets from ``target_dataset`` (a synthetic stand-in for Fashion-MNIST).
    """
    scheduler = FORWARD_PROCESSES[degradation](**{**SMALL.get(degradation, {}), **options})
    process = forward_process(scheduler)
    generator = torch.Generator().manual_seed(0)
    process.fit(torch.rand(64, 1, 28, 28, generator=generator) * 2 - 1, generator)
    unet = unet or CourseworkCNN(
        n_hidden=(4, 4),
        time_embedding_frequencies=2,
        time_embedding_dim=8,
        num_train_timesteps=process.num_train_timesteps,
    )
    process.make_pipeline(unet).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def process_folders(tmp_path_factory, synthetic_mnist: Path) -> dict[str, Path]:
    """``--degradation`` name -> a tiny untrained pipeline of that registered process."""
    root = tmp_path_factory.mktemp("processes")
    options = {"morph": {"target_dataset": str(synthetic_mnist)}}
    return {
        name: save_tiny_pipeline(root / name, name, **options.get(name, {})) for name in FORWARD_PROCESSES
    }


def saved_training_config(folder: Path, *flags: str) -> dict:
    """Write the ``training_config.yaml`` the trainer saves for ``flags`` (every flag, given or not)."""
    config = {key: value for key, value in vars(parse_args(list(flags))).items() if key != "config"}
    (folder / "training_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def card_snippet(card_text: str) -> str:
    return re.search(r"```python\n(.*?)```", card_text, re.DOTALL).group(1)


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
    assert "`sampler` = ddim, `num_inference_steps` = 10, `start` = prior" in text
    assert "num_epochs: 2" in text


def test_card_without_metrics_says_how_to_evaluate(tiny_ddpm_folder: Path) -> None:
    card = hub.build_model_card(tiny_ddpm_folder, REPO_ID, metrics=None)
    assert "Not evaluated yet: run `scripts/evaluate.py`" in card.text
    assert "No `training_config.yaml`" in card.text


def test_staged_folder_loads_in_a_fresh_process_without_the_project(
    trained_folder: Path, tmp_path: Path
) -> None:
    staged = hub.stage_pipeline(trained_folder, tmp_path / "upload", REPO_ID)
    snippet = card_snippet((staged / "README.md").read_text())

    result = run_without_the_project(snippet.replace(REPO_ID, str(staged)), tmp_path)

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


# ----- every registered process: the card names it and tells the truth about it -----------------------------


def test_every_registered_process_is_covered() -> None:
    """A new process must be classed in STOCHASTIC or DETERMINISTIC, so that its card is checked too."""
    assert set(DEGRADATION_NAMES) == set(FORWARD_PROCESSES) == STOCHASTIC | DETERMINISTIC


@pytest.mark.parametrize("name", sorted(FORWARD_PROCESSES))
def test_card_names_the_process_as_the_degradation_flag_does(name: str, process_folders) -> None:
    card = hub.build_model_card(process_folders[name], REPO_ID)

    tags = set(card.data.to_dict()["tags"])
    # Exactly its own name among the process names, and none of the class-name guesses of old.
    assert tags & set(DEGRADATION_NAMES) == {name}
    assert not tags & {"gaussian-blur", "impulse-noise", "averaging", "entropy-scaled-noise", "cold"}
    assert f"| `--degradation` | `{name}` |" in card.text


def test_cold_cards_name_the_degradation_from_the_saved_config(process_folders) -> None:
    for name in ("rows", "columns", "blur", "impulse"):
        config = json.loads((process_folders[name] / "scheduler" / "scheduler_config.json").read_text())
        assert config["_degradation"] == name
        assert (
            "# Cold diffusion (" + name + ") on MNIST"
            in hub.build_model_card(process_folders[name], REPO_ID).text
        )


@pytest.mark.parametrize("name", sorted(FORWARD_PROCESSES))
def test_card_says_whether_the_process_is_random(name: str, process_folders) -> None:
    text = hub.build_model_card(process_folders[name], REPO_ID).text
    assert name in STOCHASTIC | DETERMINISTIC
    if name in STOCHASTIC:
        assert "deterministic" not in text
        assert "| Randomness | stochastic: a fresh random draw per image |" in text
    else:
        assert "stochastic" not in text
        assert "| Randomness | deterministic:" in text


def test_impulse_card_calls_salt_and_pepper_noise_stochastic(process_folders) -> None:
    text = hub.build_model_card(process_folders["impulse"], REPO_ID).text
    assert "deterministic" not in text
    assert "the stochastic (a fresh random draw per image) **impulse** degradation" in text


def test_randomness_comes_from_the_scheduler_not_the_name(tmp_path: Path) -> None:
    """Mask is deterministic in its default order and random in its random one: the card asks the draw."""
    folder = save_tiny_pipeline(tmp_path / "mask", "mask", order="random")
    text = hub.build_model_card(folder, REPO_ID).text
    assert "| Randomness | stochastic: a fresh random draw per image |" in text
    assert "deterministic" not in text


def test_cold_usage_snippet_uses_the_sampler_argument_and_runs_as_written(
    process_folders, tmp_path: Path
) -> None:
    staged = hub.stage_pipeline(process_folders["blur"], tmp_path / "upload", REPO_ID)
    snippet = card_snippet((staged / "README.md").read_text())
    assert 'sampler="improved"' in snippet and "sampling=" not in snippet
    for name in ("improved", "naive", "direct"):
        assert f'#   "{name}": ' in snippet

    result = run_without_the_project(snippet.replace(REPO_ID, str(staged)), tmp_path)

    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "sample.png").size == (28, 28)


def test_cold_card_describes_the_cold_process(process_folders) -> None:
    card = hub.build_model_card(process_folders["blur"], REPO_ID)
    text = card.text
    assert {"cold-diffusion", "blur"} <= set(card.data.to_dict()["tags"])
    assert "ddpm" not in card.data.to_dict()["tags"]
    assert "| Pipeline | `ColdDiffusionPipeline` |" in text
    assert "| Scheduler | `GaussianBlurScheduler` |" in text
    assert "| Training objective | predict the clean image `x0`, L1 loss |" in text
    assert "`improved`: Improved (Algorithm 2), 8 steps (the default, in the snippet below)" in text
    assert "`direct`: Direct (one restoration step), 1 step." in text
    assert "`ColdDiffusionPipeline`, `GaussianBlurScheduler`, `CourseworkCNN` are custom code" in text


# ----- evaluation: the trainer's logged FID -----------------------------------------------------------------


def test_card_reports_the_latest_fid_the_training_logged(trained_folder: Path) -> None:
    shutil.rmtree(trained_folder / "eval")  # no scripts/evaluate.py metrics: the training's are the news
    records = [
        {"step": 1, "epoch": 0, "loss": 1.0},
        {"step": 5, "epoch": 0, "fid": 91.25, "kid_mean": 0.5, "kid_std": 0.05, "num_images": 500.0},
        {"step": 9, "epoch": 1, "loss": 0.5},
        {"step": 10, "epoch": 1, "fid": 42.75, "kid_mean": 0.25, "kid_std": 0.025, "num_images": 500.0},
        {"step": 10, "epoch": 1, "val_loss": 0.4},
    ]
    (trained_folder / "logs" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    text = hub.build_model_card(trained_folder, REPO_ID, hub.read_metrics(trained_folder)).text

    assert "Not evaluated yet" not in text
    assert "| FID ↓ | 42.75 |" in text and "| KID ↓ | 0.25 ± 0.025 |" in text
    assert "91.25" not in text
    assert "at epoch 1, step 10, of 500 samples drawn with the `dpmsolver` sampler" in text


def test_evaluate_metrics_come_before_the_logged_fid(trained_folder: Path) -> None:
    (trained_folder / "logs" / "metrics.jsonl").write_text('{"step": 5, "epoch": 0, "fid": 91.25}\n')
    text = hub.build_model_card(trained_folder, REPO_ID, hub.read_metrics(trained_folder)).text
    assert "| FID ↓ | 12.5 |" in text and "91.25" not in text


# ----- training settings: only those that applied to the run ------------------------------------------------


def _listed(text: str, key: str) -> bool:
    """Whether the card lists ``key`` as a setting (in a table or the YAML of the arguments)."""
    return f"| {key} |" in text or f"| `{key}`" in text or f"\n{key}:" in text


def test_cnn_card_lists_only_the_options_of_the_cnn_and_its_process(trained_folder: Path) -> None:
    saved_training_config(
        trained_folder, "--model", "cnn", "--n_hidden", "4", "4", "--noise_schedule", "linear"
    )

    text = hub.build_model_card(trained_folder, REPO_ID).text

    assert all(_listed(text, key) for key in ("model", *CNN_OPTIONS, "noise_schedule", "learning_rate"))
    assert not any(_listed(text, key) for key in UNET_OPTIONS)
    other_processes = [key for key, by in process_options().items() if "gaussian" not in by]
    assert other_processes and not any(_listed(text, key) for key in other_processes)
    assert "| `noise_schedule` (training option) | `linear` |" in text


def test_unet_card_lists_no_cnn_options(tmp_path: Path) -> None:
    folder = save_tiny_pipeline(tmp_path / "run", "blur", unet=unet_preset("tiny"))
    saved_training_config(folder, "--model", "unet", "--unet_preset", "tiny", "--degradation", "blur")

    text = hub.build_model_card(folder, REPO_ID).text

    assert "| unet_preset | `tiny` |" in text and "\nunet_preset: tiny" in text
    assert not any(_listed(text, key) for key in CNN_OPTIONS)
    other_processes = [key for key, by in process_options().items() if "blur" not in by]
    assert "noise_schedule" in other_processes
    assert not any(_listed(text, key) for key in other_processes)
    assert _listed(text, "sigma_end")


def test_hub_token_is_never_shown_nor_uploaded(trained_folder: Path, tmp_path: Path) -> None:
    config = saved_training_config(trained_folder, "--hub_token", "hf_secret_value")
    assert config["hub_token"] == "hf_secret_value"

    staged = hub.stage_pipeline(trained_folder, tmp_path / "upload", REPO_ID)

    assert "hf_secret_value" not in (staged / "README.md").read_text()
    shipped = yaml.safe_load((staged / "training_config.yaml").read_text())
    assert "hub_token" not in shipped and shipped["learning_rate"] == config["learning_rate"]


# ----- the front end: bad input is one error line and exit code 2 -------------------------------------------


def test_make_model_card_cli_rejects_a_missing_folder(tmp_path: Path) -> None:
    result = run_python("scripts/make_model_card.py", str(tmp_path / "nothing"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: pipeline folder '{tmp_path / 'nothing'}' does not exist")
    assert len(result.stderr.strip().splitlines()) == 1


def test_make_model_card_cli_rejects_a_scheduler_of_no_process(
    tiny_ddpm_folder: Path, tmp_path: Path
) -> None:
    folder = shutil.copytree(tiny_ddpm_folder, tmp_path / "run")
    DDIMScheduler(num_train_timesteps=20).save_pretrained(folder / "scheduler")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(
        json.dumps({**index, "scheduler": ["diffusers", "DDIMScheduler"]})
    )

    result = run_python("scripts/make_model_card.py", str(folder))

    assert result.returncode == 2
    assert result.stderr.startswith("error: no forward process answers for the scheduler DDIMScheduler")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (folder / "README.md").exists()


def test_make_model_card_cli_usage_error_is_one_line() -> None:
    result = run_python("scripts/make_model_card.py")
    assert result.returncode == 2
    assert result.stderr.startswith("error: the following arguments are required: folder")
    assert len(result.stderr.strip().splitlines()) == 1


# ----- class-conditional models: how to ask for digits, the guidance scale, the measured accuracy ----------

CONDITIONAL_METRICS = {
    **METRICS,
    "class_conditional": True,
    "class_labels": "every digit equally often (100 each)",
    "guidance_scale": 2.0,
    "conditional_accuracy": 0.935,
    "per_digit_accuracy": [0.9] * 10,
    "guidance_curve": [
        {
            "guidance_scale": scale,
            "conditional_accuracy": accuracy,
            "fid": fid,
            "fid_floor": 1.25,
            "class_entropy": 0.99,
            "num_images": 1000,
        }
        for scale, accuracy, fid in ((0.0, 0.11, 9.0), (1.0, 0.8, 8.0), (2.0, 0.935, 7.5), (3.0, 0.97, 7.0))
    ],  # fmt: skip
    "recommended_guidance_scale": 3.0,
}


def conditional_unet(num_train_timesteps: int) -> CourseworkCNN:
    return CourseworkCNN(
        n_hidden=(4, 4),
        time_embedding_frequencies=2,
        time_embedding_dim=8,
        num_train_timesteps=num_train_timesteps,
        num_class_embeds=11,
    )


def save_conditional_pipeline(folder: Path, degradation: str) -> Path:
    steps = SMALL.get(degradation, {}).get("num_train_timesteps", 10)
    return save_tiny_pipeline(folder, degradation, unet=conditional_unet(steps), num_train_timesteps=steps)


@pytest.mark.parametrize("name", sorted(FORWARD_PROCESSES))
def test_every_process_usage_snippet_asks_for_digits_when_given_labels(name: str, process_folders) -> None:
    folder = process_folders[name]
    process = forward_process(hub._load_scheduler(folder, hub._read_model_index(folder)))
    plain = process.usage(REPO_ID)
    assert "class_labels" not in plain and "guidance_scale" not in plain
    snippet = process.usage(REPO_ID, class_labels=[0, 7, 9], guidance_scale=2.5)
    assert "    batch_size=3,\n" in snippet and "    class_labels=[0, 7, 9],\n" in snippet
    assert "    guidance_scale=2.5,\n" in snippet and snippet.endswith('images[0].save("sample.png")')
    compile(snippet, f"usage of {name}", "exec")
    # Everything else of the snippet is the unconditional one's.
    assert [line for line in plain.splitlines() if not line.startswith("images = pipe(")] == [
        line for line in snippet.splitlines() if line in plain.splitlines()
    ]


def test_a_few_step_student_usage_snippet_asks_for_digits_too() -> None:
    scheduler = DDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing")
    scheduler.register_to_config(_degradation="gaussian", _default_steps=4)
    snippet = forward_process(scheduler).usage(REPO_ID, class_labels=[3], guidance_scale=None)
    assert "    class_labels=[3],\n" in snippet and "guidance_scale=" not in snippet
    assert "    num_inference_steps=4,\n" in snippet


def test_conditional_card_says_how_to_ask_for_digits_and_reports_accuracy(tmp_path: Path) -> None:
    folder = save_conditional_pipeline(tmp_path / "run", "gaussian")
    saved_training_config(folder, "--class_conditional", "--label_dropout", "0.2")

    card = hub.build_model_card(folder, REPO_ID, CONDITIONAL_METRICS)
    text = card.text

    assert {"class-conditional", "classifier-free-guidance"} <= set(card.data.to_dict()["tags"])
    assert "## Class-conditional generation" in text
    assert "is **class-conditional** (trained with `--class_conditional`, label dropout 0.2)" in text
    assert "`class_labels`, the digit of each image (one int in 0..9 for all images, or one per image" in text
    assert "Recommended guidance scale: **3** (of the guided scales on the guidance curve" in text
    assert "Conditional accuracy: **93.5%** of 1,000 samples drawn at `w = 2`" in text
    snippet = card_snippet(text)
    assert "class_labels=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]," in snippet and "guidance_scale=3.0," in snippet
    # The evaluation: the accuracy among the metrics, the settings in the sentence, the curve as a table.
    assert "| Conditional accuracy ↑: samples the classifier reads as the digit asked for | 0.935 |" in text
    assert "`guidance_scale` = 2, `class_labels` = every digit equally often (100 each)" in text
    assert "| Guidance scale `w` | Conditional accuracy ↑ | FID ↓ | FID floor | Class entropy |" in text
    assert "| 3 | 0.97 | 7 | 1.25 | 0.99 |" in text
    # An unconditional model's card has none of it.
    plain = hub.build_model_card(save_tiny_pipeline(tmp_path / "plain", "gaussian"), REPO_ID, METRICS).text
    assert "class-conditional" not in plain and "class_labels" not in plain


def test_conditional_card_takes_the_accuracy_from_the_training_log(tmp_path: Path) -> None:
    folder = save_conditional_pipeline(tmp_path / "run", "blur")
    (folder / "logs").mkdir()
    records = [
        {"step": 5, "epoch": 0, "fid": 91.25, "conditional_accuracy": 0.5, "num_images": 500.0},
        {"step": 10, "epoch": 1, "fid": 42.75, "conditional_accuracy": 0.875, "num_images": 500.0},
    ]
    (folder / "logs" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    text = hub.build_model_card(folder, REPO_ID, hub.read_metrics(folder)).text

    assert "Conditional accuracy: **87.5%** of 500 samples drawn at `w = 1`" in text
    assert "the trainer's latest evaluation" in text and "50.0%" not in text
    assert "Recommended guidance scale: **1** (the model as trained, since no guidance curve" in text
    assert "guidance_scale=1.0," in card_snippet(text) and 'sampler="improved",' in card_snippet(text)
    # Without any evaluation the card says how to measure it.
    shutil.rmtree(folder / "logs")
    assert "Conditional accuracy: not measured yet" in hub.build_model_card(folder, REPO_ID).text


@pytest.mark.parametrize("name", ["gaussian", "blur", "flow"])
def test_conditional_usage_snippet_runs_as_written_without_the_project(name: str, tmp_path: Path) -> None:
    folder = save_conditional_pipeline(tmp_path / "run", name)
    staged = hub.stage_pipeline(folder, tmp_path / "upload", REPO_ID, metrics_path=None)
    snippet = card_snippet((staged / "README.md").read_text())
    assert "class_labels=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]," in snippet
    check = "\nassert len(images) == 10, len(images)\n"

    result = run_without_the_project(snippet.replace(REPO_ID, str(staged)) + check, tmp_path)

    assert result.returncode == 0, result.stderr[-3000:]
    assert Image.open(tmp_path / "sample.png").size == (28, 28)
