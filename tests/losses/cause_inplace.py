"""In-place ops on tensors saved for backward (inplace-version-conflict), beside safe in-place twins.

`# CULPRIT: name` marks the in-place op that changed the tensor (the line to change); `# SAVES: name`
the op that saved it for backward (the finding's second line).
"""

import torch
import torch.nn.functional as F


def exp_then_add_(x):
    e = torch.exp(x)  # SAVES: exp_then_add_
    e.add_(1.0)  # CULPRIT: exp_then_add_
    return e.sum()


def exp_then_add_twin(x):
    e = torch.exp(x) + 1.0
    return e.sum()


def tanh_then_relu_(x):
    h = torch.tanh(x)  # SAVES: tanh_then_relu_
    h.relu_()  # CULPRIT: tanh_then_relu_
    return h.sum()


def tanh_then_relu_twin(x):
    h = x * 2 + 1
    F.relu(h, inplace=True)  # the sum before it saved nothing
    return h.sum()


def setitem_on_saved(x, t):
    s = torch.sigmoid(x)  # SAVES: setitem_on_saved
    s[:, 0] = 0.0  # CULPRIT: setitem_on_saved
    return (s * t).sum()


def setitem_on_saved_twin(x, t):
    out = torch.zeros_like(x)
    out[:, 0] = x[:, 0] * 2  # writing into a fresh buffer is fine
    out[:, 1:] = x[:, 1:]
    return ((out - t) ** 2).sum()


def view_of_saved(x):
    e = x.exp()  # SAVES: view_of_saved
    column = e[:, 0]
    column.mul_(0.5)  # CULPRIT: view_of_saved
    return e.sum()


def view_of_saved_twin(x):
    e = x.exp().clone()
    column = e[:, 0]
    column.mul_(0.5)
    return e.sum()


def saved_operand(x, t):
    w = t.clone()
    out = (x * w).sum()  # SAVES: saved_operand
    w.add_(1.0)  # CULPRIT: saved_operand
    return out


def saved_operand_twin(x, t):
    w = t.clone()
    w.add_(1.0)
    return (x * w).sum()


def iadd_on_pow_input(x):
    h = x * 2
    sq = h**2  # SAVES: iadd_on_pow_input
    h += 1  # CULPRIT: iadd_on_pow_input
    return (sq + h).sum()


def iadd_on_pow_input_twin(x):
    h = x * 2
    h += 1  # before anything saved it
    return (h**2).sum()
