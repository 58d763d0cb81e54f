"""Group results by cause: one finding ID at one culprit line, however many cases and devices it breaks.

A nightly of 2,000 results with 100 failures usually has a handful of bugs: a shared helper that
detaches, one op that overflows. The HTML report, the Markdown summary and the terminal recap all
show each cause once, with the results it affects, using the grouping computed here. No torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gradaudit.baseline import FIXED, NEW_CASE, NEW_FAILURE
from gradaudit.model import BAD_STATUSES, STATUS_RANK, CaseResult, Finding, Location
from gradaudit.tracebacks import first_user_frame

# The kinds of cause, in the order reports show them: what fails the run first, then warnings,
# then known-bad fixtures that fail as expected, then what a baseline says is fixed.
KINDS = ("fail", "warn", "expected", "fixed")
KIND_TITLES = {"fail": "Failures", "warn": "Warnings", "expected": "Known-bad fixtures, failing as expected",
               "fixed": "Fixed since the baseline"}


@dataclass
class Cause:
    """One cause: the finding ID, the culprit line, and every result it explains."""

    id: str  # the finding ID, or the status (error, crash, timeout) where no finding says more
    where: str  # the culprit `file:line`, "" where unknown
    kind: str  # one of KINDS
    message: str  # what the first result says about it: its finding's message or its error line
    function: str = ""
    location: Location | None = None
    results: list[CaseResult] = field(default_factory=list)
    second: Location | None = None  # the finding's second line (the op that saved what an in-place op changed)

    @property
    def key(self) -> tuple[str, str, str]:
        return cause_key(self.results[0])

    @property
    def title(self) -> str:
        """`partial-grad at losses/ratio.py:7`, or the ID alone where the line is unknown."""
        return self.id + (f" at {self.where}" if self.where else "")

    @property
    def cases(self) -> list[str]:
        """The distinct cases, in the cause's result order."""
        return list(dict.fromkeys(r.case for r in self.results))

    @property
    def devices(self) -> list[str]:
        return sorted({r.device for r in self.results}, key=lambda d: (d != "cpu", d))

    @property
    def new(self) -> int:
        """How many of its results are new failures against a baseline (new cases that fail too)."""
        return sum(1 for r in self.results if is_new_failure(r))

    def devices_of(self, case: str) -> list[str]:
        return [r.device for r in self.results if r.case == case]

    def reach(self) -> str:
        """`14 results (9 cases) on cpu, cuda`."""
        n, cases = len(self.results), len(self.cases)
        text = f"{n} result{'s' if n != 1 else ''}"
        if cases != n:
            text += f" ({cases} case{'s' if cases != 1 else ''})"
        return text + " on " + ", ".join(self.devices)


def is_new_failure(result: CaseResult) -> bool:
    """A failure the baseline did not have, as `--fail-on new` counts it."""
    return result.is_bad and result.baseline in (NEW_FAILURE, NEW_CASE)


def kind_of(result: CaseResult) -> str | None:
    """Which kind of cause a result belongs to, or None where it needs no look (passes, skips)."""
    if result.expected and result.status in BAD_STATUSES:
        return "expected"
    if result.status in BAD_STATUSES:
        return "fail"
    if result.status == "warn":
        return "warn"
    if result.baseline == FIXED:
        return "fixed"
    return None


def cause_finding(result: CaseResult) -> Finding | None:
    """The finding that says what is wrong: the worst one, as the summary line uses it."""
    worst = result.worst_finding()
    return worst if worst is not None and worst.severity != "info" else None


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


def cause_key(result: CaseResult) -> tuple[str, str, str]:
    """(ID, file:line, message-or-""): the same bug at the same line is one cause.

    Where no line is known (an import error, a crash without a dump), the message tells causes apart
    instead, so two unrelated errors are never merged into one.
    """
    finding = cause_finding(result) if result.status != "error" or result.findings else None
    if finding is not None:
        where = finding.location.where if finding.location else ""
        return finding.id, where, "" if where else finding.message
    if result.error is not None:
        head = result.status + (f": {result.error.type}" if result.error.type else "")
        frame = first_user_frame(result.error.traceback)
        if frame is not None:
            return head, frame.where, ""
        return head, "", _first_line(result.error.message) or result.summary_line
    if result.baseline == FIXED and result.status not in BAD_STATUSES and result.status != "warn":
        return FIXED, "", ""
    return result.status, "", result.summary_line


def _cause_of(result: CaseResult, kind: str) -> Cause:
    ident, where, _ = cause_key(result)
    finding = cause_finding(result) if result.status != "error" or result.findings else None
    if finding is not None:
        loc = finding.location
        return Cause(ident, where, kind, finding.message, loc.function if loc else "", loc, second=finding.second)
    if result.error is not None:
        frame = first_user_frame(result.error.traceback)
        code = " ".join(frame.text[1].split()) if frame is not None and len(frame.text) > 1 else ""
        location = Location(frame.file, frame.line, frame.function, code) if frame is not None else None
        return Cause(ident, where, kind, _first_line(result.error.message) or result.summary_line,
                     frame.function if frame else "", location)
    if ident == FIXED:
        return Cause(ident, "", kind, "failing in the baseline, passing now")
    return Cause(ident, "", kind, result.summary_line)


def _result_order(result: CaseResult) -> tuple:
    return (not is_new_failure(result), result.case, result.device != "cpu", result.device)


def group_by_cause(results: list[CaseResult]) -> list[Cause]:
    """The causes of every result that needs a look, in report order.

    Kinds in KINDS order; within a kind, causes with new failures first, then those that affect
    the most results, then by ID and line; within a cause, new failures first, then by case.
    Passing and skipped results (not fixed against a baseline) belong to no cause.
    """
    causes: dict[tuple[str, tuple[str, str, str]], Cause] = {}
    for result in results:
        kind = kind_of(result)
        if kind is None:
            continue
        key = (kind, cause_key(result))
        cause = causes.get(key)
        if cause is None:
            cause = causes[key] = _cause_of(result, kind)
        cause.results.append(result)
    for cause in causes.values():
        cause.results.sort(key=_result_order)
        # Show the message and snippet of the cause's first result (a new failure where there is one).
        first = _cause_of(cause.results[0], cause.kind)
        cause.message, cause.location, cause.function = first.message, first.location, first.function
    return sorted(causes.values(), key=lambda c: (KINDS.index(c.kind), c.new == 0, -len(c.results),
                                                  -max(STATUS_RANK.get(r.status, 0) for r in c.results),
                                                  c.id, c.where, c.message))


def cause_index(causes: list[Cause]) -> dict[tuple[str, str], int]:
    """Each result's (case, device) key to the position of its cause in `causes`."""
    return {r.key: i for i, cause in enumerate(causes) for r in cause.results}
