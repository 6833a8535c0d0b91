"""Smoke test of scripts/benchmark.py: ``--quick`` runs and writes the JSON schema and the markdown table.

The benchmark's numbers are not tested (they depend on the machine); only that every section is there. The
quality section's time-based checkpoints are tested on a fake clock, so that no test depends on speed.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import DDPMScheduler
from PIL import Image

from mnist_diffusion.evaluation.benchmark import sampler_plan, training_flops_per_image
from mnist_diffusion.evaluation.quality import (
    BLOCK_BEGIN,
    BLOCK_END,
    RECIPES,
    QualityPlan,
    Results,
    existing_section,
    replace_section,
    saved_points,
)
from mnist_diffusion.models import CourseworkCNN
from mnist_diffusion.pipelines import load_pipeline
from mnist_diffusion.schedulers import AveragingScheduler, flow_matching_scheduler, forward_process
from mnist_diffusion.training.train import parse_args as parse_train_args
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


def test_the_sampler_comparison_fits_the_models_process():
    # The quickstart may be Gaussian or flow matching; a cold model gets its own samplers. Steps are capped
    # at T, and the reference (every timestep) comes first.
    gaussian = forward_process(DDPMScheduler(num_train_timesteps=1000))
    assert sampler_plan(gaussian) == [
        ("ddpm", 1000),
        ("ddim", 50),
        ("ddim", 20),
        ("dpmsolver", 20),
        ("dpmsolver", 10),
    ]
    flow = forward_process(flow_matching_scheduler(num_train_timesteps=1000))
    assert sampler_plan(flow) == [
        ("flow_euler", 1000),
        ("flow_euler", 50),
        ("flow_heun", 13),
        ("flow_euler", 20),
        ("flow_euler", 10),
    ]
    cold = forward_process(AveragingScheduler(group_size=4))
    rows = sampler_plan(cold)
    assert rows[0] == (cold.default_sampler, cold.num_train_timesteps)
    assert {sampler for sampler, _ in rows} == set(cold.samplers)
    assert all(1 <= steps <= cold.num_train_timesteps for _, steps in rows)


def test_a_folder_without_a_pipeline_is_refused_before_training(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    result = run_python(SCRIPT, "--quick", "--model=empty", "--output=results.json", cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "empty" in result.stderr
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


# ----- the quality section: recipes trained for minutes, checkpoints by training-loop time ------------------

QUALITY = ("--section", "quality", "--quick")
# Each recipe's process and what its config sets on top of fast_cpu_gaussian.yaml.
RECIPE_PROCESS = {"gaussian": "gaussian", "snr_gamma": "gaussian", "flow": "flow", "immiscible": "gaussian",
                  "unet_small": "gaussian", "edm": "edm", "flow_10min": "flow",
                  "flow_30min": "flow", "flow_2layers": "flow", "flow_no_attention": "flow"}  # fmt: skip
DEFAULT_SAMPLER = {"gaussian": "dpmsolver", "flow": "flow_euler", "edm": "edm_dpmsolver"}


def quality_json(folder: Path) -> dict:
    return json.loads(
        (folder / "outputs" / "quality_per_minute_quick" / "quality_per_minute.json").read_text()
    )


def test_the_shipped_recipes_are_the_measured_ones():
    # The quickstart is the best 10-minute recipe stopped at 10 minutes; fast_cpu.yaml is flow_30min itself.
    configs = PROJECT_ROOT / "training" / "configs"
    shipped = vars(parse_train_args(["--config", str(configs / "quickstart.yaml")]))
    measured = vars(parse_train_args(["--config", str(RECIPES["flow_no_attention"])]))
    assert {key: shipped[key] for key in shipped if shipped[key] != measured[key]} == {
        "config": str(configs / "quickstart.yaml"),
        "output_dir": "outputs/quickstart",
        "max_train_minutes": 10.0,
        "num_validation_images": 2000,
    }
    assert RECIPES["flow_30min"] == configs / "fast_cpu.yaml"


def test_quick_quality_section_writes_the_schema_and_resumes(tmp_path: Path):
    result = run_python(SCRIPT, *QUALITY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    work = tmp_path / "outputs" / "quality_per_minute_quick"
    results = quality_json(tmp_path)
    assert results["schema_version"] == 1 and results["quick"] is True
    settings = results["settings"]
    assert settings["minutes"] == [0.002, 0.004] and settings["num_images"] == 16
    [session] = results["sessions"]
    assert session["command"] == "python scripts/benchmark.py --section quality --quick"
    assert {"cpu", "usable_cpus", "bf16_supported", "load_average_1min", "torch"} <= set(session["machine"])

    assert list(results["recipes"]) == list(RECIPES)
    for name, entry in results["recipes"].items():
        assert entry["config"] == f"training/configs/{RECIPES[name].name}" and entry["summary"]
        assert entry["process"] == RECIPE_PROCESS[name] and entry["num_inference_steps"] == 2
        assert entry["sampler"] == DEFAULT_SAMPLER[RECIPE_PROCESS[name]]
        assert entry["missing_minutes"] == []
        # Time, not steps, ends a quick run, so every mark is reached however fast the machine is.
        marks = [point["target_minutes"] for point in entry["points"]]
        assert marks == [0.002, 0.004], entry["points"]
        for point in entry["points"]:
            assert point["minutes"] >= point["target_minutes"] and point["step"] >= 1
            assert point["fid"] > 0 and point["fid_floor"] >= 0 and 0 <= point["class_entropy"] <= 1
            assert {"kid_mean", "inception_score_mean", "sampling_seconds"} <= set(point)
            # Each saved pipeline reloads and is the recipe's process.
            snapshot = load_pipeline(work / name / point["checkpoint"])
            assert forward_process(snapshot).name == RECIPE_PROCESS[name]
    configs = {name: yaml.safe_load((work / name / "training_config.yaml").read_text()) for name in RECIPES}
    assert configs["snr_gamma"]["snr_gamma"] == 5.0 and configs["gaussian"]["snr_gamma"] is None
    assert configs["immiscible"]["immiscible"] is True and configs["gaussian"]["immiscible"] is False
    assert configs["unet_small"]["unet_preset"] == "small" and configs["gaussian"]["unet_preset"] == "tiny"
    # The quick run ends by time; the recipes' own step counts fit them to 15, 10 and 30 minutes.
    flows = ("flow", "flow_10min", "flow_30min")
    assert all(configs[name]["degradation"] == "flow" for name in flows)
    steps = [yaml.safe_load(RECIPES[name].read_text())["max_train_steps"] for name in flows]
    assert steps == [1600, 900, 2800]

    readme = (work / "README.md").read_text()
    assert readme.count(BLOCK_BEGIN) == 1 and readme.count(BLOCK_END) == 1
    assert "| recipe | sampler | minutes (mark) | step | FID | FID floor | KID | class entropy |" in readme
    assert sum(line.startswith("| flow | flow_euler 2 |") for line in readme.splitlines()) == 2
    assert "![FID against training-loop minutes, one curve per recipe](quality_per_minute.png)" in readme
    assert Image.open(work / "quality_per_minute.png").format == "PNG"

    # A second run finds every recipe trained and every point scored: nothing is redone.
    before = {name: entry["points"] for name, entry in results["recipes"].items()}
    again = run_python(SCRIPT, *QUALITY, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("has finished") == len(RECIPES)
    results = quality_json(tmp_path)
    assert len(results["sessions"]) == 2
    assert {name: entry["points"] for name, entry in results["recipes"].items()} == before

    # Killed while scoring: the flow recipe's points were not written; a later run scores them, and only them.
    path = work / "quality_per_minute.json"
    results["recipes"]["flow"]["points"] = []
    path.write_text(json.dumps(results))
    finished = run_python(SCRIPT, *QUALITY, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    restored = quality_json(tmp_path)["recipes"]["flow"]["points"]
    assert [(p["checkpoint"], p["step"]) for p in restored] == [
        (p["checkpoint"], p["step"]) for p in before["flow"]
    ]
    for point, earlier in zip(restored, before["flow"], strict=True):
        assert point["fid"] == pytest.approx(earlier["fid"], rel=1e-4)  # the same seed, the same samples

    # Other settings are refused rather than mixed into these results.
    other = run_python(SCRIPT, *QUALITY, "--minutes", "0.001", "0.004", cwd=tmp_path)
    assert other.returncode == 2
    assert other.stderr.strip().splitlines() == [
        f"error: {path.relative_to(tmp_path)} holds results of other settings (minutes [0.002, 0.004] -> "
        "[0.001, 0.004]); pass the same settings to finish it, or another --output to start a new one"
    ]


def test_quality_section_bad_flag_is_one_error_line(tmp_path: Path):
    result = run_python(SCRIPT, *QUALITY, "--num_fid_images=1", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: --num_fid_images must be at least 2 for FID, got 1"]
    assert not (tmp_path / "outputs" / "quality_per_minute_quick" / "quality_per_minute.json").exists()


# The trainer on a fake clock: every perf_counter() of training/train.py advances one second, so the
# training-loop time of each step is a fixed number of seconds, whatever the machine's speed.
FAKE_CLOCK_TRAIN = """
import itertools, sys, time, types
import mnist_diffusion.training.train as train
clock = itertools.count()
fake = {name: getattr(time, name) for name in dir(time) if not name.startswith("_")}
train.time = types.SimpleNamespace(**fake)
train.time.perf_counter = lambda: float(next(clock))
sys.exit(train.run_cli(train.main))
"""


def train_on_fake_clock(dataset: Path, output: Path, minutes: list[str], *extra: str):
    flags = ["--dataset_name", str(dataset), "--output_dir", str(output), "--n_hidden", "4", "4",
             "--num_train_timesteps", "20", "--train_batch_size", "32", "--num_sample_images", "2",
             "--sample_inference_steps", "2", "--logging_steps", "1", "--eval_batch_size", "64", "--use_ema",
             "--max_train_steps", "1000", "--checkpoint_minutes", *minutes,
             "--max_train_minutes", minutes[-1], *extra]  # fmt: skip
    result = run_python("-c", FAKE_CLOCK_TRAIN, *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def snapshot(output: Path, minutes: str) -> dict:
    return json.loads((output / f"minutes-{minutes}" / "snapshot.json").read_text())


def logged_seconds(output: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (output / "logs" / "metrics.jsonl").read_text().splitlines()]
    return {record["step"]: record["train_seconds"] for record in records if "train_seconds" in record}


def test_checkpoints_by_training_minutes_resume_and_finish(synthetic_mnist: Path, tmp_path: Path):
    output = tmp_path / "run"
    # 0.05 minutes = 3 s: the run stops at the first step whose training-loop time reaches 3 s.
    train_on_fake_clock(synthetic_mnist, output, ["0.05"])
    seconds = logged_seconds(output)
    per_step = seconds[2] - seconds[1]
    assert per_step >= 1 and all(seconds[s + 1] - seconds[s] == per_step for s in list(seconds)[:-1])
    first = snapshot(output, "0.05")
    assert first == {
        "minutes": 0.05,
        "train_seconds": seconds[first["step"]],
        "step": math.ceil(3 / per_step),
    }
    assert max(seconds) == first["step"] and (output / f"checkpoint-{first['step']}").is_dir()
    pipeline = load_pipeline(output / "minutes-0.05")
    assert forward_process(pipeline).name == "gaussian" and (output / "model_index.json").is_file()

    # The same command again: the run has used its minutes, so it has finished.
    again = train_on_fake_clock(synthetic_mnist, output, ["0.05"], "--resume_from_checkpoint", "latest")
    assert "has finished" in again.stderr and logged_seconds(output) == seconds

    # A longer budget resumes where the training-loop time stopped, keeping the first snapshot.
    longer = ["0.05", "0.1"]
    train_on_fake_clock(synthetic_mnist, output, longer, "--resume_from_checkpoint", "latest")
    seconds = logged_seconds(output)
    assert list(seconds) == list(range(1, max(seconds) + 1))
    assert all(seconds[s + 1] - seconds[s] == per_step for s in list(seconds)[:-1])  # no time lost or doubled
    second = snapshot(output, "0.1")
    assert second == {
        "minutes": 0.1,
        "train_seconds": seconds[second["step"]],
        "step": math.ceil(6 / per_step),
    }
    assert snapshot(output, "0.05") == first

    # Killed after its last snapshot's step, before the end was saved: it trains those steps again, the same.
    shutil.rmtree(output / f"checkpoint-{second['step']}")
    shutil.rmtree(output / "minutes-0.1")
    (output / "model_index.json").unlink()
    train_on_fake_clock(synthetic_mnist, output, longer, "--resume_from_checkpoint", "latest")
    assert snapshot(output, "0.1") == second and logged_seconds(output) == seconds
    points = saved_points(output)
    assert [(p["checkpoint"], p["step"]) for p in points] == [
        ("minutes-0.05", first["step"]),
        ("minutes-0.1", second["step"]),
    ]


def test_saved_points_skip_incomplete_snapshots_and_add_an_earlier_end(tmp_path: Path):
    def fake_pipeline(folder: Path, **snapshot_fields) -> None:
        folder.mkdir(parents=True)
        (folder / "model_index.json").write_text("{}")
        if snapshot_fields:
            (folder / "snapshot.json").write_text(json.dumps(snapshot_fields))

    run = tmp_path / "run"
    fake_pipeline(run / "minutes-2.5", minutes=2.5, train_seconds=151.0, step=100)
    fake_pipeline(run / "minutes-5")  # killed before its snapshot.json: not a point
    (run / "model_index.json").write_text("{}")
    (run / "logs").mkdir()
    records = [{"step": 100, "train_seconds": 151.0}, {"step": 180, "val_loss": 0.1},
               {"step": 180, "loss": 0.1, "train_seconds": 270.0}]  # fmt: skip
    (run / "logs" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert saved_points(run) == [
        {"checkpoint": "minutes-2.5", "target_minutes": 2.5, "minutes": 151.0 / 60, "step": 100},
        {"checkpoint": "final", "target_minutes": None, "minutes": 4.5, "step": 180},
    ]


def test_the_quality_section_of_a_readme_is_replaced_or_appended_and_kept():
    section = f"{BLOCK_BEGIN}\n## Quality\n\nnew\n{BLOCK_END}\n"
    speed = "# Benchmark results\n\n## Training throughput\n"
    appended = replace_section(speed, section)
    assert appended == speed + "\n" + section
    replaced = replace_section(appended.replace("new", "old") + "\n## After\n", section)
    assert replaced == speed + "\n" + section + "\n## After\n"
    assert existing_section(replaced) == section and existing_section(speed) is None


def test_results_of_other_settings_are_refused(tmp_path: Path):
    plan = QualityPlan(recipes=dict(RECIPES), num_images=100, work_dir=tmp_path)
    results = Results.open(tmp_path / "q.json", plan, "first")
    results.data["recipes"]["flow"] = {"points": [{"checkpoint": "minutes-2.5"}]}
    results.save()
    continued = Results.open(tmp_path / "q.json", plan, "second")
    assert [s["command"] for s in continued.data["sessions"]] == ["first", "second"]
    assert continued.data["recipes"]["flow"]["points"] == [{"checkpoint": "minutes-2.5"}]
    with pytest.raises(ValueError, match=r"other settings \(num_images 100 -> 1000\)"):
        Results.open(tmp_path / "q.json", QualityPlan(recipes=dict(RECIPES), work_dir=tmp_path), "third")
