"""Read a traceback's text back into frames, so reports show the user's frames and fold the rest.

A loss's traceback runs through gradaudit's draw loop and tracer and into torch; the line the user
edits sits among them. Reports render results.json possibly on another machine, so frames are told
apart by their paths alone. Both Python's traceback format and faulthandler's dump (what a
crashed worker leaves) are read. No torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# `  File "x.py", line 3, in f` (traceback) and `  File "x.py", line 3 in f` (faulthandler).
_FRAME = re.compile(r'^(?P<indent>\s*)File "(?P<file>[^"]*)", line (?P<line>\d+)(?:,? in (?P<function>.*))?$')
_GRADAUDIT = re.compile(r"(^|[/\\])gradaudit[/\\][A-Za-z0-9_]+\.py$")
_TORCH = re.compile(r"[/\\](torch|functorch|torchgen|triton)[/\\]")
_LIBRARY = re.compile(r"[/\\](site|dist)-packages[/\\]")
_STDLIB = re.compile(r"[/\\]lib[/\\](pypy|python)\d[\d.]*[/\\]")
# How folded frames are named, in this order.
KIND_NAMES = {"gradaudit": "gradaudit", "torch": "torch", "library": "libraries", "python": "Python"}


def frame_kind(path: str) -> str:
    """user, gradaudit, torch, library (other installed packages) or python (stdlib, <frozen ...>)."""
    if not path or path.startswith("<"):
        return "python"
    if _GRADAUDIT.search(path):
        return "gradaudit"
    if _TORCH.search(path):
        return "torch"
    if _LIBRARY.search(path):
        return "library"
    if _STDLIB.search(path):
        return "python"
    return "user"


@dataclass
class TraceFrame:
    file: str
    line: int
    function: str
    kind: str
    text: list[str] = field(default_factory=list)  # the frame's lines as printed (code, carets)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Segment:
    """A run of the traceback: plain lines, user frames (shown), or other frames (folded)."""

    folded: bool
    lines: list[str]
    frames: list[TraceFrame] = field(default_factory=list)

    @property
    def label(self) -> str:
        """`4 frames in gradaudit, torch`: what a folded run holds."""
        if not self.folded:
            return ""
        n = len(self.frames)
        kinds = [KIND_NAMES[k] for k in KIND_NAMES if any(f.kind == k for f in self.frames)]
        return f"{n} frame{'s' if n != 1 else ''} in {', '.join(kinds)}"

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def frames_of(text: str) -> list[TraceFrame]:
    """Every frame of a traceback text, in the order printed."""
    return [item for item in _items(text) if isinstance(item, TraceFrame)]


def _items(text: str) -> list[TraceFrame | str]:
    items: list[TraceFrame | str] = []
    current: TraceFrame | None = None
    indent = 0
    for raw in text.rstrip("\n").splitlines():
        match = _FRAME.match(raw)
        if match:
            current = TraceFrame(match["file"], int(match["line"]), (match["function"] or "").strip(),
                                 frame_kind(match["file"]), [raw])
            indent = len(match["indent"])
            items.append(current)
        elif current is not None and raw.strip() and len(raw) - len(raw.lstrip()) > indent:
            current.text.append(raw)  # the frame's source line and its carets
        else:
            current = None
            items.append(raw)
    return items


def segments(text: str) -> list[Segment]:
    """The traceback in runs: text and user frames as they are, other frames folded together.

    Read top to bottom, the first frame shown in full is the user's: gradaudit's calls into the
    loss, and torch's calls below it, are each one folded line.
    """
    out: list[Segment] = []
    for item in _items(text):
        if isinstance(item, str):
            folded, lines, frames = False, [item], []
        else:
            folded, lines, frames = item.kind != "user", item.text, [item]
        if out and out[-1].folded == folded:
            out[-1].lines += lines
            out[-1].frames += frames
        else:
            out.append(Segment(folded, list(lines), list(frames)))
    return out


def first_user_frame(text: str) -> TraceFrame | None:
    """The innermost user frame: where the user's own code was when it raised or crashed."""
    frames = frames_of(text)
    if "most recent call first" in text:  # a faulthandler dump lists the innermost frame first
        frames = frames[::-1]
    user = [f for f in frames if f.kind == "user"]
    return user[-1] if user else None
