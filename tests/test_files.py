"""Writing output files: atomic, and readable by others like any file the user writes."""

from __future__ import annotations

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


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_special_file_is_written_directly(tmp_path):
    """`--markdown /dev/stdout` (or a FIFO, or /dev/null) must stay what it is, not become a file."""
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []

    def read() -> None:
        with open(fifo, encoding="utf-8") as stream:
            got.append(stream.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        write_atomic(fifo, lambda s: s.write("summary\n"))
    finally:
        if reader.is_alive():  # the old rename left the FIFO without a writer: unblock the reader
            with open(fifo, "w") as unblock:
                unblock.write("")
        reader.join(10)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert got == ["summary\n"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_report_writes_through_links_and_devices(tmp_path, cli_invoke):
    # A FIFO stands for /dev/stdout and /dev/null: replacing a real device here would be for good.
    import threading

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
    got = []

    def read() -> None:
        with open(fifo, encoding="utf-8") as stream:
            got.append(stream.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        cli_invoke(["report", results, "-o", tmp_path / "out", "--junit", link, "--markdown", fifo])
    finally:
        if reader.is_alive():
            with open(fifo, "w") as unblock:
                unblock.write("")
        reader.join(10)
    assert link.is_symlink() and "<testsuite" in real.read_text()
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and got and got[0].startswith("## gradaudit")
