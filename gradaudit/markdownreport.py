"""A short Markdown summary of a run, for CI job summaries: counts, then the failing cases and their lines.

It holds no links (the HTML report is usually not reachable from where the summary shows) and
escapes user text, so a case name or message cannot inject Markdown or HTML.
"""

from __future__ import annotations

import re
from typing import IO

from gradaudit.baseline import LABELS
from gradaudit.baseline import describe as describe_baseline
from gradaudit.htmlreport import verdict
from gradaudit.model import BAD_STATUSES, STATUS_RANK, STATUSES, CaseResult, RunResults

# Rows of the problems table and culprit blocks before "... and N more": a job summary stays short.
MAX_ROWS = 50
MAX_DETAILS = 10
# Enough to keep user text inert inside a line or a table cell: emphasis, code, links, HTML, cells.
_SPECIAL = re.compile(r"([\\`*_\[\]<|~&])")


def escape(text: str) -> str:
    """Markdown-escape user text for a table cell or a line: one line, specials backslashed."""
    return _SPECIAL.sub(r"\\\1", re.sub(r"\s+", " ", str(text)))


def inline(text: str) -> str:
    """User text with its `backticked` pieces as code spans and the rest escaped."""
    from gradaudit.htmlreport import message_parts

    return "".join(code_span(piece) if is_code else escape(piece) for piece, is_code in message_parts(text))


def code_span(text: str) -> str:
    """An inline code span that survives backticks and, in tables, pipes."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    ticks = max((len(m) for m in re.findall(r"`+", text)), default=0) + 1
    fence = "`" * ticks
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _fence(lines: list[str]) -> str:
    body = "\n".join(lines)
    ticks = max(3, max((len(m) for m in re.findall(r"`{3,}", body)), default=0) + 1)
    return f"{'`' * ticks}python\n{body}\n{'`' * ticks}"


def _status(result: CaseResult) -> str:
    return result.status.upper() + (" (expected)" if result.expected else "")


def _culprit(result: CaseResult) -> list[str]:
    """The worst located finding's lines around its culprit, as a fenced block with line numbers."""
    for finding in sorted(result.findings, key=lambda f: -f.rank):
        loc = finding.location
        if loc is None:
            continue
        if loc.context and loc.context_start:
            width = len(str(loc.context_start + len(loc.context)))
            lines = [f"{'>' if loc.context_start + i == loc.line else ' '} {loc.context_start + i:>{width}}  {text}"
                     .rstrip() for i, text in enumerate(loc.context)]
        elif loc.code:
            lines = [f"> {loc.line}  {loc.code}"]
        else:
            lines = []
        head = f"{escape(finding.id)} at {code_span(loc.where)}" + (
            f" in {code_span(loc.function)}" if loc.function else "")
        second = finding.second
        also = [f"{escape(second.label or 'see also')} {code_span(second.where)}"
                + (f": {code_span(second.code)}" if second.code else "")] if second else []
        return [head] + also + ([_fence(lines)] if lines else [])
    return []


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
    problems = [r for r in results.results if r.status not in ("pass", "skip")]
    problems.sort(key=lambda r: (not r.is_bad, r.baseline != "new-failure", -STATUS_RANK.get(r.status, 0),
                                 r.case, r.device))
    if problems:
        marks = bool(results.baseline)
        out += ["| case | device | status |" + (" vs baseline |" if marks else "") + " what broke, where |",
                "|---|---|---|" + ("---|" if marks else "") + "---|"]
        for r in problems[:MAX_ROWS]:
            mark = f" {LABELS.get(r.baseline or '', '')} |" if marks else ""
            out.append(f"| {code_span(r.case)} | {escape(r.device)} | {_status(r)} |{mark} {inline(r.summary_line)} |")
        if len(problems) > MAX_ROWS:
            out.append(f"\n… and {len(problems) - MAX_ROWS} more in the HTML report.")
        out.append("")
        detailed = [r for r in problems if r.status in BAD_STATUSES][:MAX_DETAILS]
        for r in detailed:
            culprit = _culprit(r)
            if not culprit:
                continue
            out += [f"**{code_span(r.case)} [{escape(r.device)}]** {_status(r)}: {culprit[0]}", ""]
            out += culprit[1:] + [""] if len(culprit) > 1 else []
    else:
        out += ["Every audited case passed.", ""]
    stream.write("\n".join(out).rstrip("\n") + "\n")
