"""Ctrl-C and SIGTERM during a run: the first stops it, later ones never cost the finished results.

The first signal raises KeyboardInterrupt where the run is, so it stops and keeps what finished.
Every signal after that, and any signal while reports are being written (`hold()`), is only
remembered: a second Ctrl-C while the workers are stopped or while index.html and results.json
are written would otherwise lose both, or leave a new results.json beside a stale index.html.
SIGKILL still ends gradaudit at once, for whoever really means it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    installed = 0  # nesting depth of on_signals()
    holding = 0  # nesting depth of hold()
    received: list[int] = []
    told = False


_STATE = _State()


def _handler(signum: int, frame) -> None:
    first = not _STATE.received
    _STATE.received.append(signum)
    if first and not _STATE.holding:
        raise KeyboardInterrupt(f"signal {signum}")
    if not _STATE.told:
        _STATE.told = True
        with contextlib.suppress(OSError):
            os.write(2, b"gradaudit: stopping; writing the reports of the finished jobs first "
                        b"(kill -9 ends it at once, without them)\n")


@contextlib.contextmanager
def on_signals(*, last: bool = False) -> Iterator[None]:
    """Let SIGINT and SIGTERM stop what runs inside, once; nests (the outermost one installs).

    With `last` (a command about to exit), once a signal came, later ones stay ignored to the end
    instead of reaching the handlers that were there before.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _STATE.installed:
        _STATE.installed += 1
        try:
            yield
        finally:
            _STATE.installed -= 1
        return
    _STATE.received = []
    _STATE.told = False
    previous = {sig: signal.signal(sig, _handler) for sig in _SIGNALS}
    _STATE.installed = 1
    try:
        yield
    finally:
        _STATE.installed = 0
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_IGN if last and _STATE.received else handler)


@contextlib.contextmanager
def hold() -> Iterator[None]:
    """Inside, a signal is remembered instead of raised (writing reports, stopping workers)."""
    _STATE.holding += 1
    try:
        yield
    finally:
        _STATE.holding -= 1


def received() -> bool:
    """Whether a signal arrived since the outermost on_signals() began."""
    return bool(_STATE.received)
