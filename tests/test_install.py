"""The Makefile's install logic, run against a fake virtual environment (no package is installed), and what
the project installs: ``mnist_diffusion.*`` only, no generic top-level name such as ``models``.

The fake venv's ``bin/python`` logs every ``-m pip`` call instead of running it and hands everything else
(the index probe) to the real interpreter, so these tests exercise the real recipe in well under a second.
"""

from __future__ import annotations

import http.server
import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, SUBPROCESS_TIMEOUT_S, run_python

MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="no `make` on the PATH (the README's commands need it)")

FAKE_PYTHON = f"""#!/bin/sh
case "$1 $2 $3" in
    "-m pip show") echo "$*" >> "$FAKE_LOG"; [ -n "$TORCH_PRESENT" ]; exit ;;
    "-m pip "*) echo "$*" >> "$FAKE_LOG"; exit 0 ;;
esac
exec {sys.executable} "$@"
"""
PROJECT_INSTALL = "-m pip install --quiet -e .[dev,demo]"
# Run under `make test`, the environment carries the outer make's flags; a user may have set TORCH_INDEX.
CLEAN_ENV = {
    k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "TORCH_INDEX")
}


@pytest.fixture
def fake_venv(tmp_path: Path) -> Path:
    """A venv made by hand: ``bin/activate`` and ``bin/python`` exist, the project is not installed."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("# made by hand\n")
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return venv


def make(venv: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``make ARGS VENV=venv`` in the project; returns the result and the pip calls it made."""
    log = venv / "pip.log"
    log.unlink(missing_ok=True)
    result = subprocess.run(
        [MAKE, "--no-print-directory", *args, f"VENV={venv}"],
        cwd=PROJECT_ROOT,
        env={**CLEAN_ENV, "FAKE_LOG": str(log), **env},
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result, log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def reachable_index() -> Iterator[str]:
    """A local HTTP server that answers every request, standing in for PyTorch's CPU index."""

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html></html>")

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/whl/cpu"
    finally:
        server.shutdown()
        server.server_close()


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/whl/cpu"  # nothing listens there once the probe socket is closed


def test_make_install_installs_the_project_into_a_venv_made_by_hand(fake_venv: Path) -> None:
    # The old target depended on bin/activate, so this venv was never given the project.
    result, pip_calls = make(fake_venv, "install", "TORCH_INDEX=")
    assert PROJECT_INSTALL in pip_calls, result.stdout
    assert (fake_venv / ".installed").is_file()
    # Installed: nothing more to do until setup.cfg or pyproject.toml changes.
    result, pip_calls = make(fake_venv, "install", "TORCH_INDEX=")
    assert pip_calls == [], result.stdout
    os.utime(fake_venv / ".installed", (0, 0))  # older than setup.cfg, as after an edit of it
    _, pip_calls = make(fake_venv, "install", "TORCH_INDEX=")
    assert PROJECT_INSTALL in pip_calls


def test_a_reachable_cpu_index_provides_torch(fake_venv: Path, reachable_index: str) -> None:
    result, pip_calls = make(fake_venv, "install", f"TORCH_INDEX={reachable_index}")
    torch_install = f"-m pip install --quiet torch torchvision --index-url {reachable_index}"
    assert torch_install in pip_calls, result.stdout
    assert pip_calls.index(torch_install) < pip_calls.index(PROJECT_INSTALL)
    assert f"Installing PyTorch from {reachable_index}" in result.stdout


def test_an_unreachable_cpu_index_falls_back_to_the_default_index(fake_venv: Path) -> None:
    index = closed_port_url()
    result, pip_calls = make(fake_venv, "install", f"TORCH_INDEX={index}")
    assert f"{index} cannot be reached; PyTorch comes from the default index" in result.stdout
    assert not any("--index-url" in call for call in pip_calls), pip_calls
    assert PROJECT_INSTALL in pip_calls


def test_torch_already_installed_or_no_index_is_left_alone(fake_venv: Path, reachable_index: str) -> None:
    _, pip_calls = make(fake_venv, "install", f"TORCH_INDEX={reachable_index}", TORCH_PRESENT="1")
    assert not any("--index-url" in call for call in pip_calls) and PROJECT_INSTALL in pip_calls
    (fake_venv / ".installed").unlink()
    _, pip_calls = make(fake_venv, "install", "TORCH_INDEX=")
    assert not any("torch" in call for call in pip_calls) and PROJECT_INSTALL in pip_calls


@pytest.mark.parametrize("has_nvidia_smi", [False, True])
def test_the_cpu_index_is_the_default_only_without_nvidia_smi(tmp_path: Path, has_nvidia_smi: bool) -> None:
    bin_dir = tmp_path / "bin"  # the whole PATH: nvidia-smi or nothing
    bin_dir.mkdir()
    if has_nvidia_smi:
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    result = subprocess.run(
        [MAKE, "-s", "--eval", "print-torch-index: ; $(info index=$(TORCH_INDEX))", "print-torch-index"],
        cwd=PROJECT_ROOT,
        env={**CLEAN_ENV, "PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    expected = "" if has_nvidia_smi else "https://download.pytorch.org/whl/cpu"
    assert result.stdout.strip() == f"index={expected}"


# ----- what the project installs ----------------------------------------------------------------------------

DISTRIBUTION = "mnist-diffusion"
PACKAGE = "mnist_diffusion"
# The folders at the project root that install as mnist_diffusion.<folder> (setup.cfg's package_dir); they
# were once installed as top-level packages of these generic names.
PACKAGE_FOLDERS = ("models", "schedulers", "pipelines", "training", "evaluation", "publishing", "app")
PACKAGE_DATA = ("configs/*.yaml", "mnist_classifier/*.json", "mnist_classifier/*.safetensors")


def test_every_package_folder_installs_under_mnist_diffusion() -> None:
    # A new package folder at the root needs its line in setup.cfg's packages and package_dir.
    assert {path.parent.name for path in PROJECT_ROOT.glob("*/__init__.py")} == set(PACKAGE_FOLDERS)


def test_the_installed_distribution_has_no_generic_top_level_name() -> None:
    top_level = (importlib.metadata.distribution(DISTRIBUTION).read_text("top_level.txt") or "").split()
    assert top_level == [PACKAGE], f"installed top-level names {top_level}: reinstall (make install)"
    provided = importlib.metadata.packages_distributions()
    assert [name for name, dists in provided.items() if DISTRIBUTION in dists] == [PACKAGE]
    # From a folder outside the project (which is then not on sys.path), only mnist_diffusion.* imports.
    code = (
        "import importlib.util, json\n"
        f"names = {PACKAGE_FOLDERS!r}\n"
        "generic = [name for name in names if importlib.util.find_spec(name)]\n"
        f"renamed = [name for name in names if importlib.util.find_spec('{PACKAGE}.' + name)]\n"
        "import mnist_diffusion.pipelines, mnist_diffusion.app.demo\n"
        "print(json.dumps([generic, renamed]))\n"
    )
    result = run_python("-c", code, cwd=Path(os.path.abspath(os.sep)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [[], list(PACKAGE_FOLDERS)]


def test_the_wheel_holds_mnist_diffusion_with_its_data_and_nothing_else(tmp_path: Path) -> None:
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("no setuptools in this environment (pip builds the wheel in an isolated one)")
    if tuple(int(part) for part in version.split(".")[:2]) < (70, 1):  # bdist_wheel without `wheel`
        pytest.skip(f"setuptools {version} needs the wheel package to build a wheel")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(PROJECT_ROOT / name, source / name)
    for folder in PACKAGE_FOLDERS:
        shutil.copytree(PROJECT_ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    build = f"from setuptools import build_meta; print(build_meta.build_wheel({str(tmp_path / 'dist')!r}))"
    result = run_python("-c", build, cwd=source)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Warning" not in result.stdout + result.stderr, result.stderr[-3000:]
    wheel = tmp_path / "dist" / result.stdout.strip().splitlines()[-1]
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {name.split("/")[0] for name in names if ".dist-info/" not in name} == {PACKAGE}
    assert f"{PACKAGE}/__init__.py" not in names  # a namespace package, as in the editable install
    expected = {
        f"{PACKAGE}/{path.relative_to(source).as_posix()}"
        for folder in PACKAGE_FOLDERS
        for pattern in ("**/*.py", *PACKAGE_DATA)
        for path in (source / folder).glob(pattern)
    }
    assert f"{PACKAGE}/training/configs/quickstart.yaml" in expected
    assert f"{PACKAGE}/models/mnist_classifier/diffusion_pytorch_model.safetensors" in expected
    assert sorted(expected - names) == []
