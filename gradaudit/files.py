"""The one place that writes output files: atomically, in UTF-8, announcing each one."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_atomic(path: str | os.PathLike, write: Callable[[IO[str]], None], *, announce=None) -> Path:
    """Write a text file through `write(stream)` to a temporary file, then rename it into place.

    A run that is killed half-way never leaves a truncated file behind. A symlink is written
    through (its target is replaced, the link stays), and a special file (`/dev/stdout`, a FIFO,
    `/dev/null`) is written directly: renaming onto it would replace the device with a file.
    """
    shown = Path(path)
    target = Path(os.path.realpath(shown))
    if _is_special(target):
        with open(target, "w", encoding="utf-8", newline="\n") as stream:
            write(stream)
        if announce is not None:
            announce(f"Wrote {describe(shown)} to {shown}")
        return shown
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp makes the file private (0600); a report is for sharing, so use the usual mode.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if announce is not None:
        announce(f"Wrote {describe(shown)} to {shown}")
    return shown


def _is_special(path: Path) -> bool:
    """Whether `path` exists and is neither a regular file nor a folder (a device, FIFO, socket)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def describe(path: Path) -> str:
    """Name what a file holds from its suffix, for the "Wrote ..." line."""
    return {
        ".json": "results",
        ".html": "HTML report",
        ".xml": "JUnit XML",
        ".md": "Markdown summary",
        ".yaml": "config",
    }.get(path.suffix, "file")
