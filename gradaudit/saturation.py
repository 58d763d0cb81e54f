"""Saturation: an op with a value range that zeroes most of an input's gradient in every draw.

MONAI's focal losses run `torch.clamp(y_pred, 1e-7, 1 - 1e-7)`; given logits, most values lie
outside that range, where the clamp passes no gradient, and the zeros move from draw to draw, so
no element is dead for good (no partial-grad). The tracer counts, at each two-sided range op (clamp
or clip with both bounds, hardtanh, hardsigmoid, relu6) in the traced draw, how many of its input's
values lie outside the range; the verdict rests on the input's own gradients over all draws. A
one-sided clamp is a relu or a hinge, top-k and masks are no range ops: all stay quiet.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from gradaudit.model import Finding, Location
from gradaudit.wording import percent

RANGE_OPS = frozenset({"clamp", "clip", "clamp_", "clip_", "hardtanh", "hardtanh_", "hardsigmoid",
                       "hardsigmoid_", "relu6"})
MOST = 0.5  # "most of the gradient": more than half
FALSE_ALARM = 1e-3  # the chance that a range op zeroing at most half is reported, by Hoeffding's bound


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, torch.Tensor) and value.dim() == 0 and value.device.type != "meta":
        return float(value)
    return None


def value_range(name: str, args: tuple, kwargs: dict) -> tuple[float, float] | None:
    """The (low, high) range of a two-sided range op's call, or None (one-sided or tensor bounds)."""
    def arg(i: int, key: str, default: Any = None) -> Any:
        return args[i] if len(args) > i else kwargs.get(key, default)

    if name in ("clamp", "clip", "clamp_", "clip_"):
        lo, hi = _number(arg(1, "min")), _number(arg(2, "max"))
    elif name in ("hardtanh", "hardtanh_"):
        lo, hi = _number(arg(1, "min_val", -1.0)), _number(arg(2, "max_val", 1.0))
    elif name in ("hardsigmoid", "hardsigmoid_"):
        lo, hi = -3.0, 3.0
    elif name == "relu6":
        lo, hi = 0.0, 6.0
    else:
        return None
    if lo is None or hi is None or not lo < hi:
        return None
    return lo, hi


def outside(x: torch.Tensor, lo: float, hi: float) -> tuple[int, int]:
    """How many of `x`'s values lie outside [lo, hi] (where the op passes no gradient), of how many."""
    if x.device.type == "meta" or not x.is_floating_point():
        return 0, 0
    v = x.detach()
    return int(((v < lo) | (v > hi)).sum()), v.numel()


def surely_most(zeros: int, total: int) -> bool:
    """Whether more than half of the gradient is zero beyond chance: Hoeffding's lower bound on the
    zero fraction, at FALSE_ALARM, is above MOST."""
    if total <= 0:
        return False
    return zeros / total - math.sqrt(math.log(1 / FALSE_ALARM) / (2 * total)) > MOST


def _fmt(value: float) -> str:
    return f"{value:.8g}"


def saturation_finding(op: str, lo: float, hi: float, outside_count: int, seen: int, name: str,
                       zeros: int, total: int, draws: int, loc: Location | None, code: str) -> Finding | None:
    """The saturated-grad warning for one range op and one input, or None where it does not hold:
    the op clips most values of its input in the traced draw, and most of the input's gradient is
    zero over the draws beyond chance."""
    if not seen or outside_count / seen <= MOST or not surely_most(zeros, total):
        return None
    where = f" at {loc.where}" if loc else ""
    message = (f"{code}{where} clips its input to [{_fmt(lo)}, {_fmt(hi)}], and {percent(outside_count / seen)} of "
               f"the drawn values lie outside that range, where it passes no gradient: {percent(zeros / total)} of "
               f"`{name}`'s gradient is zero over {draws} draw{'s' if draws != 1 else ''} (elements that move from "
               "draw to draw, so no partial-grad); if the input is logits or unbounded, apply the sigmoid or "
               "softmax the op expects first, or widen the range")
    return Finding(id="saturated-grad", severity="warn", input=name, location=loc, message=message,
                   detail={"op": op, "range": [lo, hi], "outside_fraction": round(outside_count / seen, 4),
                           "zero_fraction": round(zeros / total, 4), "draws": draws})
