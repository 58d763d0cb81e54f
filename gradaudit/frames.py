"""Find the user's own code in a stack: the frame that is neither torch's nor gradaudit's."""

from __future__ import annotations

import linecache
import os
import re
import sysconfig
from pathlib import Path

from gradaudit.model import Frame, Location

_OURS = str(Path(__file__).resolve().parent)
_STDLIB = str(Path(sysconfig.get_paths()["stdlib"]).resolve())
# Console scripts (bin/gradaudit, bin/pytest) call into user code but are never the user's.
_SCRIPTS = str(Path(sysconfig.get_paths()["scripts"]).resolve())
# Packages whose frames are never the user's: torch and the tools that call into user code.
_NOT_USER = tuple(f"{os.sep}{name}{os.sep}" for name in
                  ("torch", "typer", "click", "_pytest", "pluggy", "numpy", "functorch"))


def is_user_file(filename: str) -> bool:
    """Whether a frame's file is the user's (not torch, the standard library or gradaudit)."""
    if not filename or filename.startswith("<"):
        return False
    path = str(Path(filename).resolve())
    if path.startswith(_OURS + os.sep) or any(m in path for m in _NOT_USER):
        return False
    if path.startswith(_STDLIB + os.sep) and "-packages" + os.sep not in path:
        return False
    return not path.startswith(_SCRIPTS + os.sep)


def _is_ours(filename: str) -> bool:
    """A gradaudit frame that calls user code (the tracer, which user code calls, is not one)."""
    if not filename or filename.startswith("<"):
        return False
    path = str(Path(filename).resolve())
    return path.startswith(_OURS + os.sep) and not path.endswith(f"{os.sep}tracing.py")


def display_path(filename: str, root: Path | None) -> str:
    """A path relative to the config's folder where it lies under it, else as is."""
    if root is not None:
        try:
            return Path(filename).resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return filename


def source_line(filename: str, line: int) -> str:
    return linecache.getline(filename, line).strip()


def context_of(filename: str, line: int, radius: int = 3) -> tuple[int, list[str]]:
    """A few source lines around `line`: the first line's number and the lines."""
    start = max(1, line - radius)
    lines = [linecache.getline(filename, n).rstrip("\n") for n in range(start, line + radius + 1)]
    while lines and not lines[-1]:
        lines.pop()
    return start, lines


def location_from(frames: list[tuple[str, int, str]], root: Path | None) -> Location | None:
    """The innermost user frame of a stack (outermost first), with the user call chain.

    Frames up to gradaudit's own last frame (the console script, a test calling the audit) are
    not part of the user's call chain.
    """
    ours = [i for i, f in enumerate(frames) if _is_ours(f[0])]
    if ours:
        frames = frames[ours[-1] + 1:]
    user = [f for f in frames if is_user_file(f[0])]
    if not user:
        return None
    chain = [Frame(display_path(f, root), n, fn, source_line(f, n)) for f, n, fn in user]
    filename, line, function = user[-1]
    start, context = context_of(filename, line)
    return Location(file=display_path(filename, root), line=line, function=function,
                    code=source_line(filename, line), chain=chain[:-1][-8:],
                    context_start=start, context=context)


_TRACE_LINE = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)')


def frames_from_text(trace: str) -> list[tuple[str, int, str]]:
    """Parse `File "x", line n, in f` lines of a formatted traceback, outermost first."""
    return [(m["file"], int(m["line"]), m["func"]) for m in _TRACE_LINE.finditer(trace)]
