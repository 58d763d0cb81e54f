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

from gradaudit.config import CaseSpec
from gradaudit.model import InputResult
from gradaudit.shapes import fold_map

# A suspected zero pattern is confirmed by extra draws: the chance that elements which do get a
# gradient now and then (at the rarer end of the observed rates) stayed zero in every draw by luck
# must fall below FALSE_ALARM; an unconfirmed pattern at MAX_DRAWS is no finding.
FALSE_ALARM = 1e-3
RATE_QUANTILE = 0.1
PRIOR_RATE = 0.5  # when no element ever got a gradient: how often one would, if it could
MAX_DRAWS = 40


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

    # Per element: draws in which its gradient was nonzero. Left unmade (None) while every draw
    # with a gradient was dense, the common case: the counts are then `dense_draws` everywhere.
    _counts: torch.Tensor | None = field(default=None, repr=False)
    dense_draws: int = 0  # draws whose gradient had no zero, before the counts were made

    def add(self, grad: torch.Tensor | None) -> None:
        self.draws += 1
        if grad is None:
            self.none_draws += 1
            return
        g = grad.detach()
        # The common case costs a norm and one smallest-magnitude reduction, and no mask: a finite
        # norm means every element is finite, and a dense gradient (no zero) adds one to every
        # count, which stays implicit. Only a non-finite norm (a NaN/Inf, or an overflow in low
        # precision) pays for the masked passes, and only a gradient with zeros (or one after it)
        # for the per-element counts.
        norm = float(torch.linalg.vector_norm(g))
        if not math.isfinite(norm):
            finite = torch.isfinite(g)
            self.nonfinite = max(self.nonfinite, int((~finite).sum()))
            norm = float(torch.linalg.vector_norm(torch.where(finite, g, 0), dtype=torch.float64))
        self.norms.append(norm)
        if self._counts is None and _dense(g):
            self.dense_draws += 1
            return
        self.alive_counts.add_((g != 0).cpu())

    @property
    def alive_counts(self) -> torch.Tensor | None:
        """Per element: the draws in which its gradient was nonzero (None before any draw)."""
        if self._counts is None and self.draws:
            self._counts = torch.full(self.shape, self.dense_draws, dtype=self.count_dtype)
        return self._counts

    @property
    def ever_nonzero(self) -> torch.Tensor | None:
        return None if self.alive_counts is None else self.alive_counts > 0

    @property
    def dead(self) -> int:
        if self._counts is None:  # implicit counts: all dense, or no gradient yet
            return self._numel() if self.draws and not self.dense_draws else 0
        return int((self._counts == 0).sum())

    def _numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    # -- the decision -----------------------------------------------------------------------
    def false_alarm_odds(self) -> float:
        """Expected number of dead elements that are only dead by chance, after these draws.

        Elements that do get a gradient get it in some fraction of draws; a dead element with the
        rate of the rarer live ones stays dead by chance with probability (1 - rate) ** draws.
        """
        counts = self.alive_counts
        alive = counts[counts > 0]
        if alive.numel():
            rate = float(torch.quantile(alive.double() / self.draws, RATE_QUANTILE))
        else:
            rate = PRIOR_RATE
        return self.dead * (1.0 - min(rate, 1.0)) ** self.draws

    @property
    def confirmed(self) -> bool:
        return self.false_alarm_odds() < FALSE_ALARM

    @property
    def pattern(self) -> torch.Tensor:
        """The elements of its zero pattern: those that never got a gradient."""
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


def _dense(g: torch.Tensor) -> bool:
    """No element of `g` is zero, with no mask: the smallest magnitude is above zero (a NaN makes it
    NaN, so the exact masked path decides). `abs().amin()` is about half `count_nonzero`'s cost."""
    if g.numel() == 0:
        return True
    if g.layout is not torch.strided:
        return int(torch.count_nonzero(g)) == g.numel()
    return float(g.abs().amin()) > 0


class StopRule:
    """The case-wide decision on the zero patterns of a case's tracks."""

    def __init__(self, tracks: dict[str, Track], spec: CaseSpec) -> None:
        self.tracks = tracks
        self.repeats = spec.repeats
        self.declared = set(spec.expect.no_grad)

    def wants_more(self, draws: int) -> bool:
        """Draw again until every suspected zero pattern is confirmed or ruled out."""
        if draws < self.repeats:
            return True
        if draws >= MAX_DRAWS:
            return False
        for track in self.tracks.values():
            if not track.requires_grad or track.name in self.declared or track.nonfinite:
                continue
            if track.none_draws == track.draws or not track.dead:
                continue
            if not track.confirmed:
                return True
        return False

    def settle(self, draws: int) -> None:
        """Make the decision final before the verdicts are read (each track decides on its own today)."""
