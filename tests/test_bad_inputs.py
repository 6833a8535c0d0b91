"""Every tool x every class of bad input: exit 2, one error line, nothing lost."""

from __future__ import annotations

from tests.conftest import PROJECT_ROOT, run_python

TABLE = PROJECT_ROOT / "docs" / "bad_inputs.md"


def test_every_tool_answers_every_bad_input_with_one_line_and_exit_2(tmp_path):
    written = tmp_path / "bad_inputs.md"
    result = run_python("scripts/check_bad_inputs.py", "--output", str(written), timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in written.read_text().splitlines() if line.startswith("| `")]
    assert len(rows) >= 30
    failing = [row for row in rows if not row.endswith("| exit 2, one line, nothing lost |")]
    assert failing == [], "\n".join(failing)
    # The table in docs/ is the one the script writes today.
    assert TABLE.read_text() == written.read_text()
