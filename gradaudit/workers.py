"""Worker processes: audit jobs in a pool where a crash, a hang or a runaway allocation costs one job.

Why our own small protocol over `multiprocessing` rather than `concurrent.futures` or a task
library: a ProcessPoolExecutor marks the whole pool broken when one worker dies and cannot kill a
single hung task, and neither it nor `multiprocessing.Pool` says which job a dead worker held. Here
each worker owns one duplex pipe; the parent sends jobs (a few ahead, in order, where they are
short), waits on every pipe and every process sentinel at once (or, while every busy worker has jobs
waiting, on the sentinels and the clock, then reads the results that came), and so knows at each
moment which job each worker runs, when it must finish, and that a worker died while running it.
Jobs sent ahead behind one that turns out long are taken back (through a serial each worker notes
in shared memory as it starts a job, under a lock), so a block of long jobs in a suite of short
ones is spread over the workers as it would be one job at a time.

Workers start from a `forkserver` that imported torch once (`spawn` where there is no forkserver),
never by plain `fork`: CUDA cannot be initialised again in a forked child, and the forkserver itself
never touches CUDA. Each worker writes its stdout and stderr to its own log file with `faulthandler`
enabled, so a crash leaves the Python stack of the line that crashed, and a hang gets a stack dump
(SIGUSR1) before it is killed.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import math
import os
import re
import select
import selectors
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

from gradaudit.config import CaseSpec
from gradaudit.errors import WorkerStartError
from gradaudit.forkstart import (  # noqa: F401 - PRELOAD, forkserver_fits, prestart: also read from here
    PRELOAD,
    forkserver_fits,
    passive_openmp,
    prestart,
    start_method_context,
    without_main_script,
)
from gradaudit.model import CaseResult, ErrorInfo

# How much of a dead worker's output a result keeps.
TAIL_BYTES = 6000
TAIL_LINES = 40
# A timed-out worker gets this long to dump its stack before it is killed.
DUMP_GRACE_S = 0.5
# The longest single wait for workers; a deadline further off is waited for in steps.
MAX_WAIT_S = 3600.0
# A worker whose last job took less than this gets its next jobs sent ahead, so that it starts each
# at once instead of waiting for this process to read its result and answer (about a millisecond
# on a busy 2-core machine: as much as a small case's audit). Never at the tail of a run, where a
# job queued behind a long one would wait while other workers idle.
AHEAD_BELOW_S = 0.25
# How long the run waits for a worker's start lock before leaving its queue as it is.
REVOKE_LOCK_S = 1.0
# Short jobs also get this process out of their way: a worker is sent enough jobs ahead for about
# twice COALESCE_S (at most MAX_AHEAD, and at most AHEAD_BYTES of them in its pipe, which holds
# 64 KiB), and while every busy worker has jobs waiting this process wakes every COALESCE_S or so
# and reads all the results that came, instead of waking at each result: on a 2-core machine each
# wake-up takes a core from a worker (0.15 ms a result, a sixth of a small case's audit). The jobs
# waiting behind one that runs AHEAD_BELOW_S are taken back (WorkerPool._revoke).
COALESCE_S = 0.01
MAX_AHEAD = 16
AHEAD_BYTES = 32 * 1024
# Workers that die before they are ready, in a row, before the run gives up.
MAX_START_FAILURES = 3



@dataclass
class WorkerSetup:
    """What every worker of a run needs before its first job (plain, picklable data)."""

    root: Path
    config_display: str
    sys_path: list[Path] = field(default_factory=list)
    threads: int = 1


# -- the audit of one job, the same in a worker and in-process -----------------------------------

def audit_job(spec: CaseSpec, device: str, ctx: Any) -> CaseResult:
    """Audit one job: skip an unavailable device, apply the memory guard, name a loss that exits."""
    from gradaudit.caseaudit import audit_case
    from gradaudit.devices import current
    from gradaudit.jobs import skipped

    reason = current().skip_reason(device)
    if reason:
        return skipped(spec, device, reason, ctx.config_display)
    start = time.perf_counter()
    try:
        with memory_limit(spec.max_memory_mb, device) as guard:
            result = audit_case(spec, device, ctx)
    except SystemExit as exc:
        # A loss that calls sys.exit() would end the worker (or the whole run in-process).
        return lost(spec, device, ctx.config_display, time.perf_counter() - start,
                    ErrorInfo(type="SystemExit", message=f"the loss called sys.exit({exc.code!r})"))
    except Exception as exc:  # noqa: BLE001 - a failure of ours costs this case, not the run
        import traceback

        return lost(spec, device, ctx.config_display, time.perf_counter() - start,
                    ErrorInfo(type=type(exc).__name__, message=f"gradaudit failed while auditing this case: "
                              f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()),
                    status="error")
    if guard.limited:
        memory_verdict(result, spec.max_memory_mb)
    return result


_ALLOC_FAILED = re.compile(r"can't allocate memory|cannot allocate memory|out of memory|"
                           r"std::bad_alloc|not enough memory", re.IGNORECASE)


def memory_verdict(result: CaseResult, limit_mb: int | None) -> None:
    """Turn an allocation that failed under the memory guard into this case's `error`.

    The guard made it fail, so it is not a defect of the loss's gradient path: the audit could not
    run the loss within its `max_memory_mb`.
    """
    err = result.error
    if err is None or result.status in ("pass", "skip"):
        return
    if err.type not in ("MemoryError", "OutOfMemoryError") and not _ALLOC_FAILED.search(err.message):
        return
    result.status = "error"
    result.expected = False
    result.error = ErrorInfo(type=err.type, message=f"exceeded max_memory_mb={limit_mb}: {err.message}",
                             traceback=err.traceback, anomaly_trace=err.anomaly_trace)
    wanted = re.search(r"allocate (\d+) bytes", err.message)
    where = next((f.location for f in result.findings if f.location), None)
    result.summary_line = (f"exceeded max_memory_mb={limit_mb}"
                           + (f": tried to allocate {int(wanted[1]) / 2**20:,.0f} MiB" if wanted else "")
                           + (f" at {where.where}" + (f": {where.code}" if where.code else "") if where else ""))


class _Guard:
    limited = False


@contextlib.contextmanager
def memory_limit(limit_mb: int | None, device: str) -> Iterator[_Guard]:
    """Cap this process's address space at what it holds now plus `limit_mb` MiB, for one job.

    RLIMIT_AS counts virtual memory, so the cap sits above what the process has already mapped
    (torch's libraries alone map hundreds of MiB); the job may map `limit_mb` more. Accelerator jobs
    are left alone: CUDA maps huge virtual ranges that have nothing to do with host memory. Where
    there is no RLIMIT_AS (not Linux), this does nothing.
    """
    guard = _Guard()
    if not limit_mb or device.partition(":")[0] != "cpu":
        yield guard
        return
    try:
        import resource

        current = _mapped_bytes()
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, AttributeError, ValueError):
        yield guard
        return
    cap = current + int(limit_mb) * 1024 * 1024
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (OSError, ValueError):  # a platform that does not enforce RLIMIT_AS (macOS)
        yield guard
        return
    guard.limited = True
    try:
        yield guard
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _mapped_bytes() -> int:
    """This process's mapped virtual memory (VmSize), in bytes."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


# -- results for jobs that could not finish -------------------------------------------------------

def lost(spec: CaseSpec, device: str, config_display: str, duration: float, error: ErrorInfo,
         status: str = "crash", root: Path | None = None, summary: str = "") -> CaseResult:
    """A result for a job whose worker died or was killed: what happened, and where if known."""
    from gradaudit.jobs import skipped

    result = skipped(spec, device, "", config_display)
    result.status = status
    result.skip_reason = None
    result.duration_s = duration
    result.error = error
    where = _location_of_dump(error.traceback, root)
    result.summary_line = (summary or _first_line(error.message, 200)) + (f" at {where}" if where else "")
    return result


def _first_line(text: str, limit: int) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= limit else first[: limit - 1] + "…"


def death_message(exitcode: int | None) -> tuple[str, str, str]:
    """(error type, message, summary) for a worker that died with `exitcode` while auditing a case."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        text = f"the worker auditing this case was killed by signal {-exitcode} ({name})"
        if -exitcode == signal.SIGKILL:
            text += "; the kernel's out-of-memory killer sends SIGKILL"
        return name, text, f"crashed: {name} (signal {-exitcode})"
    return ("WorkerExit", f"the worker auditing this case exited with code {exitcode} (os._exit or exit())",
            f"crashed: the worker exited with code {exitcode}")


# faulthandler writes `File "path", line N in function`, most recent call first.
_DUMP_LINE = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')


def _location_of_dump(text: str, root: Path | None) -> str:
    """`file:line: code` of the user's innermost frame in a faulthandler dump, or ""."""
    from gradaudit.frames import location_from

    if not text:
        return ""
    # The first thread block is the one that crashed (or the main thread, for a stack dump).
    block = text.split("most recent call first", 1)[-1].split("\n\n", 1)[0] if "most recent call" \
        in text else ""
    frames = [(m["file"], int(m["line"]), m["func"]) for m in _DUMP_LINE.finditer(block)]
    loc = location_from(frames[::-1], root)
    if loc is None:
        return ""
    return loc.where + (f": {loc.code}" if loc.code else "")


# -- the worker process -----------------------------------------------------------------------------

def _worker_main(conn, setup: WorkerSetup, log_path: str, describe: bool = False, starts=None,
                 lock=None) -> None:
    """A worker's life: set up once, then audit jobs until told to stop or the pipe closes.

    The worker asked to `describe` sends the run's environment block with its first message, so
    the parent process never imports torch (nor initialises CUDA) itself. In `starts` (shared,
    under `lock`) it notes the serial of each job it starts, and skips, answering "revoked", a job
    the parent took back before it started (see `WorkerPool._revoke`).
    """
    log_fd = _become_worker(log_path)
    import torch

    torch.set_num_threads(max(1, setup.threads))
    from gradaudit.devices import needs_fresh_process
    from gradaudit.environment import describe as environment
    from gradaudit.jobs import audit_context
    from gradaudit.loading import add_import_roots
    from gradaudit.losscall import reseed_between_cases
    from gradaudit.processstate import Change, Snapshot, note_leaks

    reseed_between_cases()  # no caller here: every case starts from one fixed random state
    add_import_roots(setup.root, setup.sys_path)
    ctx = audit_context(setup.root, setup.config_display)
    # Plain data only: the parent must be able to read it without importing torch.
    env = json.loads(json.dumps(environment(), default=str)) if describe else None
    # The state every job starts from: a job that leaves it changed ends this worker.
    fresh = Snapshot.take()
    conn.send(("ready", os.getpid(), env))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        index, spec, device, serial = message
        if starts is not None and not _starting(starts, lock, serial):
            conn.send(("revoked", index))
            continue
        _fresh_log(log_fd)
        result = audit_job(spec, device, ctx)
        changes = fresh.changes()
        children = end_children()
        if children:
            changes.append(Change(f"left {children} child process{'es' if children > 1 else ''} running "
                                  "(killed with the case)"))
        note_leaks(result, changes, spec, setup.root, in_process=False)
        # A case that poisoned a device context or changed process-wide state leaves this worker
        # unfit: it says so and leaves, and a fresh worker takes the next job.
        leaving = needs_fresh_process() or bool(changes)
        try:
            conn.send(("done", index, result, leaving, time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - a result that does not pickle is still a result
            result = lost(spec, device, setup.config_display, result.duration_s,
                          ErrorInfo(type=type(exc).__name__, message=f"cannot send the result: {exc}"),
                          status="error")
            conn.send(("done", index, result, leaving, time.monotonic()))
        if leaving:
            return


def _starting(starts: Any, lock: Any, serial: int) -> bool:
    """Note that the job sent as `serial` starts now; False where the parent revoked it first."""
    with lock:
        if serial <= starts[1]:
            return False
        starts[0] = serial
        return True


def _become_worker(log_path: str) -> int:
    """Detach from the terminal's signals, send output to the log, arm faulthandler."""
    # The parent handles Ctrl-C and SIGTERM for the run and kills workers with SIGKILL.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    # A process group of its own, so that the parent can kill the worker with whatever a loss
    # started; and the reaper of its orphaned descendants, so that none outlives its case.
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    _adopt_orphans()
    # torch.compile's compile workers would be processes that outlive the case; compile here.
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    with contextlib.suppress(ImportError, OSError, ValueError):
        import resource

        # A crashing loss should cost a line in the report, not a core file of torch's size.
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    try:
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError as exc:
        # Not a traceback on the user's terminal: the parent says why workers cannot start.
        with contextlib.suppress(OSError):
            os.write(2, f"gradaudit: a worker cannot open its log {log_path}: {exc.strerror}\n".encode())
        os._exit(70)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    faulthandler.enable(file=sys.stderr, all_threads=True)
    if hasattr(faulthandler, "register") and hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    return log_fd


def _fresh_log(log_fd: int) -> None:
    """Empty the log so that a crash's tail holds this job's output alone."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a stream a loss closed or replaced: not this job's fault
            stream.flush()
    os.ftruncate(log_fd, 0)


def _adopt_orphans() -> None:
    """Become the parent of this worker's orphaned descendants (Linux), so end_children finds them."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc; elsewhere none are found)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children", encoding="ascii") as f:
                    kids = [int(k) for k in f.read().split()]
            except (OSError, ValueError):
                continue
            found += kids
            todo += kids
    return found


def end_children(grace_s: float = 2.0) -> int:
    """Kill every process a job left running below this worker and reap it; return how many.

    A child of a loss inherits the worker's descriptors, among them the pipes that keep
    multiprocessing's helper processes (and so gradaudit's own stdout) open: `gradaudit run | cat`
    would wait for it.
    """
    try:
        os.waitpid(-1, os.WNOHANG)  # reaps a child that exited; raises where there is no child
    except ChildProcessError:
        return 0  # no child at all, so nothing below (an orphan would have become our child)
    killed: set[int] = set()
    give_up = time.monotonic() + grace_s
    while True:
        alive = _descendants(os.getpid())
        for pid in alive:
            if pid not in killed:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return len(killed)
            if pid == 0:
                break
        if not alive or time.monotonic() > give_up:
            return len(killed)
        time.sleep(0.005)


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when the process that forked it dies, so none is orphaned."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# -- the pool ---------------------------------------------------------------------------------------

@dataclass
class _Worker:
    process: Any
    conn: Any
    log_path: str
    describes: bool = False
    ready: bool = False
    leaving: bool = False  # it will exit after its last result (a poisoned device context)
    job: tuple[int, Any] | None = None  # (index, Job) while busy
    # The next jobs, already in its pipe, in order: (item, its size there, its serial).
    queued: deque = field(default_factory=deque)
    queued_bytes: int = 0
    started: float = 0.0
    deadline: float = 0.0
    last_s: float = math.inf  # how long its last job took
    job_s: float = math.inf  # how long its recent jobs took (a moving average)
    readiness: _Readiness | None = None
    # Shared with the worker: [serial of the job it started last, serials revoked up to]; None
    # where shared memory could not be made (no jobs then go deeper than one ahead).
    starts: Any = None
    lock: Any = None
    sent: int = 0  # serials of the jobs sent to it so far
    revoked_to: int = 0  # the last serial revoked


class _Readiness:
    """Whether a worker's pipe has something to read (a message, or its end) and whether its
    process has exited, asked without waiting, from one `poll` object made once: multiprocessing's
    `Connection.poll()` and `Process.is_alive()` build a selector or wait on the process at each
    call, a tenth of a millisecond of this process's time per result on a busy machine."""

    def __init__(self, conn: Any, sentinel: int) -> None:
        self.conn, self.conn_fd, self.sentinel = conn, conn.fileno(), sentinel
        self._poll = select.poll() if hasattr(select, "poll") else None
        if self._poll is not None:
            self._poll.register(self.conn_fd, select.POLLIN)
            self._poll.register(sentinel, select.POLLIN)

    def readable(self) -> bool:
        if self._poll is None:
            return self.conn.poll()
        return any(fd == self.conn_fd for fd, _ in self._poll.poll(0))

    def exited(self, process: Any) -> bool:
        if self._poll is None:
            return not process.is_alive()
        return any(fd == self.sentinel for fd, _ in self._poll.poll(0))


def _pipe_selector() -> selectors.BaseSelector | None:
    """A selector that takes pipes (POSIX); None on Windows, whose selectors take sockets only:
    there multiprocessing's wait() serves."""
    return selectors.DefaultSelector() if os.name == "posix" else None


class WorkerPool:
    """Up to `size` worker processes that audit jobs and replace a worker that dies."""

    def __init__(self, size: int, setup: WorkerSetup) -> None:
        self.size = max(1, size)
        self.setup = setup
        self.mp = start_method_context()
        self.workers: list[_Worker] = []
        self.logs = tempfile.mkdtemp(prefix="gradaudit-workers-")
        self.start_failures = 0
        self._serial = 0
        self.environment: dict | None = None  # the environment block, from the first ready worker
        self._pending: deque = deque()  # (index, Job) not yet sent to any worker
        # Every worker's pipe and process sentinel, registered once (not once per wait).
        self._selector = _pipe_selector()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close(kill=exc_info[0] is not None)

    def start(self, n_jobs: int) -> None:
        """Start the workers that `n_jobs` jobs need (at most `size`); they get ready meanwhile."""
        while len(self.workers) < min(self.size, n_jobs):
            self._start_worker()

    def results(self, jobs: list) -> Iterator[tuple[int, CaseResult]]:
        """Audit `jobs` (runner.Job) and yield (index, result) as each one finishes."""
        self._pending = pending = deque(enumerate(jobs))
        self.start(len(pending))
        while pending or any(w.job for w in self.workers):
            for w in self.workers:
                if not w.ready or w.leaving or not pending:
                    continue
                if w.job is None:
                    self._send(w, pending.popleft())
                wanted = self._ahead_wanted(w)
                while pending and len(w.queued) < wanted and self._send(w, pending[0], ahead=True):
                    pending.popleft()
            yield from self._step()
            missing = min(self.size, len(pending) + sum(1 for w in self.workers if w.job))
            while len([w for w in self.workers if not w.leaving]) < missing:
                self._start_worker()

    def _ahead_wanted(self, w: _Worker) -> int:
        """How many jobs `w` should have waiting in its pipe behind the one it runs."""
        left = len(self._pending)
        if w.last_s >= AHEAD_BELOW_S or left <= len(self.workers):
            return 0
        if w.job is not None and time.monotonic() - w.started >= AHEAD_BELOW_S:
            return 0  # the job it runs turned out long: nothing more behind it
        if left <= len(self.workers) * MAX_AHEAD or w.starts is None:  # near the tail: one
            return 1
        return min(MAX_AHEAD, 1 + math.ceil(2 * COALESCE_S / max(w.job_s, 1e-4)))

    def _start_worker(self) -> None:
        self._serial += 1
        log_path = os.path.join(self.logs, f"worker-{self._serial}.log")
        parent, child = self.mp.Pipe(duplex=True)
        # One worker describes the environment; another is asked only if that one died first.
        describe = self.environment is None and not any(w.describes for w in self.workers)
        try:
            starts, lock = self.mp.RawArray("q", 2), self.mp.Lock()
        except OSError:  # no shared memory here: jobs go at most one ahead, never revoked
            starts = lock = None
        process = self.mp.Process(target=_worker_main, args=(child, self.setup, log_path, describe, starts, lock),
                                  name=f"gradaudit-worker-{self._serial}", daemon=True)
        with without_main_script(), passive_openmp():
            process.start()
        child.close()
        w = _Worker(process, parent, log_path, describes=describe, readiness=_Readiness(parent, process.sentinel),
                    starts=starts, lock=lock)
        if self._selector is not None:
            self._selector.register(parent, selectors.EVENT_READ, w)
            self._selector.register(process.sentinel, selectors.EVENT_READ, w)
        self.workers.append(w)

    def _send(self, w: _Worker, item: tuple[int, Any], ahead: bool = False) -> bool:
        """Send `item` to `w`: to run now, or `ahead` behind what it has. False: not sent (ahead,
        the job would pass the bytes a worker's pipe may hold of waiting jobs)."""
        index, job = item
        data = ForkingPickler.dumps((index, job.spec, job.device, w.sent + 1))
        if ahead:
            if w.queued and w.queued_bytes + len(data) > AHEAD_BYTES:
                return False
            w.queued.append((item, len(data), w.sent + 1))
            w.queued_bytes += len(data)
        else:
            self._begin(w, item, time.monotonic())
        w.sent += 1
        try:
            w.conn.send_bytes(data)
        except (BrokenPipeError, OSError):
            pass  # it died; its sentinel says so in the next step
        return True

    @staticmethod
    def _begin(w: _Worker, item: tuple[int, Any], at: float) -> None:
        """Make `item` the job `w` is auditing now, since `at`: its timeout runs from there."""
        w.job = item
        w.started = at
        w.deadline = at + float(item[1].spec.timeout)  # inf: no limit

    def _next_job(self, w: _Worker, at: float) -> None:
        """`w` finished its job at `at`: the first one sent ahead started then, or, if `w` will not
        run it (it is leaving, or died), every job sent ahead goes back to the front of the queue.
        A worker that died had started the first of them if its shared serial says so: that job is
        the one that died with it."""
        w.job = None
        if not w.queued:
            return
        if w.leaving or (w.readiness.exited(w.process) and not self._started(w, w.queued[0][2])):
            self._requeue(w)
            return
        item, size, _ = w.queued.popleft()
        w.queued_bytes -= size
        self._begin(w, item, at)

    @staticmethod
    def _started(w: _Worker, serial: int) -> bool:
        """Whether `w` started the job it was sent as `serial` (never known without shared memory)."""
        return w.starts is not None and w.starts[0] >= serial

    def _requeue(self, w: _Worker) -> None:
        """A worker that is gone never ran the jobs sent ahead to it: other workers will."""
        self._pending.extendleft(item for item, _, _ in reversed(w.queued))
        w.queued.clear()
        w.queued_bytes = 0

    def _revoke(self, w: _Worker) -> None:
        """`w`'s job has run AHEAD_BELOW_S: take back the jobs sent ahead behind it that it has not
        started (it skips them, answering "revoked"), for any worker to run. Under the lock shared
        with it, so each job is either started there or taken back, never both."""
        # Bounded: a worker killed while it held the lock (a moment at each job's start) would
        # hold it forever; its death is then reported by `_service`, and nothing is taken back.
        if not w.lock.acquire(timeout=REVOKE_LOCK_S):
            return
        try:
            running = w.starts[0]
            w.starts[1] = w.revoked_to = w.sent
        finally:
            w.lock.release()
        back = [entry for entry in w.queued if entry[2] > running]
        if not back:
            return
        w.queued = deque(entry for entry in w.queued if entry[2] <= running)
        w.queued_bytes = sum(size for _, size, _ in w.queued)
        self._pending.extendleft(item for item, _, _ in reversed(back))

    @staticmethod
    def _revocable(w: _Worker) -> bool:
        """Jobs wait behind `w`'s job that were sent after its last revocation."""
        return w.starts is not None and bool(w.queued) and w.queued[-1][2] > w.revoked_to

    def _step(self) -> Iterator[tuple[int, CaseResult]]:
        busy = [w for w in self.workers if w.job]
        # An infinite (or astronomically long) timeout never passes; select() takes bounded waits.
        now = time.monotonic()
        timeout = min(MAX_WAIT_S, max(0.0, min(w.deadline for w in busy) - now)) if busy else None
        # Wake when a job with others waiting behind it turns long (AHEAD_BELOW_S), to take them back.
        revoke_at = [w.started + AHEAD_BELOW_S - now for w in busy if self._revocable(w)]
        if revoke_at:
            timeout = max(0.0, min(revoke_at)) if timeout is None else min(timeout, max(0.0, min(revoke_at)))
        coalesce = self._coalescing(busy)
        if coalesce is not None:
            # Every busy worker has jobs waiting: wait for a death or the time, then read them all.
            timeout = min(timeout, coalesce) if timeout is not None else coalesce
            sentinels = [w.process.sentinel for w in self.workers]
            if sentinels:
                wait(sentinels, timeout)
            else:
                time.sleep(timeout)
            ready = {id(w): w for w in self.workers}
        else:
            ready = self._wait(timeout)
        for w in ready.values():
            yield from self._service(w)
        now = time.monotonic()
        for w in list(self.workers):
            if w.job and now >= w.deadline:
                yield self._time_out(w)
            elif w.job and now - w.started >= AHEAD_BELOW_S and self._revocable(w):
                self._revoke(w)

    @staticmethod
    def _coalescing(busy: list[_Worker]) -> float | None:
        """How long to wait before reading the workers' results, where every busy worker has at
        least two jobs waiting (so none runs dry meanwhile); None: wait for the first message."""
        if not busy or any(len(w.queued) < 2 for w in busy):
            return None
        return min(COALESCE_S, min(len(w.queued) * w.job_s / 2 for w in busy))

    def _wait(self, timeout: float | None) -> dict[int, _Worker]:
        """The workers that sent something or exited, waiting up to `timeout` for the first."""
        ready: dict[int, _Worker] = {}
        if self._selector is not None:
            for key, _ in self._selector.select(timeout):
                ready[id(key.data)] = key.data
        else:
            handles = {h: w for w in self.workers for h in (w.conn, w.process.sentinel)}
            for h in wait(list(handles), timeout):
                ready[id(handles[h])] = handles[h]
        return ready

    def _service(self, w: _Worker) -> Iterator[tuple[int, CaseResult]]:
        """Read what a worker sent; if it died, account for its job and replace it."""
        dead = False
        try:
            while w.readiness.readable():
                message = w.conn.recv()
                if message[0] == "revoked":
                    pass  # a job taken back before it started (`_revoke`): queued again already
                elif message[0] == "ready":
                    w.ready = True
                    self.start_failures = 0
                    if message[2] is not None:
                        self.environment = message[2]
                elif message[0] == "done":
                    index, result = message[1], message[2]
                    # When it finished (read later than that where this process waited a while).
                    at = min(max(message[4], w.started), time.monotonic())
                    w.last_s = at - w.started
                    w.job_s = w.last_s if math.isinf(w.job_s) else 0.7 * w.job_s + 0.3 * w.last_s
                    w.leaving = message[3]
                    self._next_job(w, at)
                    yield index, result
        except (EOFError, OSError):
            dead = True
        except Exception as exc:  # noqa: BLE001 - a result this process cannot unpickle
            if w.job is not None:
                index, job = w.job
                started = w.started
                self._next_job(w, time.monotonic())
                yield index, lost(job.spec, job.device, self.setup.config_display, time.monotonic() - started,
                                  ErrorInfo(type=type(exc).__name__, message=f"cannot read the result: {exc}"),
                                  status="error")
        if dead or w.readiness.exited(w.process):
            yield from self._reap(w)

    def _reap(self, w: _Worker) -> Iterator[tuple[int, CaseResult]]:
        w.process.join(timeout=5)
        exitcode = w.process.exitcode
        self._forget(w)
        self._requeue(w)
        tail = _tail(w.log_path)
        if w.job is not None:
            index, job = w.job
            kind, message, summary = death_message(exitcode)
            yield index, lost(job.spec, job.device, self.setup.config_display,
                              time.monotonic() - w.started,
                              ErrorInfo(type=kind, message=message, traceback=tail),
                              root=self.setup.root, summary=summary)
        elif not w.ready:
            self.start_failures += 1
            if self.start_failures >= MAX_START_FAILURES:
                message = death_message(exitcode)[1].replace("the worker auditing this case", "the last one")
                raise WorkerStartError(f"gradaudit's worker processes cannot start ({message}); "
                                       f"their last output:\n{tail or '(none)'}\n"
                                       "Run with --no-isolate to audit in this process instead.")

    def _time_out(self, w: _Worker) -> tuple[int, CaseResult]:
        """Dump the stack of a worker past its job's deadline, kill it, report `timeout`."""
        index, job = w.job
        elapsed = time.monotonic() - w.started
        size = _size(w.log_path)
        with contextlib.suppress(OSError, AttributeError):
            os.kill(w.process.pid, signal.SIGUSR1)
            give_up = time.monotonic() + DUMP_GRACE_S
            while time.monotonic() < give_up and not _dumped(w.log_path, size):
                time.sleep(0.02)
            time.sleep(0.05)  # the dump is several writes; let the last ones land
        _kill(w)
        w.process.join(timeout=5)
        self._forget(w)
        self._requeue(w)
        tail = _tail(w.log_path)
        fatal = re.search(r"Fatal Python error: (.+)", tail)
        if fatal:
            # It had crashed already and was still going down when its time ran out.
            error = ErrorInfo(type="Crash", message=f"the worker auditing this case crashed: {fatal[1]}",
                              traceback=tail)
            return index, lost(job.spec, job.device, self.setup.config_display, elapsed, error,
                               root=self.setup.root, summary=f"crashed: {fatal[1]}")
        error = ErrorInfo(type="Timeout", message=f"the case ran past its timeout of {job.spec.timeout:g}s "
                          "and its worker was killed", traceback=tail)
        return index, lost(job.spec, job.device, self.setup.config_display, elapsed, error,
                           status="timeout", root=self.setup.root,
                           summary=f"timed out after {job.spec.timeout:g}s")

    def _forget(self, w: _Worker) -> None:
        if w in self.workers:
            self.workers.remove(w)
        self._unwatch(w)
        with contextlib.suppress(OSError):
            w.conn.close()

    def _unwatch(self, w: _Worker) -> None:
        if self._selector is None:
            return
        for handle in (w.conn, w.process.sentinel):
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(handle)

    def close(self, kill: bool = False) -> None:
        """Stop every worker: ask idle ones to leave, kill the rest (or all, when `kill`)."""
        for w in self.workers:
            if not kill and w.job is None:
                with contextlib.suppress(OSError):
                    w.conn.send(None)
        give_up = time.monotonic() + (0 if kill else 2.0)
        for w in self.workers:
            w.process.join(timeout=max(0.0, give_up - time.monotonic()))
            if w.process.is_alive():
                _kill(w)
                w.process.join(timeout=5)
            self._unwatch(w)
            with contextlib.suppress(OSError):
                w.conn.close()
        self.workers.clear()
        if self._selector is not None:
            self._selector.close()
        shutil.rmtree(self.logs, ignore_errors=True)


def _kill(w: _Worker) -> None:
    """Kill a worker and the processes its job started (its process group, where it made one)."""
    with contextlib.suppress(OSError, AttributeError):
        os.killpg(w.process.pid, signal.SIGKILL)  # a group named after the worker: never ours
    w.process.kill()


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _dumped(path: str, offset: int) -> bool:
    """Whether a stack dump appeared in a log after `offset`."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return b"most recent call first" in f.read()
    except OSError:
        return False


def _tail(path: str) -> str:
    """The last lines of a worker's log."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, _size(path) - TAIL_BYTES))
            data = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-TAIL_LINES:])
