"""Losses that fail only on (fake) CUDA, each beside a twin that must not; see tests/fake_devices.py."""

import torch

from gradaudit.devices import current
from tests.fake_devices import cuda_oom, device_assert


def _on_cuda():
    return getattr(current(), "active", None) == "cuda"


def plain(x):
    return (x * x).sum()


def oom_in_forward(x):
    if _on_cuda():
        raise cuda_oom()
    return (x * x).sum()


class _OomBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.on_cuda = _on_cuda()
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        if ctx.on_cuda:
            raise cuda_oom()
        return grad * 2


def oom_in_backward(x):
    return _OomBackward.apply(x).sum()


def assert_in_forward(logits, target):
    if _on_cuda():
        raise device_assert()  # what cross_entropy does on CUDA with a target out of range
    return torch.nn.functional.cross_entropy(logits, target)


def async_assert(x):
    if _on_cuda():
        current().pending.append(device_assert())  # a kernel failed; CUDA says so later
    return (x * x).sum()


def differs_on_cuda(x):
    scale = 1.01 if _on_cuda() else 1.0  # a kernel whose result differs on the device
    return (x * x * scale).sum()


def grad_differs_on_cuda(x):
    y = x * x
    if _on_cuda():
        y = y + 0.01 * (x - x.detach())[0]  # the same loss value; a different gradient of x[0]
    return y.sum()


def stray_factory(x):
    weights = torch.ones(x.shape[-1])
    return (x * weights).sum()


def stray_factory_fixed(x):
    weights = torch.ones(x.shape[-1], device=x.device)
    return (x * weights).sum()
