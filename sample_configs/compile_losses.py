"""Losses for compile_examples.yaml, and a deliberately broken torch.compile backend.

`zero_backward` compiles the forward faithfully (through aot_autograd) and returns zeros from the
backward: the shape of real silent-correctness bugs of compiled losses. A loss module may register
its own backends like this; gradaudit checks backend names after importing the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func


def _zero_grads(gm, example_inputs):
    def run(args):
        return [torch.zeros_like(o) if isinstance(o, torch.Tensor) else o for o in gm(*args)]

    run._boxed_call = True
    return run


if "zero_backward" not in torch._dynamo.list_backends(exclude_tags=()):
    torch._dynamo.register_backend(name="zero_backward")(
        aot_autograd(fw_compiler=lambda gm, example_inputs: make_boxed_func(gm.forward),
                     bw_compiler=_zero_grads))


def soft_cross_entropy(logits, targets):
    return -(F.log_softmax(logits, dim=-1) * F.softmax(targets, dim=-1)).sum(-1).mean()


def normalised_sse(predictions, targets):
    denom = targets.abs().sum().item()
    return ((predictions - targets) ** 2).sum() / denom


def dropout_mse(predictions, targets):
    return (F.dropout(predictions, p=0.5) - targets).pow(2).mean()


def squared_error(predictions, targets):
    return ((predictions - targets) ** 2).mean()
