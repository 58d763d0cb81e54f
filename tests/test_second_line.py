"""A finding's second line (the op that saved a tensor an in-place op changed): kept in results.json
and shown under the location by the terminal, Markdown and HTML reports (no torch)."""

from __future__ import annotations

import io

from gradaudit.htmlreport import render_html
from gradaudit.markdownreport import write_markdown
from gradaudit.model import CaseResult, Finding, Location
from gradaudit.terminal import finding_text
from tests import reportdata


def _conflict() -> Finding:
    changed = Location(file="losses/seed.py", line=43, function="loss", code="probs.mul_(2.0)")
    saved = Location(file="losses/seed.py", line=42, function="loss", code="probs = torch.sigmoid(x)",
                     label="saved for backward at")
    return Finding("inplace-version-conflict", "fail", "`probs.mul_(2.0)` at losses/seed.py:43 changed in place "
                   "a tensor that `probs = torch.sigmoid(x)` at losses/seed.py:42 saved for backward",
                   location=changed, second=saved)


def _run():
    result = CaseResult(case="conflict", device="cpu", status="fail", findings=[_conflict()],
                        summary_line="`probs.mul_(2.0)` at losses/seed.py:43 changed in place a tensor")
    return reportdata.sample_run([result])


def test_second_line_round_trips():
    finding = _conflict()
    data = finding.to_dict()
    assert data["location"]["line"] == 43 and "label" not in data["location"]
    assert data["second"] == {"file": "losses/seed.py", "line": 42, "function": "loss",
                              "code": "probs = torch.sigmoid(x)", "label": "saved for backward at"}
    assert Finding.from_dict(data) == finding
    assert "second" not in Finding("zero-grad", "fail", "m").to_dict()


def test_terminal_shows_the_second_line_under_the_location():
    lines = finding_text(_conflict()).splitlines()
    assert lines[1] == "  at losses/seed.py:43 in loss: probs.mul_(2.0)"
    assert lines[2] == "  saved for backward at losses/seed.py:42: probs = torch.sigmoid(x)"


def test_markdown_shows_the_second_line_under_the_culprit():
    stream = io.StringIO()
    write_markdown(_run(), stream)
    lines = stream.getvalue().splitlines()
    assert "saved for backward at `losses/seed.py:42`: `probs = torch.sigmoid(x)`" in lines
    head = next(i for i, line in enumerate(lines) if "inplace-version-conflict" in line and "seed.py:43" in line)
    assert head < lines.index("saved for backward at `losses/seed.py:42`: `probs = torch.sigmoid(x)`")


def test_html_carries_the_second_line_and_shows_it():
    page = render_html(_run())
    assert '"second": "saved for backward at losses/seed.py:42 in loss: probs = torch.sigmoid(x)"' in page \
        or '"second":"saved for backward at losses/seed.py:42 in loss: probs = torch.sigmoid(x)"' in page
    assert 'el("p", "where second", f.second)' in page  # the page's script shows it under the location
