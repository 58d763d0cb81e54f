"""Compare a run with an older one: which failures are new, which are old debt, which are fixed."""

from __future__ import annotations

from collections.abc import Callable

from gradaudit.model import BAD_STATUSES, CaseResult, RunResults

NEW_FAILURE = "new-failure"
STILL_FAILING = "still-failing"
FIXED = "fixed"
NEW_CASE = "new-case"
MARKS = (NEW_FAILURE, STILL_FAILING, FIXED, NEW_CASE)
# How each mark reads in reports.
LABELS = {NEW_FAILURE: "new failure", STILL_FAILING: "still failing", FIXED: "fixed", NEW_CASE: "new case"}
PLURALS = {NEW_FAILURE: "new failures", STILL_FAILING: "still failing", FIXED: "fixed", NEW_CASE: "new cases"}


def failing(result: CaseResult) -> bool:
    """Whether a result is a failure for the baseline, known-bad fixtures included."""
    return result.status in BAD_STATUSES


def mark_of(result: CaseResult, old: CaseResult | None) -> str | None:
    """The baseline mark of one result given its older self; None where nothing changed."""
    if old is None:
        return NEW_CASE
    if result.status == "skip":
        return None  # not audited this time: nothing is known about it
    if failing(result):
        return STILL_FAILING if failing(old) else NEW_FAILURE
    if failing(old):
        return FIXED
    return None


def apply_baseline(results: RunResults, old: RunResults, path: str = "") -> None:
    """Mark every result of `results` against `old` and record the comparison on the run.

    A result is keyed by (case, device); results of `old` that this run no longer has are listed
    as `gone` (removed cases, or ones this run did not select).
    """
    old_by_key = {r.key: r for r in old.results}
    counts = dict.fromkeys(MARKS, 0)
    for result in results.results:
        result.baseline = mark_of(result, old_by_key.get(result.key))
        if result.baseline:
            counts[result.baseline] += 1
    keys = {r.key for r in results.results}
    gone = [f"{case} [{device}]" for case, device in sorted(old_by_key) if (case, device) not in keys]
    results.baseline = {"path": path, "started_at": old.started_at, "counts": counts, "gone": gone}


def describe(results: RunResults, when: Callable[[str], str] = str) -> str:
    """`against OLD of WHEN: 1 new failure, 2 still failing, 1 fixed`, or "" without a baseline.

    `when` writes the baseline's start time (the HTML report writes it for people to read).
    """
    if not results.baseline:
        return ""
    counts = results.baseline.get("counts") or {}
    parts = [f"{counts[m]} {(LABELS if counts[m] == 1 else PLURALS)[m]}" for m in MARKS if counts.get(m)]
    gone = results.baseline.get("gone") or []
    if gone:
        parts.append(f"{len(gone)} gone")
    where = results.baseline.get("path") or "the baseline"
    started = results.baseline.get("started_at")
    of = f" of {when(started)}" if started else ""
    return f"against {where}{of}: " + (", ".join(parts) or "no change")


def new_failures(results: RunResults) -> list[CaseResult]:
    """Results that fail and were not failing in the baseline (new cases that fail count too)."""
    return [r for r in results.results if r.is_bad and r.baseline in (NEW_FAILURE, NEW_CASE)]
