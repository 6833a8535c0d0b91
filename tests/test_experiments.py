"""The report's experiment runner: its YAML checks, and a tiny end-to-end run that resumes."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import yaml

from tests.conftest import PROJECT_ROOT, run_python


def load_script(name: str):
    """A script of scripts/ as a module (scripts are run, not installed), as the importlib docs do it."""
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "scripts" / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report_assets, run_experiments = load_script("report_assets"), load_script("run_experiments")
COLD_EVALUATIONS, GAUSSIAN_RUNS = report_assets.COLD_EVALUATIONS, report_assets.GAUSSIAN_RUNS
as_flags, load_experiments = run_experiments.as_flags, run_experiments.load_experiments

GAUSSIAN_CONFIG = "training/configs/ddpm_coursework.yaml"
COLD_CONFIG = "training/configs/cold_rows.yaml"


def write_experiments(path, runs: dict) -> str:
    path.write_text(yaml.safe_dump({"runs": runs}, sort_keys=False))
    return str(path)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"config": GAUSSIAN_CONFIG, "evaluations": {"metrics": {}}, "epochs": 2}, "unknown keys ['epochs']"),
        ({"config": "missing.yaml", "evaluations": {"metrics": {}}}, "'missing.yaml'"),
        ({"config": GAUSSIAN_CONFIG, "evaluations": {"ddim": {}}}, "must be called 'metrics'"),
        ({"config": GAUSSIAN_CONFIG, "evaluations": {"metrics": {"steps": 5}}}, "unknown keys ['steps']"),
        # The samplers come from the run's forward process, checked before anything trains.
        (
            {"config": GAUSSIAN_CONFIG, "evaluations": {"metrics": {"sampler": "improved"}}},
            "bad_run/metrics: sampler 'improved' is not available for the gaussian process; "
            "choose one of ddpm, ddim, dpmsolver",
        ),
        (
            {"config": COLD_CONFIG, "evaluations": {"metrics": {"sampler": "dpmsolver"}}},
            "bad_run/metrics: sampler 'dpmsolver' is not available for the rows process; "
            "choose one of improved, naive, direct",
        ),
        (
            {
                "config": GAUSSIAN_CONFIG,
                "args": {"num_train_timesteps": 20, "sample_inference_steps": 4},
                "evaluations": {"metrics": {"sampler": "ddim", "num_inference_steps": 50}},
            },
            "num_inference_steps=50 must be between 1 and 20",
        ),
        (
            {"config": GAUSSIAN_CONFIG, "evaluations": {"metrics": {"sampler": "ddim", "start": "test"}}},
            "bad_run/metrics: start 'test' needs a process that restores images",
        ),
        (
            {"config": GAUSSIAN_CONFIG, "evaluations": {"metrics": {"scheduler": "ddim"}}},
            "unknown keys ['scheduler']",
        ),
    ],
)
def test_load_experiments_names_the_bad_entry(tmp_path, entry, message):
    with pytest.raises(ValueError) as error:
        load_experiments(write_experiments(tmp_path / "e.yaml", {"bad_run": entry}))
    assert message in str(error.value)
    assert "bad_run" in str(error.value)


def test_as_flags_fills_in_the_datasets():
    flags = as_flags({"target_dataset": "{fashion_mnist}", "n_hidden": [4, 8]}, {"fashion_mnist": "/data/f"})
    assert flags == ["--target_dataset", "/data/f", "--n_hidden", "4", "8"]


def test_shipped_experiments_cover_what_the_report_reads():
    experiments = load_experiments(PROJECT_ROOT / "report" / "experiments.yaml")
    assert set(GAUSSIAN_RUNS) <= set(experiments)
    schedules = {
        e.args.get("noise_schedule") for name, e in experiments.items() if name.startswith("schedule_")
    }
    assert schedules == {"linear", "cosine", "constant", "inverse_linear", "geometric", "cosine_annealing"}
    cold = [e for name, e in experiments.items() if name.startswith("cold_")]
    assert len(cold) >= 3
    for experiment in cold:
        assert list(experiment.evaluations) == [stem for stem, _, _ in COLD_EVALUATIONS]
        for stem, sampler, start in COLD_EVALUATIONS:
            assert experiment.evaluations[stem] == {
                "sampler": sampler,
                **({"start": "test"} if start == "test" else {}),
            }


def test_runner_trains_collects_evaluates_and_resumes(tmp_path, synthetic_mnist):
    tiny = {"n_hidden": [4, 4], "max_train_steps": 2, "train_batch_size": 16, "num_sample_images": 4}
    experiments = write_experiments(
        tmp_path / "experiments.yaml",
        {
            "gauss": {
                "config": GAUSSIAN_CONFIG,
                "args": {
                    **tiny,
                    "eval_num_images": 8,
                    "num_train_timesteps": 20,
                    "sample_inference_steps": 4,
                },
                "evaluations": {"metrics": {"sampler": "ddim", "num_inference_steps": 4}},
            },
            "rows": {
                "config": COLD_CONFIG,
                "args": {**tiny, "eval_num_images": 8, "group_size": 7},
                "evaluations": {
                    "metrics": {"sampler": "improved"},
                    "direct_conditional": {"sampler": "direct", "start": "test"},
                },
            },
        },
    )
    command = [
        "scripts/run_experiments.py", "--experiments", experiments, "--work_dir", str(tmp_path / "work"),
        "--runs_dir", str(tmp_path / "runs"), "--dataset_name", str(synthetic_mnist), "--num_images", "12",
        "--jobs", "2",
    ]  # fmt: skip
    first = run_python(*command)
    assert first.returncode == 0, first.stdout + first.stderr
    runs = tmp_path / "runs"
    for name in ("gauss", "rows"):
        for small_file in (
            "metrics.jsonl",
            "training_config.yaml",
            "run.json",
            "degradation.png",
            "metrics.json",
        ):
            assert (runs / name / small_file).is_file(), (name, small_file)
        assert list((runs / name / "samples").glob("epoch_*.png"))
        assert not list((runs / name).rglob("*.safetensors")), "weights must stay out of the report folder"
    conditional = json.loads((runs / "rows" / "direct_conditional.json").read_text())
    assert (conditional["start"], conditional["sampler"], conditional["num_images"]) == (
        "test",
        "direct",
        12,
    )
    assert (
        json.loads((runs / "gauss" / "metrics.json").read_text())["per_t"]["kind"]
        == "forward_process_normality"
    )

    # A second call finds everything done: it neither trains nor evaluates again.
    (runs / "rows" / "direct_conditional.json").unlink()
    second = run_python(*command)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "train.py" not in second.stdout
    assert second.stdout.count("evaluate.py") == 1
    assert (runs / "rows" / "direct_conditional.json").is_file()


def test_runner_rejects_unknown_experiment_names(tmp_path):
    result = run_python("scripts/run_experiments.py", "--only", "nope", "--runs_dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: unknown experiments ['nope']")
