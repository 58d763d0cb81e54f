"""How worker processes start: a forkserver that imported torch once, started as early as a run can.

Kept apart from `gradaudit.workers` and light to import (the standard library only), so that the
command line can start the forkserver before it imports its own option parser: the forkserver's
`import torch`, the longest step of a small run, then begins a few tenths of a second sooner.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Iterator

# The forkserver imports these once; every worker forked from it starts with them loaded.
PRELOAD = ["gradaudit._preload"]

# A Unix socket's path holds at most 107 bytes; the forkserver's lies in TMPDIR under
# "/pymp-XXXXXXXX/listener-XXXXXXXX" (32 more; 40 leaves a margin), and `bind` fails ("AF_UNIX
# path too long") past it.
_SOCKET_PATH_MAX = 107
_FORKSERVER_SOCKET_TAIL = 40


def forkserver_fits(tempdir: str | None = None) -> bool:
    """Whether the forkserver's socket can be made under `tempdir` (the temporary folder)."""
    tempdir = tempdir if tempdir is not None else tempfile.gettempdir()
    return len(os.fsencode(tempdir)) + _FORKSERVER_SOCKET_TAIL <= _SOCKET_PATH_MAX


def start_method_context():
    """A multiprocessing context that never forks a process that may hold torch or CUDA state.

    `spawn` where there is no forkserver, or where TMPDIR is too long a path for its socket (each
    worker then imports torch itself: slower to start, and it works).
    """
    if "forkserver" in multiprocessing.get_all_start_methods() and forkserver_fits():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def prestart() -> None:
    """Start the forkserver now, so that its torch import overlaps whatever the caller does next
    (reading a big config, say); the first worker then starts at once. Does not wait."""
    if start_method_context().get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    with without_main_script(), passive_openmp():
        forkserver.ensure_running()


@contextlib.contextmanager
def without_main_script() -> Iterator[None]:
    """Start processes without asking them to re-run this process's main script or module.

    multiprocessing re-runs the parent's `__main__` in each child so that functions defined there
    can be unpickled. Workers need nothing from it (their target and arguments live in gradaudit),
    and re-running it costs each worker the imports of the command line, runs a script that lacks an
    `if __name__ == "__main__"` guard once more, and fails outright for a main read from stdin.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {key: main.__dict__[key] for key in ("__file__", "__spec__") if key in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


@contextlib.contextmanager
def passive_openmp() -> Iterator[None]:
    """Start processes whose OpenMP threads sleep rather than spin while they wait for work.

    Workers share the cores with each other and with whatever else the machine runs, and audit
    small tensors: spinning threads then cost a single worker two to three times its time (measured
    with benchmarks/bench_suite.py on a busy 2-core machine). A value the user set is kept. The
    variable is read when torch loads its OpenMP runtime, so it must be in place when the forkserver
    (or a spawned worker) starts.
    """
    if "OMP_WAIT_POLICY" in os.environ:
        yield
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        yield
    finally:
        os.environ.pop("OMP_WAIT_POLICY", None)
