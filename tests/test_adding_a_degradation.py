"""docs/adding_a_degradation.rst, followed as written: one new file and one registry line, nothing else.

The project is copied, the page's two code blocks are written into the copy, and the page's commands run
there on small settings (synthetic data, a few steps); the copy comes first on ``PYTHONPATH`` (its folders
linked as ``mnist_diffusion/models``, ...), so the installed project cannot stand in for it.
"""

from __future__ import annotations

import re
import shlex
import shutil
import textwrap
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, run_python

PAGE = PROJECT_ROOT / "docs" / "adding_a_degradation.rst"
PACKAGES = ("models", "schedulers", "pipelines", "training", "evaluation", "publishing", "app")
# The page's long settings, shortened for a test on synthetic data.
SMALL_SETTINGS = {
    "--max_train_steps 500": "--max_train_steps 3 --train_batch_size 32 --n_hidden 8 8 --num_sample_images 4",
    "--num_images 1000": "--num_images 8 --per_t_images 4 --per_t_points 2",
    "--num_images 64": "--num_images 4",
}


def code_blocks(language: str) -> dict[str, str]:
    """``caption -> code`` of the page's ``code-block`` directives in ``language`` (uncaptioned: by index)."""
    pattern = rf"\.\. code-block:: {language}\n((?:   :\w+: .*\n)*)\n((?:(?:   .*)?\n)+)"
    blocks = {}
    for index, match in enumerate(re.finditer(pattern, PAGE.read_text())):
        caption = re.search(r":caption: (.*)", match.group(1))
        blocks[caption.group(1) if caption else str(index)] = textwrap.dedent(match.group(2))
    return blocks


def commands() -> list[list[str]]:
    """The page's shell commands (continuation lines joined, comments dropped), as argument lists."""
    script = "".join(code_blocks("bash").values()).replace("\\\n", " ")
    lines = [line.strip() for line in script.splitlines() if line.strip() and not line.startswith("#")]
    # The demo serves until stopped: test_the_demo_samples_and_restores_the_new_degradation runs its handlers.
    return [shlex.split(line) for line in lines if not line.startswith("python scripts/demo.py")]


@pytest.fixture(scope="module")
def project_with_fade(tmp_path_factory) -> Path:
    """A copy of the project with the page's scheduler file and registry line added, and nothing else."""
    root = tmp_path_factory.mktemp("project")
    for folder in (*PACKAGES, "scripts"):
        shutil.copytree(PROJECT_ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    # The folders are imported as mnist_diffusion.<package>, as setup.cfg installs them: with the copy on
    # PYTHONPATH, its mnist_diffusion/ (a namespace package, as installed) offers the copy's folders first.
    (root / "mnist_diffusion").mkdir()
    for package in PACKAGES:
        (root / "mnist_diffusion" / package).symlink_to(root / package, target_is_directory=True)
    blocks = code_blocks("python")
    (root / "schedulers" / "fade.py").write_text(blocks["schedulers/fade.py"])
    import_line, registry_line = (
        blocks["schedulers/__init__.py (the two added lines)"].strip().splitlines()[::2]
    )
    registry = root / "schedulers" / "__init__.py"
    source = registry.read_text()
    source = source.replace("from .averaging import", f"{import_line}\nfrom .averaging import", 1)
    source = source.replace(
        "FORWARD_PROCESSES = {\n", f"FORWARD_PROCESSES = {{\n    {registry_line.strip()}\n", 1
    )
    registry.write_text(source)
    return root


@pytest.mark.parametrize("step", range(len(commands())))
def test_each_command_of_the_page_runs_in_the_copy(step, project_with_fade, synthetic_mnist):
    command = " ".join(shlex.quote(part) for part in commands()[step])
    for long, short in SMALL_SETTINGS.items():
        command = command.replace(long, short)
    command = command.replace("../shared/data/mnist", str(synthetic_mnist))
    arguments = shlex.split(command)
    if arguments[:2] == ["accelerate", "launch"]:
        arguments = ["python", *arguments[2:]]
    if arguments[1] in ("scripts/evaluate.py", "scripts/plot_degradation.py"):
        arguments += ["--dataset_name", str(synthetic_mnist)]
    if step > 0 and not (project_with_fade / "outputs" / "fade" / "model_index.json").is_file():
        pytest.skip("the training command did not run first")
    result = run_python(*arguments[1:], cwd=project_with_fade, env={"PYTHONPATH": str(project_with_fade)})
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_saved_folder_names_the_degradation_and_loads_as_remote_code(project_with_fade, synthetic_mnist):
    folder = project_with_fade / "outputs" / "fade"
    if not (folder / "model_index.json").is_file():
        pytest.skip("the training command did not run first")
    assert '"_degradation": "fade"' in (folder / "scheduler" / "scheduler_config.json").read_text()
    assert {"fade.py", "cold.py"} <= {path.name for path in (folder / "scheduler").iterdir()}
    card = (folder / "README.md").read_text()
    assert "fade" in card and "FadeScheduler" in card
    code = (
        "from diffusers import DiffusionPipeline; "
        f"p = DiffusionPipeline.from_pretrained({str(folder)!r}, trust_remote_code=True); "
        "images = p(batch_size=2, num_inference_steps=3, output_type='np').images; "
        "print(type(p.scheduler).__name__, images.shape)"
    )
    # Outside the copy, from a folder without the project: only the saved code can define the scheduler.
    result = run_python("-c", code, cwd=folder.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FadeScheduler (2, 28, 28, 1)" in result.stdout


def test_the_demo_samples_and_restores_the_new_degradation(project_with_fade):
    folder = project_with_fade / "outputs" / "fade"
    if not (folder / "model_index.json").is_file():
        pytest.skip("the training command did not run first")
    code = f"""
import numpy as np
from mnist_diffusion.app import demo
from mnist_diffusion.schedulers import forward_process
store = demo.ModelStore()
demo.build_demo([{str(folder)!r}], test_data=None, store=store)
pipeline = store.get({str(folder)!r})
print(demo.describe("fade", pipeline))
print([value for _, value in demo.sampler_choices(forward_process(pipeline))])
images, gif, report = demo.sample_images(pipeline, "naive", 3, 2, 0)
digit = np.zeros((28, 28), np.uint8)
digit[6:22, 12:16] = 255
gallery, gif, report = demo.restore_digit(pipeline, "improved", 20, digit, 10, 0)
print(len(images), [caption for _, caption in gallery])
"""
    result = run_python("-c", code, cwd=project_with_fade, env={"PYTHONPATH": str(project_with_fade)})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert "fade" in lines[0]
    assert lines[1] == "['improved', 'naive', 'direct']"
    assert lines[2] == "2 ['original', 'degraded, t = 10', 'restored (Improved (Algorithm 2))']"
