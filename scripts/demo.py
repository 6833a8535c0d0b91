"""Gradio demo: generate digits with the project's pipelines, watch the reverse process, restore a digit.

    python scripts/demo.py [--model outputs/quickstart --model USER/NAME ...] [--host 127.0.0.1 --port 7860]

Without ``--model`` it offers ``outputs/quickstart``, the pipeline the README quickstart trains, and says
how to train it when it does not exist yet. Only the offered models can be chosen unless
``--allow_any_model`` is given. Each request has a budget of images x network calls and a time limit, and
at most ``--max_queue`` requests wait; a request whose client has gone stops within a few network calls.
"""

from __future__ import annotations

import sys

from mnist_diffusion.app.demo import (
    DEFAULT_MODEL,
    DEFAULT_TEST_DATA,
    MAX_EXTRA_MODELS,
    MAX_IMAGE_STEPS,
    MAX_QUEUE,
    TIME_LIMIT_S,
    Limits,
    ModelStore,
    build_demo,
    serve,
)
from mnist_diffusion.training.cli import ArgumentParser, run_cli


def main(argv: list[str] | None = None) -> None:
    """Parse the flags and serve the demo until interrupted."""
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help=f"Saved pipeline folder or Hub id to offer; repeat to offer several (default: {DEFAULT_MODEL}).",
    )
    parser.add_argument(
        "--allow_any_model",
        action="store_true",
        help="Also serve models typed in the page: any saved pipeline folder on this machine or Hub id "
        f"(the {MAX_EXTRA_MODELS} most recently used stay loaded). Only for a trusted network.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument(
        "--test_data",
        default=DEFAULT_TEST_DATA,
        help="Dataset whose test digits can be picked for restoration: a local folder or a Hub id such as "
        "ylecun/mnist (default: ../shared/data/mnist when present, else none; uploads always work).",
    )
    parser.add_argument(
        "--max_image_steps",
        type=int,
        default=MAX_IMAGE_STEPS,
        help=f"Budget of one request: images x network calls (default: {MAX_IMAGE_STEPS}).",
    )
    parser.add_argument(
        "--time_limit_s",
        type=float,
        default=TIME_LIMIT_S,
        help=f"Seconds after which a run is stopped (default: {TIME_LIMIT_S:g}).",
    )
    parser.add_argument(
        "--max_queue",
        type=int,
        default=MAX_QUEUE,
        help=f"Requests that may wait; further ones are refused while it is full (default: {MAX_QUEUE}).",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    limits = Limits(args.max_image_steps, args.time_limit_s, args.max_queue)
    store = ModelStore(allow_any=args.allow_any_model)
    demo = build_demo(args.model or [DEFAULT_MODEL], args.test_data, store=store, limits=limits)
    serve(demo, args.host, args.port)


if __name__ == "__main__":
    sys.exit(run_cli(main))
