"""Losses whose gradient (or value) turns NaN/Inf at a boundary point, beside their safe twins.

`# CULPRIT: name` marks the op where the NaN/Inf begins.
"""

import torch


def pairwise_distance(x):
    diff = x[:, None, :] - x[None, :, :]
    d = (diff**2).sum(-1)
    return torch.sqrt(d).mean()  # CULPRIT: pairwise_distance


def pairwise_distance_twin(x):
    diff = x[:, None, :] - x[None, :, :]
    d = (diff**2).sum(-1)
    return torch.sqrt(d + 1e-12).mean()


def where_sqrt(x):
    return torch.where(x > 0, torch.sqrt(x), torch.zeros_like(x)).sum()  # CULPRIT: where_sqrt


def where_sqrt_twin(x):
    safe = torch.where(x > 0, x, torch.ones_like(x))
    return torch.where(x > 0, torch.sqrt(safe), torch.zeros_like(x)).sum()


def log_of_masked(x):
    p = x * (x > 0)
    return torch.where(p > 0, torch.log(p), torch.zeros_like(p)).sum()  # CULPRIT: log_of_masked


def log_of_masked_twin(x):
    p = x * (x > 0)
    return torch.where(p > 0, torch.log(p.clamp_min(1e-6)), torch.zeros_like(p)).sum()


def angle_to_self(x):
    cos = (x * x).sum(1) / (x * x).sum(1)
    return torch.acos(cos).mean()  # CULPRIT: angle_to_self


def angle_to_self_twin(x):
    cos = torch.nn.functional.cosine_similarity(x, x.roll(1, 0), dim=1)
    return torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6)).mean()


def root_of_masked(x):
    return ((x * (x > 0)) ** 0.5).sum()  # CULPRIT: root_of_masked


def root_of_masked_twin(x):
    return ((x * (x > 0)) + 1e-6).pow(0.5).sum()


def log_prob_underflow(x, t):
    p = torch.softmax(x * 1000, dim=1)
    return -(t * torch.log(p)).sum(1).mean()  # CULPRIT: log_prob_underflow


def log_prob_underflow_twin(x, t):
    return -(t * torch.log_softmax(x * 1000, dim=1)).sum(1).mean()
