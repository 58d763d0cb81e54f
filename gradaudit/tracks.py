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
from gradaudit.masks import nonzero, zero
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
    draws: int = 0
    none_draws: int = 0
    nonfinite: int = 0
    norms: list[float] = field(default_factory=list)
    # Counting in bytes is a quarter of the memory traffic; wide enough unless repeats > 255.
    count_dtype: torch.dtype = torch.uint8
    decision: evidence.Decision | None = None  # what the evidence says of its zero pattern

    # Per element: draws in which its gradient was nonzero. Left unmade (None) while every draw
    # with a gradient was dense, the common case: the counts are then `dense_draws` everywhere.
    _counts: torch.Tensor | None = field(default=None, repr=False)
    dense_draws: int = 0  # draws whose gradient had no zero, before the counts were made

    def add(self, grad: torch.Tensor | None, *, consume: bool = False) -> None:
        """Count one draw's gradient. With `consume`, the caller hands the tensor over (nothing
        reads it afterwards): its magnitudes are taken in place, which saves a fresh buffer of its
        size each draw (the allocation, not the pass, is most of the cost on a large gradient)."""
        self.draws += 1
        if grad is None:
            self.none_draws += 1
            return
        g = grad.detach() if grad.requires_grad else grad  # a leaf's .grad needs none (no create_graph)
        if g.layout is not torch.strided:
            # A sparse gradient (nn.Embedding(sparse=True)): the rows it left out are its zeros.
            g, consume = g.to_dense(), True
        if g.is_complex() or g.numel() == 0:
            dense = self._add_other(g)
        else:
            # The common case: one magnitude pass and two reductions, no mask. A smallest
            # magnitude above zero means a dense gradient, which adds one to every count (kept
            # implicit); a finite largest magnitude (or, in the first draw, a finite norm: its
            # grad_norm) means every element is finite. Only a NaN/Inf pays for the masked
            # passes, and only a gradient with zeros (or one after it) for the per-element counts.
            magnitudes = g.abs_() if consume and not g.requires_grad else g.abs()
            if self.norms:
                low, finite = _smallest_and_finite(magnitudes)
                if not finite:
                    self._count_nonfinite(g)
            else:
                # The first draw needs the norm anyway, and a finite norm means finite elements:
                # the smallest magnitude alone is left (`amin` is a third of `aminmax`'s cost).
                low = float(magnitudes.amin())
                self._first_norm(g, magnitudes)
            dense = low > 0  # a NaN smallest magnitude is not: the exact masked count decides
        if self._counts is None and dense:
            self.dense_draws += 1
            return
        self.alive_counts.add_(nonzero(g).cpu())

    def _first_norm(self, g: torch.Tensor, magnitudes: torch.Tensor) -> None:
        """The norm of the first finite gradient (or the NaN/Inf count of one that is not)."""
        norm = float(torch.linalg.vector_norm(magnitudes))
        if math.isfinite(norm):
            self.norms.append(norm)
        else:  # a NaN or an Inf element, or finite values whose norm overflows in low precision
            self._count_nonfinite(g)

    def _count_nonfinite(self, g: torch.Tensor) -> None:
        """The exact NaN/Inf count, and the norm of the finite elements in float64."""
        finite = torch.isfinite(g)
        self.nonfinite = max(self.nonfinite, int((~finite).sum()))
        self.norms.append(float(torch.linalg.vector_norm(torch.where(finite, g, 0), dtype=torch.float64)))

    def _add_other(self, g: torch.Tensor) -> bool:
        """A complex or empty gradient: its norm every draw, and whether it is dense."""
        norm = float(torch.linalg.vector_norm(g))
        if not math.isfinite(norm):
            self._count_nonfinite(g)
        else:
            self.norms.append(norm)
        return _dense(g)

    @property
    def alive_counts(self) -> torch.Tensor | None:
        """Per element: the draws in which its gradient was nonzero (None before any draw)."""
        if self._counts is None and self.draws:
            self._counts = torch.full(self.shape, self.dense_draws, dtype=self.count_dtype)
        return self._counts

    @property
    def counts_implicit(self) -> bool:
        """Every draw with a gradient was dense (and there was one): the counts are `dense_draws`."""
        return self._counts is None and self.dense_draws > 0

    @property
    def ever_nonzero(self) -> torch.Tensor | None:
        return None if self.alive_counts is None else nonzero(self.alive_counts)

    def zero_counts(self) -> tuple[int, int]:
        """(element-draws whose gradient was zero, element-draws in all), without making the
        implicit counts of a gradient that was dense in every draw."""
        total = self._numel() * self.draws
        if self._counts is None:
            return total - self._numel() * self.dense_draws, total
        return total - int(self._counts.sum()), total

    @property
    def dead(self) -> int:
        if self._counts is None:  # implicit counts: all dense, or no gradient yet
            return self._numel() if self.draws and not self.dense_draws else 0
        return int(zero(self._counts).sum())

    def _numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

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
        return zero(self.alive_counts)

    def verdict(self, draws: int) -> str:
        if not self.requires_grad:
            return "not-required"
        if self.nonfinite:
            return "nonfinite"
        if self.none_draws == draws:
            return "none"
        if not self.dead or not self.confirmed:
            return "ok"
        if self.dead == self._numel():
            return "zero"
        return "partial"

    def to_result(self, draws: int) -> InputResult:
        # No draw reached a gradient (backward raised in the first one): nothing got one.
        verdict = self.verdict(draws) if draws else ("none" if self.requires_grad else "not-required")
        result = InputResult(name=self.name, shape=self.shape, dtype=self.dtype,
                             requires_grad=self.requires_grad, grad=verdict)
        if self.requires_grad and self.draws:
            numel = self._numel()
            result.zero_fraction = round(self.dead / numel, 6) if numel else 0.0
            result.nonfinite_count = self.nonfinite
            result.grad_norm = round(sum(self.norms) / len(self.norms), 6) if self.norms else None
            if verdict in ("zero", "partial"):
                result.grad_map = fold_map(self.ever_nonzero)
        return result


# The bit patterns of magnitudes, read as integers of their width, order as their values do, with
# Inf's pattern above every finite one and NaN's above Inf's: an integer min/max reduction says
# what the float one does, at 0.5-0.8 of its cost (no NaN rules) from 256k elements on, where the
# gradient is fresh from backward. float64's integer reduction is no faster; it keeps the float one.
_BITS: dict[torch.dtype, tuple[torch.dtype, int]] = {
    torch.float32: (torch.int32, 0x7F800000), torch.float16: (torch.int16, 0x7C00),
    torch.bfloat16: (torch.int16, 0x7F80)}


def _smallest_and_finite(magnitudes: torch.Tensor) -> tuple[float, bool]:
    """(a number above zero exactly when no magnitude is zero, whether every element is finite)
    from one min/max reduction over a gradient's magnitudes."""
    bits = _BITS.get(magnitudes.dtype)
    if bits is None:
        low, high = (float(v) for v in torch.aminmax(magnitudes))
        return low, math.isfinite(high)  # a NaN makes both NaN
    as_int, inf = bits
    low, high = (int(v) for v in torch.aminmax(magnitudes.view(as_int)))
    # Below zero: a NaN whose sign bit the magnitude kept; the masked count then decides.
    return low, 0 <= low and high < inf


def _dense(g: torch.Tensor) -> bool:
    """No element of `g` is zero, with no mask: the smallest magnitude is above zero (a NaN makes it
    NaN, so the exact masked path decides). `abs().amin()` is about half `count_nonzero`'s cost."""
    if g.numel() == 0:
        return True
    return float(g.abs().amin()) > 0


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
                   and not t.nonfinite and t.draws and t.none_draws < t.draws]
        if self._decided_at != draws:
            self._decided_at = draws
            # A tensor dense in every draw so far has no counts to read: nothing of it is dead.
            dense = [t for t in audited if t.counts_implicit]
            counted = [t for t in audited if not t.counts_implicit]
            decisions = evidence.decide({t.name: t.alive_counts for t in counted}, draws, max_draws=self.cap,
                                        alpha=FALSE_ALARM, identical_draws=self.identical,
                                        dense_shapes=[t.shape for t in dense])
            for track in dense:
                track.decision = evidence.Decision(evidence.NO_FINDING, 0.0)
            for track in counted:
                track.decision = decisions[track.name]
        return audited
