"""Build the report: every table, figure and number from ``report/runs``, then the PDF with pdflatex.

    python scripts/report_assets.py --report_dir report --pdf report/report.pdf

Writes ``build/tables/*.tex`` (LaTeX tabulars), ``build/figures/*.pdf`` and ``build/numbers.tex`` (macros
for the numbers quoted in the text) under ``--report_dir`` from its ``runs/`` (the runs' JSON and PNG files),
then typesets its ``report.tex`` (which also includes the runs' own PNGs) twice, for the references.
The tables are also available as data (:func:`report_tables`) so that a test can compare the PDF with JSON.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from matplotlib.figure import Figure

from mnist_diffusion.evaluation.training_logs import plot_runs, read_log
from mnist_diffusion.schedulers.noise_schedules import make_betas
from mnist_diffusion.training.cli import ArgumentParser, run_cli
from mnist_diffusion.training.files import atomic_output, write_text

ROOT = Path(__file__).resolve().parents[1]

GAUSSIAN_RUNS = ("ddpm_coursework", "ddpm_cosine_unet")
SAMPLER_LABELS = {"dpmsolver": "DPM-Solver++", "ddim": "DDIM", "ddpm": "DDPM"}
# Evaluation files of a cold run: (stem, sampler, start).
COLD_EVALUATIONS = (
    ("metrics", "improved", "prior"),
    ("naive", "naive", "prior"),
    ("direct", "direct", "prior"),
    ("improved_conditional", "improved", "test"),
    ("naive_conditional", "naive", "test"),
    ("direct_conditional", "direct", "test"),
)


@dataclass
class Table:
    """A report table: the caption's label, a header and rows of already formatted cells."""

    label: str
    header: list[str]
    rows: list[list[str]]

    def to_latex(self) -> str:
        """A booktabs tabular (no float: report.tex places and captions it)."""
        escape = str.maketrans({"_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#"})
        lines = [
            r"\begin{tabular}{l" + "r" * (len(self.header) - 1) + "}",
            r"\toprule",
            " & ".join(cell.translate(escape) for cell in self.header) + r" \\",
            r"\midrule",
            *(" & ".join(cell.translate(escape) for cell in row) + r" \\" for row in self.rows),
            r"\bottomrule",
            r"\end{tabular}",
        ]
        return "\n".join(lines) + "\n"


def read_json(path: Path) -> dict:
    """A run's JSON file.

    Raises:
        ValueError: if it is missing or not JSON.
    """
    if not path.is_file():
        raise ValueError(f"{path} is missing; run `make experiments` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def runs_with_prefix(runs_dir: Path, prefix: str) -> list[Path]:
    """The run folders whose name starts with ``prefix``, sorted by name."""
    return sorted(path for path in runs_dir.iterdir() if path.is_dir() and path.name.startswith(prefix))


def fmt(value: float, digits: int) -> str:
    """A number with ``digits`` decimals: the one formatting of the report's tables and text."""
    return f"{value:.{digits}f}"


def quality_cells(metrics: dict) -> list[str]:
    """FID, its real-data floor, KID, IS and the normalized class entropy."""
    return [
        fmt(metrics["fid"], 2),
        fmt(metrics["fid_floor"], 2),
        fmt(metrics["kid_mean"], 3),
        fmt(metrics["inception_score_mean"], 2),
        fmt(metrics["class_entropy"], 3),
    ]


QUALITY_HEADER = ["FID", "floor", "KID", "IS", "entropy"]


def training_speed(records: list[dict]) -> float:
    """Median training images/s over the logged windows."""
    return statistics.median(
        record["images_per_second"] for record in records if "images_per_second" in record
    )


def last_value(records: list[dict], key: str) -> float:
    """The last logged value of ``key``."""
    return [record[key] for record in records if key in record][-1]


def gaussian_table(runs_dir: Path) -> Table:
    rows = []
    for name in GAUSSIAN_RUNS:
        for stem in ("metrics", "ddim50"):
            metrics = read_json(runs_dir / name / f"{stem}.json")
            sampler = f"{SAMPLER_LABELS[metrics['sampler']]} {metrics['num_inference_steps']}"
            rows.append([name, sampler, *quality_cells(metrics), fmt(metrics["images_per_second"], 0)])
    return Table("gaussian", ["run", "sampler", *QUALITY_HEADER, "images/s"], rows)


def schedule_table(runs_dir: Path) -> Table:
    rows = []
    for run in runs_with_prefix(runs_dir, "schedule_"):
        metrics = read_json(run / "metrics.json")
        first = metrics["per_t"]["first_t_p_above_0.05"]
        rows.append([
            run.name.removeprefix("schedule_"),
            *quality_cells(metrics),
            "never" if first is None else str(first),
            fmt(last_value(read_log(run), "val_loss"), 4),
        ])  # fmt: skip
    return Table("schedules", ["schedule", *QUALITY_HEADER, "KS t", "val. loss"], rows)


def cold_table(runs_dir: Path) -> Table:
    rows = []
    for run in runs_with_prefix(runs_dir, "cold_"):
        for stem, sampler, start in COLD_EVALUATIONS:
            metrics = read_json(run / f"{stem}.json")
            start_label = "prior" if start == "prior" else "degraded test"
            rows.append([
                run.name.removeprefix("cold_"), sampler, start_label,
                *quality_cells(metrics), fmt(metrics["images_per_second"], 0),
            ])  # fmt: skip
    return Table("cold", ["degradation", "sampler", "start", *QUALITY_HEADER, "images/s"], rows)


def restoration_table(runs_dir: Path) -> Table:
    rows = []
    for run in runs_with_prefix(runs_dir, "cold_"):
        per_t = read_json(run / "metrics.json")["per_t"]
        rows.append([
            run.name.removeprefix("cold_"),
            *(fmt(per_t[f"{metric}_{mode}"][-1], digits)
              for metric, digits in (("psnr", 2), ("ssim", 3)) for mode in ("direct", "iterative")),
        ])  # fmt: skip
    return Table(
        "restoration", ["degradation", "PSNR direct", "PSNR iter.", "SSIM direct", "SSIM iter."], rows
    )


def comparison_table(runs_dir: Path) -> Table:
    """Gaussian vs cold on the same network and budget: each with its default sampler."""
    rows = []
    for run in [runs_dir / "ddpm_coursework", *runs_with_prefix(runs_dir, "cold_")]:
        metrics, records = read_json(run / "metrics.json"), read_log(run)
        sampler = SAMPLER_LABELS.get(metrics["sampler"], metrics["sampler"])
        steps = metrics["num_inference_steps"] or "T"
        rows.append([
            run.name, str(last_value(records, "step")), fmt(training_speed(records), 0), f"{sampler} {steps}",
            *quality_cells(metrics), fmt(metrics["images_per_second"], 0),
        ])  # fmt: skip
    header = ["run", "steps", "train img/s", "sampler", *QUALITY_HEADER, "sample img/s"]
    return Table("comparison", header, rows)


def report_tables(runs_dir: Path) -> list[Table]:
    """Every table of the report, built from the runs' JSON files."""
    builders = (gaussian_table, schedule_table, cold_table, restoration_table, comparison_table)
    return [build(runs_dir) for build in builders]


def plot_schedules(runs_dir: Path, path: Path) -> None:
    """alpha-bar(t) of each schedule and the KS p-value of x_t against N(0, 1)."""
    figure = Figure(figsize=(10, 3.6))
    left, right = figure.subplots(1, 2)
    for index, run in enumerate(runs_with_prefix(runs_dir, "schedule_")):
        config = yaml.safe_load((run / "training_config.yaml").read_text())
        options = {
            k: config[k] for k in ("beta_start", "beta_end", "max_beta", "constant_beta") if config.get(k)
        }
        betas = make_betas(config["noise_schedule"], config["num_train_timesteps"], **options)
        label, color = run.name.removeprefix("schedule_"), f"C{index}"
        left.plot(np.cumprod(1 - betas.numpy()), color=color, label=label)
        per_t = read_json(run / "metrics.json")["per_t"]
        right.semilogy(per_t["timesteps"], np.maximum(per_t["ks_pvalue"], 1e-20), color=color, label=label)
    left.set(xlabel="t", ylabel=r"$\bar\alpha_t$", title="signal kept")
    right.axhline(0.05, color="gray", linestyle="--")
    right.set(xlabel="t", ylabel="KS p-value", title=r"$x_t$ vs $N(0, 1)$")
    right.set_ylim(5e-21, 2.0)
    left.legend(fontsize="small")
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary)


def plot_restoration(runs_dir: Path, path: Path) -> None:
    """Restoration PSNR of degraded test digits against the severity, direct vs iterative, per degradation."""
    runs = runs_with_prefix(runs_dir, "cold_")
    figure = Figure(figsize=(3.4 * len(runs), 3.0))
    axes = np.atleast_1d(figure.subplots(1, len(runs)))
    for axis, run in zip(axes, runs, strict=True):
        per_t = read_json(run / "metrics.json")["per_t"]
        axis.plot(per_t["severity"], per_t["psnr_direct"], marker="o", label="direct")
        axis.plot(
            per_t["severity"], per_t["psnr_iterative"], marker="s", label=f"iterative ({per_t['sampler']})"
        )
        axis.set(xlabel="t / T", ylabel="PSNR (dB)", title=run.name.removeprefix("cold_"))
        axis.legend(fontsize="small")
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary)


def numbers(runs_dir: Path) -> dict[str, str]:
    """The numbers quoted in the text, as LaTeX macro name -> formatted value."""
    values = {}
    for name, macro in (("ddpm_coursework", "Coursework"), ("ddpm_cosine_unet", "Unet")):
        metrics, records = read_json(runs_dir / name / "metrics.json"), read_log(runs_dir / name)
        values[f"fid{macro}"] = fmt(metrics["fid"], 2)
        values[f"floor{macro}"] = fmt(metrics["fid_floor"], 2)
        values[f"entropy{macro}"] = fmt(metrics["class_entropy"], 3)
        values[f"trainSpeed{macro}"] = fmt(training_speed(records), 0)
        values[f"steps{macro}"] = str(last_value(records, "step"))
        values[f"fidDdim{macro}"] = fmt(read_json(runs_dir / name / "ddim50.json")["fid"], 2)
    values["stepsSchedule"] = str(last_value(read_log(runs_dir / "schedule_linear"), "step"))
    for run in runs_with_prefix(runs_dir, "schedule_"):
        metrics = read_json(run / "metrics.json")
        values[f"fid{camel(run.name)}"] = fmt(metrics["fid"], 2)
        values[f"ks{camel(run.name)}"] = str(metrics["per_t"]["first_t_p_above_0.05"] or "never")
    for run in runs_with_prefix(runs_dir, "cold_"):
        for stem, _, _ in COLD_EVALUATIONS:
            metrics = read_json(run / f"{stem}.json")
            values[f"fid{camel(run.name)}{camel(stem)}"] = fmt(metrics["fid"], 2)
            values[f"entropy{camel(run.name)}{camel(stem)}"] = fmt(metrics["class_entropy"], 3)
    return values


def camel(name: str) -> str:
    """``cold_rows`` -> ``ColdRows``: a LaTeX macro name part."""
    return "".join(part.capitalize() for part in name.split("_"))


def write_assets(runs_dir: Path, output: Path) -> None:
    """Write the tables, figures and number macros of the report under ``output``."""
    (output / "tables").mkdir(parents=True, exist_ok=True)
    (output / "figures").mkdir(parents=True, exist_ok=True)
    for table in report_tables(runs_dir):
        write_text(output / "tables" / f"{table.label}.tex", table.to_latex())
    plot_runs([runs_dir / name for name in GAUSSIAN_RUNS], output / "figures" / "gaussian_curves.pdf")
    plot_schedules(runs_dir, output / "figures" / "schedules.pdf")
    plot_restoration(runs_dir, output / "figures" / "restoration.pdf")
    macros = "".join(
        rf"\newcommand{{\{name}}}{{{value}}}" + "\n" for name, value in numbers(runs_dir).items()
    )
    write_text(output / "numbers.tex", macros)


# Debian packages that typeset report.tex; lmodern is only recommended by the fonts, so it is named.
TEX_PACKAGES = ("texlive-latex-recommended", "texlive-fonts-recommended", "lmodern")


def build_pdf(report_dir: Path, pdf: Path) -> None:
    """Typeset ``report_dir/report.tex`` into ``pdf`` (pdflatex, twice, for the cross-references).

    Raises:
        ValueError: if pdflatex is missing or fails (its first error line and its log are named).
    """
    if shutil.which("pdflatex") is None:
        raise ValueError(f"pdflatex is not installed; install Debian's {' '.join(TEX_PACKAGES)}")
    build = report_dir / "build"
    command = [
        "pdflatex",
        "-interaction=nonstopmode",
        "-halt-on-error",
        "-output-directory=build",
        "report.tex",
    ]
    for _ in range(2):
        result = subprocess.run(command, cwd=report_dir, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            # TeX errors are the lines starting with "!" (a missing package: "File `x.sty' not found").
            errors = [line for line in result.stdout.splitlines() if line.startswith("!")]
            reason = errors[0].lstrip("! ") if errors else "no error line"
            raise ValueError(
                f"pdflatex failed on {report_dir / 'report.tex'} ({reason}); see {build / 'report.log'}"
            )
    pdf.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(pdf) as temporary:
        shutil.copyfile(build / "report.pdf", temporary)


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report_dir", type=Path, default=ROOT / "report", help="holds report.tex and runs/")
    parser.add_argument("--pdf", type=Path, default=None, help="default: REPORT_DIR/report.pdf")
    parser.add_argument("--assets_only", action="store_true", help="write build/ but do not typeset")
    args = parser.parse_args(argv)
    runs = args.report_dir / "runs"
    if not runs.is_dir():
        raise ValueError(f"{str(runs)!r} is not a folder; run `make experiments` first")
    write_assets(runs, args.report_dir / "build")
    if not args.assets_only:
        pdf = args.pdf or args.report_dir / "report.pdf"
        build_pdf(args.report_dir, pdf)
        print(f"wrote {pdf}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
