"""index.html: a self-contained report of a run (placeholder until the report lands)."""

from __future__ import annotations

import html
from typing import IO

from gradaudit.model import RunResults


def write_html(results: RunResults, stream: IO[str]) -> None:
    """Write a minimal, self-contained HTML page listing every result."""
    rows = "\n".join(
        f"<tr><td>{html.escape(r.case)}</td><td>{html.escape(r.device)}</td>"
        f"<td>{html.escape(r.status)}</td><td>{html.escape(r.summary_line)}</td></tr>"
        for r in results.results)
    stream.write(f"""<!doctype html><html><head><meta charset="utf-8"><title>gradaudit report</title></head>
<body><h1>gradaudit</h1><p>{html.escape(results.summary.line())}</p>
<table><tr><th>case</th><th>device</th><th>status</th><th>what</th></tr>
{rows}
</table></body></html>
""")
