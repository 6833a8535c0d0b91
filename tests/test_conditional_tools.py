"""The tools on class-conditional models: ``sample.py --digits/--guidance_scale``, ``evaluate.py``'s
conditional accuracy and guidance curve (:mod:`mnist_diffusion.evaluation.conditional`), and
``benchmark.py --section conditional`` (:mod:`mnist_diffusion.evaluation.conditional_benchmark`). The demo's
digit picker is tested in ``tests/test_demo.py``, the model card's section in ``tests/test_hub.py``.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mnist_diffusion.evaluation import conditional_benchmark
from mnist_diffusion.evaluation.conditional import (
    DEFAULT_GUIDANCE_SCALES,
    check_guidance_scales,
    evaluate_conditional,
    recommended_guidance_scale,
    requested_digits,
)
from mnist_diffusion.evaluation.conditional_benchmark import COLD_DEGRADATIONS, QUICKSTART_CONFIG
from mnist_diffusion.evaluation.metrics import SampleQuality
from mnist_diffusion.pipelines import load_pipeline, save_pipeline
from mnist_diffusion.pipelines.sampling import generate
from mnist_diffusion.training.cli import run_cli
from mnist_diffusion.training.data import load_split
from mnist_diffusion.training.train import parse_args
from tests.conftest import PROJECT_ROOT, run_python, tiny_pipeline


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SAMPLE, EVALUATE = load_script("sample"), load_script("evaluate")


@pytest.fixture(scope="module")
def conditional_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("conditional") / "gaussian"
    save_pipeline(tiny_pipeline(class_embedding_std=3.0), folder)
    return folder


def cli(main, argv: list[str]) -> int:
    """``run_cli(main, argv)``, with argparse's own exits as their code."""
    try:
        return run_cli(main, argv)
    except SystemExit as exit_:
        return exit_.code


# ----- sample.py --------------------------------------------------------------------------------------------


def test_digits_all_is_a_grid_with_one_row_per_digit(conditional_folder, tmp_path):
    flags = ["--model", str(conditional_folder), "--digits", "all", "--num_images", "3",
             "--guidance_scale", "2", "--num_inference_steps", "3", "--seed", "4"]  # fmt: skip
    assert cli(SAMPLE.main, [*flags, "--output", str(tmp_path / "grid.png")]) == 0
    # 3 images per digit as the columns, the ten digits as the rows (28-pixel images, 2-pixel gutters).
    assert Image.open(tmp_path / "grid.png").size == (3 * 28 + 4 * 2, 10 * 28 + 11 * 2)
    assert cli(SAMPLE.main, [*flags, "--output", str(tmp_path / "grid.npy")]) == 0
    pipeline = load_pipeline(conditional_folder)
    labels = [digit for digit in range(10) for _ in range(3)]
    expected = generate(pipeline, 30, None, 3, seed=4, class_labels=labels, guidance_scale=2.0)
    np.testing.assert_allclose(np.load(tmp_path / "grid.npy"), expected[:, 0].numpy(), rtol=0, atol=1e-6)
    # The grid's row r is digit r: the same pixels as the images asked for that digit.
    grid = np.asarray(Image.open(tmp_path / "grid.png").convert("L"), dtype=np.float32) / 255
    for digit in (0, 7):
        top, left = 2 + digit * 30, 2 + 2 * 30
        cell = grid[top : top + 28, left : left + 28]
        np.testing.assert_allclose(cell, expected[digit * 3 + 2, 0].numpy(), atol=1 / 255 + 1e-6)


@pytest.mark.parametrize(
    ("flags", "labels", "scale"),
    [
        (["--digits", "3", "1", "4"], [3, 1, 4], 1.0),  # one per image: --num_images is their number
        (["--digits", "7", "--num_images", "4", "--guidance_scale", "3.5"], [7] * 4, 3.5),  # one for all
        (
            ["--num_images", "12", "--guidance_scale", "0"],
            [i % 10 for i in range(12)],
            0.0,
        ),  # default: in turn
        (["--digits", "any", "--num_images", "3"], None, 1.0),  # unconditional samples
    ],
    ids=["per-image", "one-for-all", "default", "any"],
)
def test_digits_ask_for_what_generate_draws(flags, labels, scale, conditional_folder, tmp_path):
    output = tmp_path / "x.npy"
    argv = ["--model", str(conditional_folder), *flags, "--num_inference_steps", "3", "--output", str(output)]
    assert cli(SAMPLE.main, argv) == 0
    count = len(labels) if labels else 3
    expected = generate(
        load_pipeline(conditional_folder), count, None, 3, seed=0, class_labels=labels, guidance_scale=scale
    )
    np.testing.assert_allclose(np.load(output), expected[:, 0].numpy(), rtol=0, atol=1e-6)


def test_the_digits_change_the_samples(conditional_folder, tmp_path):
    outputs = {}
    for digits in ("1", "8", "any"):
        outputs[digits] = tmp_path / f"{digits}.npy"
        argv = ["--model", str(conditional_folder), "--digits", digits, "--num_images", "2",
                "--num_inference_steps", "3", "--output", str(outputs[digits])]  # fmt: skip
        assert cli(SAMPLE.main, argv) == 0
    arrays = {digits: np.load(path) for digits, path in outputs.items()}
    assert not np.allclose(arrays["1"], arrays["8"]) and not np.allclose(arrays["1"], arrays["any"])


@pytest.mark.parametrize(
    ("model", "flags", "message"),
    [
        (
            "conditional",
            ["--digits", "12"],
            "--digits 12 is not a class of this model: it draws the digits 0-9",
        ),
        (
            "conditional",
            ["--digits", "x"],
            "--digits takes digits 0-9 (one per image, or one for all), 'all' or 'any'; got 'x'",
        ),
        ("conditional", ["--digits", "-1"], "got '-1'"),
        ("conditional", ["--digits", "all", "3"], "--digits all must be given alone"),
        (
            "conditional",
            ["--digits", "1", "2", "--num_images", "3"],
            "2 --digits given for --num_images 3; give one digit per image, or one for all",
        ),
        (
            "conditional",
            ["--guidance_scale", "-1"],
            "--guidance_scale must be a finite number >= 0, got -1.0",
        ),
        (
            "conditional",
            ["--guidance_scale", "inf"],
            "--guidance_scale must be a finite number >= 0, got inf",
        ),
        (
            "conditional",
            ["--guidance_scale", "much"],
            "argument --guidance_scale: invalid float value: 'much'",
        ),
        (
            "conditional",
            ["--digits", "any", "--guidance_scale", "2"],
            "--guidance_scale guides towards the digits asked for, but --digits any samples unconditionally",
        ),
        ("unconditional", ["--digits", "3"], "--digits needs a class-conditional model, but"),
        ("unconditional", ["--guidance_scale", "0"], "--guidance_scale needs a class-conditional model"),
        (
            "unconditional",
            ["--digits", "any", "--guidance_scale", "2"],
            "is unconditional (trained without --class_conditional); leave --digits and --guidance_scale out",
        ),
    ],
)
def test_bad_digits_and_scales_are_one_line_before_any_sampling(
    model, flags, message, conditional_folder, tiny_ddpm_folder, tmp_path, capsys, monkeypatch
):
    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled despite bad input")

    monkeypatch.setattr(SAMPLE, "generate", no_sampling)
    folder = conditional_folder if model == "conditional" else tiny_ddpm_folder
    output = tmp_path / "out" / "x.png"
    assert cli(SAMPLE.main, ["--model", str(folder), *flags, "--output", str(output)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and message in error, error
    assert not output.exists()


def test_help_says_what_a_conditional_model_draws_by_default():
    result = run_python("scripts/sample.py", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "Default: every digit in turn (0, 1, ..., 9, 0, ...)" in text
    assert "'all': a grid with one row per digit 0-9" in text and "'any': unconditional samples" in text
    assert "1, the default, samples the model as trained" in text


# ----- the evaluator: conditional accuracy and the guidance curve -------------------------------------------


def test_conditional_accuracy_counts_the_samples_read_as_the_digit_asked_for(synthetic_mnist):
    test, train = load_split(str(synthetic_mnist), "test"), load_split(str(synthetic_mnist), "train")
    quality = SampleQuality(test, train)
    images = torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    predictions = quality.evaluate(images).predictions
    assert predictions.shape == (20,)
    assert quality.evaluate(images, labels=predictions).metrics["conditional_accuracy"] == 1.0
    assert quality.evaluate(images, labels=(predictions + 1) % 10).metrics["conditional_accuracy"] == 0.0
    half = torch.where(torch.arange(20) < 5, predictions, (predictions + 1) % 10)
    assert quality.evaluate(images, labels=half).metrics["conditional_accuracy"] == 0.25
    assert "conditional_accuracy" not in quality.evaluate(images).metrics
    with pytest.raises(ValueError, match=r"labels must be one class index per sample \(20\)"):
        quality.evaluate(images, labels=[1, 2])

    # Through a pipeline: each digit asked for equally often; per digit, the share read as that digit.
    pipeline = tiny_pipeline(class_embedding_std=3.0)
    result = evaluate_conditional(pipeline, quality, 20, 2.0, "ddim", 3, seed=1)
    assert result.labels.tolist() == [i % 10 for i in range(20)] and result.guidance_scale == 2.0
    read = result.evaluation.predictions
    assert result.accuracy == (read == result.labels).double().mean().item()
    assert result.per_digit_accuracy == [
        (read[result.labels == digit] == digit).double().mean().item() for digit in range(10)
    ]
    expected = generate(
        pipeline, 20, "ddim", 3, seed=1, class_labels=result.labels.tolist(), guidance_scale=2.0
    )
    torch.testing.assert_close(result.images, expected, rtol=0, atol=0)


def test_the_curve_settings_are_checked():
    assert check_guidance_scales([0, 1, 2.5]) == (0.0, 1.0, 2.5)
    for scales, message in (
        ([], "at least one guidance scale"),
        ([1, -1], "finite numbers >= 0, got -1"),
        ([float("nan")], "finite numbers >= 0, got nan"),
        ([2, 2.0], "guidance scale 2.0 is given twice"),
        (["2"], "numbers >= 0, got '2'"),
    ):
        with pytest.raises(ValueError, match=message):
            check_guidance_scales(scales)
    pipeline = tiny_pipeline(class_embedding_std=3.0)
    assert requested_digits(pipeline, 30) == [i % 10 for i in range(30)]
    with pytest.raises(ValueError, match="num_images=25 must be a multiple of the 10 classes.*use 20 or 30"):
        requested_digits(pipeline, 25)
    with pytest.raises(ValueError, match="num_images=4 must be a multiple of the 10 classes.*use 10$"):
        requested_digits(pipeline, 4)
    with pytest.raises(ValueError, match="needs a class-conditional model"):
        requested_digits(tiny_pipeline(conditional=False), 10)
    rows = [{"guidance_scale": w, "fid": fid} for w, fid in ((0.0, 1.0), (1.0, 5.0), (3.0, 4.0), (5.0, 6.0))]
    assert recommended_guidance_scale(rows) == 3.0  # the lowest FID among the guided scales
    assert recommended_guidance_scale(rows[:1]) is None


def test_evaluate_scores_a_conditional_model_and_its_guidance_curve(
    conditional_folder, synthetic_mnist, tmp_path
):
    output = tmp_path / "eval" / "metrics.json"
    argv = ["--model", str(conditional_folder), "--num_images", "20", "--sampler", "ddim",
            "--num_inference_steps", "3", "--guidance_scale", "2", "--guidance_curve", "0", "2", "1",
            "--dataset_name", str(synthetic_mnist), "--per_t_images", "8", "--device", "cpu",
            "--output", str(output)]  # fmt: skip
    assert cli(EVALUATE.main, argv) == 0
    metrics = json.loads(output.read_text())
    assert metrics["class_conditional"] is True and metrics["guidance_scale"] == 2.0
    assert metrics["class_labels"] == "every digit equally often (2 each)"
    assert 0 <= metrics["conditional_accuracy"] <= 1 and len(metrics["per_digit_accuracy"]) == 10
    assert sum(metrics["class_histogram"]) == 20 and metrics["num_images"] == 20
    # The main scores are those of the samples asked for: the same as evaluate_conditional's.
    test, train = load_split(str(synthetic_mnist), "test"), load_split(str(synthetic_mnist), "train")
    again = evaluate_conditional(
        load_pipeline(conditional_folder), SampleQuality(test, train), 20, 2.0, "ddim", 3, seed=0
    )
    assert again.row()["conditional_accuracy"] == metrics["conditional_accuracy"]
    assert again.row()["fid"] == pytest.approx(metrics["fid"], rel=1e-5)
    # The curve: one row per scale in the order given, the main scale's row reused.
    curve = metrics["guidance_curve"]
    assert [row["guidance_scale"] for row in curve] == [0.0, 2.0, 1.0]
    for row in curve:
        assert {"conditional_accuracy", "fid", "fid_floor", "class_entropy", "per_digit_accuracy"} <= set(row)
    assert (
        curve[1]["fid"] == metrics["fid"]
        and curve[1]["conditional_accuracy"] == metrics["conditional_accuracy"]
    )
    assert metrics["recommended_guidance_scale"] in (1.0, 2.0)
    saved = json.loads((output.parent / metrics["guidance_curve_file"]).read_text())
    assert (
        saved["rows"] == curve and saved["guidance_scales"] == [0.0, 2.0, 1.0] and saved["num_images"] == 20
    )
    assert saved["sampler"] == "ddim" and saved["num_inference_steps"] == 3
    plot = output.parent / metrics["figures"]["guidance_curve"]
    assert plot.name == "metrics_guidance_curve.png" and Image.open(plot).format == "PNG"
    # The sample grid: one column per digit.
    assert Image.open(output.parent / metrics["figures"]["samples"]).size == (10 * 30 + 2, 2 * 30 + 2)
    assert not list(output.parent.glob(".*"))  # no temporary files left


def test_the_default_curve_is_0_1_2_3_5(conditional_folder, synthetic_mnist, tmp_path, capsys):
    output = tmp_path / "metrics.json"
    argv = ["--model", str(conditional_folder), "--num_images", "10", "--num_inference_steps", "2",
            "--guidance_curve", "--dataset_name", str(synthetic_mnist), "--per_t_images", "4",
            "--device", "cpu", "--output", str(output)]  # fmt: skip
    assert cli(EVALUATE.main, argv) == 0
    metrics = json.loads(output.read_text())
    assert DEFAULT_GUIDANCE_SCALES == (0.0, 1.0, 2.0, 3.0, 5.0)
    assert [row["guidance_scale"] for row in metrics["guidance_curve"]] == list(DEFAULT_GUIDANCE_SCALES)
    assert metrics["guidance_scale"] == 1.0
    printed = capsys.readouterr().out
    assert "conditional accuracy" in printed and "guidance scale 5: accuracy" in printed


@pytest.mark.parametrize(
    ("model", "flags", "message"),
    [
        ("unconditional", ["--guidance_scale", "2"], "--guidance_scale need a class-conditional model, but"),
        ("unconditional", ["--guidance_curve"], "--guidance_curve need a class-conditional model"),
        (
            "conditional",
            ["--guidance_curve", "1", "-2"],
            "--guidance_curve: guidance scales must be finite numbers >= 0, got -2.0",
        ),
        (
            "conditional",
            ["--guidance_curve", "1", "1"],
            "--guidance_curve: guidance scale 1.0 is given twice",
        ),
        ("conditional", ["--guidance_curve", "x"], "argument --guidance_curve: invalid float value: 'x'"),
        (
            "conditional",
            ["--guidance_scale", "nan"],
            "--guidance_scale must be a finite number >= 0, got nan",
        ),
        (
            "conditional",
            ["--num_images", "15"],
            "--num_images: num_images=15 must be a multiple of the 10 "
            "classes, so that every digit is asked for equally often; use 10 or 20",
        ),
        ("conditional", ["--start", "test"], "--start test restores test images without asking for digits"),
        ("samples", ["--guidance_curve"], "--guidance_curve sample a class-conditional model (--model)"),
    ],
)
def test_bad_conditional_flags_are_one_line_before_the_data_is_read(
    model, flags, message, conditional_folder, tiny_ddpm_folder, tmp_path, capsys
):
    output = tmp_path / "out" / "m.json"
    # A dataset that does not exist: every check comes before the data is read or anything is sampled.
    if model == "samples":
        np.save(tmp_path / "s.npy", np.zeros((4, 28, 28), np.float32))
        source = ["--samples", str(tmp_path / "s.npy")]
    else:
        source = ["--model", str(conditional_folder if model == "conditional" else tiny_ddpm_folder)]
    argv = [*source, *flags, "--dataset_name", str(tmp_path / "no_data"), "--device", "cpu",
            "--output", str(output)]  # fmt: skip
    assert cli(EVALUATE.main, argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and message in error, error
    assert not output.exists()


def test_the_trainer_logs_the_conditional_accuracy_and_the_card_reports_it(synthetic_mnist, tmp_path):
    from mnist_diffusion.publishing import hub

    output = tmp_path / "run"
    result = run_python(
        "training/train.py", "--dataset_name", str(synthetic_mnist), "--output_dir", str(output),
        "--class_conditional", "--n_hidden", "8", "8", "--num_train_timesteps", "10",
        "--max_train_steps", "2", "--train_batch_size", "32", "--num_sample_images", "2",
        "--sample_inference_steps", "2",
        "--eval_epochs", "1", "--eval_num_images", "10", "--sampler", "ddim",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (output / "logs" / "metrics.jsonl").read_text().splitlines()]
    [evaluation] = [record for record in records if "fid" in record]
    assert 0 <= evaluation["conditional_accuracy"] <= 1 and evaluation["num_images"] == 10
    assert "conditional accuracy" in result.stderr
    text = hub.build_model_card(output, "someone/model", hub.read_metrics(output)).text
    accuracy = f"{evaluation['conditional_accuracy']:.1%}"
    assert f"Conditional accuracy: **{accuracy}** of 10 samples drawn at `w = 1`" in text


# ----- benchmark.py --section conditional -------------------------------------------------------------------

CONDITIONAL = ("--section", "conditional", "--quick")


def test_the_shipped_conditional_recipe_is_the_quickstart_with_labels():
    shipped = vars(parse_args(["--config", "training/configs/quickstart_conditional.yaml"]))
    derived = vars(
        parse_args(
            [
                "--config",
                "training/configs/quickstart.yaml",
                "--class_conditional",
                "--output_dir",
                "outputs/quickstart_conditional",
            ]
        )
    )
    assert {key: value for key, value in shipped.items() if derived[key] != value} == {
        "config": "training/configs/quickstart_conditional.yaml"
    }


def test_quick_conditional_benchmark_writes_its_schema_and_resumes(tmp_path):
    script = str(PROJECT_ROOT / "scripts" / "benchmark.py")
    result = run_python(script, *CONDITIONAL, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    work = tmp_path / "outputs" / "conditional_benchmark_quick"
    path = work / "conditional.json"
    results = json.loads(path.read_text())
    assert results["schema_version"] == 1 and results["quick"] is True
    settings = results["settings"]
    assert settings["num_images"] == 20 and settings["guidance_scales"] == [0.0, 1.0, 2.0, 3.0, 5.0]
    assert settings["degradations"] == list(COLD_DEGRADATIONS) and len(COLD_DEGRADATIONS) >= 8
    assert settings["cold_minutes"] == 10 and settings["cold_max_steps"] == 20
    [session] = results["sessions"]
    assert session["command"] == "python scripts/benchmark.py --section conditional --quick"

    # (a) The quickstart recipe, unconditional and conditional, at the same budget.
    plain, conditional = results["quickstart"]["unconditional"], results["quickstart"]["conditional"]
    assert plain["train_steps"] == conditional["train_steps"] == 2
    # Each run names the machine whose minutes it was trained in: sessions of a resumed study may differ.
    machine = f"{session['machine']['cpu']}, {session['machine']['usable_cpus']} CPUs"
    assert plain["machine"] == conditional["machine"] == machine
    shipped_sampler = yaml.safe_load(QUICKSTART_CONFIG.read_text())["sampler"]
    assert plain["sampler"] == conditional["sampler"] == shipped_sampler == "flow_euler"
    assert plain["fid"] > 0 and plain["fid_floor"] >= 0 and "conditional_accuracy" not in plain
    assert not load_pipeline(work / "quickstart").unet.config.get("num_class_embeds")
    assert load_pipeline(work / "quickstart_conditional").unet.config.num_class_embeds == 11
    assert [row["guidance_scale"] for row in conditional["curve"]] == settings["guidance_scales"]
    for row in conditional["curve"]:
        assert 0 <= row["conditional_accuracy"] <= 1 and row["fid"] > 0 and 0 <= row["class_entropy"] <= 1
        assert row["num_images"] == 20 and len(row["per_digit_accuracy"]) == 10
    assert conditional["recommended_guidance_scale"] == recommended_guidance_scale(conditional["curve"])

    # (b) Every cold degradation, conditional, at one budget: every sampler at w = 1, the best one's curve.
    assert list(results["cold"]) == list(COLD_DEGRADATIONS)
    for name, entry in results["cold"].items():
        assert entry["train_steps"] == 2 and entry["machine"] == machine, name
        config = json.loads((work / f"cold_{name}" / "unet" / "config.json").read_text())
        # The quickstart's network: only the forward process differs from the quickstart rows.
        assert config["num_class_embeds"] == 11 and config["_class_name"] == "UNet2DModel"
        samplers = entry["samplers"]
        assert set(samplers) == {"improved", "naive", "direct"}
        assert entry["best_sampler"] == min(samplers, key=lambda sampler: samplers[sampler]["fid"])
        curve = entry["curve"]
        assert [row["guidance_scale"] for row in curve] == settings["guidance_scales"]
        assert {row["sampler"] for row in curve} == {entry["best_sampler"]}
        assert curve[1] == samplers[entry["best_sampler"]]  # w = 1 was scored once, with the samplers
    markdown = (work / "conditional.md").read_text()
    assert "| unconditional | - | - |" in markdown and markdown.count("| class-conditional |") == 5
    header = (
        "| degradation | best sampler | w = 0 | w = 1 | w = 2 | w = 3 | w = 5 | FID floor | steps | machine |"
    )
    assert header in markdown
    assert all(f"| {name} | " in markdown for name in COLD_DEGRADATIONS)
    assert markdown.count(f"| 2 | {machine} |") == len(COLD_DEGRADATIONS)

    # A second run finds every score there: no run is trained or even opened again.
    again = run_python(script, *CONDITIONAL, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "has finished" not in again.stderr
    rerun = json.loads(path.read_text())
    assert len(rerun["sessions"]) == 2
    assert {key: rerun[key] for key in ("quickstart", "cold")} == {
        key: results[key] for key in ("quickstart", "cold")
    }

    # Killed while scoring: the rows that were not written are scored again, the same (same seed, samples).
    partial = json.loads(path.read_text())
    del partial["cold"]["blur"]["curve"][2:]
    partial["quickstart"]["conditional"]["curve"] = []
    path.write_text(json.dumps(partial))
    finished = run_python(script, *CONDITIONAL, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    restored = json.loads(path.read_text())
    for before, after in (
        (results["cold"]["blur"]["curve"], restored["cold"]["blur"]["curve"]),
        (results["quickstart"]["conditional"]["curve"], restored["quickstart"]["conditional"]["curve"]),
    ):
        assert [row["guidance_scale"] for row in after] == settings["guidance_scales"]
        for row, earlier in zip(after, before, strict=True):
            assert row["conditional_accuracy"] == earlier["conditional_accuracy"]
            assert row["fid"] == pytest.approx(earlier["fid"], rel=1e-4)

    # A later session on a fresh clone, without the training folders: the scored runs are not trained again.
    for folder in ("quickstart", "quickstart_conditional", *(f"cold_{name}" for name in COLD_DEGRADATIONS)):
        shutil.rmtree(work / folder)
    later = run_python(script, *CONDITIONAL, cwd=tmp_path)
    assert later.returncode == 0, later.stderr[-3000:]
    assert sorted(path.name for path in work.iterdir() if path.is_dir()) == ["synthetic_mnist"]
    assert json.loads(path.read_text())["cold"] == restored["cold"]

    # Other settings are refused rather than mixed into these results.
    other = run_python(script, *CONDITIONAL, "--guidance_scales", "0", "1", cwd=tmp_path)
    assert other.returncode == 2
    assert other.stderr.strip().splitlines() == [
        f"error: {path.relative_to(tmp_path)} holds results of other settings (guidance_scales [0.0, 1.0, "
        "2.0, 3.0, 5.0] -> [0.0, 1.0]); pass the same settings to finish it, or another --output to start a "
        "new one"
    ]


def test_a_run_trained_again_keeps_its_earlier_scores_apart(tmp_path):
    folder = tmp_path / "cold_impulse"
    (folder / "logs").mkdir(parents=True)
    (folder / "logs" / "metrics.jsonl").write_text('{"step": 7, "train_seconds": 60}\n')
    row = {"label": "Naive (Algorithm 1)", "num_inference_steps": 20, "guidance_scale": 1.0}
    row |= {"conditional_accuracy": 0.5, "fid": 9.0, "fid_floor": 0.7}
    scored = {"train_steps": 5, "machine": "Old CPU, 2 CPUs", "best_sampler": "naive"}
    scored |= {"samplers": {"naive": row}, "curve": [row]}
    settings = {"num_images": 10, "guidance_scales": [1.0], "cold_minutes": 10, "cold_max_steps": 20}
    data = {"quick": False, "settings": settings, "quickstart": {}}
    data["cold"] = {"impulse": copy.deepcopy(scored)}
    machine = {"cpu": "New CPU", "usable_cpus": 2, "torch": "2", "diffusers": "0"}
    data["sessions"] = [{"command": "benchmark", "machine": machine}]
    results = conditional_benchmark.Results(tmp_path / "conditional.json", data)

    entry = results.entry("cold", "impulse", folder)
    assert entry == {"machine": "New CPU, 2 CPUs", "earlier": [scored], "folder": str(folder)} | {
        "train_steps": 7,
        "train_minutes": 1.0,
    }
    assert results.entry("cold", "impulse", folder)["earlier"] == [scored]  # the same run: nothing moves
    better = row | {"fid": 4.0}
    entry |= {"best_sampler": "naive", "samplers": {"naive": better}, "curve": [better]}
    lines = conditional_benchmark.markdown_report(results.data).splitlines()
    sampler = "Naive (Algorithm 1), 20 steps"
    assert f"| impulse | {sampler} | 0.500 / 4.00 | 0.70 | 7 | New CPU, 2 CPUs |" in lines
    assert f"| impulse (earlier run) | {sampler} | 0.500 / 9.00 | 0.70 | 5 | Old CPU, 2 CPUs |" in lines
    assert any("An earlier run is a run of that degradation trained again since" in line for line in lines)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--num_images", "15"],
            "--num_images must be a positive multiple of 10 (each digit asked for equally often), got 15",
        ),
        (["--guidance_scales", "1", "-1"], "--guidance_scales: guidance scales must be finite numbers >= 0"),
        (["--cold_minutes", "0"], "--cold_minutes must be positive, got 0"),
        (["--cold_max_steps", "0"], "--cold_max_steps must be at least 1, got 0"),
        (["--degradations", "blur", "blur"], "--degradations names one degradation twice"),
        (["--degradations", "fog"], "argument --degradations: invalid choice: 'fog'"),
        (["--output", "results.txt"], "--output 'results.txt' must end in .json"),
    ],
)
def test_conditional_benchmark_bad_flags_are_one_line_before_any_work(
    flags, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert cli(load_script("benchmark").main, [*CONDITIONAL, *flags]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and message in error, error
    assert not any(path.is_file() for path in tmp_path.rglob("*"))
