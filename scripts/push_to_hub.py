"""Upload a saved pipeline folder to the Hugging Face Hub, with its model card and custom code.

    python scripts/push_to_hub.py outputs/quickstart USER/NAME [--private] [--metrics metrics.json]

Needs a token with write access (``hf auth login`` or ``HF_TOKEN``). What is uploaded is exactly what
``scripts/make_model_card.py DIR --stage_dir OUT`` writes; afterwards
``DiffusionPipeline.from_pretrained("USER/NAME", trust_remote_code=True)`` loads it without this project.
"""

from __future__ import annotations

import sys

from mnist_diffusion.publishing.hub import push_pipeline
from mnist_diffusion.training.cli import ArgumentParser, run_cli


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, stage the folder and upload it."""
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="Saved pipeline folder (written by training/train.py).")
    parser.add_argument("repo_id", help="Hub model repo, USER/NAME or ORG/NAME (created if missing).")
    parser.add_argument("--private", action="store_true", help="Create the repo as private.")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or `hf auth login`).")
    parser.add_argument("--metrics", default=None, help="metrics.json (default: FOLDER/metrics.json).")
    parser.add_argument("--commit_message", default="Upload pipeline")
    args = parser.parse_args(argv)
    url = push_pipeline(
        args.folder, args.repo_id, args.private, args.token, args.metrics, args.commit_message
    )
    print(f"uploaded {args.folder} to {url}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
