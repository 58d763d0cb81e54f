"""The plain result model between the audit and the reporters: dataclasses of str/int/float/bool.

Nothing here imports torch, so `gradaudit report results.json` can render without it.
The dict form is the results.json of CONTRACT section 3; `from_dict(to_dict(x)) == x`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gradaudit.findings import SEVERITY_ORDER

SCHEMA = "gradaudit.results/1"

STATUSES = ("pass", "warn", "fail", "error", "skip", "timeout", "crash")
# Worst first: the order used to pick a case's status and to sort for display.
STATUS_RANK = {"crash": 6, "timeout": 5, "error": 4, "fail": 3, "warn": 2, "skip": 1, "pass": 0}
BAD_STATUSES = frozenset({"fail", "error", "timeout", "crash"})
GRAD_VERDICTS = ("ok", "none", "zero", "partial", "nonfinite", "not-required")


def _fields_from(cls, data: dict[str, Any]) -> dict[str, Any]:
    """Keep the keys that `cls` knows; extra keys are allowed by the contract."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def _plain(obj: Any) -> dict[str, Any]:
    """A dataclass's fields as a dict, lists and dicts copied: `dataclasses.asdict` without its
    deep copy of every value, which costs a thousand-case run a tenth of a second for nothing
    (the fields hold plain values)."""
    return {name: _copied(getattr(obj, name)) for name in _names(type(obj))}


def _copied(value: Any) -> Any:
    if isinstance(value, list):
        return [_copied(v) for v in value]
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    return value


_NAMES: dict[type, tuple[str, ...]] = {}


def _names(cls: type) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _prune(data: dict[str, Any], optional: tuple[str, ...]) -> dict[str, Any]:
    """Drop optional keys that hold their empty value, to keep results.json small."""
    return {k: v for k, v in data.items() if not (k in optional and v in (None, [], {}, False))}


@dataclass
class Frame:
    """One frame of user code: where a call or an op happened."""

    file: str
    line: int
    function: str = ""
    code: str = ""

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Frame:
        return cls(**_fields_from(cls, data))

    @property
    def where(self) -> str:
        """`file:line`, as people paste it into an editor."""
        return f"{self.file}:{self.line}"


@dataclass
class Location(Frame):
    """The line in the user's own code that caused a finding, with optional context."""

    # The user-code call chain, outermost first, ending at this location.
    chain: list[Frame] = field(default_factory=list)
    # A few source lines around `line`: the first line's number and the lines.
    context_start: int | None = None
    context: list[str] = field(default_factory=list)
    # What this line is to its finding, where it is not the line to change: "saved for backward at".
    label: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = _plain(self)
        data["chain"] = [f.to_dict() for f in self.chain]
        if not data["label"]:
            del data["label"]
        return _prune(data, ("chain", "context_start", "context"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Location:
        kwargs = _fields_from(cls, data)
        kwargs["chain"] = [Frame.from_dict(f) for f in data.get("chain") or []]
        kwargs["context"] = list(data.get("context") or [])
        return cls(**kwargs)


@dataclass
class Finding:
    """One thing the audit found, with the line that caused it where known."""

    id: str
    severity: str
    message: str
    input: str | None = None
    location: Location | None = None
    # Finding-specific facts for reporters (op name, versions, values): plain data only.
    detail: dict[str, Any] = field(default_factory=dict)
    # A second line worth seeing beside the one to change (the op that saved the tensor an in-place
    # op then changed), its `label` saying what it is; reporters show it under the location.
    second: Location | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "severity": self.severity, "input": self.input,
                                "message": self.message,
                                "location": self.location.to_dict() if self.location else None}
        if self.detail:
            data["detail"] = self.detail
        if self.second is not None:
            data["second"] = self.second.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        loc = data.get("location")
        second = data.get("second")
        return cls(id=data["id"], severity=data["severity"], message=data["message"],
                   input=data.get("input"), location=Location.from_dict(loc) if loc else None,
                   detail=dict(data.get("detail") or {}),
                   second=Location.from_dict(second) if second else None)

    @property
    def rank(self) -> int:
        return SEVERITY_ORDER.get(self.severity, 0)


@dataclass
class InputResult:
    """The gradient verdict of one audited input or module parameter."""

    name: str
    shape: list[int]
    dtype: str
    requires_grad: bool
    grad: str = "not-required"
    zero_fraction: float | None = None
    nonfinite_count: int | None = None
    grad_norm: float | None = None
    # Which elements ever got a nonzero gradient, folded to at most 64x64 cells for the report:
    # rows of 0/1/None (None: part of the cell got one).
    grad_map: list[list[float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return _prune(_plain(self), ("grad_map",))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputResult:
        return cls(**_fields_from(cls, data))


@dataclass
class LossInfo:
    """What the loss returned in the first draw."""

    value: float | None
    shape: list[int]
    dtype: str
    requires_grad: bool
    grad_fn: str | None
    finite: bool
    # Where the loss tensor sat in what the loss returned: "[0]" of a tuple, "['loss']" of a dict.
    picked: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _prune(_plain(self), ("picked",))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LossInfo:
        return cls(**_fields_from(cls, data))


@dataclass
class ErrorInfo:
    """An exception that stopped the loss or the audit, with anomaly mode's forward trace."""

    type: str
    message: str
    traceback: str = ""
    anomaly_trace: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ErrorInfo:
        return cls(**_fields_from(cls, data))


@dataclass
class CaseResult:
    """The audit of one case on one device."""

    case: str
    device: str
    status: str
    duration_s: float = 0.0
    seed: int = 0
    loss: LossInfo | None = None
    inputs: list[InputResult] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    error: ErrorInfo | None = None
    reproduce: str = ""
    # Additions to the contract (all optional in results.json):
    expected: bool = False  # a known-bad fixture (expect.status: fail) that still fails
    loss_ref: str = ""  # the config's `loss` string, e.g. "losses.ratio:ratio_loss"
    group: str = ""  # the loss's module, for grouping cases in reports
    draws: int = 0  # how many independent input draws the verdict rests on
    skip_reason: str | None = None
    baseline: str | None = None  # new-failure / still-failing / fixed / new-case, against a baseline
    summary_line: str = ""  # the one line that says what is wrong, computed once here
    warnings: list[str] = field(default_factory=list)  # warnings the loss raised, once each
    # What gradcheck did, where asked: the dims it used (shrunk to its element budget), the draws.
    gradcheck: dict[str, Any] | None = None
    # A compiled entry's compile facts: backend, compile_s, graphs, graph_breaks, compared_draws, ...
    compile: dict[str, Any] | None = None
    # What the batch-independence check did, where `per_sample` is declared (see batchmix).
    batch_independence: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "case": self.case, "device": self.device, "status": self.status,
            "duration_s": round(self.duration_s, 6), "seed": self.seed,
            "loss": self.loss.to_dict() if self.loss else None,
            "inputs": [i.to_dict() for i in self.inputs],
            "findings": [f.to_dict() for f in self.findings],
            "error": self.error.to_dict() if self.error else None,
            "reproduce": self.reproduce,
            "expected": self.expected, "loss_ref": self.loss_ref, "group": self.group,
            "draws": self.draws, "skip_reason": self.skip_reason, "baseline": self.baseline,
            "summary_line": self.summary_line, "warnings": self.warnings, "gradcheck": self.gradcheck,
            "compile": self.compile,
            "batch_independence": self.batch_independence,
        }
        return _prune(data, ("skip_reason", "baseline", "warnings", "gradcheck", "compile", "batch_independence"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseResult:
        kwargs = _fields_from(cls, data)
        kwargs["loss"] = LossInfo.from_dict(data["loss"]) if data.get("loss") else None
        kwargs["inputs"] = [InputResult.from_dict(i) for i in data.get("inputs") or []]
        kwargs["findings"] = [Finding.from_dict(f) for f in data.get("findings") or []]
        kwargs["error"] = ErrorInfo.from_dict(data["error"]) if data.get("error") else None
        return cls(**kwargs)

    @property
    def key(self) -> tuple[str, str]:
        return (self.case, self.device)

    @property
    def is_bad(self) -> bool:
        """Whether this result makes the run fail (expected failures do not)."""
        return self.status in BAD_STATUSES and not self.expected

    def worst_finding(self) -> Finding | None:
        return max(self.findings, key=lambda f: f.rank, default=None)


@dataclass
class Summary:
    """Counts of results per status; summaries of shards add up."""

    total: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    expected: int = 0

    @classmethod
    def of(cls, results: list[CaseResult]) -> Summary:
        summary = cls()
        for r in results:
            summary.total += 1
            summary.counts[r.status] = summary.counts.get(r.status, 0) + 1
            summary.expected += int(r.expected)
        return summary

    def __add__(self, other: Summary) -> Summary:
        counts = {s: self.counts.get(s, 0) + other.counts.get(s, 0) for s in STATUSES}
        return Summary(self.total + other.total, counts, self.expected + other.expected)

    def to_dict(self) -> dict[str, int]:
        return {"total": self.total, **{s: self.counts.get(s, 0) for s in STATUSES},
                "expected": self.expected}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Summary:
        return cls(data.get("total", 0), {s: data.get(s, 0) for s in STATUSES},
                   data.get("expected", 0))

    def line(self) -> str:
        """`12 cases: 8 pass, 3 fail (2 expected), 1 skip`, in status order."""
        parts = [f"{n} {s}" for s, n in self.counts.items() if n]
        text = f"{self.total} result{'s' if self.total != 1 else ''}: " + (", ".join(parts) or "none")
        if self.expected:
            text += f" ({self.expected} expected)"
        return text


@dataclass
class RunResults:
    """A whole run: environment, config and every case x device result."""

    results: list[CaseResult] = field(default_factory=list)
    gradaudit_version: str = ""
    started_at: str = ""
    duration_s: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    interrupted: bool = False
    schema: str = SCHEMA
    # Set when results were compared with an older run: see gradaudit.baseline.BaselineInfo.
    baseline: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> Summary:
        return Summary.of(self.results)

    def sort(self) -> None:
        """Sort results by case then device, so output is deterministic."""
        self.results.sort(key=lambda r: (r.case, r.device))

    @property
    def bad(self) -> list[CaseResult]:
        return [r for r in self.results if r.is_bad]

    @property
    def audited_nothing(self) -> bool:
        """Whether there were results and every one is a skip (say, only `cuda` on a CPU machine)."""
        return bool(self.results) and all(r.status == "skip" for r in self.results)

    def audited_nothing_reason(self) -> str:
        """The words for a run that audited nothing: each device and why it was skipped."""
        reasons = sorted({f"{r.device}: {r.skip_reason}" for r in self.results})
        return "gradaudit audited nothing: " + "; ".join(reasons)

    @property
    def ok(self) -> bool:
        """Whether nothing failed and something was audited (passes, warnings, expected failures and
        some skips are ok). A run whose every result is a skip is not ok: `assert audit(...).ok` must
        not pass on a machine that audited nothing, as the CLI exits 5 there."""
        return not self.bad and not self.audited_nothing

    @property
    def findings(self) -> list[Finding]:
        """Every finding of every result, in result order."""
        return [f for r in self.results for f in r.findings]

    def to_dict(self, with_results: bool = True) -> dict[str, Any]:
        """The run as plain data; `with_results=False` leaves out the results (a writer that
        encodes them itself)."""
        data = {
            "schema": self.schema, "gradaudit_version": self.gradaudit_version,
            "started_at": self.started_at, "duration_s": round(self.duration_s, 6),
            "environment": self.environment, "config": self.config, "summary": self.summary.to_dict(),
        }
        if with_results:
            data["results"] = [r.to_dict() for r in self.results]
        data["command"], data["interrupted"] = self.command, self.interrupted
        if self.baseline:
            data["baseline"] = self.baseline
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResults:
        return cls(
            results=[CaseResult.from_dict(r) for r in data.get("results") or []],
            gradaudit_version=data.get("gradaudit_version", ""),
            started_at=data.get("started_at", ""), duration_s=data.get("duration_s", 0.0),
            environment=dict(data.get("environment") or {}), config=dict(data.get("config") or {}),
            command=data.get("command", ""), interrupted=bool(data.get("interrupted", False)),
            schema=data.get("schema", SCHEMA), baseline=dict(data.get("baseline") or {}),
        )

    def __add__(self, other: RunResults) -> RunResults:
        """Merge two runs (shards of one config): results of both, the earlier start."""
        starts = [s for s in (self.started_at, other.started_at) if s]
        merged = RunResults(
            results=self.results + other.results,
            gradaudit_version=self.gradaudit_version or other.gradaudit_version,
            started_at=min(starts) if starts else "",
            duration_s=max(self.duration_s, other.duration_s),
            environment=self.environment or other.environment,
            config=self.config or other.config,
            command=self.command or other.command,
            interrupted=self.interrupted or other.interrupted,
            baseline=self.baseline or other.baseline,
        )
        merged.sort()
        return merged


def status_of(findings: list[Finding]) -> str:
    """Return a case's status from its findings: its worst severity (info counts as pass)."""
    worst = max((f.rank for f in findings), default=0)
    return {3: "fail", 2: "warn"}.get(worst, "pass")
