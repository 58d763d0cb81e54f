"""Losses that make tensors on a fixed device (device-portability), beside device-following twins."""

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
