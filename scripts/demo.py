"""Gradio demo: generate digits with the project's pipelines, watch the reverse process, restore a digit.

    python scripts/demo.py [--model outputs/quickstart --model USER/NAME ...] [--host 127.0.0.1 --port 7860]

Without ``--model`` it offers ``outputs/quickstart``, the pipeline the README quickstart trains, and says
how to train it when it does not exist yet.
"""

from __future__ import annotations

import sys

from app.demo import DEFAULT_MODEL, DEFAULT_TEST_DATA, build_demo
from training.cli import ArgumentParser, run_cli


def main(argv: list[str] | None = None) -> None:
    """Parse the flags and serve the demo until interrupted."""
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help=f"Saved pipeline folder or Hub id; repeat to offer several (default: {DEFAULT_MODEL}).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument(
        "--test_data",
        default=DEFAULT_TEST_DATA,
        help="Dataset whose test digits can be picked for restoration: a local folder or a Hub id such as "
        "ylecun/mnist (default: ../shared/data/mnist when present, else none; uploads always work).",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    demo = build_demo(args.model or [DEFAULT_MODEL], args.test_data)
    demo.queue().launch(server_name=args.host, server_port=args.port, show_error=True)


if __name__ == "__main__":
    sys.exit(run_cli(main))
