"""Shared behaviour of the command-line front ends: bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Call ``main(argv)``; a ``ValueError`` becomes ``error: <message>`` on stderr and exit code 2.

    The packages raise ``ValueError`` with a message naming the bad value and what is allowed; only
    the front ends print and choose exit codes.
    """
    try:
        main(argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one ``error:`` line and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message}\n")


def device(text: str) -> str:
    """An ``argparse`` type: a torch device that exists on this machine (``cpu``, ``cuda``, ``cuda:1``, ...).

    Raises:
        argparse.ArgumentTypeError: naming the device and what this machine has.
    """
    import torch

    available = ", ".join(["cpu"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())])
    try:
        parsed = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; this machine has {available}") from None
    if parsed.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r} is not supported; this machine has {available}")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r} is not on this machine; it has {available}")
    return text
