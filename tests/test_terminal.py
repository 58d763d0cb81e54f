"""The terminal recap after a run, on hand-built results (no torch)."""

from __future__ import annotations

import io
import sysconfig
from pathlib import Path

from rich.console import Console

from gradaudit.frames import is_user_file
from gradaudit.model import CaseResult, RunResults
from gradaudit.terminal import print_summary


def _render(results: list[CaseResult], baseline: bool = False, terminal: bool = True) -> str:
    run = RunResults(results=results)
    if baseline:
        run.baseline = {"path": "old.json"}
    stream = io.StringIO()
    print_summary(run, Console(file=stream, width=200, force_terminal=terminal, color_system=None, highlight=False))
    return stream.getvalue()


def _run(count: int) -> list[CaseResult]:
    results = [CaseResult(case=f"case{i:04d}", device="cpu", status="pass") for i in range(count)]
    results[3] = CaseResult(case="case0003", device="cpu", status="fail", summary_line="broken at x.py:3")
    results[4] = CaseResult(case="case0004", device="cuda", status="skip", summary_line="no cuda here")
    return results


def test_recap_lists_only_the_problems():
    text = _render(_run(1000))
    assert "case0003" in text and "broken at x.py:3" in text
    assert "case0000" not in text and "case0004" not in text
    assert "1000 results: 998 pass, 1 fail, 1 skip" in text


def test_no_table_when_nothing_needs_a_look():
    text = _render([CaseResult(case="fine", device="cpu", status="pass")])
    assert "fine" not in text and "1 result: 1 pass" in text


def test_fixed_cases_are_recapped_against_a_baseline():
    results = _run(5)
    results[0].baseline = "fixed"
    text = _render(results, baseline=True)
    assert "case0000" in text and "fixed" in text


def test_console_scripts_are_not_user_code():
    script = Path(sysconfig.get_paths()["scripts"]) / "gradaudit"
    assert not is_user_file(str(script))
    assert is_user_file(__file__)


def test_ci_logs_get_plain_unwrapped_lines():
    long = "x" * 150 + " at losses.py:9"
    results = [CaseResult(case="bad", device="cpu", status="fail", summary_line=long)]
    text = _render(results, terminal=False)
    assert "Needs a look:" in text and long in text.replace("\n", "")
    assert any(long in line for line in text.splitlines())  # the culprit stays on one line
    assert "┃" not in text and "│" not in text


def test_the_recap_groups_results_by_cause():
    from tests import reportdata

    run = reportdata.nightly_run(200, failing=20)
    for terminal in (False, True):
        stream = io.StringIO()
        print_summary(run, Console(file=stream, width=200, force_terminal=terminal, color_system=None,
                                   highlight=False))
        text = stream.getvalue()
        lines = text.splitlines()
        heads = [n for n, line in enumerate(lines) if "sample_configs/seed_losses.py:17: " in line
                 and "results" in line and line.lstrip().startswith("graph-break at")]
        assert len(heads) == 1, text  # each cause is named once, above its results
        # Below its heading come exactly its results (one line each, plain; a row each, on a terminal).
        block = lines[heads[0] + 1:]
        end = next(n for n, line in enumerate(block) if "graph-break at tests/losses" in line)
        cases = {r.case for r in run.results if r.is_bad and "seed_losses.py:17" in r.summary_line}
        assert {c for c in cases if any(c in line for line in block[:end])} == cases
        assert "loss-error at sample_configs/seed_losses.py:41: 4 results (2 cases) on cpu, cuda, 4 new" in text
