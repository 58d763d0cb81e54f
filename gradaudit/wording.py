"""Small pieces of finding messages that several explanations share: agreement and plain numbers."""

from __future__ import annotations

import re
from typing import Any

_TRAILING_COMMENT = re.compile(r"\s+#[^'\"]*$")


def quote(loc: Any, fallback: str) -> str:
    """The culprit's source line (a model Location's code) in backticks, without a trailing comment;
    else the op's name."""
    if loc is None or not loc.code:
        return f"`{fallback}`"
    return f"`{_TRAILING_COMMENT.sub('', loc.code)}`"

# "elements 0-2 of x", "columns 1, 3 of x", "indices 0-1 along dim 1 of x", "12 scattered elements of x"
_PLURAL = re.compile(r"^(\d+ scattered )?(elements|columns|rows|indices)\b")


def is_plural(subject: str) -> bool:
    """Whether a description of part of a tensor (shapes.describe_dead's words) is plural."""
    return bool(_PLURAL.match(subject))


def never_receives(subject: str) -> str:
    """`column 1 of x never receives`, `3 scattered elements of x never receive`."""
    return f"{subject} never receive{'' if is_plural(subject) else 's'}"


def percent(fraction: float) -> str:
    """0.6587 -> '66%', 0.004 -> '0.4%': two significant figures at most, never '0%' for a nonzero."""
    value = fraction * 100
    if value >= 10 or value == 0:
        return f"{value:.0f}%"
    return f"{value:.1g}%" if value < 1 else f"{value:.1f}".rstrip("0").rstrip(".") + "%"


# Why a backward node passes a zero gradient on, by node name (without "Backward0").
_ZERO_REASONS = {
    "Where": "a torch.where hides the branch in the forward pass",
    "MaskedFill": "a masked_fill hides the branch in the forward pass",
    "MaskedScatter": "a mask hides the branch in the forward pass",
    "IndexPut": "an indexed assignment overwrites those elements in the forward pass",
    "Atan": "atan's derivative is 0 at ±infinity",
    "Atan2": "atan2's derivative is 0 there",
    "Tanh": "tanh's derivative is 0 where it saturates",
    "Sigmoid": "sigmoid's derivative is 0 where it saturates",
    "Clamp": "the clamp after it passes no gradient where it clips",
    "ClampMin": "the clamp after it passes no gradient where it clips",
    "ClampMax": "the clamp after it passes no gradient where it clips",
    "Relu": "the relu after it passes no gradient where its input is negative",
    "Threshold": "the relu after it passes no gradient where its input is negative",
    "Triu": "triu keeps only the upper triangle: the rest gets no gradient",
    "Tril": "tril keeps only the lower triangle: the rest gets no gradient",
}


def zero_incoming_hint(after: list[tuple[str, str | None]]) -> str:
    """Why the gradient arriving at an op is 0, from the backward nodes it came from (name, line)."""
    if not after:
        return "nothing after it passes a gradient there"
    for name, where in after:
        reason = _ZERO_REASONS.get(re.sub(r"Backward\d*$", "", name))
        if reason is not None:
            return reason + (f" (at {where})" if where else "")
    name, where = after[0]
    op = re.sub(r"Backward\d*$", "", name)
    return f"`{op}` after it passes a zero gradient there" + (f" (at {where})" if where else "")


def no_grad_hint(names: list[str]) -> str:
    """For inputs cut whole by a stop-gradient: how to declare one that is a target by design."""
    if not names:
        return ""
    listed = ", ".join(names)
    subject = " and ".join(f"`{n}`" for n in names)
    return (f"; if {subject} {'is a' if len(names) == 1 else 'are'} stop-gradient target{'s' if len(names) > 1 else ''}"
            f" by design (as BYOL's target branch), declare it: expect: {{no_grad: [{listed}]}}")
