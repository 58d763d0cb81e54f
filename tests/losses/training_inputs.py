"""Losses that rely on receiving model outputs (non-leaf tensors), and losses with their own randomness.

In training a loss gets a model's output: in-place ops on it work (`clamp_`, `div_`) unless a tensor
saved for backward is changed. `CALLS` records the random numbers each call of `noisy_*` drew.
"""

import random

import numpy
import torch

CALLS: list[tuple[float, float, float]] = []


def clamp_inplace(pred, target):
    pred.clamp_(min=1e-6)  # behind an nn.Linear this trains fine
    return -(target * pred.log()).sum()


def temperature_inplace(logits, target):
    logits.div_(2.0)
    return torch.nn.functional.cross_entropy(logits, target)


def inplace_on_saved_input(x):
    sq = x.pow(2)  # SAVES: inplace_on_saved_input
    x.add_(1.0)  # CULPRIT: inplace_on_saved_input
    return (sq + x).sum()


def _draws() -> tuple[float, float, float]:
    drawn = (float(torch.rand(())), random.random(), float(numpy.random.rand()))
    CALLS.append(drawn)
    return drawn


def noisy_passing(x):
    a, b, c = _draws()
    return (x * (a + b + c)).sum()


def noisy_conflict(x):
    a, b, c = _draws()
    e = torch.exp(x * (a + b + c))
    e.add_(1.0)
    return e.sum()


def noisy_detached(x):
    a, b, c = _draws()
    return (x.detach() * (a + b + c)).sum()
