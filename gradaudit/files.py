"""The one place that writes output files: atomically, in UTF-8, announcing each one.

It also checks, before a run, that its outputs can be written (so a run of an hour does not end
in "read-only file system"), and locks an output folder against a second run writing into it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from gradaudit.errors import GradauditError, UsageError

# Less free space than this in an output folder is a usage error before the run, not after it.
MIN_FREE_BYTES = 1024 * 1024


class WriteError(GradauditError):
    """A report file could not be written after the run (the disk filled up, say)."""

    exit_code = 3

    def __init__(self, path: Path, exc: OSError) -> None:
        super().__init__(f"cannot write {path}: {exc.strerror or exc}")
        self.path = path


def write_atomic(path: str | os.PathLike, write: Callable[[IO[str]], None], *, announce=None,
                 durable: bool = True) -> Path:
    """Write a text file through `write(stream)` to a temporary file, then rename it into place.

    A run that is killed half-way never leaves a truncated file behind. A symlink is written
    through (its target is replaced, the link stays), and a special file (`/dev/stdout`, a FIFO,
    `/dev/null`) is written directly: renaming onto it would replace the device with a file.
    `durable=False` skips the fsync: for a checkpoint, which must outlive a crash of this process
    (the kernel keeps what was written), not of the machine, and is written before every job.
    """
    shown = Path(path)
    try:
        return _write(shown, write, announce, durable)
    except OSError as exc:
        raise WriteError(shown, exc) from exc


def _write(shown: Path, write: Callable[[IO[str]], None], announce, durable: bool = True) -> Path:
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
            if durable:
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


def check_folder(folder: Path, what: str) -> None:
    """Make sure files can be written into `folder` (made at the first write), or raise UsageError.

    Nothing is created: the folder, or the nearest folder above it that exists, gets a probe file
    that is removed at once.
    """
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{what} {folder}: is a file, not a folder")
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{what} {folder}: cannot make a folder there: {existing} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".gradaudit-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{what} {folder}: cannot write there: {exc.strerror or exc}") from None
    with contextlib.suppress(OSError):
        if shutil.disk_usage(existing).free < MIN_FREE_BYTES:
            raise UsageError(f"{what} {folder}: no space left on its disk")


def check_file(path: Path, what: str) -> None:
    """Make sure `path` can be written (a file in a writable folder, or a writable device)."""
    target = Path(os.path.realpath(path))
    if target.is_dir():
        raise UsageError(f"{what} {path}: is a folder, not a file")
    if _is_special(target):
        if not os.access(target, os.W_OK):
            raise UsageError(f"{what} {path}: cannot write there")
        return
    check_folder(target.parent, what)


@contextlib.contextmanager
def locked(folder: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on an output folder, or raise UsageError if another run holds it.

    The lock is on the folder itself (flock on its descriptor), so it leaves no file behind and
    ends with the process. Where there is no flock (Windows), nothing is locked.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{what} {folder}: cannot make the folder: {exc.strerror or exc}") from None
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UsageError(f"{what} {folder}: another gradaudit run is writing into this folder; "
                             "wait for it to finish or choose another folder") from None
        yield
    finally:
        os.close(fd)


def keep_results(write: Callable[[IO[str]], None]) -> Path | None:
    """Save results.json somewhere, when the place asked for failed; return where, or None."""
    name = f"gradaudit-results-{os.getpid()}.json"
    for folder in (Path(tempfile.gettempdir()), Path.home()):
        try:
            return _write(folder / name, write, None)
        except OSError:
            continue
    return None
