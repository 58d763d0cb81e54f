"""Dead terms: a value cut from the gradient that reaches the loss only by addition.

`ce + 0.1 * (logits.argmax(-1) - labels).abs().float().mean()`: the added term has no gradient, so
it changes the loss value and never training. A stop-gradient that multiplies a live path (a mask,
a detached weight, a `where` condition) shapes the gradient and is fine. The tracer tracks, per
tensor, which cut values were added to a live path and have since gone through linear steps only
(sums, means, reshapes, scaling by constants, more additions); a term still so at the loss is dead.
"""

from __future__ import annotations

from typing import Any

ADDITIVE = frozenset({"add", "sub", "subtract", "__add__", "__radd__", "__sub__", "__rsub__", "rsub",
                      "add_", "sub_", "__iadd__", "__isub__"})
# Steps that keep a tensor a linear function of each of its terms.
LINEAR = frozenset({"sum", "mean", "nansum", "nanmean", "reshape", "view", "flatten", "squeeze", "unsqueeze",
                    "neg", "__neg__", "negative", "clone", "contiguous", "float", "double", "half", "bfloat16",
                    "to", "permute", "transpose", "t", "__get__:T", "__get__:mT", "expand", "__getitem__",
                    "select", "narrow", "cat", "concat", "concatenate", "stack", "hstack", "vstack", "movedim",
                    "__pos__", "positive", "squeeze_", "unsqueeze_"})
SCALE = frozenset({"mul", "multiply", "__mul__", "__rmul__", "mul_", "__imul__"})
DIVIDE = frozenset({"div", "divide", "true_divide", "__truediv__", "div_", "__itruediv__"})

WORDS = ("this term reaches the loss only by addition and carries no gradient ({why}): it changes the loss "
         "value and never training; make it differentiable or leave it out of the loss")


JOIN = frozenset({"cat", "concat", "concatenate", "stack", "hstack", "vstack"})  # then summed: an addition


def combine(name: str, tags: list[Any]) -> tuple[frozenset, frozenset, frozenset]:
    """What an op does to dead terms, from its tensor arguments' tags (in argument order).

    Returns (the terms its result carries on, break ids that now shape a live path, break ids it
    adds to a live path as new terms: the caller checks that those values are not all zero).
    """
    live = [t for t in tags if t.grad]
    if not live:
        return frozenset(), frozenset(), frozenset()
    cut = frozenset().union(*(t.breaks for t in tags if not t.grad and t.breaks))
    carried = frozenset().union(*(getattr(t, "terms", frozenset()) for t in live))
    if name in ADDITIVE or name in JOIN:
        return carried, frozenset(), cut
    if name in LINEAR or (name in SCALE and len(live) == 1) or (name in DIVIDE and len(live) == 1
                                                                 and live[0] is tags[0]):
        return carried, cut, frozenset()  # a cut value here scales a live path: it shapes the gradient
    # Any other op: its cut inputs (a mask, a weight, a condition) and the terms its live inputs carry
    # now shape the gradient.
    return frozenset(), cut | carried, frozenset()


def dead_breaks(loss_terms: set[int], modulating: set[int], explained: set[int]) -> set[int]:
    """The break records whose values reach the loss only as added terms."""
    return set(loss_terms) - set(modulating) - set(explained)
