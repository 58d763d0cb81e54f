"""What the draws say about each audited tensor's gradient, and when they have said enough.

The zero-pattern decision lives here and only here: `Track.false_alarm_odds` / `confirmed` /
`verdict` / `pattern` judge one tensor; `StopRule` holds the case-wide part: whether another
draw could still decide something (`wants_more`), and the last word before the verdicts are read
(`settle`). The draw loop and the orchestrator only ask these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from gradaudit import evidence
from gradaudit.config import CaseSpec
from gradaudit.model import InputResult
from gradaudit.shapes import fold_map

# A suspected zero pattern is confirmed by extra draws until the case-wide odds that it is luck
# fall below FALSE_ALARM (gradaudit.evidence decides); an unconfirmed pattern at MAX_DRAWS (or
# `repeats`, if larger) is no finding.
FALSE_ALARM = evidence.FALSE_ALARM
MAX_DRAWS = 40
# Inputs that are the same tensor in every draw: a zero pattern may follow their values.
FIXED_INITS = ("value", "zeros", "ones", "full")


@dataclass
class Track:
    """What the draws so far say about one audited tensor's gradient."""

    name: str
    shape: list[int]
    dtype: str
    requires_grad: bool
    alive_counts: torch.Tensor | None = None  # per element: draws in which its gradient was nonzero
    draws: int = 0
    none_draws: int = 0
    nonfinite: int = 0
    norms: list[float] = field(default_factory=list)
    # Counting in bytes is a quarter of the memory traffic; wide enough unless repeats > 255.
    count_dtype: torch.dtype = torch.uint8
    decision: evidence.Decision | None = None  # what the evidence says of its zero pattern

    def add(self, grad: torch.Tensor | None) -> None:
        self.draws += 1
        if self.alive_counts is None:
            self.alive_counts = torch.zeros(self.shape, dtype=self.count_dtype)
        if grad is None:
            self.none_draws += 1
            return
        g = grad.detach()
        # The common case costs one pass: a finite norm means every element is finite. Only a
        # non-finite norm (a NaN/Inf, or an overflow in low precision) pays for the masked passes.
        norm = torch.linalg.vector_norm(g)
        if not bool(torch.isfinite(norm)):
            finite = torch.isfinite(g)
            self.nonfinite = max(self.nonfinite, int((~finite).sum()))
            norm = torch.linalg.vector_norm(torch.where(finite, g, 0), dtype=torch.float64)
        self.alive_counts += (g != 0).cpu()
        self.norms.append(float(norm))

    @property
    def ever_nonzero(self) -> torch.Tensor | None:
        return None if self.alive_counts is None else self.alive_counts > 0

    @property
    def dead(self) -> int:
        return 0 if self.alive_counts is None else int((self.alive_counts == 0).sum())

    # -- the decision -----------------------------------------------------------------------
    def false_alarm_odds(self) -> float:
        """The case-wide odds that its zero pattern is luck (gradaudit.evidence); inf if undecided."""
        return self.decision.odds if self.decision is not None else math.inf

    @property
    def confirmed(self) -> bool:
        return self.decision is not None and self.decision.confirmed

    @property
    def pattern(self) -> torch.Tensor:
        """The elements of its confirmed zero pattern (a dead column, not the column plus the
        elements dead by luck so far); undecided: every element that never got a gradient."""
        if self.decision is not None and self.decision.mask is not None:
            return self.decision.mask
        return ~self.ever_nonzero

    def verdict(self, draws: int) -> str:
        if not self.requires_grad:
            return "not-required"
        if self.nonfinite:
            return "nonfinite"
        if self.none_draws == draws:
            return "none"
        if not self.dead or not self.confirmed:
            return "ok"
        if self.dead == self.alive_counts.numel():
            return "zero"
        return "partial"

    def to_result(self, draws: int) -> InputResult:
        # No draw reached a gradient (backward raised in the first one): nothing got one.
        verdict = self.verdict(draws) if draws else ("none" if self.requires_grad else "not-required")
        result = InputResult(name=self.name, shape=self.shape, dtype=self.dtype,
                             requires_grad=self.requires_grad, grad=verdict)
        if self.requires_grad and self.alive_counts is not None:
            numel = self.alive_counts.numel()
            result.zero_fraction = round(self.dead / numel, 6) if numel else 0.0
            result.nonfinite_count = self.nonfinite
            result.grad_norm = round(sum(self.norms) / len(self.norms), 6) if self.norms else None
            if verdict in ("zero", "partial"):
                result.grad_map = fold_map(self.ever_nonzero)
        return result


class StopRule:
    """The case-wide decision on the zero patterns of a case's tracks (one false-alarm budget)."""

    def __init__(self, tracks: dict[str, Track], spec: CaseSpec) -> None:
        self.tracks = tracks
        self.repeats = spec.repeats
        self.cap = max(spec.repeats, MAX_DRAWS)
        self.declared = set(spec.expect.no_grad)
        # Every input the same in each draw: draws that agree add no evidence.
        self.identical = all(i.init in FIXED_INITS for i in spec.inputs)
        self._decided_at = -1  # the draw count of the last decision
        self._next = 0  # no decision before this many draws: none before could confirm anything
        self._watches: list[tuple[Track, evidence.Watch]] = []  # meanwhile, the still-dead elements

    def wants_more(self, draws: int) -> bool:
        """Draw again until every suspected zero pattern is confirmed or ruled out."""
        if draws < self.repeats:
            return True
        if draws >= self.cap:
            return False
        if draws < self._next and any(w.any_dead(t.alive_counts) for t, w in self._watches):
            return True  # drawing on to the next decision, unless the pattern vanished
        pending = [t for t in self._decide(draws) if t.decision is not None and t.decision.state == evidence.MORE]
        self._next = draws + min((t.decision.wait for t in pending), default=1)
        waiting = self._next > draws + 1
        self._watches = [(t, evidence.Watch(t.alive_counts)) for t in pending] if waiting else []
        return bool(pending)

    def settle(self, draws: int) -> None:
        """Make the decision final before the verdicts are read."""
        self._decide(draws)

    def _decide(self, draws: int) -> list[Track]:
        audited = [t for t in self.tracks.values() if t.requires_grad and t.name not in self.declared
                   and not t.nonfinite and t.alive_counts is not None and t.none_draws < t.draws]
        if self._decided_at != draws:
            self._decided_at = draws
            decisions = evidence.decide({t.name: t.alive_counts for t in audited}, draws, max_draws=self.cap,
                                        alpha=FALSE_ALARM, identical_draws=self.identical)
            for track in audited:
                track.decision = decisions[track.name]
        return audited
