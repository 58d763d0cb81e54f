"""What a run prints: one line per skip reason, no expected failures under "Needs a look", each
problem once with -q, per-case lines wrapped at word boundaries on a terminal, and a last line
that says PASSED or FAILED."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from gradaudit.model import CaseResult, RunResults
from gradaudit.terminal import RunProgress, print_summary, rich_line, skip_lines, verdict_line, wrap_line
from tests import reportdata
from tests.conftest import LOSSES

NO_CUDA = "cuda is not available here (torch.cuda.is_available() is false)"


def _console(terminal: bool, width: int = 200) -> tuple[Console, io.StringIO]:
    stream = io.StringIO()
    return Console(file=stream, width=width, force_terminal=terminal, color_system=None, highlight=False), stream


def _skips(n: int, reason: str = NO_CUDA, device: str = "cuda") -> list[CaseResult]:
    return [CaseResult(case=f"c{i}", device=device, status="skip", skip_reason=reason, summary_line=reason)
            for i in range(n)]


def test_skips_of_one_reason_are_one_line():
    run = RunResults(results=[*_skips(7), *_skips(1, "mps is not available here", "mps"),
                              CaseResult(case="ok", device="cpu", status="pass")])
    assert skip_lines(run) == [f"7 cuda results skipped: {NO_CUDA}", "1 mps result skipped: mps is not available here"]
    for terminal in (True, False):
        console, stream = _console(terminal)
        print_summary(run, console)
        text = stream.getvalue()
        assert text.count("skipped") == 2 and "c3" not in text, text


def test_progress_lists_no_skips_and_nothing_when_quiet():
    results = [*_skips(3), reportdata.ratio_fail(), reportdata.passing("mse")]
    for quiet, wanted in ((False, ["FAIL    ratio_loss [cpu]", "PASS    mse [cpu]"]), (True, [])):
        console, stream = _console(terminal=False)
        progress = RunProgress(console, quiet=quiet)
        progress.start(len(results))
        for r in results:
            progress.result(r)
        progress.stop()
        lines = stream.getvalue().splitlines()
        assert [line[:len(w)] for line, w in zip(lines, wanted, strict=False)] == wanted and len(lines) == len(wanted)


def test_expected_failures_are_not_under_needs_a_look():
    known_bad = reportdata.ratio_fail(case="known_bad", expected=True)
    for terminal in (True, False):
        console, stream = _console(terminal)
        print_summary(RunResults(results=[known_bad, reportdata.passing("mse")]), console)
        text = stream.getvalue()
        assert "known_bad" not in text and "Needs a look" not in text, text
        assert "(1 expected)" in text
        console, stream = _console(terminal)
        print_summary(RunResults(results=[known_bad, reportdata.ratio_fail()]), console)
        text = stream.getvalue()
        assert "ratio_loss" in text and "known_bad" not in text, text


def test_the_verdict_line():
    run = reportdata.sample_run
    assert verdict_line(run([reportdata.passing("a")]), 0) == "gradaudit: PASSED"
    assert verdict_line(run([reportdata.ratio_fail(expected=True)]), 0) == "gradaudit: PASSED (1 expected failure)"
    assert verdict_line(run([reportdata.ratio_fail(), reportdata.erroring(), reportdata.crashing()]), 1) == \
        "gradaudit: FAILED: 1 fail, 1 error, 1 crash (exit 1)"
    assert verdict_line(run([reportdata.warning()]), 1, "warn") == \
        "gradaudit: FAILED: 1 result warn, with --fail-on warn (exit 1)"
    assert verdict_line(run(_skips(2)), 5) == "gradaudit: FAILED: nothing was audited: every result is skip (exit 5)"
    fresh = reportdata.ratio_fail(baseline="new-failure")
    old = reportdata.ratio_fail(case="old", baseline="still-failing")
    assert verdict_line(run([fresh, old]), 1, "new") == "gradaudit: FAILED: 1 new failure since the baseline (exit 1)"
    assert verdict_line(run([old]), 0, "new") == "gradaudit: PASSED (1 known failure still in the baseline)"


def test_per_case_lines_wrap_at_word_boundaries(monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    result = reportdata.ratio_fail()
    result.summary_line = ("column 1 of predictions [8, 2] never receives a gradient at "
                           "losses/very_long_module_name/ratio.py:7: b = predictions[:, 1].detach()")
    lines = rich_line(result).splitlines()
    plain = [line.replace("[bold red]FAIL[/]", "FAIL").replace("\\[", "[") for line in lines]
    assert len(plain) > 2 and all(len(line) <= 60 for line in plain), plain
    assert all(line.startswith(" " * 5) for line in plain[1:])  # under the case name
    words = " ".join(line.strip() for line in plain).split()
    assert words == f"FAIL ratio_loss [cpu] {result.summary_line}".split()  # no word was split
    assert "losses/very_long_module_name/ratio.py:7:" in words
    assert wrap_line("x " * 10, width=200) == ["x " * 9 + "x"]


def test_a_live_terminal_run_prints_wrapped_lines(monkeypatch):
    monkeypatch.setenv("COLUMNS", "50")
    console, stream = _console(terminal=True, width=50)
    progress = RunProgress(console)
    progress.start(1)
    result = reportdata.ratio_fail()
    progress.result(result)
    progress.stop()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stream.getvalue())  # the progress bar's cursor moves
    lines = [line for line in text.splitlines() if "ratio" in line or line.startswith("        ")]
    assert lines and all(len(line) <= 50 for line in lines), lines


CONFIG = f"""\
version: 1
sys_path: [{LOSSES}]
defaults: {{devices: [cpu, cuda:99]}}
cases:
  - name: broken
    loss: spine:first_column
    inputs: {{x: {{shape: [4, 3]}}}}
  - name: fine
    loss: spine:first_column_twin
    inputs: {{x: {{shape: [4, 3]}}}}
  - name: known_bad
    loss: spine:first_column
    inputs: {{x: {{shape: [4, 3]}}}}
    expect: {{status: fail}}
"""


@pytest.mark.parametrize("quiet", [False, True])
def test_a_run_prints_each_problem_once_and_ends_with_the_verdict(write_config, cli_invoke, tmp_path, quiet):
    path = write_config(CONFIG)
    result = cli_invoke(["run", path, "-o", tmp_path / "out", *(["-q"] if quiet else [])], exit_code=1)
    lines = result.stdout.splitlines()
    # Once with -q (in the recap); otherwise also as it finished.
    assert sum("broken [cpu]" in line for line in lines) == (1 if quiet else 2), result.stdout
    assert lines[-1] == "gradaudit: FAILED: 1 fail (exit 1)"
    assert "3 cuda:99 results skipped: " in result.stdout
    assert not any("known_bad" in line for line in lines[lines.index("Needs a look:"):])
    assert ("fine [cpu]" in result.stdout) is not quiet
