"""Element masks of the zero and nonzero values of a tensor, by a cast instead of a comparison.

On the CPU, torch's comparison with a scalar (`t != 0`, `t == 0`) costs 8-20x a cast to bool for
the same mask (torch 2.13: 160 us against 18 us for 256k float32 elements, 160 us against 7 us
for uint8 counts), and the audit makes such a mask every draw of a gradient with zeros. A cast to
bool is the test `!= 0` itself: NaN and denormals are nonzero, -0.0 is zero.
"""

from __future__ import annotations

import torch


def nonzero(t: torch.Tensor) -> torch.Tensor:
    """`t != 0` as a new bool tensor."""
    return t.bool() if t.dtype is not torch.bool else t.clone()


def zero(t: torch.Tensor) -> torch.Tensor:
    """`t == 0` as a new bool tensor."""
    return torch.logical_not(t)
