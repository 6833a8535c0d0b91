"""Few-step students: ``training/distill.py`` (progressive distillation) on tiny teachers; every tool on them.

The teachers are trained here with ``training/train.py`` on synthetic data for a few steps, then distilled
from 8 steps to students of 4, 2 and 1 steps. The tools (``scripts/sample.py``, ``scripts/evaluate.py``, the
demo's handler, the model card) are the project's own, unchanged: a student must work in them through the
protocol, with its own step count as their default.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from PIL import Image
from safetensors.torch import load_file

from mnist_diffusion.app import demo
from mnist_diffusion.models import CourseworkCNN
from mnist_diffusion.pipelines import load_pipeline, save_pipeline
from mnist_diffusion.pipelines.sampling import generate
from mnist_diffusion.publishing import hub
from mnist_diffusion.schedulers import (
    FORWARD_PROCESSES,
    ddpm_scheduler,
    flow_matching_scheduler,
    forward_process,
)
from mnist_diffusion.training import distill
from mnist_diffusion.training.cli import run_cli
from tests.conftest import PROJECT_ROOT, run_python, run_without_the_project

T = 20
KINDS = ("flow", "gaussian")
STUDENTS = (4, 2, 1)
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
# Distil the 8-step teacher to 4, 2 and 1 steps, 2 steps per round, a checkpoint after every step.
DISTILL_FLAGS = [
    "--teacher_steps", "8", "--student_steps", "1", "--steps_per_round", "2", "--train_batch_size", "16",
    "--num_sample_images", "2", "--logging_steps", "1", "--checkpointing_steps", "1",
    "--checkpoints_total_limit", "10", "--num_threads", "1",
]  # fmt: skip


def train_teacher(kind: str, dataset: Path, output: Path) -> Path:
    flags = ["--dataset_name", str(dataset), "--output_dir", str(output), "--degradation", kind,
             "--num_train_timesteps", str(T), "--n_hidden", "8", "8", "--train_batch_size", "32",
             "--num_sample_images", "2", "--sample_inference_steps", "2", "--eval_batch_size", "64",
             "--max_train_steps", "2", "--num_threads", "1"]  # fmt: skip
    result = run_python("training/train.py", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def run_distill(teacher: Path, dataset: Path, output: Path, *extra: str):
    flags = ["--teacher", str(teacher), "--dataset_name", str(dataset), "--output_dir", str(output)]
    return run_python("training/distill.py", *flags, *DISTILL_FLAGS, *extra)


@pytest.fixture(scope="module")
def teachers(synthetic_mnist, tmp_path_factory) -> dict[str, Path]:
    """A flow and a Gaussian teacher (CourseworkCNN, T = 20), trained by train.py for 2 steps."""
    root = tmp_path_factory.mktemp("teachers")
    return {kind: train_teacher(kind, synthetic_mnist, root / kind) for kind in KINDS}


@pytest.fixture(scope="module")
def students(teachers, synthetic_mnist, tmp_path_factory) -> dict[str, Path]:
    """Each teacher distilled by distill.py: OUTPUT/steps-4, steps-2, steps-1, and OUTPUT (the 1-step one)."""
    root = tmp_path_factory.mktemp("students")
    folders = {}
    for kind, teacher in teachers.items():
        result = run_distill(teacher, synthetic_mnist, root / kind)
        assert result.returncode == 0, result.stderr[-3000:]
        folders[kind] = root / kind
    return folders


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class CallCounter(list):
    """A list that grows by one at every call of a network, until :meth:`remove`."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.hook = network.register_forward_hook(lambda module, inputs, output: self.append(1))

    def remove(self) -> None:
        self.hook.remove()


# ----- the saved students -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_round_saves_a_student_that_samples_in_its_own_steps(kind, students):
    root = students[kind]
    summary = json.loads((root / distill.SUMMARY_FILE).read_text())
    assert summary["students"] == [4, 2, 1] and summary["teacher_steps"] == 8 and summary["process"] == kind
    assert [r["student_steps"] for r in summary["rounds"]] == [4, 2, 1]
    assert [r["step"] for r in summary["rounds"]] == [2, 4, 6]
    assert summary["cpu_seconds"] > 0 and summary["train_seconds"] > 0
    for steps in STUDENTS:
        folder = root / f"steps-{steps}"
        index = json.loads((folder / "model_index.json").read_text())
        config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        assert config["_default_steps"] == steps
        if kind == "gaussian":
            assert index["_class_name"] == "DDPMPipeline" and index["scheduler"] == [
                "diffusers",
                "DDIMScheduler",
            ]
            assert (config["prediction_type"], config["timestep_spacing"], config["clip_sample"]) == (
                "v_prediction", "trailing", False
            )  # fmt: skip
        else:
            assert index["_class_name"] == ["flow_matching", "FlowMatchingPipeline"]
            assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
            assert config["shift"] == 1.0 and config["shift_terminal"] == (1 / steps if steps > 1 else None)
        process = forward_process(load_pipeline(folder))
        assert process.name == kind and process.default_steps() == steps
        assert process.default_sampler == {"gaussian": "ddim", "flow": "flow_euler"}[kind]
        assert (root / "samples" / f"steps-{steps}.png").is_file()
    # The run's own folder is the last student.
    torch.testing.assert_close(
        load_file(root / WEIGHTS), load_file(root / "steps-1" / WEIGHTS), rtol=0, atol=0
    )
    # Each round starts from the last: the students differ.
    assert not torch.equal(*(next(iter(load_file(root / f"steps-{n}" / WEIGHTS).values())) for n in (4, 1)))
    records = read_jsonl(root / "logs" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["student_steps"] for r in records] == [4, 4, 2, 2, 1, 1]
    assert all(np.isfinite(r["loss"]) for r in records)


@pytest.mark.parametrize("kind", KINDS)
def test_the_network_is_called_exactly_the_requested_number_of_times(kind, students):
    for student in STUDENTS:
        pipeline = load_pipeline(students[kind] / f"steps-{student}")
        process = forward_process(pipeline)
        calls = CallCounter(pipeline.unet)
        generate(pipeline, 3)  # the student's own sampler and steps
        assert len(calls) == student, (kind, student)
        for requested in (1, 2, 4):
            calls.clear()
            if kind == "flow" and student > 1 and requested == 1:
                # Evenly spaced levels that end at shift_terminal need 2 steps or more: refused, not NaN.
                with pytest.raises(ValueError, match="shift_terminal"):
                    generate(pipeline, 3, num_inference_steps=1)
                continue
            images = generate(pipeline, 3, process.default_sampler, requested)
            assert len(calls) == requested and torch.isfinite(images).all(), (kind, student, requested)
        calls.remove()


@pytest.mark.parametrize("kind", KINDS)
def test_the_stock_scheduler_takes_exactly_the_steps_the_student_learnt(kind, students):
    for student in STUDENTS:
        pipeline = load_pipeline(students[kind] / f"steps-{student}")
        process = forward_process(pipeline)
        sampler = distill.DETERMINISTIC_SAMPLERS[kind]
        latents = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(student))
        ours = (
            distill.rollout(pipeline.unet, sampler, pipeline.scheduler, student, latents) / 2 + 0.5
        ).clamp(0, 1)
        sampling = process.with_sampler(pipeline, process.default_sampler)
        if kind == "flow":
            stock = sampling(batch_size=2, num_inference_steps=student, latents=latents, output_type="pt")
        else:  # DDPMPipeline draws its start with the generator: the same draw as `latents`
            generator = torch.Generator().manual_seed(student)
            stock = sampling(batch_size=2, num_inference_steps=student, generator=generator, output_type="pt")
        torch.testing.assert_close(stock.images, ours, rtol=0, atol=1e-5)
        # Another step count samples something else (the comparison can fail).
        if student > 1:
            other = distill.rollout(pipeline.unet, sampler, pipeline.scheduler, student * 2, latents)
            assert not torch.allclose((other / 2 + 0.5).clamp(0, 1), ours, atol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_a_student_round_trips_and_plain_diffusers_samples_it_as_the_tools_do(kind, students, tmp_path):
    saved = load_pipeline(students[kind] / "steps-2")
    copy = tmp_path / "copy"
    save_pipeline(saved, copy)
    loaded = load_pipeline(copy)
    assert type(loaded) is type(saved) and type(loaded.scheduler) is type(saved.scheduler)
    assert dict(loaded.scheduler.config) == dict(saved.scheduler.config)
    torch.testing.assert_close(loaded.unet.state_dict(), saved.unet.state_dict(), rtol=0, atol=0)
    assert forward_process(loaded).default_steps() == 2

    # Plain Diffusers, without the project: the saved scheduler samples the student in 2 network calls.
    code = textwrap.dedent(
        f"""
        import numpy as np
        import torch
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained({str(copy)!r}, trust_remote_code=True)
        calls = []
        pipe.unet.register_forward_hook(lambda module, inputs, output: calls.append(1))
        generator = torch.Generator().manual_seed(0)
        images = pipe(batch_size=2, num_inference_steps=2, generator=generator, output_type="np").images
        np.save("plain.npy", images)
        print(type(pipe).__name__, type(pipe.scheduler).__name__, len(calls))
        """
    )
    result = run_without_the_project(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    pipeline_name = {"gaussian": "DDPMPipeline", "flow": "FlowMatchingPipeline"}[kind]
    scheduler_name = {"gaussian": "DDIMScheduler", "flow": "FlowMatchEulerDiscreteScheduler"}[kind]
    assert result.stdout.split() == [pipeline_name, scheduler_name, "2"]
    process = forward_process(loaded)
    ours = process.with_sampler(loaded, process.default_sampler)(
        batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    np.testing.assert_allclose(np.load(tmp_path / "plain.npy"), ours, rtol=0, atol=1e-5)


# ----- the distillation target ------------------------------------------------------------------------------


def random_cnn(seed: int) -> CourseworkCNN:
    torch.manual_seed(seed)
    return CourseworkCNN(n_hidden=(4, 4), time_embedding_frequencies=2, time_embedding_dim=8).eval()


@pytest.mark.parametrize(
    "kind, teacher_scheduler",
    [
        ("flow", "student"),  # a later round: the teacher is the last round's student
        ("gaussian", "student"),
        ("gaussian", "trained"),  # round 1: an epsilon teacher whose DDIM clips x0 (the trained config's)
    ],
)
def test_the_target_lands_the_students_step_where_two_stock_teacher_steps_land(kind, teacher_scheduler):
    sampler = distill.DETERMINISTIC_SAMPLERS[kind]
    # T = 16: DDIM's steps of 8 land T // 8 timesteps on, exactly on the next step of its grid.
    trained = (
        flow_matching_scheduler(num_train_timesteps=16) if kind == "flow" else ddpm_scheduler("linear", 16)
    )
    ((student, grid, teacher_grid),) = distill.round_grids(sampler, trained, [4], None)
    teacher = trained if teacher_scheduler == "trained" else sampler.student_scheduler(trained, 8)
    network = random_cnn(0)
    stock_class = FlowMatchEulerDiscreteScheduler if kind == "flow" else DDIMScheduler
    for step in range(4):
        x0 = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(step)) * 2 - 1
        noise = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(10 + step))
        sample = grid.alpha[step] * x0 + grid.sigma[step] * noise
        steps = torch.full((3,), step)
        with torch.no_grad():
            target = distill.two_step_target(network, sampler, teacher, grid, teacher_grid, sample, steps)
        one_step = distill.ddim_step(
            target, sample, grid.alpha[step], grid.sigma[step], grid.alpha_next[step], grid.sigma_next[step]
        )
        # The teacher's own stock scheduler, two steps from the start of the student's step.
        stock = stock_class.from_config(sampler.student_scheduler(trained, 8).config if teacher_scheduler ==
                                        "student" else teacher.config)  # fmt: skip
        stock.set_timesteps(8)
        assert stock.timesteps[2 * step] == grid.timesteps[step]
        x = sample
        with torch.no_grad():
            for t in stock.timesteps[2 * step : 2 * step + 2]:
                x = stock.step(network(x, t.expand(3)).sample, t, x).prev_sample
        torch.testing.assert_close(one_step, x, rtol=0, atol=2e-5)
        if kind == "gaussian" and teacher_scheduler == "trained":
            assert stock.config.clip_sample  # and the teacher's clipping is in the target


def test_the_target_of_an_exact_teacher_is_the_clean_image():
    # Every image is the same point: the exact clean estimate is that point at every noise level, so every
    # deterministic path keeps its noise and the target is the point itself.
    point = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1

    class Exact(torch.nn.Module):
        def forward(self, sample, timesteps):
            s = timesteps.float().reshape(-1, 1, 1, 1) / 16
            return type("Output", (), {"sample": (sample - point) / s})()  # the velocity towards the point

    sampler = distill.DETERMINISTIC_SAMPLERS["flow"]
    trained = flow_matching_scheduler(num_train_timesteps=16)
    ((student, grid, teacher_grid),) = distill.round_grids(sampler, trained, [2], None)
    noise = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    steps = torch.tensor([0, 1, 0, 1])
    sample = (
        distill._column(grid.alpha[steps], noise) * point + distill._column(grid.sigma[steps], noise) * noise
    )
    target = distill.two_step_target(Exact(), sampler, trained, grid, teacher_grid, sample, steps)
    torch.testing.assert_close(target, point.expand_as(target), rtol=0, atol=1e-5)
    wrong = distill.two_step_target(random_cnn(1), sampler, trained, grid, teacher_grid, sample, steps)
    assert (wrong - point).abs().max() > 0.1


# ----- resuming ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("resumed_step", [3, 4], ids=["in the middle of a round", "between two rounds"])
def test_a_resumed_distillation_ends_like_an_uninterrupted_one(
    resumed_step, students, teachers, synthetic_mnist, tmp_path
):
    full = students["flow"]
    assert {p.name for p in full.glob("checkpoint-*")} == {f"checkpoint-{s}" for s in range(1, 7)}
    assert (full / "checkpoint-3" / distill.TEACHER_WEIGHTS_FILE).is_file()
    assert not list(full.glob("checkpoint-*/custom_checkpoint_*"))  # no pickled custom state
    # A run killed one step after its last checkpoint: what it had saved, its log ahead, a partial checkpoint.
    killed = tmp_path / "killed"
    (killed / "logs").mkdir(parents=True)
    shutil.copytree(full / f"checkpoint-{resumed_step}", killed / f"checkpoint-{resumed_step}")
    (killed / f".partial-checkpoint-{resumed_step + 1}").mkdir()
    for steps, end in ((4, 2), (2, 4)):
        if end <= resumed_step:
            shutil.copytree(full / f"steps-{steps}", killed / f"steps-{steps}")
    full_log = read_jsonl(full / "logs" / "metrics.jsonl")
    ahead = [r for r in full_log if r["step"] <= resumed_step + 1]
    (killed / "logs" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ahead))

    result = run_distill(teachers["flow"], synthetic_mnist, killed, "--resume_from_checkpoint", "latest")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resumed from {killed / f'checkpoint-{resumed_step}'} at step {resumed_step}" in result.stderr
    assert not list(killed.glob(".partial-*")), "the stale partial checkpoint was not pruned"
    for folder in ("", "steps-4", "steps-2", "steps-1"):
        expected, got = load_file(full / folder / WEIGHTS), load_file(killed / folder / WEIGHTS)
        for name, tensor in expected.items():
            torch.testing.assert_close(got[name], tensor, rtol=0, atol=0)
    resumed_log = read_jsonl(killed / "logs" / "metrics.jsonl")
    assert [r["step"] for r in resumed_log] == [r["step"] for r in full_log]
    assert [r["loss"] for r in resumed_log] == pytest.approx([r["loss"] for r in full_log], rel=1e-6)
    summary = json.loads((killed / distill.SUMMARY_FILE).read_text())
    assert [r["student_steps"] for r in summary["rounds"]] == [4, 2, 1]


def test_resuming_a_finished_distillation_does_nothing(students, teachers, synthetic_mnist):
    full = students["gaussian"]
    before = (full / WEIGHTS).stat().st_mtime_ns, (full / "logs" / "metrics.jsonl").read_text()
    result = run_distill(teachers["gaussian"], synthetic_mnist, full, "--resume_from_checkpoint", "latest")
    assert result.returncode == 0 and "has finished (step 6); nothing to do" in result.stderr, result.stderr
    assert ((full / WEIGHTS).stat().st_mtime_ns, (full / "logs" / "metrics.jsonl").read_text()) == before


# ----- the tools, on students -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_sample_and_evaluate_scripts_take_the_students_steps_by_default(kind, students, synthetic_mnist,
                                                                        tmp_path):  # fmt: skip
    folder = students[kind] / "steps-2"
    sampler = forward_process(load_pipeline(folder)).default_sampler
    outputs = {}
    for name, extra in (("default", []), ("explicit", ["--sampler", sampler, "--num_inference_steps", "2"])):
        outputs[name] = tmp_path / f"{name}.npy"
        result = run_python("scripts/sample.py", "--model", str(folder), "--num_images", "3", "--seed", "1",
                            "--output", str(outputs[name]), *extra)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    arrays = {name: np.load(path) for name, path in outputs.items()}
    assert arrays["default"].shape == (3, 28, 28)
    np.testing.assert_array_equal(arrays["default"], arrays["explicit"])
    four = generate(load_pipeline(folder), 3, sampler, 4, seed=1)[:, 0].numpy()
    assert not np.allclose(arrays["default"], four, atol=1e-4)  # the comparison can fail

    metrics_file = tmp_path / "eval" / "metrics.json"
    result = run_python("scripts/evaluate.py", "--model", str(folder), "--num_images", "8",
                        "--dataset_name", str(synthetic_mnist), "--per_t_images", "4",
                        "--output", str(metrics_file))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(metrics_file.read_text())
    assert (metrics["sampler"], metrics["num_inference_steps"]) == (sampler, 2)
    assert metrics["fid"] > 0 and 0 <= metrics["class_entropy"] <= 1


@pytest.mark.parametrize("kind", KINDS)
def test_the_demo_and_the_model_card_take_the_students_steps(kind, students):
    for steps in STUDENTS:
        folder = students[kind] / f"steps-{steps}"
        pipeline = load_pipeline(folder)
        process = forward_process(pipeline)
        label = process.samplers[process.default_sampler].label
        gallery, gif, report = demo.sample_images(
            pipeline, process.default_sampler, process.default_steps(), 2, 0
        )
        assert len(gallery) == 2 and report.startswith(f"2 image(s), {label}, {steps} steps")
        with Image.open(gif) as animation:
            assert animation.n_frames == steps
        card = hub.build_model_card(folder, "someone/student").text
        noun = "step" if steps == 1 else "steps"
        assert f"`{process.default_sampler}`: {label}, {steps} {noun} (the default" in card
        assert f"num_inference_steps={steps}," in card
        assert "few-step student" in card


# ----- bad input --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cold_folder(tmp_path_factory) -> Path:
    process = forward_process(FORWARD_PROCESSES["blur"](num_train_timesteps=5))
    folder = tmp_path_factory.mktemp("cold")
    save_pipeline(process.make_pipeline(random_cnn(0)), folder)
    return folder


def distill_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``training/distill.py ARGV`` in this process: the exit code and stderr."""
    try:
        code = run_cli(distill.main, argv)
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        ([], "--teacher FOLDER is required"),
        (["--teacher", "../no/such/teacher"], "pipeline folder '../no/such/teacher' does not exist"),
        (["--teacher", "COLD"], "the blur process has no deterministic sampler to distil"),
        (["--teacher", "FLOW", "--teacher_steps", "6"], "must be --student_steps 1 times a power of two"),
        (["--teacher", "FLOW", "--teacher_steps", "4", "--student_steps", "4"], "times a power of two"),
        (["--teacher", "FLOW", "--teacher_steps", "32"], "exceeds the teacher's T = 20 timesteps"),
        (["--teacher", "FLOW", "--student_prediction_type", "sample"], "applies to Gaussian teachers"),
        (["--teacher", "GAUSSIAN", "--steps_per_round", "0"], "--steps_per_round must be at least 1, got 0"),
        (["--teacher", "GAUSSIAN", "--learning_rate", "0"], "--learning_rate must be positive"),
        (["--teacher", "GAUSSIAN", "--lr_scheduler", "step"], "argument --lr_scheduler: invalid choice"),
        (["--teacher", "GAUSSIAN", "--resume_from_checkpoint", "nowhere"], "no such checkpoint folder"),
        (["--config", "no_such.yaml"], "config file 'no_such.yaml' does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(flags, message, teachers, cold_folder, capsys):
    names = {"FLOW": teachers["flow"], "GAUSSIAN": teachers["gaussian"], "COLD": cold_folder}
    code, stderr = distill_cli([str(names.get(flag, flag)) for flag in flags], capsys)
    assert code == 2 and message in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


def test_a_bad_dataset_stops_the_command_with_one_line(teachers, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(f"teacher: {teachers['flow']}\nsteps_per_round: 2\nlearnig_rate: 0.1\n")
    result = run_python("training/distill.py", "--config", str(config))
    assert result.returncode == 2 and "unknown keys ['learnig_rate']" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    result = run_python("training/distill.py", "--teacher", str(teachers["flow"]), "--dataset_name",
                        "../no/such/mnist", "--output_dir", str(tmp_path / "out"))  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: dataset folder '../no/such/mnist'")
    assert not (tmp_path / "out" / "model_index.json").exists()


@pytest.mark.parametrize("config", sorted((PROJECT_ROOT / "training" / "configs").glob("distill_*.yaml")))
def test_shipped_distill_configs_parse(config, teachers):
    kind = "gaussian" if "gaussian" in config.name else "flow"
    args = distill.parse_args(["--config", str(config), "--teacher", str(teachers[kind])])
    plan = distill.Plan(args.teacher_steps, args.student_steps, args.steps_per_round)
    assert plan.students[-1] == 1 and set(STUDENTS) <= set(plan.students)


# ----- the fewstep benchmark --------------------------------------------------------------------------------


def test_the_fewstep_benchmark_quick_mode_writes_its_schema_and_resumes(tmp_path):
    output, work = tmp_path / "fewstep.json", tmp_path / "work"
    argv = ["scripts/benchmark.py", "--section", "fewstep", "--quick", "--work_dir", str(work)]
    argv += ["--output", str(output)]
    result = run_python(*argv)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(output.read_text())
    assert data["schema_version"] == 1 and data["quick"] is True and len(data["sessions"]) == 1
    assert data["teacher"]["process"] == "flow" and data["teacher"]["train_steps"] == 4
    assert data["distillation"]["students"] == [4, 2, 1] and data["distillation"]["cpu_minutes"] > 0
    rows = {(row["model"], row["sampler"], row["steps"]): row for row in data["rows"]}
    assert list(rows) == [
        ("teacher", "flow_euler", 20),  # Euler 50, capped at T = 20
        ("teacher", "flow_euler", 10),
        ("teacher", "flow_euler", 8),  # the sampler that the first round distils
        ("student-4", "flow_euler", 4),
        ("student-2", "flow_euler", 2),
        ("student-1", "flow_euler", 1),
    ]
    for (model, _, steps), row in rows.items():
        assert row["network_calls"] == steps and row["num_images"] == 16
        assert {"fid", "fid_floor", "class_entropy", "images_per_second"} <= set(row)
        assert ("distill_cpu_minutes" in row) == model.startswith("student")
    assert (
        rows[("student-1", "flow_euler", 1)]["distill_minutes"]
        > rows[("student-4", "flow_euler", 4)]["distill_minutes"]
    )
    table = output.with_suffix(".md").read_text()
    assert table.count("\n| student-") == 3 and table.count("\n| teacher |") == 3

    # Again: nothing is trained, distilled or scored again.
    result = run_python(*argv)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "nothing to do" in result.stderr
    again = json.loads(output.read_text())
    assert len(again["sessions"]) == 2 and again["rows"] == data["rows"]
    # Other settings are refused rather than mixed in.
    result = run_python(*argv, "--num_images", "8")
    assert result.returncode == 2 and "holds results of other settings (num_images 16 -> 8)" in result.stderr
