"""The report: the committed PDF exists, fits its limits, and its tables and quoted numbers are the JSON's."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys

import pytest
from pypdf import PdfReader

from tests.conftest import PROJECT_ROOT

# A script of scripts/ as a module (scripts are run, not installed), by the recipe of the importlib docs.
_spec = importlib.util.spec_from_file_location("report_assets", PROJECT_ROOT / "scripts" / "report_assets.py")
report_assets = sys.modules["report_assets"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report_assets)

REPORT = PROJECT_ROOT / "report"
MAX_WORDS = 3000
PAGE_RANGE = (6, 20)


def pdf_text(path) -> tuple[int, str]:
    reader = PdfReader(path)
    return len(reader.pages), "\n".join(page.extract_text() for page in reader.pages)


def assert_matches_runs(text: str) -> None:
    """Every table row (its cells in order, on one line) and every quoted number is in the PDF text."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    for table in report_assets.report_tables(REPORT / "runs"):
        assert " ".join(table.header) in lines, f"{table.label}: header missing"
        for row in table.rows:
            assert " ".join(row) in lines, f"{table.label}: row {row} is not in the PDF"
    quoted = report_assets.numbers(REPORT / "runs")
    tex = "".join(path.read_text() for path in REPORT.glob("*.tex"))
    for name, value in quoted.items():
        if re.search(rf"\\{name}(?![A-Za-z])", tex):
            assert value in text, f"\\{name} = {value} is not in the PDF"


def test_committed_report_matches_the_runs():
    pages, text = pdf_text(REPORT / "report.pdf")
    assert PAGE_RANGE[0] <= pages <= PAGE_RANGE[1]
    assert len(text.split()) <= MAX_WORDS
    assert_matches_runs(text)


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex missing (.ci/run installs TeX Live)")
def test_report_rebuilds_from_its_sources(tmp_path):
    copy = tmp_path / "report"
    shutil.copytree(REPORT, copy, ignore=shutil.ignore_patterns("build", "report.pdf"))
    report_assets.main(["--report_dir", str(copy)])
    committed_pages, _ = pdf_text(REPORT / "report.pdf")
    pages, text = pdf_text(copy / "report.pdf")
    assert pages == committed_pages
    assert_matches_runs(text)


def test_missing_runs_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError, match="run `make experiments` first"):
        report_assets.main(["--report_dir", str(tmp_path)])


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex missing (.ci/run installs TeX Live)")
def test_a_failed_typesetting_names_the_tex_error(tmp_path):
    copy = tmp_path / "report"
    shutil.copytree(REPORT, copy, ignore=shutil.ignore_patterns("build", "report.pdf"))
    tex = copy / "report.tex"
    tex.write_text(tex.read_text().replace(r"\usepackage{amsmath}", r"\usepackage{no_such_package}", 1))
    with pytest.raises(ValueError, match=r"File `no_such_package\.sty' not found.*report\.log"):
        report_assets.main(["--report_dir", str(copy)])
    assert not (copy / "report.pdf").exists()
