"""HTML for notebooks (`AuditResults._repr_html_`): the run's HTML report, in a frame of its own.

The frame holds exactly the page `gradaudit run` writes, cards and all; a frame keeps the report's
stylesheet and script from touching the notebook around it.
"""

from __future__ import annotations

from html import escape

from gradaudit.model import RunResults

# Grow the frame to its page's height once loaded (a srcdoc frame shares the notebook's origin).
_FIT = ("this.style.height=(this.contentWindow.document.documentElement.scrollHeight+16)+'px'")


def results_html(results: RunResults) -> str:
    """The report page of `results` as one <iframe> element."""
    from gradaudit.htmlreport import render_html

    page = render_html(results)
    height = min(240 + 160 * len(results.results), 900)  # until the page says how tall it is
    return (f'<iframe srcdoc="{escape(page, quote=True)}" title="gradaudit report" '
            f'style="width:100%;height:{height}px;border:1px solid #d0d7de;border-radius:6px" '
            f'onload="{escape(_FIT, quote=True)}"></iframe>')
