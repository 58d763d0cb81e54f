"""Losses that make tensors on a fixed device (device-portability), beside device-following twins."""

import numpy as np
import torch


def weights_without_device(x, t):
    w = torch.ones(x.shape[1])  # CULPRIT: weights_without_device
    w[0] = 2.0
    return ((x - t) ** 2 * w).mean()


def weights_without_device_twin(x, t):
    w = torch.ones(x.shape[1], device=x.device)
    w[0] = 2.0
    return ((x - t) ** 2 * w).mean()


def positions_without_device(x, t):
    pos = torch.arange(1, x.shape[0] + 1).float()  # CULPRIT: positions_without_device
    return ((x - t) ** 2).sum(1).mul(pos).mean()


def positions_without_device_twin(x, t):
    pos = torch.arange(1, x.shape[0] + 1, device=x.device).float()
    return ((x - t) ** 2).sum(1).mul(pos).mean()


def moved_to_cpu(x, t):
    mask = (t > 0).float().to("cpu")  # CULPRIT: moved_to_cpu
    return ((x - t) ** 2 * mask).mean()


def moved_to_cpu_twin(x, t):
    mask = (t > 0).float().to(x.device)
    return ((x - t) ** 2 * mask).mean()


def explicit_cpu(x, t):
    acc = torch.zeros(x.shape[0], device="cpu")  # CULPRIT: explicit_cpu
    return (acc + ((x - t) ** 2).sum(1)).mean()


def explicit_cpu_twin(x, t):
    acc = x.new_zeros(x.shape[0])
    half = torch.tensor(0.5)  # a 0-dim CPU tensor mixes with any device
    return (acc + ((x - t) ** 2).sum(1)).mean() * half


class UnregisteredWeights(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.class_weights = torch.tensor([1.0, 2.0, 1.0, 0.5])  # CULPRIT: UnregisteredWeights

    def forward(self, x, t):
        return ((x - t) ** 2 * self.class_weights).mean()


class UnregisteredWeightsTwin(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("class_weights", torch.tensor([1.0, 2.0, 1.0, 0.5]))
        self.margin = torch.tensor(0.1)  # 0-dim: mixes with any device

    def forward(self, x, t):
        return ((x - t) ** 2 * self.class_weights).mean() + self.margin


def hardcoded_cuda(x, t):
    w = torch.ones(x.shape[1]).cuda()  # CULPRIT: hardcoded_cuda
    return ((x - t) ** 2 * w).mean()


def hardcoded_cuda_twin(x, t):
    w = torch.ones(x.shape[1]).to(x.device)
    return ((x - t) ** 2 * w).mean()


# -- correct patterns from libraries that a device rule must not flag ------------------------------
class WindowMovedInForward(torch.nn.Module):
    """auraloss freq.py STFTLoss: a plain-attribute window that forward moves to the input's device."""

    def __init__(self):
        super().__init__()
        self.window = torch.hamming_window(4)

    def forward(self, x, t):
        self.window = self.window.to(x.device)
        return (((x - t) * self.window) ** 2).mean()


class GaussWindowTwin(torch.nn.Module):
    """pytorch-msssim ssim.py SSIM: `win = win.to(X.device, dtype=X.dtype)` before the filter."""

    def __init__(self):
        super().__init__()
        coords = torch.arange(4, dtype=torch.float) - 1.5
        g = torch.exp(-(coords**2) / 2.0)
        self.win = (g / g.sum()).repeat(1, 1)

    def forward(self, x, t):
        win = self.win.to(x.device, dtype=x.dtype)
        return (((x - t) * win) ** 2).sum()


class ClassWeightsTypeAsTwin(torch.nn.Module):
    """A class-weight tensor kept as an attribute and matched to the input with type_as (smp, timm)."""

    def __init__(self):
        super().__init__()
        self.class_weights = torch.tensor([1.0, 2.0, 1.0, 0.5])

    def forward(self, x, t):
        return ((x - t) ** 2 * self.class_weights.type_as(x)).mean()


def ones_type_as_twin(x, t):
    """geomloss utils/sinkhorn: `torch.ones(N).type_as(x) / N` weights."""
    a = torch.ones(x.shape[0]).type_as(x) / x.shape[0]
    return (a[:, None] * (x - t) ** 2).sum()


class IndexAttributeTwin(torch.nn.Module):
    """smp DiceLoss: `classes` is a CPU long tensor that indexes a device tensor, which torch allows."""

    def __init__(self):
        super().__init__()
        self.classes = torch.tensor([0, 1, 2, 3], dtype=torch.long)

    def forward(self, x, t):
        loss = ((x - t) ** 2).mean(0)
        return loss[self.classes].mean()


class _State(torch.nn.Module):
    """torchmetrics Metric, reduced: states live in plain attributes and `_apply` moves them."""

    def __init__(self):
        super().__init__()
        self._defaults = {"total": torch.zeros(4)}
        self.total = torch.zeros(4)

    def _apply(self, fn, *args, **kwargs):
        this = super()._apply(fn, *args, **kwargs)
        for key in self._defaults:
            setattr(this, key, fn(getattr(this, key)))
        return this


class MetricStateTwin(_State):
    def forward(self, x, t):
        per_column = ((x - t) ** 2).mean(0)
        self.total = self.total + per_column.detach()
        return per_column.sum()


class RebuiltEachCallTwin(torch.nn.Module):
    """timm loss/asymmetric_loss.py AsymmetricLossSingleLabel: `self.targets_classes` is rebuilt
    from `zeros_like(inputs)` in every call, on the inputs' device."""

    def __init__(self):
        super().__init__()
        self.targets_classes = []

    def forward(self, x, t):
        log_preds = torch.log_softmax(x, dim=-1)
        self.targets_classes = torch.zeros_like(x).scatter_(1, t.argmax(1, keepdim=True), 1)
        self.targets_classes.mul_(1 - 0.1).add_(0.1 / x.shape[-1])
        return -(self.targets_classes * log_preds).sum(-1).mean()


def bincount_weights_twin(x, t):
    """Class weights from label counts through numpy, moved back to the logits' device."""
    labels = t.argmax(1)
    counts = np.bincount(labels.cpu().numpy(), minlength=x.shape[1])
    weights = torch.from_numpy(1.0 / np.maximum(counts, 1)).float().to(x.device)
    return (((x - t) ** 2).mean(0) * weights).sum()


class RunningCovariance(torch.nn.Module):
    """lightly loss/tico_loss.py TiCoLoss: the running covariance `self.C` is a plain attribute, made
    on the first call and read by the next: module.to(device) leaves it on the old device."""

    def __init__(self, beta=0.9, rho=8.0):
        super().__init__()
        self.beta = beta
        self.rho = rho
        self.C = None  # CULPRIT: RunningCovariance

    def forward(self, z_a, z_b):
        z_a = torch.nn.functional.normalize(z_a, dim=1)
        z_b = torch.nn.functional.normalize(z_b, dim=1)
        B = torch.mm(z_a.T, z_a) / z_a.shape[0]
        if self.C is None:
            self.C = B.new_zeros(B.shape).detach()
        C = self.beta * self.C + (1 - self.beta) * B
        loss = 1 - (z_a * z_b).sum(dim=1).mean() + self.rho * (torch.mm(z_a, C) * z_a).sum(dim=1).mean()
        self.C = C.detach()
        return loss


class RunningCovarianceTwin(RunningCovariance):
    """The same state as a buffer, which module.to(device) moves."""

    def __init__(self, beta=0.9, rho=8.0):
        super().__init__(beta, rho)
        del self.C
        self.register_buffer("C", None)
