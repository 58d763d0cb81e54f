"""Decide whether elements that never got a gradient are a real zero pattern or luck.

Pure: per-element live counts in (for each audited tensor, the number of draws in which each
element's gradient was nonzero), a decision out: a confirmed pattern (and which elements it is),
draw more, or no finding. The model and what its odds mean are in the README, "How a zero pattern
is confirmed"; in short:

- Draws are independent (fresh inputs, fresh seeds), so a unit (an element, or a whole slice along
  one dim) that can get a gradient gets it in each draw with some rate q > 0, and stays dead in all
  n draws with probability (1 - q) ** n.
- A unit that is dead by luck has a rate like those of the live units of its kind in the same
  tensor (elements like the live elements, a column like its sibling columns). Those rates are
  estimated from the live units' counts (a mixture of binomials fitted by EM, zeros treated as
  unseen; units live in every draw only where no unit is intermittent), conservatively: each rate
  enters through its Jeffreys posterior, so a rate seen as 1.0 in 2 draws is not 1.0, and elements
  that live and die together count as fewer observations (a design effect).
- The expected number of units dead by luck (lambda) bounds the chance that any reported unit is
  dead by luck (Markov; no independence between units is needed). A pattern is confirmed when
  lambda, times the number of tests of the case, is below `alpha`: the false-alarm odds hold for the
  whole case, at any size. Slices make structure cheap to confirm: a column dead while its 3
  siblings live in every draw is few units with well-known rates; scattered singletons among
  millions are millions of units with modest rates, and usually stay unconfirmed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from gradaudit.masks import nonzero, zero

FALSE_ALARM = 1e-3  # the case-wide odds that a reported pattern is luck
PRIOR_RATE = 0.5  # a tensor dead everywhere: how often it would get a gradient, if it could
CONFIRMED, MORE, NO_FINDING = "confirmed", "more", "none"
_EM_STEPS = 100
_MIXTURE_UNITS = 64  # live units needed to fit two rates; fewer are pooled (their posterior is wide)


@dataclass(frozen=True)
class Level:
    """One way of grouping a tensor's elements into units, and what the draws say about it."""

    dim: int | None  # None: single elements; d: the slices along dim d (index d fixed)
    units: int
    dead: int  # units with no live element in any draw
    chance_dead: float  # expected number of units dead by luck after these draws (lambda)
    at_cap: float  # the same, projected to the draw cap (rates as estimated now)


@dataclass
class Decision:
    """The verdict of the evidence on one tensor's zero pattern."""

    state: str  # CONFIRMED, MORE (draw again) or NO_FINDING
    odds: float  # case-wide false-alarm odds of the best level (lambda x tests); inf where unknown
    dead: int = 0  # elements dead in every draw (the pattern's candidates)
    mask: torch.Tensor | None = None  # confirmed only: the elements of the pattern (bool)
    dims: tuple[int, ...] = ()  # the dims whose dead slices make the pattern; () = single elements
    levels: list[Level] = field(default_factory=list)
    wait: int = 1  # MORE: draws to go before another decision is worth its cost

    @property
    def confirmed(self) -> bool:
        return self.state == CONFIRMED


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def dead_chance(live: float, dead: float, draws: int) -> float:
    """The chance that a unit stays dead in `draws` fresh draws, its rate known from `live`
    successes and `dead` failures: the Jeffreys posterior mean of (1 - q) ** draws."""
    a, b = live + 0.5, dead + 0.5
    return math.exp(_log_beta(a, b + draws) - _log_beta(a, b))


def _expected_zeros(units: float, w: float) -> float:
    """Units of a component with `units` seen live: how many more it has dead by luck."""
    return math.inf if w >= 1.0 - 1e-15 else units * w / (1.0 - w)


def _fit(hist: list[float], n: int) -> list[tuple[float, float, float]]:
    """Fit a mixture of binomial(n, q) rates to the units that were live in some draws, not all.

    Units live in every draw are not counted as evidence: many are live whatever the data (a dense
    term), and would vouch for rarer units they do not resemble; only where no unit is intermittent
    do they give the rate. Zeros (and counts of n, where excluded) are unseen, imputed by EM.
    One rate first; two where enough units spread over three or more counts and one rate does not
    fit them: a rarer group of units (a box coordinate that a clamp kills more often) must not
    hide in a pooled mean.
    Returns per component (live units, live events, units in all), imputed ones included.
    """
    ks = [k for k in range(1, n) if hist[k] > 0] or [n]
    seen = sum(hist[k] for k in ks)
    events = sum(k * hist[k] for k in ks)
    one, misfit = _em(hist, n, ks, [events / (n * seen)], [1.0])
    if len(ks) < 3 or n < 4 or seen < _MIXTURE_UNITS or misfit <= len(ks) - 2 + 3 * math.sqrt(2 * (len(ks) - 2)):
        return one
    # Start the components at the lower and upper halves of the units.
    half, acc, split = seen / 2, 0.0, ks[0]
    for k in ks:
        acc += hist[k]
        if acc >= half:
            split = k
            break
    low = [k for k in ks if k <= split]
    high = [k for k in ks if k > split] or low
    rates = [sum(k * hist[k] for k in part) / (n * sum(hist[k] for k in part)) for part in (low, high)]
    return _em(hist, n, ks, rates, [0.5, 0.5])[0]


def _em(hist: list[float], n: int, ks: list[int], rates: list[float],
        weights: list[float]) -> tuple[list[tuple[float, float, float]], float]:
    """EM for a binomial mixture seen only at counts `ks`; also returns the G statistic of the fit."""
    unseen = [0] if ks == [n] else [0, n]
    seen = sum(hist[k] for k in ks)
    events = sum(k * hist[k] for k in ks)
    logc = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) for k in range(n + 1)]
    comps: list[tuple[float, float, float]] = []
    last = -1.0
    for _ in range(_EM_STEPS):
        pmf = []
        for q in rates:
            q = min(max(q, 1e-12), 1.0)
            if q >= 1.0:
                pmf.append([1.0 if k == n else 0.0 for k in range(n + 1)])
            else:
                lq, lr = math.log(q), math.log1p(-q)
                pmf.append([math.exp(logc[k] + k * lq + (n - k) * lr) for k in range(n + 1)])
        p_seen = sum(w * sum(f[k] for k in ks) for w, f in zip(weights, pmf, strict=True))
        if p_seen <= 1e-300:
            return [(seen, events, math.inf)], 0.0
        everyone = seen / p_seen
        live = [0.0] * len(rates)
        hits = [0.0] * len(rates)
        totals = [0.0] * len(rates)
        for k in ks:
            lik = [w * f[k] for w, f in zip(weights, pmf, strict=True)]
            norm = sum(lik) or 1.0
            for c, value in enumerate(lik):
                share = hist[k] * value / norm
                live[c] += share
                hits[c] += k * share
        for c, (w, f) in enumerate(zip(weights, pmf, strict=True)):
            totals[c] = live[c]
            for k in unseen:
                expected = everyone * w * f[k]
                totals[c] += expected
                hits[c] += k * expected
                if k:
                    live[c] += expected
        new = [hits[c] / (n * totals[c]) if totals[c] > 0 else rates[c] for c in range(len(rates))]
        weights = [t / everyone for t in totals]
        comps = list(zip(live, hits, totals, strict=True))
        # What matters is the zeros it implies: stop once they settle (to 0.1%).
        zeros = sum(w * f[0] for w, f in zip(weights, pmf, strict=True))
        if abs(zeros - last) <= 1e-3 * zeros or max(abs(a - b) for a, b in zip(new, rates, strict=True)) < 1e-9:
            break
        last, rates = zeros, new
    misfit = 0.0
    for k in ks:
        expected = everyone * sum(w * f[k] for w, f in zip(weights, pmf, strict=True))
        misfit += 2 * hist[k] * math.log(hist[k] / expected) if expected > 0 else math.inf
    return [c for c in comps if c[0] > 1e-9], misfit


Components = list[tuple[float, float, float]]  # per rate: (live units, live events, misses)


def components(hist: list[float], draws: int) -> Components | None:
    """The live units' rates, as components of (live units, live events, misses); None: unknowable.

    `hist[k]` is the number of units live in exactly k of `draws` draws (hist[0], the dead ones,
    is not used: under the null they are unseen members of the live units' components).
    """
    n = draws
    if sum(hist[1:]) <= 0:
        return None
    ks = [k for k in range(1, n) if hist[k] > 0]
    if not ks:  # every live unit was live in every draw: they are the only evidence there is
        return [(hist[n], n * hist[n], 0.0)]
    seen = sum(hist[k] for k in ks)
    if seen < _MIXTURE_UNITS or n < 3:
        # Few units: pool the intermittent ones as seen, without imputing the unseen ends. Their
        # pooled rate leans to 1/2, which errs toward caution where it matters (high rates).
        hits = sum(k * hist[k] for k in ks)
        rate = hits / (n * seen)
        members = min(sum(hist[1:]), seen / max(1.0 - rate ** n - (1.0 - rate) ** n, 1e-12))
        return [(members, hits, n * seen - hits)]
    out = []
    for live, hits, total in _fit(hist, n):
        if math.isinf(total):
            return None
        out.append((live, hits, max(n * total - hits, 0.0)))
    return out


def expected_dead(comps: Components | None, draws: int, deff: float = 1.0) -> float:
    """Expected number of units dead by luck after `draws` draws (lambda), given their rates.

    `deff` (>= 1) is how many units make one independent observation (elements that live and die
    together by rows count as rows): it widens the rates' posteriors, not the count of candidates.
    """
    if comps is None:
        return math.inf
    return sum(_expected_zeros(live, dead_chance(hits / deff, misses / deff, draws))
               for live, hits, misses in comps)


def chance_dead(hist: list[float], draws: int, deff: float = 1.0) -> float:
    """Expected number of units dead by luck after `draws` draws, from the live units' counts."""
    return expected_dead(components(hist, draws), draws, deff)


def _wait(comps: Components | None, lam: float, budget: float) -> int:
    """Draws to go before lambda could be below the budget, halved (it decays by the rarest rate)."""
    if comps is None or math.isinf(lam) or lam < budget:
        return 1
    slowest = max(misses / (hits + misses) if hits + misses > 0 else 1.0 for _, hits, misses in comps)
    if not 0.0 < slowest < 1.0 - 1e-9:
        return 1
    return max(1, int(0.5 * math.log(budget / lam) / math.log(slowest)))


def at_cap(hist: list[float], draws: int, cap: int) -> float:
    """Roughly what `chance_dead` would be at `cap` draws, the pooled rate as now.

    Only used to stop early where even the cap cannot confirm; pooling errs toward drawing on.
    """
    ks = [k for k in range(1, draws) if hist[k] > 0] or [draws]
    seen = sum(hist[k] for k in ks)
    hits = sum(k * hist[k] for k in ks)
    scale = cap / draws
    return _expected_zeros(seen, dead_chance(hits * scale, (draws * seen - hits) * scale, cap))


def _hist(units: torch.Tensor, draws: int) -> list[float]:
    """How many units were live in exactly k draws, k = 0 .. draws (one pass over the counts)."""
    flat = units.flatten()
    if flat.dtype != torch.uint8:
        flat = flat.to(torch.int64)
    return [float(v) for v in torch.bincount(flat, minlength=draws + 1)[: draws + 1].tolist()]


def _slice_dims(shape: torch.Size) -> list[int]:
    """The dims whose slices are units of their own: a 1-D tensor's slices are its elements."""
    return [d for d in range(len(shape)) if len(shape) >= 2 and shape[d] >= 2]


def tests_of(shape: torch.Size | list[int]) -> int:
    """How many tests a tensor adds to its case: single elements, and the slices along each dim."""
    return 1 + len(_slice_dims(torch.Size(shape)))


def design_effect(c: torch.Tensor, hist: list[float]) -> float:
    """How many live elements make one independent observation (Kish: 1 + (m - 1) rho).

    Elements of a slice that live and die together (the row of a sample a margin satisfies, the
    logits of an ignored target) are one observation, not m: rho is the intra-slice correlation
    of the live elements' counts, from a one-way analysis of variance along each dim (dead
    elements left out: they are the pattern on trial, not evidence); the largest effect counts.
    """
    live_total = sum(hist[1:])
    sum_sq = sum(k * k * v for k, v in enumerate(hist))
    if c.dim() < 2:
        return 1.0
    if sum(1 for v in hist[1:] if v) < 2 or live_total < 3:
        # Every live element has the same count: nothing tells whether they live and die together,
        # so assume they do, along the dim with the fewest slices.
        return c.numel() / min((c.shape[d] for d in range(c.dim()) if c.shape[d] >= 2), default=c.numel())
    live = nonzero(c)
    worst = 1.0
    for dim in range(c.dim()):
        if c.shape[dim] < 2:
            continue
        others = [d for d in range(c.dim()) if d != dim]
        sizes = live.sum(dim=others, dtype=torch.int64).double()
        sums = c.sum(dim=others, dtype=torch.int64).double()
        used = sizes > 0
        groups = int(used.sum())
        if groups < 2 or live_total - groups < 1:
            continue
        sizes, sums = sizes[used], sums[used]
        mean = float(sums.sum()) / live_total
        between = float((sums * sums / sizes).sum()) - live_total * mean * mean
        within = sum_sq - float((sums * sums / sizes).sum())
        msb = between / (groups - 1)
        msw = max(within, 0.0) / (live_total - groups)
        m0 = (live_total - float((sizes * sizes).sum()) / live_total) / (groups - 1)
        denom = msb + (m0 - 1) * msw
        rho = (msb - msw) / denom if denom > 0 else 0.0
        worst = max(worst, 1.0 + (live_total / groups - 1) * max(rho, 0.0))
    return worst


def decide(counts: Mapping[str, torch.Tensor], draws: int, *, max_draws: int,
           alpha: float = FALSE_ALARM, identical_draws: bool = False,
           dense_shapes: Iterable[list[int]] = ()) -> dict[str, Decision]:
    """Decide every audited tensor's zero pattern, with the case-wide false-alarm budget `alpha`.

    `counts[name]` holds, per element, the draws in which its gradient was nonzero (of `draws`).
    `identical_draws`: every input is the same in each draw, so draws that agree add no evidence;
    a pattern is then deterministic and confirmed at once (where the counts show no randomness).
    Costs one histogram of the counts per tensor, and one max-reduction per dim where some are dead.
    """
    # `dense_shapes`: the case's other tensors, live in every element (no finding, no counts to
    # read); they still share the budget.
    tests = sum(tests_of(c.shape) for c in counts.values()) + sum(tests_of(s) for s in dense_shapes) or 1
    budget = alpha / tests  # each test's share; their sum is the case's alpha
    return {name: _decide_one(c, draws, max_draws, budget, tests, identical_draws) for name, c in counts.items()}


def _decide_one(c: torch.Tensor, draws: int, max_draws: int, budget: float, tests: int,
                identical_draws: bool) -> Decision:
    hist = _hist(c, draws)
    dead = int(hist[0])
    if dead == 0:
        return Decision(NO_FINDING, 0.0)
    if identical_draws and not any(hist[1:draws]):
        return Decision(CONFIRMED, 0.0, dead, zero(c), ())
    if dead == c.numel():
        # No unit of it ever lived: nothing to learn a rate from but a prior, the tensor one unit.
        lam = (1.0 - PRIOR_RATE) ** draws
        level = Level(None, 1, 1, lam, (1.0 - PRIOR_RATE) ** max_draws)
        if lam < budget:
            return Decision(CONFIRMED, lam * tests, dead, zero(c), (), [level])
        hopeless = draws >= max_draws or level.at_cap >= budget
        return Decision(NO_FINDING if hopeless else MORE, lam * tests, dead, levels=[level])
    levels: list[Level] = []
    confirmed: list[int | None] = []
    wait = max_draws
    slice_dims = _slice_dims(c.shape)
    for dim in [None, *slice_dims]:
        if dim is not None:
            others = [d for d in range(c.dim()) if d != dim]
            units = c.amax(dim=others)  # a slice lived in at least as many draws as its best element
            level_hist = _hist(units, draws)
        else:
            units, level_hist = c, hist
        if level_hist[0] == 0:
            continue  # no whole slice along this dim is dead
        comps = components(level_hist, draws)
        lam = expected_dead(comps, draws)
        if dim is None and lam < budget and slice_dims:
            # Elements may live and die together (by rows, say): as many units as the fewest
            # slices at worst; the measured design effect where that worst case decides.
            worst = c.numel() / min(c.shape[d] for d in slice_dims)
            lam_worst = expected_dead(comps, draws, worst)
            lam = lam_worst if lam_worst < budget else expected_dead(comps, draws, design_effect(c, hist))
        levels.append(Level(dim, units.numel(), int(level_hist[0]), lam, at_cap(level_hist, draws, max_draws)))
        if lam < budget:
            confirmed.append(dim)
        else:
            wait = min(wait, _wait(comps, lam, budget))
    best = min((lv.chance_dead for lv in levels), default=math.inf)
    if confirmed:
        if None in confirmed:
            return Decision(CONFIRMED, best * tests, dead, zero(c), (), levels)
        mask = None
        for dim in confirmed:
            others = [d for d in range(c.dim()) if d != dim]
            part = _spread(zero(c.amax(dim=others)), c.shape, dim)
            mask = part if mask is None else mask | part
        return Decision(CONFIRMED, best * tests, dead, mask, tuple(confirmed), levels)
    hopeless = draws >= max_draws or all(lv.at_cap >= budget for lv in levels)
    wait = max(1, min(wait, max_draws - draws))
    return Decision(NO_FINDING if hopeless else MORE, best * tests, dead, levels=levels, wait=wait)


class Watch:
    """The elements still dead since a decision: between decisions, whether any is left is cheap to
    check (they only ever come alive), so a pattern that vanishes stops the draws at once."""

    def __init__(self, counts: torch.Tensor) -> None:
        self.index = zero(counts.reshape(-1)).nonzero().flatten()

    def any_dead(self, counts: torch.Tensor) -> bool:
        self.index = self.index[zero(counts.reshape(-1)[self.index])]
        return bool(self.index.numel())


def _spread(dead_slices: torch.Tensor, shape: torch.Size, dim: int) -> torch.Tensor:
    """The elements of the dead slices along `dim`, as a mask of the tensor's shape."""
    view = [1] * len(shape)
    view[dim] = shape[dim]
    return dead_slices.reshape(view).expand(shape)
