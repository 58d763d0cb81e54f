"""Losses whose gradient (or value) turns NaN/Inf at a boundary point, beside their safe twins.

`# CULPRIT: name` marks the op where the NaN/Inf begins.
"""

import torch
import torch.nn.functional as F


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


def pairwise_upper(x):
    """Distances of the pairs above the diagonal: triu drops the diagonal's gradient, sqrt's is Inf there."""
    diff = x[:, None, :] - x[None, :, :]
    d = torch.sqrt((diff**2).sum(-1))  # CULPRIT: pairwise_upper
    return d.triu(diagonal=1).sum()


def pairwise_upper_twin(x):
    diff = x[:, None, :] - x[None, :, :]
    d = torch.sqrt((diff**2).sum(-1) + 1e-12)
    return d.triu(diagonal=1).sum()


def flat_box_ciou(x, t):
    """torchvision ops/ciou_loss.py complete_box_iou_loss's aspect term, on predicted sizes where a
    relu makes some heights 0: w / h is Inf there, atan's derivative at Inf is 0, and 0 × (1 / h) is NaN
    in the division's backward. No where or mask is involved."""
    w_pred, h_pred = F.softplus(x[:, 0]), F.relu(x[:, 1])
    w_gt, h_gt = t[:, 0], t[:, 1]
    aspect = torch.atan(w_gt / h_gt) - torch.atan(w_pred / h_pred)  # CULPRIT: flat_box_ciou
    v = (4 / (torch.pi**2)) * torch.pow(aspect, 2)
    return v.mean()


def flat_box_ciou_twin(x, t):
    w_pred, h_pred = F.softplus(x[:, 0]), F.softplus(x[:, 1])
    w_gt, h_gt = t[:, 0], t[:, 1]
    v = (4 / (torch.pi**2)) * torch.pow(torch.atan(w_gt / h_gt) - torch.atan(w_pred / h_pred), 2)
    return v.mean()


def ratio_of_masked(x):
    """A division whose divisor is 0 in some rows."""
    d = x[:, 0] * (x[:, 0] > 0)
    return (x[:, 1] / d).clamp(-10, 10).mean()  # CULPRIT: ratio_of_masked


def ratio_of_masked_twin(x):
    d = torch.where(x[:, 0] > 0, x[:, 0], torch.ones_like(x[:, 0]))
    return (x[:, 1] / d).clamp(-10, 10).mean()
