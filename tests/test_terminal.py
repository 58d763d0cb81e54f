"""The terminal summary table, on hand-built results (no torch)."""

from __future__ import annotations

import io
import sysconfig
from pathlib import Path

from rich.console import Console

from gradaudit.frames import is_user_file
from gradaudit.model import CaseResult, RunResults
from gradaudit.terminal import FULL_TABLE_MAX, print_summary


def _render(count: int, quiet: bool = False) -> str:
    results = [CaseResult(case=f"case{i:04d}", device="cpu", status="pass") for i in range(count)]
    results[3] = CaseResult(case="case0003", device="cpu", status="fail", summary_line="broken at x.py:3")
    stream = io.StringIO()
    print_summary(RunResults(results=results), Console(file=stream, width=200), quiet=quiet)
    return stream.getvalue()


def test_short_runs_list_every_result():
    text = _render(5)
    assert "case0000" in text and "case0003" in text and "not listed" not in text


def test_long_runs_list_only_problems_and_say_so():
    text = _render(FULL_TABLE_MAX + 10)
    assert "case0003" in text and "broken at x.py:3" in text
    assert "case0000" not in text
    assert f"({FULL_TABLE_MAX + 9} passing or skipped results not listed" in text
    assert f"{FULL_TABLE_MAX + 10} results: {FULL_TABLE_MAX + 9} pass, 1 fail" in text


def test_quiet_lists_only_problems():
    text = _render(5, quiet=True)
    assert "case0003" in text and "case0000" not in text and "not listed" not in text


def test_console_scripts_are_not_user_code():
    script = Path(sysconfig.get_paths()["scripts"]) / "gradaudit"
    assert not is_user_file(str(script))
    assert is_user_file(__file__)
