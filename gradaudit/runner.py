"""Run a whole config: select cases and devices, audit each pair, collect a RunResults."""

from __future__ import annotations

import dataclasses
import fnmatch
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from gradaudit import __version__
from gradaudit.config import CaseSpec, Config
from gradaudit.errors import UsageError
from gradaudit.model import CaseResult, RunResults


@dataclass
class RunOptions:
    """The choices of one run that the command line (or an API caller) makes."""

    case_globs: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)  # empty: each case's own devices
    seed: int | None = None
    timeout: float | None = None
    command: str = ""


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
    specs = config.cases
    if options.case_globs:
        specs = [s for s in specs if any(fnmatch.fnmatchcase(s.name, g) or fnmatch.fnmatchcase(s.base_name, g)
                                         for g in options.case_globs)]
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


def skipped(job: Job, reason: str, config_display: str) -> CaseResult:
    return CaseResult(case=job.spec.name, device=job.device, status="skip", seed=job.spec.seed,
                      loss_ref=job.spec.loss, group=job.spec.loss.rpartition(":")[0],
                      skip_reason=reason, summary_line=reason,
                      reproduce=f"gradaudit run {shlex.quote(config_display)} --case "
                                f"{shlex.quote(job.spec.name)} --device {job.device}")


def run_in_process(config: Config, jobs: list[Job],
                   on_result: Callable[[CaseResult], None] | None = None) -> list[CaseResult]:
    """Audit every job in this process, one after another."""
    from gradaudit.audit import AuditContext, audit_case
    from gradaudit.devices import current
    from gradaudit.loading import add_import_roots

    add_import_roots(config.root, config.sys_path)
    from gradaudit.tracing import default_observers

    ctx = AuditContext(root=config.root, config_display=config.display_path, observers=default_observers())
    results = []
    for job in jobs:
        reason = current().skip_reason(job.device)
        result = skipped(job, reason, config.display_path) if reason else audit_case(job.spec, job.device, ctx)
        results.append(result)
        if on_result:
            on_result(result)
    return results


def run(config: Config, options: RunOptions,
        on_result: Callable[[CaseResult], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> RunResults:
    """Audit the selected cases of a config and return the whole run's results."""
    from gradaudit.environment import describe

    jobs = select_jobs(config, options)
    started = clock()
    t0 = time.perf_counter()
    results = run_in_process(config, jobs, on_result)
    run_results = RunResults(
        results=results, gradaudit_version=__version__,
        started_at=started.isoformat(timespec="seconds"), duration_s=time.perf_counter() - t0,
        environment=describe(), config={"path": config.display_path, "sha256": config.sha256},
        command=options.command,
    )
    run_results.sort()
    return run_results
