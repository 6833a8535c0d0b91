"""Training logs of runs: read the trainer's ``metrics.jsonl`` and draw loss, validation loss and FID curves.

Used by ``scripts/plot_run.py`` and by the report (``scripts/report_assets.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure

# Losses and FID both span orders of magnitude over a run, so every panel has a log y axis.
PANELS = (("loss", "training loss"), ("val_loss", "validation loss"), ("fid", "FID"))


def read_log(run_dir: Path) -> list[dict]:
    """The records of ``RUN_DIR/logs/metrics.jsonl`` (or ``RUN_DIR/metrics.jsonl`` of a collected run).

    Raises:
        ValueError: if the log is missing, unreadable or has no records.
    """
    # A training output folder keeps it under logs/; a run collected into report/runs beside the results.
    path = next(
        (p for p in (run_dir / "logs" / "metrics.jsonl", run_dir / "metrics.jsonl") if p.is_file()), None
    )
    if path is None:
        path = run_dir / "logs" / "metrics.jsonl"
        raise ValueError(f"{run_dir} has no training log (expected {path})")
    try:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON lines: {error}") from error
    if not records:
        raise ValueError(f"{path} has no records")
    return records


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """The steps and values of the records that have ``key``."""
    points = [(record["step"], record[key]) for record in records if key in record]
    return [step for step, _ in points], [value for _, value in points]


def plot_runs(run_dirs: list[Path], output: Path) -> None:
    """Draw :func:`runs_figure` of ``run_dirs`` and save it to ``output`` (a PNG)."""
    figure = runs_figure(run_dirs)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)


def runs_figure(run_dirs: list[Path]) -> Figure:
    """One panel per quantity, one coloured line per run.

    Every point has a marker, so a series of one point (the FID of a one-epoch run) is visible too.
    """
    logs = {run_dir: read_log(run_dir) for run_dir in run_dirs}
    figure = Figure(figsize=(5 * len(PANELS), 3.8))
    axes = figure.subplots(1, len(PANELS))
    for axis, (key, title) in zip(axes, PANELS, strict=True):
        for index, (run_dir, records) in enumerate(logs.items()):
            color = f"C{index % 10}"
            steps, values = series(records, key)
            # Long series get small markers, so that the line stays readable.
            marker = {"marker": "o", "markersize": 4 if len(steps) < 50 else 1.5}
            axis.plot(steps, values, color=color, label=run_dir.name, **marker)
            steps, floor = series(records, "fid_floor") if key == "fid" else ([], [])
            if steps:
                axis.plot(
                    steps, floor, color=color, linestyle="--", label=f"{run_dir.name} (real floor)", **marker
                )
        axis.set(title=title, xlabel="step")
        if axis.has_data():
            axis.set_yscale("log")
            axis.legend(fontsize="small")
        else:
            axis.text(0.5, 0.5, f"no {key} logged", ha="center", va="center", transform=axis.transAxes)
    figure.tight_layout()
    return figure
