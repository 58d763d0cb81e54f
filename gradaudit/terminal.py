"""The terminal summary: a table of results and the line that broke each failing one."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gradaudit.baseline import LABELS
from gradaudit.baseline import describe as describe_baseline
from gradaudit.causes import Cause, group_by_cause
from gradaudit.model import STATUSES, CaseResult, Finding, RunResults
from gradaudit.safetext import safe_text

BASELINE_STYLE = {"new-failure": "bold red", "still-failing": "yellow", "fixed": "green", "new-case": "cyan"}
STATUS_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "error": "bold magenta",
                "skip": "dim", "timeout": "bold red", "crash": "bold red"}


def status_text(result: CaseResult) -> str:
    style = STATUS_STYLE.get(result.status, "")
    label = result.status.upper() + (" (expected)" if result.expected else "")
    return f"[{style}]{escape(safe_text(label))}[/]"


def result_line(result: CaseResult) -> str:
    """One line per finished result, for plain (non-TTY) output."""
    text = f"{result.status.upper():7} {result.case} [{result.device}]"
    if result.expected:
        text += " (expected)"
    if result.baseline:
        text += f" ({LABELS[result.baseline]})"
    if result.summary_line and result.status != "pass":
        text += f"  {result.summary_line}"
    return safe_text(text, lines=False)


def cause_line(cause: Cause) -> str:
    """`partial-grad at losses/ratio.py:7: 10 results (5 cases) on cpu, cuda, 2 new`: one cause's heading."""
    kind = {"expected": " (expected)", "fixed": ""}.get(cause.kind, "")
    return safe_text(f"{cause.title}{kind}: {cause.reach()}" + (f", {cause.new} new" if cause.new else ""),
                     lines=False)


def print_summary(results: RunResults, console: Console) -> None:
    """Print a recap of the problems (and fixes against a baseline), grouped by cause, then the totals.

    Every result already had its own line as it finished; the recap repeats only what needs a
    look, so the end of a CI log of 1,000 passing cases still shows the one that failed, and each
    cause (finding ID and culprit line) once above the results it breaks.
    """
    # Exactly the results that need a look; known-bad fixtures that still fail are fine (the
    # totals line counts them as expected), so they are not listed.
    causes = [c for c in group_by_cause(results.results) if c.kind != "expected"]
    if causes and not console.is_terminal:
        # A CI log: plain lines that grep and never wrap a culprit line across table cells.
        console.print("Needs a look:", markup=False)
        for cause in causes:
            console.print("  " + cause_line(cause), markup=False, highlight=False, soft_wrap=True)
            for r in cause.results:
                console.print("    " + result_line(r), markup=False, highlight=False, soft_wrap=True)
    elif causes:
        for n, cause in enumerate(causes):
            # One table per cause, titled by it; the column names once, above the first.
            table = Table(title=escape(cause_line(cause)), title_justify="left", title_style="bold",
                          show_edge=False, show_header=n == 0, header_style="bold", expand=False)
            table.add_column("case", overflow="fold")
            table.add_column("device")
            table.add_column("status")
            if results.baseline:
                table.add_column("vs baseline")
            table.add_column("what broke, where", overflow="fold")
            for r in cause.results:
                mark = [f"[{BASELINE_STYLE[r.baseline]}]{LABELS[r.baseline]}[/]" if r.baseline else ""]
                table.add_row(escape(safe_text(r.case)), escape(safe_text(r.device)), status_text(r),
                              *(mark if results.baseline else []), escape(safe_text(r.summary_line)))
            console.print(table)
    for line in skip_lines(results):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(f"gradaudit: {escape(results.summary.line())} in {results.duration_s:.1f}s")
    if results.baseline:
        console.print(f"gradaudit: {escape(describe_baseline(results))}")


def skip_lines(results: RunResults) -> list[str]:
    """One line per skip reason ("7 cuda results skipped: cuda is not available here"), not one per
    result: on a CPU machine half of a config's results are cuda skips."""
    groups: dict[str, list[CaseResult]] = {}
    for r in results.results:
        if r.status == "skip":
            groups.setdefault(r.skip_reason or r.summary_line or "skipped", []).append(r)
    lines = []
    for reason, group in groups.items():
        devices = {r.device for r in group}
        what = (f"{next(iter(devices))} " if len(devices) == 1 else "") + ("result" if len(group) == 1 else "results")
        lines.append(f"{len(group)} {what} skipped: {reason}")
    return lines


def verdict_line(results: RunResults, exit_code: int, fail_on: str = "fail") -> str:
    """The run's last line: PASSED or FAILED in words, with why and the exit code."""
    if exit_code == 0:
        expected = sum(1 for r in results.results if r.expected)
        notes = [f"{expected} expected failure{'s' if expected != 1 else ''}"] if expected else []
        if fail_on == "new" and results.bad:
            notes.append(f"{len(results.bad)} known failure{'s' if len(results.bad) != 1 else ''} "
                         "still in the baseline")
        return "gradaudit: PASSED" + (f" ({', '.join(notes)})" if notes else "")
    if exit_code == 5:
        return "gradaudit: FAILED: nothing was audited: every result is skip (exit 5)"
    if fail_on == "new":
        from gradaudit.baseline import new_failures

        n = len(new_failures(results))
        return f"gradaudit: FAILED: {n} new failure{'s' if n != 1 else ''} since the baseline (exit 1)"
    bad = results.bad
    if not bad and fail_on == "warn":
        n = sum(1 for r in results.results if r.status == "warn")
        return f"gradaudit: FAILED: {n} result{'s' if n != 1 else ''} warn, with --fail-on warn (exit 1)"
    counts = {status: sum(1 for r in bad if r.status == status) for status in STATUSES}
    parts = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    return f"gradaudit: FAILED: {parts} (exit {exit_code})"


def finding_text(finding: Finding) -> str:
    """A finding as plain text: its ID and message, then the culprit line where known."""
    text = f"{finding.id}: {finding.message}"
    loc = finding.location
    if loc:
        text += f"\n  at {loc.where}" + (f" in {loc.function}" if loc.function else "")
        if loc.code:
            text += f": {loc.code}"
    second = finding.second
    if second:
        text += f"\n  {second.label or 'see also'} {second.where}" + (f": {second.code}" if second.code else "")
    return safe_text(text)


def result_text(result: CaseResult) -> str:
    """A result as plain text: its status line, every finding with its culprit line, how to rerun."""
    head = f"{result.status.upper():7} {result.case} [{result.device}]"
    if result.expected:
        head += " (expected)"
    lines = [head]
    shown = [f for f in result.findings if f.severity != "info"]
    for finding in shown:
        lines += ["  " + line for line in finding_text(finding).splitlines()]
    if not shown and result.summary_line and result.status != "pass":
        lines.append(f"  {result.summary_line}")
    if result.status != "pass" and result.reproduce:
        lines.append(f"  reproduce: {result.reproduce}")
    return safe_text("\n".join(lines))


def plain_summary(results: RunResults, only: list[CaseResult] | None = None) -> str:
    """The totals line and each result (or only those given) as plain text, for repr and asserts."""
    shown = results.results if only is None else only
    return "\n".join([f"gradaudit: {results.summary.line()}", *(result_text(r) for r in shown)])


class RunProgress:
    """Show results as they finish: a progress bar with a line per result on a terminal, plain lines
    (one per result) elsewhere, so CI logs stay readable. Skips are not listed one by one (the
    summary gives one line per reason), and quiet runs list nothing here: the recap lists each
    problem once."""

    def __init__(self, console: Console, *, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self.bar = None
        self.task = None

    @property
    def live(self) -> bool:
        return self.console.is_terminal and not self.quiet

    def start(self, total: int) -> None:
        if not self.live or not total:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("auditing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=self.console, transient=True)
        self.task = self.bar.add_task("auditing", total=total)
        self.bar.start()

    def result(self, result: CaseResult) -> None:
        shown = not self.quiet and result.status != "skip"
        if self.bar is not None:
            if shown:
                self.console.print(rich_line(result), highlight=False, soft_wrap=True)
            self.bar.advance(self.task)
        elif shown:
            self.console.print(result_line(result), markup=False, highlight=False, soft_wrap=True)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def wrap_line(text: str, width: int | None = None, indent: int = 8) -> list[str]:
    """Wrap one result line at word boundaries to the terminal's width, continuation lines indented
    (a culprit `file:line` or a code span is never split)."""
    import shutil
    import textwrap

    width = width or shutil.get_terminal_size().columns
    return textwrap.wrap(text, width=max(width, 40), subsequent_indent=" " * indent,
                         break_long_words=False, break_on_hyphens=False) or [text]


def rich_line(result: CaseResult) -> str:
    """One coloured result, wrapped to the terminal's width at word boundaries."""
    label = result.status.upper()
    lines = wrap_line(f"{label} {result_line(result)[8:]}", indent=len(label) + 1)
    head = status_text(result).replace(" (expected)", "") + escape(lines[0][len(label):])  # coloured status
    return "\n".join([head, *(escape(line) for line in lines[1:])])
