"""Imported once by the forkserver, so that every worker forked from it starts with torch loaded."""

import warnings

with warnings.catch_warnings():
    # Import-time notices (a missing NumPy, say) would print once more per run on the terminal.
    warnings.simplefilter("ignore")
    import torch  # noqa: F401

import gradaudit.caseaudit  # noqa: E402, F401
import gradaudit.workers  # noqa: E402, F401
