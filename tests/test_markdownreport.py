"""The Markdown summary for CI job summaries: short, link-free, user text inert."""

from __future__ import annotations

import io
import re

from markdown_it import MarkdownIt

from gradaudit.baseline import apply_baseline
from gradaudit.markdownreport import MAX_DETAILS, MAX_ROWS, code_span, escape, write_markdown
from tests import reportdata


def render(results) -> str:
    stream = io.StringIO()
    write_markdown(results, stream)
    return stream.getvalue()


def table_rows(text: str, header_start: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def test_counts_and_verdict():
    run = reportdata.sample_run()
    text = render(run)
    assert text.startswith("## gradaudit: Failed\n")
    header, _, counts = text.split("\n\n")[2].splitlines()
    names = [c.strip() for c in header.strip("|").split("|")]
    values = [int(c) for c in counts.strip("|").split("|")]
    summary = run.summary.counts
    wanted = {**{s: n for s, n in summary.items() if n}, "total": len(run.results)}
    assert dict(zip(names, values, strict=True)) == wanted


def test_failing_cases_listed_by_cause_with_their_culprit_lines():
    run = reportdata.sample_run()
    text = render(run)
    rows = table_rows(text, "| case |")
    problems = [r for r in run.results if r.status not in ("pass", "skip")]
    assert len(rows) == len(problems)
    shown = [(row[0].strip("`"), row[2]) for row in rows]
    # Unexpected failures first; the warning and the known-bad fixture after them.
    assert shown[-2:] == [("per_sample", "WARN"), ("known_bad", "FAIL (expected)")]
    # The culprit block of a cause: context lines, the culprit marked with ">".
    block = re.search(r"\*\*\d\. partial-grad\*\* at `losses/ratio.py:7` in `ratio_loss`: FAIL in 1 result on cpu"
                      r"\n\n.*?\n\n```python\n(.*?)\n```", text, re.S)
    assert block, text
    assert block.group(1).splitlines() == ["  5  def ratio_loss(predictions, targets):",
                                           "  6      a = predictions[:, 0]",
                                           "> 7      b = predictions[:, 1].detach()",
                                           "  8      return ((a / b - targets) ** 2).mean()"]


def test_a_nightly_names_every_distinct_cause():
    """2,000 results, 100 failing from 7 causes: every cause and its line is named, though rows are cut."""
    from gradaudit.causes import group_by_cause

    run = reportdata.nightly_run(2000)
    text = render(run)
    causes = [c for c in group_by_cause(run.results) if c.kind == "fail"]
    assert len(causes) == 7
    assert "### 7 causes of 100 failing results" in text
    table = table_rows(text, "| # | cause |")
    assert len(table) == 7 + 2  # and the warning and the known-bad fixture
    for row, cause in zip(table, causes, strict=False):
        assert row[1] == code_span(cause.id)
        assert row[4] == str(len(cause.results))
        assert row[6].startswith(code_span(cause.cases[0]))
        if cause.where:
            assert row[2].startswith(code_span(cause.where))
    assert len(table_rows(text, "| case |")) == MAX_ROWS
    needs_a_look = sum(len(c.results) for c in group_by_cause(run.results) if c.kind != "fixed")
    assert needs_a_look == 100 + 12 + 4  # failures, warnings, known-bad fixtures
    assert f"… and {needs_a_look - MAX_ROWS} more in the HTML report" in text
    # The first causes show their culprit line; every located failing cause has its line in the text.
    assert all(c.where in text for c in causes if c.where)
    shown = [c for c in group_by_cause(run.results) if c.kind != "fixed"][:MAX_DETAILS]
    assert text.count("```python") == sum(1 for c in shown if c.location and (c.location.context or c.location.code))
    # The new failures' cause leads, and says how many are new.
    assert table[0][5] == "16" and table[1][5] == "" and "16 new" in text


def commonmark(text: str) -> str:
    """Render Markdown as a CommonMark renderer with GFM tables and raw HTML on would."""
    return MarkdownIt("commonmark", {"html": True}).enable("table").render(text)


def test_no_links_and_no_raw_html():
    r = reportdata.ratio_fail(case="see_[docs](https://example.com)",
                              summary_line=reportdata.HOSTILE + " a|b [x](https://example.com) *y*")
    r.findings[1].location.code = "<img src=x onerror=alert(1)>"
    r.findings[1].location.context[2] = "``` <script>alert(1)</script>"
    text = render(reportdata.sample_run([r]))
    page = commonmark(text)
    assert "<a " not in page and "<script" not in page and "<img" not in page and "<em>" not in page
    assert "&lt;script&gt;alert('x')&lt;/script&gt;" in page  # shown as text
    (row,) = table_rows(text, "| case |")
    assert len(row) == 5, row  # the pipe in the message did not split the cell
    problems_table = page.split("<table>")[3]
    assert problems_table.split("<tbody>")[1].count("<td") == 5
    # The backticks in the source did not close the code block early.
    assert "``` &lt;script&gt;alert(1)&lt;/script&gt;\n  8      return" in page


def test_every_case_passed():
    text = render(reportdata.sample_run([reportdata.passing("a")]))
    assert "## gradaudit: Passed" in text and "Every audited case passed." in text and "| case |" not in text


def test_long_runs_stay_short():
    results = [reportdata.ratio_fail(case=f"c{i:03d}") for i in range(MAX_ROWS + 7)]
    for i, r in enumerate(results[:MAX_DETAILS + 3]):
        r.findings[1].location.line = 100 + i  # 13 distinct causes, then 44 results of one more
    text = render(reportdata.sample_run(results))
    assert len(table_rows(text, "| case |")) == MAX_ROWS
    assert "… and 7 more in the HTML report" in text
    assert len(table_rows(text, "| # | cause |")) == MAX_DETAILS + 4  # the causes table is never cut
    assert text.count("```python") == MAX_DETAILS
    assert "… and 4 more causes, each named in the table above." in text


def test_baseline_column_and_line():
    old = reportdata.sample_run([reportdata.passing("ratio_loss", group="losses.ratio")])
    new = reportdata.sample_run([reportdata.ratio_fail()])
    apply_baseline(new, old, "old/results.json")
    text = render(new)
    assert "**Baseline:** against old/results.json" in text and "1 new failure" in text
    assert table_rows(text, "| case |")[0][3] == "new failure"


def test_escape_and_code_span():
    assert escape("a|b *c* <d> [e]") == "a\\|b \\*c\\* \\<d> \\[e\\]"
    assert code_span("x`y") == "``x`y``"
    assert code_span("`x") == "`` `x ``"


def test_backticked_code_becomes_code_spans():
    r = reportdata.ratio_fail(summary_line="`b = x.detach()` at r.py:7 cuts `x|y` off")
    text = render(reportdata.sample_run([r]))
    (row,) = table_rows(text, "| case |")
    assert row[4] == "`b = x.detach()` at r.py:7 cuts `x\\|y` off"
    assert "<code>b = x.detach()</code> at r.py:7 cuts <code>x|y</code> off" in commonmark(text)
