"""Losses whose gradient breaks only at low precision, each beside a twin that must not."""

import torch


def sqrt_of_tiny(x):
    # Values around 1e-10 are 0 in float16 (its smallest subnormal is 6e-8): sqrt's slope is inf
    # there, and the zero that x multiplies it by makes NaN.
    return (torch.sqrt(x) * x).sum()


def sqrt_of_tiny_fixed(x):
    return (torch.sqrt(x + 1e-3) * x).sum()


class ScaledSquares(torch.nn.Module):
    """A module loss with a parameter, so the precision matrix casts parameters too."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(3))

    def forward(self, x):
        return (self.scale * x * x).sum()


def log_of_zero(x):
    return torch.log(x).sum()
