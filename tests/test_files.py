"""Writing output files: atomic, and readable by others like any file the user writes."""

from __future__ import annotations

import contextlib
import os
import stat

import pytest

from gradaudit.files import write_atomic


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_written_files_follow_the_umask_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "deep" / "index.html", lambda s: s.write("x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.read_text() == "x" and [p.name for p in path.parent.iterdir()] == ["index.html"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX symlinks")
def test_a_symlink_is_written_through_not_replaced(tmp_path):
    real = tmp_path / "elsewhere" / "junit.xml"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "link.xml"
    link.symlink_to(real)
    write_atomic(link, lambda s: s.write("new"))
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "new"
    assert sorted(p.name for p in real.parent.iterdir()) == ["junit.xml"]  # no temporary left


@pytest.mark.timeout(120)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_special_file_is_written_directly(tmp_path):
    """`--markdown /dev/stdout` (or a FIFO, or /dev/null) must stay what it is, not become a file."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with _fifo_reader(fifo) as read:
        write_atomic(fifo, lambda s: s.write("summary\n"))
        got = read()
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert got == "summary\n"


@pytest.mark.timeout(120)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_report_writes_through_links_and_devices(tmp_path, cli_invoke):
    # A FIFO stands for /dev/stdout and /dev/null: replacing a real device here would be for good.
    from gradaudit.jsonreport import write_json
    from tests import reportdata

    results = tmp_path / "results.json"
    with results.open("w", encoding="utf-8") as stream:
        write_json(reportdata.sample_run(), stream)
    real = tmp_path / "real.xml"
    real.write_text("")
    link = tmp_path / "link.xml"
    link.symlink_to(real)
    fifo = tmp_path / "summary"
    os.mkfifo(fifo)
    with _fifo_reader(fifo) as read:
        cli_invoke(["report", results, "-o", tmp_path / "out", "--junit", link, "--markdown", fifo])
        got = read()
    assert link.is_symlink() and "<testsuite" in real.read_text()
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and got.startswith("## gradaudit")


@contextlib.contextmanager
def _fifo_reader(fifo):
    """Hold the FIFO's read end open (non-blocking) while the code under test writes into it.

    With a reader already there, the writer's open() returns at once and its few kilobytes wait in
    the pipe's buffer, so nothing blocks: no thread, no rendezvous that a slow or odd machine can
    miss (a blocked rendezvous hung a CI run for its whole 90 minutes). `read()` drains the pipe
    once the writer has closed it.
    """
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:  # a writer that sees the reader opens at once; on a machine whose FIFOs don't, say so
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError as exc:
        os.close(fd)
        pytest.skip(f"this machine's FIFOs do not see a non-blocking reader ({exc})")
    chunks: list[bytes] = []

    def read() -> str:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:  # a writer still holds it open but wrote nothing more
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8")

    try:
        yield read
    finally:
        os.close(fd)
