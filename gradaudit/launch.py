"""The console script: start the workers' forkserver first, then hand over to the command line.

`gradaudit run` spends most of a small run waiting for the forkserver's `import torch`. Importing
the option parser (typer, rich) and the CLI's own modules takes a few tenths of a second more, so
a plain `run` starts the forkserver before any of that; `gradaudit.cli` then finds it running.
Anything that is not a plain run (`--help`, `--no-isolate`, other commands) starts nothing here.

Such a run's own process never imports torch or the user's code (the workers do), so its exit has
nothing to clean up but the interpreter (400 modules, 70,000 objects: 40 ms of a small run): it
runs the exit handlers, flushes and leaves (`console`).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

# Options after which `run` starts no workers: asking for help, or auditing in this process.
_NO_WORKERS = frozenset({"--help", "-h", "--no-isolate", "--version"})


def starts_workers(argv: list[str]) -> bool:
    """Whether this command line is a run that will start workers (decided without parsing it)."""
    return argv[:1] == ["run"] and len(argv) > 1 and not _NO_WORKERS.intersection(argv)


def main() -> None:
    """The `gradaudit` console script (and `python -m gradaudit`)."""
    if starts_workers(sys.argv[1:]):
        from gradaudit.forkstart import prestart

        prestart()
    from gradaudit.cli import main as cli_main

    cli_main()


def console() -> None:
    """The process of the `gradaudit` console script (and of `python -m gradaudit`): `main()`,
    then, after a run with workers, an exit without the interpreter's teardown."""
    quick = starts_workers(sys.argv[1:])
    try:
        main()
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code
        if not quick or not isinstance(code, int) or _other_threads():
            raise
    else:
        code = 0
        if not quick or _other_threads():
            return
    quick_exit(code)


def quick_exit(code: int) -> None:
    """Exit now with `code`, after the exit handlers (multiprocessing's cleanup of its socket's
    folder among them) and a flush of the standard streams."""
    atexit._run_exitfuncs()
    flush_standard_streams()
    os._exit(code)


def flush_standard_streams() -> None:
    """Flush stdout and stderr before an `os._exit` (a closed stream: nothing left to lose)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001, S110
            pass


def _other_threads() -> bool:
    """A thread other than this one that the interpreter would wait for at exit."""
    main_thread = threading.main_thread()
    return any(t is not main_thread and not t.daemon and t.is_alive() for t in threading.enumerate())
