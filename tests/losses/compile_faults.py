"""Losses and backends for the torch.compile entries: each fault beside its correct twin.

Importing this module registers three deliberately broken backends, as a user's loss module may
register its own: `zero_backward` compiles the forward faithfully (aot_autograd) and returns zeros
from the backward, the shape of real silent-correctness bugs; `explodes_on_relu` fails to compile
any graph that calls relu; `backward_raises` compiles the forward and raises in the backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func


def _zero_grads(gm, example_inputs):
    def run(args):
        outs = gm(*args)
        return [torch.zeros_like(o) if isinstance(o, torch.Tensor) else o for o in outs]

    run._boxed_call = True
    return run


def _forward_as_is(gm, example_inputs):
    return make_boxed_func(gm.forward)


def _raising_backward(gm, example_inputs):
    def run(args):
        raise RuntimeError("the backward kernel failed")

    run._boxed_call = True
    return run


def _explodes_on_relu(gm, example_inputs):
    if any(node.target in (torch.relu, F.relu) for node in gm.graph.nodes):
        raise RuntimeError("cannot lower relu")
    return gm.forward


_BACKENDS = {
    "zero_backward": aot_autograd(fw_compiler=_forward_as_is, bw_compiler=_zero_grads),
    "backward_raises": aot_autograd(fw_compiler=_forward_as_is, bw_compiler=_raising_backward),
    "explodes_on_relu": _explodes_on_relu,
}
for _name, _backend in _BACKENDS.items():
    # Imported as `compile_faults` by configs and as `tests.losses.compile_faults` by tests: once.
    if _name not in torch._dynamo.list_backends(exclude_tags=()):
        torch._dynamo.register_backend(name=_name)(_backend)


def squared_error(pred, target):
    return ((pred - target) ** 2).mean()


def soft_ce(logits, target):
    return -(F.log_softmax(logits, dim=-1) * F.softmax(target, dim=-1)).sum(-1).mean()


def relu_hinge(pred, target):
    return torch.relu(1 - pred * target).mean()


def hinge_twin(pred, target):
    return (1 - pred * target).clamp(min=0).mean()


def item_normalised(pred, target):
    denom = target.abs().sum().item()
    return ((pred - target) ** 2).sum() / denom


def raises(pred, target):
    return pred @ target  # [8, 4] @ [8, 4]: a shape error, eager and compiled alike


def dropout_mse(pred, target):
    return (F.dropout(pred, p=0.5) - target).pow(2).mean()


class Scaled(torch.nn.Module):
    """A module loss: its parameter is audited (and compiled) like an input."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(4))

    def forward(self, pred, target):
        return ((pred * self.weight - target) ** 2).mean()


def detached_ratio(pred, target):
    b = pred[:, 1].detach()
    return ((pred[:, 0] / (b.abs() + 1)) - target).pow(2).mean()
