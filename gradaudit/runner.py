"""Run a whole config: select cases and devices, audit each pair, collect a RunResults."""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import fnmatch
import io
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from gradaudit import interrupts
from gradaudit._version import __version__
from gradaudit.config import CaseSpec, Config, check_device_names
from gradaudit.errors import UsageError, WorkerStartError
from gradaudit.jobs import audit_context, skipped
from gradaudit.model import CaseResult, RunResults


@dataclass
class RunOptions:
    """The choices of one run that the command line (or an API caller) makes."""

    case_globs: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)  # empty: each case's own devices
    seed: int | None = None
    timeout: float | None = None
    command: str = ""
    jobs: int | None = None  # worker processes; None: every usable CPU
    shard: str | None = None  # "K/N": run only slice K of N of the case x device matrix
    # True: audit in worker processes (what `gradaudit run` does unless --no-isolate). False, the
    # library default: in this process, where a caller's injected device layer or live loss lives.
    isolate: bool = False
    # --compile: torch.compile backends to audit every case under, in place of the config's lists.
    compile: list[str] = field(default_factory=list)


@dataclass
class Job:
    """One case on one device: the unit of work, of sharding and of a result."""

    spec: CaseSpec
    device: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.spec.name, self.device)


def select_jobs(config: Config, options: RunOptions) -> list[Job]:
    """Expand the config into case x device jobs, in config order, applying the options."""
    check_device_names(options.devices)
    if options.timeout is not None and not options.timeout > 0:  # NaN fails this too
        raise UsageError(f"--timeout {options.timeout:g}: give a positive number of seconds (inf: no limit)")
    specs = config.cases
    if options.compile:
        from gradaudit.config import compiled_entry

        eager = [s for s in specs if s.compile is None]
        specs = [e for s in eager for e in [s, *(compiled_entry(s, b) for b in options.compile)]]
    if options.case_globs:
        # An exact name first: `case[B=1]` is also a glob whose brackets match one character.
        specs = [s for s in specs if any(s.name == g or fnmatch.fnmatchcase(s.name, g)
                                         or fnmatch.fnmatchcase(s.base_name, g) for g in options.case_globs)]
        if not specs:
            raise UsageError(f"--case {' '.join(options.case_globs)} matches no case in "
                             f"{config.display_path}; cases are: "
                             + ", ".join(s.name for s in config.cases[:20]))
    jobs = []
    for spec in specs:
        overrides = {}
        if options.seed is not None:
            overrides["seed"] = options.seed
        if options.timeout is not None:
            overrides["timeout"] = options.timeout
        if options.devices:
            # The audit compares a device with the CPU where the run's devices include cpu.
            overrides["devices"] = list(options.devices)
        if overrides:
            spec = dataclasses.replace(spec, **overrides)
        for device in options.devices or spec.devices:
            jobs.append(Job(spec, device))
    return jobs


def run_in_process(config: Config, jobs: list[Job],
                   on_result: Callable[[CaseResult], None] | None = None) -> list[CaseResult]:
    """Audit every job in this process, one after another."""
    results = []
    for _, result in audit_in_process(config, jobs):
        results.append(result)
        if on_result:
            on_result(result)
    return results


def audit_in_process(config: Config, jobs: list[Job],
                     before: Callable[[int], None] | None = None) -> Iterator[tuple[int, CaseResult]]:
    """Audit every job in this process, one after another, yielding (index, result); call
    `before(index)` before each job."""
    from gradaudit.loading import add_import_roots
    from gradaudit.processstate import Snapshot, note_leaks
    from gradaudit.workers import audit_job

    add_import_roots(config.root, config.sys_path)
    ctx = audit_context(config.root, config.display_path)
    # What each job starts from and is put back to: a job here shares the process with the caller
    # and with the jobs after it.
    fresh = Snapshot.take()
    armed = False
    if not faulthandler.is_enabled():
        with contextlib.suppress(AttributeError, OSError, ValueError, io.UnsupportedOperation):
            # A crash here ends gradaudit; at least print the Python stack of the line that crashed.
            faulthandler.enable(file=sys.stderr, all_threads=True)
            armed = True
    try:
        for index, job in enumerate(jobs):
            if before:
                before(index)
            result = audit_job(job.spec, job.device, ctx)
            changes = fresh.changes()
            if changes:
                note_leaks(result, changes, job.spec, config.root, in_process=True, unrestored=fresh.restore())
            yield index, result
    finally:
        if armed:
            faulthandler.disable()


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, within a cgroup CPU quota where there is one."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def worker_count(jobs_option: int | None, n_jobs: int) -> int:
    """Worker processes for a run: --jobs, or every usable CPU, never more than there are jobs."""
    wanted = jobs_option if jobs_option else usable_cpus()
    return max(1, min(wanted, n_jobs))


def _environment(interrupted: bool = False) -> dict:
    """The environment block; a run interrupted while torch was importing still gets one."""
    from gradaudit.environment import describe

    if not interrupted:
        return describe()
    try:
        return describe()
    except Exception:  # noqa: BLE001 - a half-imported torch must not lose the results
        import platform
        from importlib.metadata import PackageNotFoundError, version

        try:
            torch_version = version("torch")
        except PackageNotFoundError:
            torch_version = "unknown"
        return {"python": platform.python_version(), "torch": torch_version,
                "platform": platform.platform(), "cuda": None, "executable": sys.executable}


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run; `results` holds what finished (the rest `skip`).

    A KeyboardInterrupt, so that a caller that does not know it (a test, a notebook) stops as usual.
    `error` is set when the run stopped because gradaudit could not go on (workers that stopped
    starting half-way), not because it was asked to.
    """

    def __init__(self, results: RunResults, error: Exception | None = None) -> None:
        super().__init__(str(error) if error else "the run was interrupted")
        self.results = results
        self.error = error


NOT_RUN = "not run: the run was interrupted before this job finished"
NOT_STARTED = "not run: gradaudit's worker processes stopped starting before this job ran"
IN_PROCESS_DIED = "the gradaudit process died while auditing this case (--no-isolate): a crash in the loss"


def run(config: Config, options: RunOptions,
        on_result: Callable[[CaseResult], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        on_start: Callable[[int], None] | None = None,
        on_checkpoint: Callable[[RunResults], None] | None = None) -> RunResults:
    """Audit the selected cases of a config and return the whole run's results.

    Jobs run in worker processes when `options.isolate` is true, else here one by one. Ctrl-C or SIGTERM stops the
    run and raises RunInterrupted, whose results keep what finished, mark the rest `skip` and say
    `interrupted`. In-process,
    `on_checkpoint` gets the results as they would stand if the next job crashed the process, before
    each job, so a crash still leaves the finished jobs on disk.
    """
    jobs = select_jobs(config, options)
    if options.shard:
        from gradaudit.sharding import parse_shard, select_shard

        jobs = select_shard(jobs, *parse_shard(options.shard))
    if on_start:
        on_start(len(jobs))
    started = clock()
    t0 = time.perf_counter()
    done: dict[int, CaseResult] = {}
    environment: dict | None = None
    # The skip result of each job not run yet (and the crash result of the job running), made once:
    # the checkpoints before each job of an in-process run show the same objects, which their
    # writer then encodes only once.
    waiting: dict[tuple[int, str], CaseResult] = {}

    # The jobs in the order of their results (RunResults.sort: case, then device), once.
    order = sorted(range(len(jobs)), key=lambda i: (jobs[i].spec.name, jobs[i].device))

    def results_now(running: int | None = None) -> RunResults:
        results = []
        for index in order:
            job = jobs[index]
            if index in done:
                results.append(done[index])
            elif index == running:
                from gradaudit.model import ErrorInfo
                from gradaudit.workers import lost

                result = waiting.get((index, IN_PROCESS_DIED))
                if result is None:
                    result = waiting[(index, IN_PROCESS_DIED)] = lost(
                        job.spec, job.device, config.display_path, 0.0,
                        ErrorInfo(type="Crash", message=IN_PROCESS_DIED))
                results.append(result)
            else:
                reason = NOT_STARTED if failure else NOT_RUN
                result = waiting.get((index, reason))
                if result is None:
                    result = waiting[(index, reason)] = skipped(job.spec, job.device, reason,
                                                                config.display_path)
                results.append(result)
        run_results = RunResults(
            results=results, gradaudit_version=__version__,
            started_at=started.isoformat(timespec="seconds"), duration_s=time.perf_counter() - t0,
            environment=environment or {}, config={"path": config.display_path, "sha256": config.sha256},
            command=options.command, interrupted=len(done) < len(jobs),
        )
        # Built in RunResults.sort's order (a stable sort of the same keys): a checkpoint, before
        # each job of an in-process run, is not sorted again; the run's results are, to be sure.
        if running is None:
            run_results.sort()
        return run_results

    pool = None
    finished = False
    failure: Exception | None = None
    with interrupts.on_signals():
        try:
            if not options.isolate:
                environment = _environment()
                checkpoint = (lambda i: on_checkpoint(results_now(running=i))) if on_checkpoint else None
                stream = audit_in_process(config, jobs, checkpoint)
            else:
                from gradaudit.workers import WorkerPool, WorkerSetup

                size = worker_count(options.jobs, len(jobs))
                setup = WorkerSetup(root=config.root, config_display=config.display_path,
                                    sys_path=config.sys_path, threads=max(1, usable_cpus() // size))
                pool = WorkerPool(size, setup)
                stream = pool.results(jobs)
            for index, result in stream:
                done[index] = result
                if on_result:
                    on_result(result)
            finished = True
        except KeyboardInterrupt:
            pass
        except WorkerStartError as exc:
            if not done:
                raise  # nothing ran: a broken environment, not a run to report
            failure = exc  # the finished jobs are kept; the rest say why they did not run
        finally:
            # A second Ctrl-C here must not lose what finished: it is held until the caller is done.
            with interrupts.hold():
                if pool is not None:
                    pool.close(kill=not finished)
                    environment = pool.environment  # this process need not import torch at all
        with interrupts.hold():
            if environment is None:
                environment = _environment(interrupted=not finished)
            results = results_now()
    if not finished:
        raise RunInterrupted(results, failure)
    return results
