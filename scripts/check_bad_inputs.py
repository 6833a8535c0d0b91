"""Run every command-line tool on every class of bad input and write the outcome table (docs/bad_inputs.md).

    python scripts/check_bad_inputs.py --output docs/bad_inputs.md

Each case runs the tool in a fresh process on small synthetic data, in a scratch folder that holds a
trained tiny pipeline, a corrupt copy of it and the outputs of earlier good runs. A case passes when the
tool exits with code 2, prints exactly one ``error:`` line and no traceback, and leaves every file of the
scratch folder as it was (nothing lost, nothing half-written). ``tests/test_bad_inputs.py`` runs this
script and checks that every row passes and that the committed table is the one it writes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mnist_diffusion.training.cli import ArgumentParser, run_cli
from mnist_diffusion.training.data import write_synthetic_mnist
from mnist_diffusion.training.files import write_text

ROOT = Path(__file__).resolve().parent.parent
# Never writable, even for root: the kernel refuses new files under /proc.
UNWRITABLE = "/proc/no-such-folder/out"
PASSED = "exit 2, one line, nothing lost"


@dataclass(frozen=True)
class Case:
    """One bad input of one tool: ``{work}`` in the arguments stands for the scratch folder."""

    tool: str
    bad_input: str
    arguments: tuple[str, ...]


# A trained tiny pipeline ({work}/model), a class-conditional one ({work}/conditional), three corrupt copies,
# a YAML file with a syntax error and one with a wrong-typed value, a dataset without an image column, and
# finished outputs ({work}/done) that must survive.
CASES = (
    Case("training/train.py", "bad value", ("--learning_rate", "-1")),
    Case("training/train.py", "bad choice in YAML", ("--config", "{work}/wrong_choice.yaml")),
    Case("training/train.py", "wrong-typed YAML value", ("--config", "{work}/wrong_type.yaml")),
    Case("training/train.py", "YAML syntax error", ("--config", "{work}/broken.yaml")),
    Case("training/train.py", "missing dataset folder", ("--dataset_name", "{work}/no/such/data")),
    Case("training/train.py", "dataset without an image column", ("--dataset_name", "{work}/no_images")),
    Case(
        "training/train.py",
        "option of another process",
        ("--degradation", "rows", "--noise_schedule", "cosine"),
    ),
    Case("training/train.py", "sampler of another process", ("--sampler", "improved")),
    Case("training/train.py", "steps beyond T", ("--sample_inference_steps", "5000")),
    Case(
        "training/train.py",
        "corrupt checkpoint",
        ("--output_dir", "{work}/done", "--resume_from_checkpoint", "{work}/done/checkpoint-2"),
    ),
    Case(
        "scripts/sample.py",
        "bad value",
        ("--model", "{work}/model", "--num_images", "0", "--output", "{work}/done/s.png"),
    ),
    Case("scripts/sample.py", "missing folder", ("--model", "{work}/nope", "--output", "{work}/done/s.png")),
    Case(
        "scripts/sample.py",
        "garbled model_index.json",
        ("--model", "{work}/garbled", "--output", "{work}/done/s.png"),
    ),
    Case(
        "scripts/sample.py",
        "truncated weights",
        ("--model", "{work}/truncated", "--output", "{work}/done/s.png"),
    ),
    Case(
        "scripts/sample.py",
        "missing scheduler config",
        ("--model", "{work}/no_scheduler", "--output", "{work}/done/s.png"),
    ),
    Case(
        "scripts/sample.py", "unwritable output", ("--model", "{work}/model", "--output", f"{UNWRITABLE}.png")
    ),
    Case(
        "scripts/sample.py",
        "sampler of another process",
        ("--model", "{work}/model", "--sampler", "naive", "--output", "{work}/done/s.png"),
    ),
    Case(
        "scripts/sample.py",
        "digit out of range",
        ("--model", "{work}/conditional", "--digits", "12", "--output", "{work}/done/s.png"),
    ),
    Case(
        "scripts/sample.py",
        "digits other than 0-9, all or any",
        ("--model", "{work}/conditional", "--digits", "seven", "--output", "{work}/done/s.png"),
    ),
    Case(
        "scripts/sample.py",
        "as many digits as images",
        (
            "--model",
            "{work}/conditional",
            "--digits",
            "1",
            "2",
            "--num_images",
            "3",
            "--output",
            "{work}/done/s.png",
        ),
    ),  # fmt: skip
    Case(
        "scripts/sample.py",
        "digits to an unconditional model",
        ("--model", "{work}/model", "--digits", "3", "--output", "{work}/done/s.png"),
    ),
    Case(
        "scripts/sample.py",
        "negative guidance scale",
        ("--model", "{work}/conditional", "--guidance_scale", "-1", "--output", "{work}/done/s.png"),
    ),
    Case(
        "scripts/sample.py",
        "guidance scale not a number",
        ("--model", "{work}/conditional", "--guidance_scale", "lots", "--output", "{work}/done/s.png"),
    ),
    Case(
        "scripts/sample.py",
        "guidance scale to an unconditional model",
        ("--model", "{work}/model", "--guidance_scale", "2", "--output", "{work}/done/s.png"),
    ),
    Case(
        "scripts/evaluate.py",
        "bad value",
        ("--model", "{work}/model", "--per_t_points", "0", "--output", "{work}/done/m.json"),
    ),
    Case(
        "scripts/evaluate.py",
        "negative guidance curve scale",
        ("--model", "{work}/conditional", "--guidance_curve", "1", "-2", "--output", "{work}/done/m.json"),
    ),
    Case(
        "scripts/evaluate.py",
        "guidance curve scale not a number",
        ("--model", "{work}/conditional", "--guidance_curve", "x", "--output", "{work}/done/m.json"),
    ),
    Case(
        "scripts/evaluate.py",
        "guidance curve of an unconditional model",
        ("--model", "{work}/model", "--guidance_curve", "--output", "{work}/done/m.json"),
    ),
    Case(
        "scripts/evaluate.py",
        "conditional samples not a multiple of 10",
        ("--model", "{work}/conditional", "--num_images", "15", "--output", "{work}/done/m.json"),
    ),
    Case(
        "scripts/evaluate.py",
        "corrupt folder",
        ("--model", "{work}/truncated", "--output", "{work}/done/m.json"),
    ),
    Case("training/distill.py", "missing teacher folder", ("--teacher", "{work}/nope")),
    Case("training/distill.py", "corrupt teacher folder", ("--teacher", "{work}/garbled")),
    Case("training/distill.py", "bad value", ("--teacher", "{work}/model", "--steps_per_round", "0")),
    Case(
        "training/distill.py",
        "student steps above the teacher's",
        ("--teacher", "{work}/model", "--teacher_steps", "4", "--student_steps", "8"),
    ),
    Case(
        "scripts/evaluate.py",
        "not a .npy file",
        ("--samples", "{work}/broken.yaml", "--output", "{work}/done/m.json"),
    ),
    Case(
        "scripts/evaluate.py",
        "unwritable output",
        ("--model", "{work}/model", "--output", f"{UNWRITABLE}.json"),
    ),
    Case(
        "scripts/plot_degradation.py",
        "corrupt folder",
        ("--model", "{work}/garbled", "--output", "{work}/done/d.png"),
    ),
    Case(
        "scripts/plot_degradation.py",
        "unwritable output",
        ("--model", "{work}/model", "--output", f"{UNWRITABLE}.png"),
    ),
    Case("scripts/plot_run.py", "missing run folder", ("{work}/nope", "--output", "{work}/done/c.png")),
    Case("scripts/make_model_card.py", "corrupt folder", ("{work}/garbled",)),
    Case("scripts/make_model_card.py", "bad repo id", ("{work}/model", "--repo_id", "bad id!!")),
    Case("scripts/push_to_hub.py", "bad repo id", ("{work}/model", "bad id!!")),
    Case("scripts/demo.py", "missing test data", ("--model", "{work}/model", "--test_data", "{work}/nope")),
    Case("scripts/train_classifier.py", "bad value", ("--epochs", "0")),
    Case("scripts/train_classifier.py", "unwritable output", ("--output_dir", UNWRITABLE)),
    Case("scripts/run_experiments.py", "missing experiments file", ("--experiments", "{work}/nope.yaml")),
    Case("scripts/run_experiments.py", "YAML syntax error", ("--experiments", "{work}/broken.yaml")),
    Case("scripts/benchmark.py", "bad value", ("--model", "{work}/model", "--num_threads", "0")),
    Case(
        "scripts/benchmark.py",
        "unwritable output",
        ("--model", "{work}/model", "--output", f"{UNWRITABLE}.json"),
    ),
    Case(
        "scripts/benchmark.py",
        "corrupt folder",
        ("--model", "{work}/truncated", "--output", "{work}/done/b.json"),
    ),
    Case(
        "scripts/benchmark.py",
        "fewstep: unwritable output",
        (
            "--section",
            "fewstep",
            "--teacher",
            "{work}/model",
            "--teacher_config",
            "none",
            "--output",
            f"{UNWRITABLE}.json",
        ),
    ),  # fmt: skip
    Case(
        "scripts/benchmark.py",
        "fewstep: missing teacher",
        ("--section", "fewstep", "--teacher", "{work}/nope", "--teacher_config", "none"),
    ),
    Case(
        "scripts/benchmark.py",
        "conditional: samples not a multiple of 10",
        ("--section", "conditional", "--num_images", "15", "--output", "{work}/done/c.json"),
    ),
    Case("scripts/cold_diversity.py", "unknown variant", ("--variants", "fog")),
    Case("scripts/cold_diversity.py", "unwritable output", ("--output", f"{UNWRITABLE}.json")),
    Case("scripts/report_assets.py", "missing report folder", ("--report_dir", "{work}/nope")),
)
# Flags every train.py case gets, so that a case that wrongly starts training stays small.
TRAIN_DEFAULTS = ("--n_hidden", "4", "4", "--max_train_steps", "2", "--train_batch_size", "32")


def prepare(work: Path) -> None:
    """The scratch folder the cases point at."""
    data = write_synthetic_mnist(work / "data", 64, 32)
    done = work / "done"
    train = ["training/train.py", "--dataset_name", str(data), "--output_dir", str(done), *TRAIN_DEFAULTS]
    run([sys.executable, *train, "--num_sample_images", "2", "--checkpointing_steps", "2"])
    (done / "checkpoint-2" / "optimizer.bin").write_bytes(b"not a checkpoint")
    conditional = ["--output_dir", str(work / "conditional"), "--class_conditional"]
    run([sys.executable, *train[:3], *TRAIN_DEFAULTS, *conditional, "--num_sample_images", "2"])
    model = work / "model"
    run(["cp", "-r", str(done), str(model)])
    for name, damage in (
        ("garbled", lambda folder: (folder / "model_index.json").write_text("{garbage")),
        ("truncated", lambda folder: _truncate(next((folder / "unet").glob("*.safetensors")))),
        ("no_scheduler", lambda folder: (folder / "scheduler" / "scheduler_config.json").unlink()),
    ):
        run(["cp", "-r", str(model), str(work / name)])
        damage(work / name)
    (work / "broken.yaml").write_text("learning_rate: [1e-3\n")
    (work / "wrong_type.yaml").write_text("train_batch_size: many\n")
    (work / "wrong_choice.yaml").write_text("model: transformer\n")
    from datasets import Dataset

    (work / "no_images" / "data").mkdir(parents=True)
    without_images = Dataset.from_dict({"pixels": [[0] * 4] * 8, "label": [0] * 8})
    without_images.to_parquet(str(work / "no_images" / "data" / "train-00000-of-00001.parquet"))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run ``command`` from the project root, offline; raise if a preparation step fails."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_TOKEN": ""}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, **kwargs)
    if "check" not in kwargs and result.returncode != 0:
        raise ValueError(
            f"preparing the bad-input checks failed: {' '.join(command)}: {result.stderr[-500:]}"
        )
    return result


def snapshot(work: Path) -> dict[str, str]:
    """Every file of the scratch folder with a digest of its bytes."""
    return {
        str(path.relative_to(work)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(work.rglob("*"))
        if path.is_file()
    }


def check(case: Case, work: Path) -> str:
    """Run one case; return :data:`PASSED` or what went wrong."""
    arguments = [argument.replace("{work}", str(work)) for argument in case.arguments]
    if case.tool == "training/train.py":
        data, output = str(work / "data"), str(work / "train_out")
        arguments = ["--dataset_name", data, "--output_dir", output, *TRAIN_DEFAULTS, *arguments]
    before = snapshot(work)
    result = run([sys.executable, case.tool, *arguments], check=False)
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    problems = []
    if result.returncode != 2:
        problems.append(f"exit {result.returncode}")
    if len(errors) != 1 or any(line.startswith("Traceback") for line in lines):
        problems.append(
            f"{len(errors)} error lines{' and a traceback' if 'Traceback' in result.stderr else ''}"
        )
    if snapshot(work) != before:
        problems.append("files changed")
    return "; ".join(problems) or PASSED


def table(outcomes: list[tuple[Case, str]]) -> str:
    rows = [f"| `{case.tool}` | {case.bad_input} | {outcome} |" for case, outcome in outcomes]
    return "\n".join(
        [
            "# Bad input: every tool, every class",
            "",
            "Written by `python scripts/check_bad_inputs.py --output docs/bad_inputs.md` and checked by",
            "`tests/test_bad_inputs.py`. Each row runs the tool in a fresh process; it passes when the tool",
            "exits with code 2, prints one `error:` line naming the value or path and what is allowed (no",
            "traceback), and leaves every file in its folders as it was.",
            "",
            "Under `accelerate launch` the launcher adds its own traceback and exits 1; with",
            "`accelerate launch -q` (as in the README) only the tool's `error:` line is shown.",
            "",
            "| tool | bad input | outcome |",
            "| --- | --- | --- |",
            *rows,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, run every case and write the table."""
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="docs/bad_inputs.md", help="the Markdown table to write")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bad-inputs-") as scratch:
        work = Path(scratch)
        prepare(work)
        outcomes = []
        for case in CASES:
            outcomes.append((case, check(case, work)))
            print(f"{case.tool:32} {case.bad_input:36} {outcomes[-1][1]}", flush=True)
    write_text(args.output, table(outcomes))
    print(f"wrote {args.output}: {sum(o == PASSED for _, o in outcomes)} of {len(outcomes)} rows pass")


if __name__ == "__main__":
    sys.exit(run_cli(main))
