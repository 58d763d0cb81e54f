"""Losses for the real-GPU tests (tests/test_cuda.py), each beside a twin that must pass."""

import torch
import torch.nn.functional as F


def cross_entropy(logits, target):
    return F.cross_entropy(logits, target)


def huge_allocation(x):
    # 4 TiB of float32: more than any GPU holds, so CUDA raises OutOfMemoryError at once.
    scratch = torch.empty(1 << 40, device=x.device)
    return (x * scratch[: x.numel()].view_as(x)).sum()


def differs_by_device(x):
    # A loss whose value depends on where it runs: parity must catch it.
    return (x * x * (1.01 if x.is_cuda else 1.0)).sum()


def matmul_loss(a, b):
    return (a @ b).square().mean()
