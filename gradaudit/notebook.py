"""HTML for notebooks: a run's results as small self-contained cards (`RunResults._repr_html_`)."""

from __future__ import annotations

from html import escape

from gradaudit.model import CaseResult, RunResults

_COLOURS = {"pass": "#1a7f37", "warn": "#9a6700", "fail": "#cf222e", "error": "#8250df",
            "skip": "#6e7781", "timeout": "#cf222e", "crash": "#cf222e"}


def case_card(result: CaseResult) -> str:
    """One case x device: status, findings with their culprit lines, and the inputs' verdicts."""
    colour = _COLOURS.get(result.status, "#6e7781")
    label = result.status.upper() + (" (expected)" if result.expected else "")
    parts = [f'<div style="border-left:4px solid {colour};padding:4px 10px;margin:6px 0">'
             f'<b style="color:{colour}">{escape(label)}</b> <code>{escape(result.case)}</code> '
             f'[{escape(result.device)}]']
    findings = [f for f in result.findings if f.severity != "info"]
    if findings:
        parts.append("<ul>")
        for f in findings:
            item = f"<li><code>{escape(f.id)}</code>: {escape(f.message)}"
            if f.location:
                item += (f"<br><small>at {escape(f.location.where)}</small>"
                         f" <code>{escape(f.location.code)}</code>")
            parts.append(item + "</li>")
        parts.append("</ul>")
    elif result.summary_line and result.status != "pass":
        parts.append(f"<div>{escape(result.summary_line)}</div>")
    if result.inputs:
        cells = "".join(f"<tr><td><code>{escape(i.name)}</code></td><td>{escape(str(i.shape))}</td>"
                        f"<td>{escape(i.dtype)}</td><td>{escape(i.grad)}</td></tr>" for i in result.inputs)
        parts.append('<table style="font-size:90%"><tr><th>input</th><th>shape</th><th>dtype</th>'
                     f"<th>gradient</th></tr>{cells}</table>")
    parts.append("</div>")
    return "".join(parts)


def results_html(results: RunResults) -> str:
    """The totals line and one card per result."""
    cards = "".join(case_card(r) for r in results.results)
    return f"<div><div><b>gradaudit</b>: {escape(results.summary.line())}</div>{cards}</div>"
