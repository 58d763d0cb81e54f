"""What the runner and its workers share about a job: the context audits run in, a skipped result."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from gradaudit.config import CaseSpec
from gradaudit.model import CaseResult

if TYPE_CHECKING:
    from gradaudit.caseaudit import AuditContext


def skipped(spec: CaseSpec, device: str, reason: str, config_display: str) -> CaseResult:
    """A result for a job that was not audited, and why."""
    return CaseResult(case=spec.name, device=device, status="skip", seed=spec.seed,
                      loss_ref=spec.loss, group=spec.loss.rpartition(":")[0],
                      skip_reason=reason, summary_line=reason,
                      reproduce=f"gradaudit run {shlex.quote(config_display)} --case "
                                f"{shlex.quote(spec.name)} --device {device}"
                                + (f" --compile {shlex.quote(spec.compile)}" if spec.compile else ""))


def audit_context(root: Path, config_display: str) -> AuditContext:
    """Build the AuditContext a run's jobs share.

    The one place it is built: in this process with --no-isolate, once in each worker otherwise, so
    observers added here reach every worker.
    """
    from gradaudit.caseaudit import AuditContext
    from gradaudit.tracing import default_observers

    return AuditContext(root=root, config_display=config_display, observers=default_observers())
