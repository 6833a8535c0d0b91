"""Every fenced ``python`` and ``bash`` snippet of README.md runs as written.

The snippets run in README order in a scratch copy of the project (symbolic links to its folders, its own
``outputs/``), inside this interpreter's virtual environment (activated, as the README asks), with
``../shared`` beside it so that the README's offline paths work. A user's ``outputs/`` is never touched.

The changes made to the snippets are in :data:`SUBSTITUTIONS`, each with its reason: the offline data
instead of Hub ids, and small settings wherever a snippet trains or samples at length. Commands that
cannot run in a test are in :data:`NOT_RUN`, each with its reason; each shows up as a skipped test. Both
lists must match the README: an entry that no longer matches anything fails, so they cannot go stale.

Snippets that need a trained model get it from the README's own training commands, which run first
(with small settings); a model that no training snippet provides is trained here just as small.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, SHARED_DATA, SUBPROCESS_TIMEOUT_S

README = PROJECT_ROOT / "README.md"
# A few steps on a few images, with every end-of-run phase (validation, sample grid, FID) kept but small.
SMALL_TRAINING = (
    "--max_train_steps 2 --train_batch_size 16 --max_train_samples 512 --num_validation_images 64 "
    "--num_sample_images 4 --eval_num_images 8 --checkpointing_steps 2 --logging_steps 1"
)


@dataclass(frozen=True)
class Substitution:
    pattern: str  # a regular expression
    replacement: str
    reason: str


SUBSTITUTIONS = (
    Substitution(r"ylecun/mnist", "../shared/data/mnist", "the offline MNIST copy instead of the Hub"),
    Substitution(
        r"(training/train\.py --config \S+)(?: \[--key value \.\.\.\])?",
        rf"\1 --dataset_name ../shared/data/mnist {SMALL_TRAINING}",
        "training: a few steps on 512 images instead of minutes to hours, from the offline MNIST copy (the "
        "quickstart config names the Hub's); the placeholder [--key value ...] becomes these flags",
    ),
    Substitution(
        r"--num_images 1000 (--guidance_scale)",
        r"--num_images 20 \1",
        "conditional evaluation: 20 samples (two of each digit) per guidance scale instead of 1000",
    ),
    Substitution(r"--num_images 1000\b", "--num_images 16", "evaluation: 16 samples instead of 1000"),
    Substitution(r"(--sampler improved --num_images) 64\b", r"\1 8", "cold sampling: 8 images x 150 steps"),
    Substitution(r"batch_size=16(, sampler=)", r"batch_size=4\1", "cold sampling in Python: 4 images"),
)

# Commands (a regular expression matching the start of one) that a test cannot run, and why.
NOT_RUN = {
    r"make quickstart\b": "trains for about 10 minutes; the Training snippet runs the same config, briefly",
    r"make test\b": "runs ruff and this whole suite, this test included",
    r"python3 -m venv \.venv": "creates .venv; the snippets run in the test's virtual environment, activated",
    r"pip install -e": "installs about 2 GB of packages; tests/test_install.py checks `make install`'s logic",
    r"make experiments\b": "trains every run of the report: about 2 hours",
    r"make report\b": "needs pdflatex and report/runs; tests/test_report.py checks the PDF",
    r"python scripts/push_to_hub\.py": "uploads to the Hugging Face Hub (network and a token)",
    r"make demo\b": "serves the demo until stopped; tests/test_demo_browser.py drives it in Chromium",
    r"python scripts/demo\.py": "serves the demo until stopped; tests/test_demo_browser.py drives it",
}

# The models the snippets load, and the README config that trains each (here with SMALL_TRAINING).
MODELS = {
    "outputs/quickstart": "training/configs/quickstart.yaml",
    "outputs/cold_impulse": "training/configs/cold_impulse.yaml",
}


@dataclass(frozen=True)
class Snippet:
    language: str
    code: str
    line: int  # of the opening fence in README.md

    @property
    def id(self) -> str:
        first = next(line for line in self.code.splitlines() if line.strip() and not line.startswith("#"))
        return f"L{self.line}-{self.language}-{re.sub(r'[^A-Za-z0-9_./-]+', '_', first)[:40]}"

    @property
    def trains(self) -> bool:
        return "training/train.py" in self.code


def readme_snippets(text: str) -> list[Snippet]:
    fences = re.finditer(r"^```(python|bash)[ \t]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    return [Snippet(m[1], m[2], text.count("\n", 0, m.start()) + 1) for m in fences]


def bash_commands(code: str) -> list[str]:
    """The commands of a bash snippet, one per logical line (continuations joined), without comments."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def not_run_reason(command: str) -> str | None:
    return next((reason for pattern, reason in NOT_RUN.items() if re.match(pattern, command.strip())), None)


def substitute(code: str) -> tuple[str, list[Substitution]]:
    used = []
    for substitution in SUBSTITUTIONS:
        code, count = re.subn(substitution.pattern, substitution.replacement, code)
        if count:
            used.append(substitution)
    return code, used


SNIPPETS = readme_snippets(README.read_text())
SKIPPED_COMMANDS = [
    (snippet, command)
    for snippet in SNIPPETS
    if snippet.language == "bash"
    for command in bash_commands(snippet.code)
    if not_run_reason(command)
]


def runnable_code(snippet: Snippet) -> str:
    """The snippet as it runs here: substituted, with the NOT_RUN commands left out (bash)."""
    code = snippet.code
    if snippet.language == "bash":
        kept = [c for c in bash_commands(code) if not not_run_reason(c)]
        code = "\n".join(kept) + "\n" if kept else ""
    return substitute(code)[0]


# ----- the scratch copy ------------------------------------------------------------------------------------


def make_workspace(root: Path) -> Path:
    """``root/project``: links to the project's files except outputs/, and ``root/shared`` beside it.

    Its ``.venv`` is this interpreter's environment, so that ``. .venv/bin/activate`` works as written.
    """
    project = root / "project"
    project.mkdir()
    for entry in PROJECT_ROOT.iterdir():
        if entry.name not in ("outputs", ".git", ".venv", ".pytest_cache", ".ruff_cache"):
            (project / entry.name).symlink_to(entry)
    (project / ".venv").symlink_to(sys.prefix)
    (root / "shared").symlink_to(SHARED_DATA.parent)
    return project


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run in the activated virtual environment of this interpreter, offline."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env |= {
        "VIRTUAL_ENV": sys.prefix,
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S
    )


def run_snippet(snippet: Snippet, workspace: Path) -> subprocess.CompletedProcess:
    code = runnable_code(snippet)
    script = workspace.parent / f"snippet_{snippet.line}.{'py' if snippet.language == 'python' else 'sh'}"
    if snippet.language == "python":
        script.write_text(code)
        return run([sys.executable, str(script)], workspace)
    activate = Path(sys.prefix) / "bin" / "activate"
    header = f". {shlex.quote(str(activate))}\n" if activate.is_file() else ""
    script.write_text(f"set -euo pipefail\n{header}{code}")
    return run(["bash", str(script)], workspace)


def train_small(model: str, workspace: Path) -> subprocess.CompletedProcess:
    """Train ``model`` as the README's training commands would, with SMALL_TRAINING."""
    flags = ["--config", MODELS[model], "--dataset_name", "../shared/data/mnist", "--output_dir", model]
    return run([sys.executable, "training/train.py", *flags, *SMALL_TRAINING.split()], workspace)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Each snippet's result: the training snippets first, then any missing model, then the rest in order."""
    workspace = make_workspace(tmp_path_factory.mktemp("readme"))
    done = {}
    for snippet in [s for s in SNIPPETS if s.trains]:
        done[snippet.id] = run_snippet(snippet, workspace)
    for model in MODELS:
        if not (workspace / model / "model_index.json").is_file():
            trained = train_small(model, workspace)
            assert trained.returncode == 0, f"training {model}:\n{trained.stderr[-3000:]}"
    for snippet in [s for s in SNIPPETS if not s.trains]:
        done[snippet.id] = run_snippet(snippet, workspace)
    done["workspace"] = workspace
    return done


# ----- the tests -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("snippet", SNIPPETS, ids=lambda s: s.id)
def test_readme_snippet_runs(snippet: Snippet, results) -> None:
    if not runnable_code(snippet).strip():
        pytest.skip("every command of this snippet is in NOT_RUN (see the skipped commands for the reasons)")
    result = results[snippet.id]
    assert result.returncode == 0, (
        f"README.md line {snippet.line} failed as run:\n{runnable_code(snippet)}\n"
        f"--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-5000:]}"
    )
    workspace = results["workspace"]
    for output in re.findall(r"--output[ =](\S+)", runnable_code(snippet)):
        assert (workspace / output).is_file(), f"README.md line {snippet.line}: {output} was not written"


@pytest.mark.parametrize(
    ("snippet", "command"), SKIPPED_COMMANDS, ids=[command[:40] for _, command in SKIPPED_COMMANDS]
)
def test_readme_command_not_run_here(snippet: Snippet, command: str) -> None:
    pytest.skip(f"README.md line {snippet.line}: `{command.strip()}` is not run: {not_run_reason(command)}")


def test_the_lists_of_changes_match_the_readme() -> None:
    """Every substitution and every NOT_RUN entry still applies to some snippet; there is a snippet of each
    language."""
    assert {s.language for s in SNIPPETS} == {"python", "bash"}
    used = {id(sub) for snippet in SNIPPETS for sub in substitute(snippet.code)[1]}
    assert [sub.pattern for sub in SUBSTITUTIONS if id(sub) not in used] == []
    commands = [c for s in SNIPPETS if s.language == "bash" for c in bash_commands(s.code)]
    matched = {pattern for pattern in NOT_RUN for c in commands if re.match(pattern, c.strip())}
    assert sorted(set(NOT_RUN) - matched) == []
    assert {model for model in MODELS if any(model in s.code for s in SNIPPETS)} == set(MODELS)


def test_every_readme_command_writes_under_outputs() -> None:
    """No command leaves files in the project root: every --output is under outputs/."""
    outputs = [o for s in SNIPPETS for o in re.findall(r"--output(?:_dir)?[ =](\S+)", s.code)]
    assert outputs, "the README names no --output"
    assert [o for o in outputs if not o.startswith("outputs/")] == []


def test_the_readme_tells_how_to_use_the_venv_right_after_the_first_commands() -> None:
    text = README.read_text()
    first, second = SNIPPETS[0], SNIPPETS[1]
    assert "make quickstart" in first.code and second.code.strip() == ". .venv/bin/activate"
    between = text.splitlines()[first.line : second.line]
    assert not any(line.startswith("#") for line in between), "the activation must come before any section"


@pytest.mark.skipif(not (PROJECT_ROOT / ".git").exists(), reason="not a git checkout")
def test_outputs_are_ignored_by_git() -> None:
    """What the README's commands write, and the same files written to the project root, are ignored."""
    names = ["outputs/samples.png", "samples.png", "impulse.png", "curves.png", "samples.npy", "metrics.json"]
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", *names],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert result.stdout.split() == names, result.stderr
    kept = ["report/runs/ddpm/samples.png", "README.md"]  # the report's run results stay in git
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", *kept],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S,
    )  # fmt: skip
    assert result.stdout.split() == []
