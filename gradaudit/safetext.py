"""Neutralise control characters in user text before it reaches a terminal, HTML, Markdown or XML.

An exception message, a dim name or a field of a results.json can carry ESC sequences that draw a
fake `PASS` line over a failure on a terminal, NUL and other C0/C1 controls that HTML and XML
cannot hold, or bidirectional overrides that make text read differently than it is. Every
reporter passes user text through `safe_text` where it enters its output; each such character
becomes a visible escape (`\\x1b`, `\\r`, `\\u202e`), so nothing is lost and nothing acts.
"""

from __future__ import annotations

import re

# C0 controls except tab and newline, DEL, C1 controls, and the Unicode bidi overrides/isolates.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
_CONTROL_OR_NEWLINE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
_NAMED = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def _visible(match: re.Match) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(text: object, *, lines: bool = True) -> str:
    """`text` with control characters shown as escapes; with `lines=False`, newlines and tabs too."""
    text = str(text)
    pattern = _CONTROL if lines else _CONTROL_OR_NEWLINE
    return pattern.sub(_visible, text) if pattern.search(text) else text
