"""Losses that trigger each finding the audit spine reports (no op tracing), each beside its twin."""

import torch


def raises(x):
    raise ValueError("shapes do not match")


def raises_twin(x):
    return x.pow(2).mean()


def per_sample(x):
    return x.pow(2).mean(dim=1)  # shape [B]: forgot the reduction


def per_sample_twin(x):
    return x.pow(2).mean(dim=1).mean()


def via_item(x):
    return torch.tensor(x.pow(2).sum().item())


def via_item_twin(x):
    return x.pow(2).sum()


def python_float(x):
    return float(x.sum())


def log_of_negative(x):
    return torch.log(x).mean()  # randn inputs: NaN


def log_of_negative_twin(x):
    return torch.log(x.abs() + 1).mean()


def unused_input(x, y):
    return x.pow(2).mean()


def unused_input_twin(x, y):
    return (x * y).mean()


def times_zero(x):
    return (x * 0.0).sum()


def times_zero_twin(x):
    return (x * 1.0).sum()


def first_column(x):
    return x[:, 0].pow(2).sum()


def first_column_twin(x):
    return x.pow(2).sum()


def sqrt_at_zero(x):
    d = (x - x).pow(2).sum(dim=1)
    return torch.sqrt(d).sum()  # loss 0, gradient 0 * inf = NaN


def sqrt_at_zero_twin(x):
    d = x.pow(2).sum(dim=1)
    return torch.sqrt(d + 1e-12).sum()


def sigmoid_then_inplace(x):
    p = torch.sigmoid(x)
    p.mul_(2.0)
    return p.sum()


def sigmoid_then_inplace_twin(x):
    p = torch.sigmoid(x)
    p = p * 2.0
    return p.sum()


class _BadBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("backward not implemented for this op")


def backward_raises(x):
    return _BadBackward.apply(x).sum()


def backward_raises_twin(x):
    return x.clone().sum()


class WithUnusedParam(torch.nn.Module):
    """A module loss whose `scale` parameter is never used."""

    def __init__(self, features=3):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(features))
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.frozen = torch.nn.Parameter(torch.ones(1), requires_grad=False)

    def forward(self, x):
        return (x * self.weight).pow(2).mean()


class WithUsedParams(WithUnusedParam):
    def forward(self, x):
        return (x * self.weight * self.scale * self.frozen).pow(2).mean()


class KeepsGraph(torch.nn.Module):
    """Carries last step's loss (with its graph) into the next call: breaks on step two."""

    def __init__(self):
        super().__init__()
        self.previous = None

    def forward(self, x):
        loss = x.pow(2).mean()
        if self.previous is not None:
            loss = loss + 0.1 * self.previous
        self.previous = loss
        return loss


class KeepsValue(KeepsGraph):
    """The twin: carries only the value of last step's loss."""

    def forward(self, x):
        loss = x.pow(2).mean()
        if self.previous is not None:
            loss = loss + 0.1 * self.previous
        self.previous = loss.detach()
        return loss


def returns_tuple(x):
    loss = x.pow(2).mean()
    return loss, {"l2": loss.detach()}


def returns_dict(x):
    return {"loss": x[:, 0].pow(2).mean(), "parts": [x.detach()]}


def returns_list_of_floats(x):
    return [float(v) for v in x.sum(dim=1)]


def random_mask(x):
    """Drops a random half of the elements, as dropout or sampled negatives do."""
    keep = torch.rand(x.shape) < 0.5
    return (x * keep).pow(2).sum()
