"""Imported once by the forkserver, so that every worker forked from it starts with torch loaded.

The forkserver lives until the run's process exits; its own exit then skips the interpreter's
teardown, which with torch loaded takes a third of a second (as long as a small run's audits),
during which it still holds the terminal's or the CI log's pipe open.
"""

import atexit
import os
import warnings

with warnings.catch_warnings():
    # Import-time notices (a missing NumPy, say) would print once more per run on the terminal.
    warnings.simplefilter("ignore")
    import torch  # noqa: F401

import gradaudit.caseaudit  # noqa: E402, F401
import gradaudit.workers  # noqa: E402, F401
from gradaudit.launch import flush_standard_streams  # noqa: E402


def _exit_at_once() -> None:
    """The forkserver's last step: flush what it printed, and exit without the teardown. (Its
    workers never get here: a child of the forkserver leaves by `os._exit` already.)"""
    flush_standard_streams()
    os._exit(0)


# Registered after torch's and multiprocessing's handlers, so it runs first (atexit is LIFO).
atexit.register(_exit_at_once)
