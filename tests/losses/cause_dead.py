"""Silent bugs no verdict catches: a dead term added to the loss (dead-term) and a value range that
zeroes most of the gradient (saturated-grad), each beside quiet twins: relu, a hinge, top-k, a
detached weight, a mask.

`# CULPRIT: name` marks the line the finding must point at.
"""

import torch
import torch.nn.functional as F


# -- dead-term ------------------------------------------------------------------------------------
def argmax_penalty(x, t):
    """A 'distance of the predicted class' penalty: argmax has no gradient, so the term never trains."""
    ce = F.cross_entropy(x, t)
    return ce + 0.1 * (x.argmax(-1) - t).abs().float().mean()  # CULPRIT: argmax_penalty


def argmax_penalty_twin(x, t):
    """The same penalty on the expected class under the softmax: differentiable."""
    ce = F.cross_entropy(x, t)
    classes = torch.arange(x.shape[1], device=x.device, dtype=x.dtype)
    expected = (torch.softmax(x, -1) * classes).sum(-1)
    return ce + 0.1 * (expected - t.to(x.dtype)).abs().mean()


def detached_regulariser(x, t):
    mse = ((x - t) ** 2).mean()
    reg = x.detach().pow(2).mean()  # CULPRIT: detached_regulariser
    return mse + 0.01 * reg


def detached_regulariser_twin(x, t):
    """A detached weight that multiplies a live path shapes the gradient: no dead term."""
    w = torch.sigmoid(x.detach())
    return (w * (x - t) ** 2).mean()


def mask_twin(x, t):
    """A mask made by a comparison multiplies the live path."""
    keep = (t > 0).float()
    return ((x - t) ** 2 * keep).sum() / keep.sum().clamp_min(1.0)


def where_twin(x, t):
    """A where condition picks between live branches."""
    return torch.where(x > t, x - t, 0.5 * (t - x)).mean()


def zero_weighted_metric_twin(x, t):
    """A metric added with weight 0.0 changes nothing at all."""
    return ((x - t) ** 2).mean() + 0.0 * (x > 0).float().mean()


def gradient_injection_twin(x, t):
    """`x - x.detach()` is zero with x's gradient (DiCE's magic box, REINFORCE baselines): no dead term."""
    return ((x - t) ** 2).mean() + 0.1 * (x - x.detach()).sum()


def straight_through_twin(x, t):
    """The straight-through estimator adds a detached difference, then squares: not a dead term."""
    q = x + (torch.round(x * 4) / 4 - x).detach()
    return ((q - t) ** 2).mean()


# -- saturated-grad -------------------------------------------------------------------------------
def clamp_logits(y_pred, y_true):
    """MONAI losses/unified_focal_loss.py AsymmetricFocalLoss: `torch.clamp(y_pred, epsilon, 1.0 -
    epsilon)`, given logits as the class docstring allows: most of them lie outside [eps, 1 - eps]."""
    epsilon = 1e-7
    y_pred = torch.clamp(y_pred, epsilon, 1.0 - epsilon)  # CULPRIT: clamp_logits
    cross_entropy = -y_true * torch.log(y_pred)
    return torch.mean(torch.sum(torch.pow(1 - y_pred, 2) * cross_entropy, dim=1))


def clamp_logits_twin(y_pred, y_true):
    """The same clamp on probabilities: nothing lies outside the range."""
    epsilon = 1e-7
    y_pred = torch.clamp(torch.sigmoid(y_pred), epsilon, 1.0 - epsilon)
    cross_entropy = -y_true * torch.log(y_pred)
    return torch.mean(torch.sum(torch.pow(1 - y_pred, 2) * cross_entropy, dim=1))


def hardtanh_wide(x, t):
    return ((F.hardtanh(x * 4.0, -0.5, 0.5) - t) ** 2).mean()  # CULPRIT: hardtanh_wide


def hardtanh_wide_twin(x, t):
    """The same hardtanh on values scaled into its range."""
    return ((F.hardtanh(x * 0.1, -0.5, 0.5) - t) ** 2).mean()


def relu_twin(x, t):
    """relu zeroes half of the gradient: by design."""
    return ((F.relu(x) - t) ** 2).mean()


def hinge_twin(x, t):
    """A hinge: zero gradient where the margin is met, by design."""
    return torch.clamp(1.0 - x * (2 * t - 1), min=0).mean()


def topk_twin(x, t):
    """Only the top 1 of each row gets a gradient: by design."""
    return (x.topk(1, dim=1).values - t[:, :1]).pow(2).mean()


def clamp_wide_twin(x, t):
    """A clamp that clips only the tails."""
    return ((torch.clamp(x, -3.0, 3.0) - t) ** 2).mean()


def clamp_near_half_twin(x, t):
    """A clamp that clips 48% of standard normal values: not most of them, so no saturated-grad."""
    return ((torch.clamp(x, -0.7, 0.7) - t) ** 2).mean()
