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
