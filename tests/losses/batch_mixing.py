"""Losses that mix samples along the batch dim (batch-mixing), each beside a per-sample twin."""

import torch
import torch.nn.functional as F


def softmax_over_batch(logits, target):
    probs = torch.softmax(logits, dim=0)  # meant: dim=1, over the classes
    return -torch.log(probs.gather(1, target[:, None])).mean()


def softmax_over_batch_twin(logits, target):
    probs = torch.softmax(logits, dim=1)
    return -torch.log(probs.gather(1, target[:, None])).mean()


def batch_centred_mse(pred, target):
    return ((pred - pred.mean(dim=0) - target) ** 2).mean()  # batch statistics in a per-sample loss


def batch_centred_mse_twin(pred, target):
    return ((pred - pred.mean(dim=1, keepdim=True) - target) ** 2).mean()  # centred per sample


def batch_statistic_in_two_lines(pred, target):
    centre = pred.mean(dim=0)
    centred = pred - centre
    return ((centred - target) ** 2).mean()


def cross_entropy(logits, target):
    return F.cross_entropy(logits, target)


def cross_entropy_sum(logits, target):
    return F.cross_entropy(logits, target, reduction="sum")


def weighted_cross_entropy(logits, target, weight):
    return F.cross_entropy(logits, target, weight=weight)  # mean: divided by the targets' weights


def mse(pred, target):
    return F.mse_loss(pred, target)


def focal(logits, target, gamma=2.0):
    logp = F.log_softmax(logits, dim=-1).gather(1, target[:, None]).squeeze(1)
    return (-(1 - logp.exp()) ** gamma * logp).mean()


def sigmoid_focal(logits, target, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    num_pos = target.sum().clamp_min(1.0)  # RetinaNet: normalised by the batch's positives
    return loss.sum() / num_pos


def label_smoothed_ce(logits, target):
    return F.cross_entropy(logits, target, label_smoothing=0.1, ignore_index=0)


def masked_token_ce(logits, target):
    """A sequence loss [B, T, C]: flattened, ignore_index, mean over the kept tokens."""
    return F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=0)


def info_nce(z1, z2, temperature=0.1):
    """InfoNCE with in-batch negatives: every sample is the others' negative, on purpose."""
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    logits = z1 @ z2.T / temperature
    labels = torch.arange(z1.shape[0], device=z1.device)
    return F.cross_entropy(logits, labels)


def l2_normalised_over_batch(x, target):
    x = F.normalize(x, dim=0)  # meant: dim=1
    return ((x - target) ** 2).sum()


def mean_over_std(pred, target):
    per_sample = ((pred - target) ** 2).mean(dim=1)
    return per_sample.mean() / per_sample.std()


class BatchNormHead(torch.nn.Module):
    """A loss with a BatchNorm in training mode: batch statistics again."""

    def __init__(self, features: int = 4) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(features)

    def forward(self, x, target):
        return F.mse_loss(self.norm(x), target)


class LayerNormHead(BatchNormHead):
    def __init__(self, features: int = 4) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(features)


def giou(pred, target):
    """Generalized IoU loss on (x1, y1, x2, y2) boxes made valid from raw regressions."""
    p = torch.cat([pred[:, :2], pred[:, :2] + pred[:, 2:].abs() + 1e-3], dim=1)
    t = torch.cat([target[:, :2], target[:, :2] + target[:, 2:].abs() + 1e-3], dim=1)
    area_p = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])
    area_t = (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])
    lt = torch.max(p[:, :2], t[:, :2])
    rb = torch.min(p[:, 2:], t[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    union = area_p + area_t - inter
    hull = (torch.max(p[:, 2:], t[:, 2:]) - torch.min(p[:, :2], t[:, :2])).prod(dim=1)
    return (1 - inter / union + (hull - union) / hull).mean()


class LinearHead(torch.nn.Module):
    """Features through a linear layer into cross-entropy: a matmul whose blocking spans samples."""

    def __init__(self, features: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(features, classes)

    def forward(self, x, target):
        return F.cross_entropy(self.linear(x), target)


def time_major_ce(logits, target):
    """Sequence-first [T, B, C], as RNN and CTC code lays it out: B is axis 1."""
    return F.cross_entropy(logits.flatten(0, 1), target.flatten())


def time_major_softmax_over_batch(logits, target):
    logp = torch.log_softmax(logits, dim=1)  # meant: dim=2; dim 1 is B here
    return -logp.gather(2, target[..., None]).mean()


def relu_product(x, target):
    """Per sample; prod's backward switches formula for the whole batch once any factor is zero."""
    return ((torch.relu(x + 2.5).prod(dim=1) + 1).log() - target).abs().mean()
