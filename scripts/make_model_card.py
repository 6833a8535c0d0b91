"""Write the model card (README.md) and sample grid of a saved pipeline folder, without uploading.

    python scripts/make_model_card.py outputs/quickstart [--repo_id USER/NAME] [--metrics metrics.json]
    python scripts/make_model_card.py outputs/quickstart --repo_id USER/NAME --stage_dir upload/

With ``--stage_dir`` the folder is left untouched and ``upload/`` receives exactly the files that
``scripts/push_to_hub.py`` would upload (portable custom code, card, grid, configs, metrics).
"""

from __future__ import annotations

import sys

from mnist_diffusion.publishing.hub import CARD_FILE, stage_pipeline, write_model_card
from mnist_diffusion.training.cli import ArgumentParser, run_cli


def main(argv: list[str] | None = None) -> None:
    """Parse the flags and write the card (or the staged upload folder)."""
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="Saved pipeline folder (written by training/train.py).")
    parser.add_argument(
        "--repo_id", default=None, help="Hub id for the usage snippet (default: FOLDER, loadable locally)."
    )
    parser.add_argument("--metrics", default=None, help="metrics.json (default: FOLDER/metrics.json).")
    parser.add_argument("--stage_dir", default=None, help="Write the full upload folder here instead.")
    args = parser.parse_args(argv)
    if args.stage_dir is None:
        card = write_model_card(args.folder, args.repo_id, args.metrics)
    else:
        staged = stage_pipeline(args.folder, args.stage_dir, args.repo_id or args.stage_dir, args.metrics)
        card = staged / CARD_FILE
    print(f"wrote {card}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
