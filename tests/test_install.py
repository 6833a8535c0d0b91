"""The Makefile's install logic, run against a fake virtual environment (no package is installed).

The fake venv's ``bin/python`` logs every ``-m pip`` call instead of running it and hands everything else
(the index probe) to the real interpreter, so these tests exercise the real recipe in well under a second.
"""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, SUBPROCESS_TIMEOUT_S

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
