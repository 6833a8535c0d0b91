"""Outputs that are whole or absent: every file a tool writes goes to a temporary name and is renamed.

A tool checks its outputs with :func:`check_writable` before any expensive work, then writes them inside
:func:`atomic_output`, so a full disk or a kill never leaves a truncated ``.npy``, an empty PNG or half a JSON
where the previous complete file was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def check_writable(path: str | os.PathLike, name: str = "--output") -> Path:
    """Make sure a file can be created at ``path`` (creating its folder), before the work that fills it.

    Raises:
        ValueError: naming ``name`` and ``path`` if the folder cannot be created or written to, or ``path``
            is a folder.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{name} {str(path)!r} is a folder; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as error:
        raise ValueError(f"{name} {str(path)!r} cannot be written: {error.strerror or error}") from None
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix) and rename it to ``path`` when the block ends.

    If the block raises, or the disk fills, the temporary file is removed and ``path`` is left as it was.

    Example:
        >>> import numpy as np
        >>> from mnist_diffusion.training.files import atomic_output
        >>> with atomic_output("outputs/samples.npy") as temporary:  # doctest: +SKIP
        ...     np.save(temporary, np.zeros((4, 28, 28), np.float32))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(descriptor)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` (a folder) when the block ends.

    If the block raises, the temporary folder is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield temporary
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as temporary:
        temporary.write_text(text)
