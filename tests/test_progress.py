"""Progress output: a bar with a line per result on a terminal, plain lines in CI logs, skips summed up
at the end (one line per reason), -q for problems (listed once, in the recap)."""

from __future__ import annotations

import io
import re

from rich.console import Console

from gradaudit.model import CaseResult
from gradaudit.terminal import RunProgress

RESULTS = [
    CaseResult(case="ratio_loss", device="cpu", status="fail",
               summary_line="column 1 of predictions never receives a gradient"),
    CaseResult(case="mse", device="cpu", status="pass"),
    CaseResult(case="focal", device="cuda", status="skip", summary_line="cuda is not available here"),
    CaseResult(case="segv", device="cpu", status="crash", summary_line="crashed: SIGSEGV (signal 11)"),
]


def _show(console: Console, quiet: bool = False) -> str:
    progress = RunProgress(console, quiet=quiet)
    progress.start(len(RESULTS))
    for result in RESULTS:
        progress.result(result)
    progress.stop()
    return console.file.getvalue()


def test_plain_output_is_one_line_per_result():
    out = _show(Console(file=io.StringIO(), force_terminal=False, width=200))
    assert out.splitlines() == [
        "FAIL    ratio_loss [cpu]  column 1 of predictions never receives a gradient",
        "PASS    mse [cpu]",
        "CRASH   segv [cpu]  crashed: SIGSEGV (signal 11)",
    ]


def test_quiet_lists_nothing_while_running():
    out = _show(Console(file=io.StringIO(), force_terminal=False, width=200), quiet=True)
    assert out == ""  # the recap lists each problem, once


def test_a_terminal_gets_a_bar_and_a_coloured_line_per_result():
    out = _show(Console(file=io.StringIO(), force_terminal=True, width=120, color_system="standard"))
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    assert "auditing" in text and "4/4" in text  # the bar, with its count
    for r in RESULTS:
        assert (f"{r.status.upper()} {r.case} [{r.device}]" in text) is (r.status != "skip")
    assert "\x1b[" in out  # coloured
    assert "column 1 of predictions never receives a gradient" in text


def test_quiet_on_a_terminal_has_no_bar():
    out = _show(Console(file=io.StringIO(), force_terminal=True, width=120), quiet=True)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    assert "auditing" not in text and text == ""


def test_quiet_run_prints_only_problems(cli_invoke, write_config, tmp_path):
    from tests.conftest import LOSSES

    path = write_config(f"""
        version: 1
        sys_path: [{LOSSES}]
        defaults: {{devices: [cpu]}}
        cases:
          - {{name: fine, loss: "faults:good", inputs: {{x: {{shape: [4]}}}}}}
          - {{name: broken, loss: "faults:raises", inputs: {{x: {{shape: [4]}}}}}}
        """)
    result = cli_invoke(["run", path, "-o", tmp_path / "out", "-q"], exit_code=1)
    assert "broken" in result.output and "fine" not in result.output
    assert "2 results: 1 pass, 1 fail" in result.output
