"""A short Markdown summary of a run, for CI job summaries: counts, the causes, then the failing cases.

Failing results are grouped by cause (finding ID and culprit line, gradaudit.causes): a table names
every distinct cause, however many rows are cut below it, and the first causes show their culprit
line in context. It holds no links (the HTML report is usually not reachable from where the summary
shows) and escapes user text, so a case name or message cannot inject Markdown or HTML.
"""

from __future__ import annotations

import re
from typing import IO

from gradaudit.baseline import LABELS
from gradaudit.baseline import describe as describe_baseline
from gradaudit.causes import Cause, cause_index, group_by_cause
from gradaudit.htmlreport import verdict
from gradaudit.model import STATUS_RANK, STATUSES, CaseResult, Location, RunResults
from gradaudit.safetext import safe_text

# Rows of the problems table, culprit blocks, and cases named per cause before "... and N more":
# a job summary stays short. The causes table is never cut: every distinct cause is named.
MAX_ROWS = 50
MAX_DETAILS = 10
MAX_CASES = 5
# Enough to keep user text inert inside a line or a table cell: emphasis, code, links, HTML, cells.
_SPECIAL = re.compile(r"([\\`*_\[\]<|~&])")


def escape(text: str) -> str:
    """Markdown-escape user text for a table cell or a line: one line, specials backslashed."""
    return _SPECIAL.sub(r"\\\1", re.sub(r"\s+", " ", safe_text(text)))


def inline(text: str) -> str:
    """User text with its `backticked` pieces as code spans and the rest escaped."""
    from gradaudit.htmlreport import message_parts

    return "".join(code_span(piece) if is_code else escape(piece) for piece, is_code in message_parts(text))


def code_span(text: str) -> str:
    """An inline code span that survives backticks and, in tables, pipes."""
    text = " ".join(safe_text(text).split()).replace("|", "\\|")
    ticks = max((len(m) for m in re.findall(r"`+", text)), default=0) + 1
    fence = "`" * ticks
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _fence(lines: list[str]) -> str:
    body = safe_text("\n".join(lines))
    ticks = max(3, max((len(m) for m in re.findall(r"`{3,}", body)), default=0) + 1)
    return f"{'`' * ticks}python\n{body}\n{'`' * ticks}"


def _status(result: CaseResult) -> str:
    # A results.json is input too: a status that is not one of ours must not carry HTML in.
    return escape(result.status.upper()) + (" (expected)" if result.expected else "")


def _snippet(loc: Location) -> list[str]:
    """A location's lines around its culprit, as a fenced block with line numbers (the culprit marked >)."""
    if loc.context and loc.context_start:
        width = len(str(loc.context_start + len(loc.context)))
        lines = [f"{'>' if loc.context_start + i == loc.line else ' '} {loc.context_start + i:>{width}}  {text}"
                 .rstrip() for i, text in enumerate(loc.context)]
    elif loc.code:
        lines = [f"> {loc.line}  {loc.code}"]
    else:
        return []
    return [_fence(lines)]


def _where(cause: Cause) -> str:
    if not cause.where:
        return "–"
    return code_span(cause.where) + (f" in {code_span(cause.function)}" if cause.function else "")


def _cause_status(cause: Cause) -> str:
    worst = max(cause.results, key=lambda r: STATUS_RANK.get(r.status, 0))
    return {"expected": _status(worst), "fixed": "fixed"}.get(cause.kind, escape(worst.status.upper()))


def _cases(cause: Cause, limit: int = MAX_CASES) -> str:
    names = [f"{code_span(case)} ({escape(', '.join(cause.devices_of(case)))})" for case in cause.cases[:limit]]
    more = len(cause.cases) - limit
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


def _causes_table(causes: list[Cause], marks: bool) -> list[str]:
    """One row per distinct cause, never cut."""
    out = ["| # | cause | where | status | results |" + (" new |" if marks else "") + " cases |",
           "|---:|---|---|---|---:|" + ("---:|" if marks else "") + "---|"]
    for n, cause in enumerate(causes, 1):
        new = f" {cause.new or ''} |" if marks else ""
        out.append(f"| {n} | {code_span(cause.id)} | {_where(cause)} | {_cause_status(cause)} | "
                   f"{len(cause.results)} |{new} {_cases(cause)} |")
    return out


def _cause_detail(n: int, cause: Cause) -> list[str]:
    """A cause's heading line, its message and its culprit line in context."""
    head = f"**{n}. {escape(cause.id)}**" + (f" at {_where(cause)}" if cause.where else "")
    new = f", {cause.new} new" if cause.new else ""
    out = [f"{head}: {_cause_status(cause)} in {escape(cause.reach())}{new}", "", inline(cause.message), ""]
    if cause.location is not None:
        snippet = _snippet(cause.location)
        out += snippet + ([""] if snippet else [])
    second = cause.second
    if second is not None:  # the second line: context, not the line to change
        out += [f"{escape(second.label or 'see also')} {code_span(second.where)}"
                + (f": {code_span(second.code)}" if second.code else ""), ""]
    return out


def write_markdown(results: RunResults, stream: IO[str]) -> None:
    """Write the Markdown summary of a run."""
    head = verdict(results)
    out = [f"## gradaudit: {head['word']}", "", escape(head["line"]), ""]
    counts = results.summary.counts
    shown = [s for s in STATUSES if counts.get(s)] or ["pass"]
    out += ["| " + " | ".join(shown) + " | total |", "|" + "---:|" * (len(shown) + 1),
            "| " + " | ".join(str(counts.get(s, 0)) for s in shown) + f" | {len(results.results)} |", ""]
    env = results.environment or {}
    facts = [f"{results.duration_s:.1f} s"]
    for name in ("torch", "python"):
        if env.get(name):
            facts.append(f"{name} {escape(env[name])}")
    if (results.config or {}).get("path"):
        facts.append(f"config {code_span(results.config['path'])}")
    out += [" · ".join(facts), ""]
    if results.baseline:
        out += [f"**Baseline:** {escape(describe_baseline(results))}", ""]
    marks = bool(results.baseline)
    causes = [c for c in group_by_cause(results.results) if c.kind != "fixed"]
    if causes:
        failing = [c for c in causes if c.kind == "fail"]
        n_failing = sum(len(c.results) for c in failing)
        title = (f"### {len(failing)} cause{'s' if len(failing) != 1 else ''} of {n_failing} failing "
                 f"result{'s' if n_failing != 1 else ''}" if failing else "### What needs a look")
        out += [title, "", *_causes_table(causes, marks), ""]
        for n, cause in enumerate(causes[:MAX_DETAILS], 1):
            out += _cause_detail(n, cause)
        if len(causes) > MAX_DETAILS:
            out += [f"… and {len(causes) - MAX_DETAILS} more causes, each named in the table above.", ""]
        # Then every result that needs a look, cause by cause (the causes' order), cut to MAX_ROWS.
        position = cause_index(causes)
        problems = sorted((r for r in results.results if r.key in position),
                          key=lambda r: (position[r.key], r.baseline != "new-failure", r.case, r.device))
        out += ["| case | device | status |" + (" vs baseline |" if marks else "") + " cause | what broke, where |",
                "|---|---|---|" + ("---|" if marks else "") + "---:|---|"]
        for r in problems[:MAX_ROWS]:
            mark = f" {LABELS.get(r.baseline or '', '')} |" if marks else ""
            out.append(f"| {code_span(r.case)} | {escape(r.device)} | {_status(r)} |{mark} {position[r.key] + 1} | "
                       f"{inline(r.summary_line)} |")
        if len(problems) > MAX_ROWS:
            out.append(f"\n… and {len(problems) - MAX_ROWS} more in the HTML report "
                       "(their causes are all in the table of causes above).")
        out.append("")
    else:
        out += ["Every audited case passed.", ""]
    stream.write("\n".join(out).rstrip("\n") + "\n")
