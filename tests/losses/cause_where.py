"""Losses whose finding needs the right line: a slice that drops part of an input, a custom Function
whose backward returns None, a loss replaced by a constant. Each beside its correct twin.

`# CULPRIT: name` marks the line the finding must point at. The shapes of the library code they
copy are cited at each loss.
"""

import torch
import torch.nn.functional as F


# -- a parameter of which one element is used (multi-task uncertainty weighting) ----------------------
class TaskWeights(torch.nn.Module):
    """Two log-variances declared, one used: `self.log_vars[1]` never gets a gradient."""

    def __init__(self):
        super().__init__()
        self.log_vars = torch.nn.Parameter(torch.zeros(2))

    def forward(self, x, t):
        precision = torch.exp(-self.log_vars[0])  # CULPRIT: TaskWeights
        return precision * ((x - t) ** 2).mean() + self.log_vars[0]


class TaskWeightsTwin(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.log_vars = torch.nn.Parameter(torch.zeros(2))

    def forward(self, x, t):
        first = torch.exp(-self.log_vars[0]) * ((x - t) ** 2).mean() + self.log_vars[0]
        second = torch.exp(-self.log_vars[1]) * (x - t).abs().mean() + self.log_vars[1]
        return first + second


# -- segmentation-models-pytorch DiceLoss(mode="multilabel", classes=[1, 2]) -----------------------
def _soft_dice_score(output, target, smooth=0.0, eps=1e-7, dims=None):
    # smp losses/_functional.py soft_dice_score
    intersection = torch.sum(output * target, dim=dims)
    cardinality = torch.sum(output + target, dim=dims)
    return (2.0 * intersection + smooth) / (cardinality + smooth).clamp_min(eps)


class DiceClasses(torch.nn.Module):
    """smp losses/dice.py, multilabel mode: the loss keeps `loss[self.classes]`, so channel 0 of
    y_pred never gets a gradient (smp keeps `classes` as a plain CPU long tensor)."""

    def __init__(self, classes=(1, 2)):
        super().__init__()
        self.classes = torch.tensor(list(classes), dtype=torch.long)  # smp's to_tensor(classes)

    def forward(self, y_pred, y_true):
        y_pred = F.logsigmoid(y_pred).exp()
        bs, num_classes = y_true.size(0), y_pred.size(1)
        dims = (0, 2)
        y_true = y_true.view(bs, num_classes, -1)
        y_pred = y_pred.view(bs, num_classes, -1)
        scores = _soft_dice_score(y_pred, y_true.type_as(y_pred), dims=dims)
        loss = 1.0 - scores
        mask = y_true.sum(dims) > 0
        loss *= mask.to(loss.dtype)
        loss = loss[self.classes]  # CULPRIT: DiceClasses
        return loss.mean()


class DiceClassesTwin(DiceClasses):
    """All classes: every channel of y_pred learns."""

    def __init__(self):
        super().__init__(classes=(0, 1, 2))


# -- entmax's loss Function with a learned alpha ------------------------------------------------------
class _BisectFunction(torch.autograd.Function):
    """entmax root_finding.py EntmaxBisectFunction, shortened: its backward does return d_alpha."""

    @staticmethod
    def forward(ctx, X, alpha, n_iter=30):
        alpha_shape = list(X.shape)
        alpha_shape[-1] = 1
        alpha = alpha.expand(*alpha_shape)
        d = X.shape[-1]
        X = X * (alpha - 1)
        max_val, _ = X.max(dim=-1, keepdim=True)
        tau_lo = max_val - 1.0
        tau_hi = max_val - (1 / d) ** (alpha - 1)
        f_lo = (torch.clamp(X - tau_lo, min=0) ** (1 / (alpha - 1))).sum(-1) - 1
        dm = tau_hi - tau_lo
        for _ in range(n_iter):
            dm /= 2
            tau_m = tau_lo + dm
            p_m = torch.clamp(X - tau_m, min=0) ** (1 / (alpha - 1))
            f_m = p_m.sum(-1) - 1
            mask = (f_m * f_lo >= 0).unsqueeze(-1)
            tau_lo = torch.where(mask, tau_m, tau_lo)
        p_m /= p_m.sum(dim=-1, keepdim=True)
        ctx.alpha = alpha
        ctx.save_for_backward(p_m)
        return p_m

    @staticmethod
    def backward(ctx, dY):
        (Y,) = ctx.saved_tensors
        gppr = torch.where(Y > 0, Y ** (2 - ctx.alpha), Y.new_zeros(1))
        dX = dY * gppr
        q = dX.sum(-1, keepdim=True) / gppr.sum(-1, keepdim=True)
        dX -= q * gppr
        return dX, None, None


class _EntmaxLossFunction(torch.autograd.Function):
    """entmax losses.py _GenericLossFunction + EntmaxBisectLossFunction: alpha is used in forward,
    and backward pads with None for it."""

    @staticmethod
    def forward(ctx, X, target, alpha, n_iter):
        p_star = _BisectFunction.apply(X, alpha, n_iter)
        loss = (1 - (p_star**alpha).sum(dim=1)) / (alpha * (alpha - 1)).squeeze(-1)
        p_star.scatter_add_(1, target.unsqueeze(1), torch.full_like(p_star, -1))
        loss += torch.einsum("ij,ij->i", p_star, X)
        ctx.save_for_backward(p_star)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (p_star,) = ctx.saved_tensors
        grad = grad_output.unsqueeze(1) * p_star
        return grad, None, None, None  # CULPRIT: EntmaxLearnedAlpha


class EntmaxLearnedAlpha(torch.nn.Module):
    """A learned alpha (> 1) handed to entmax_bisect_loss, as its docstring allows."""

    def __init__(self):
        super().__init__()
        self.raw_alpha = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, target):
        alpha = 1 + F.softplus(self.raw_alpha) + 0.01
        return _EntmaxLossFunction.apply(x, target.long(), alpha, 30).mean()


class EntmaxLearnedAlphaTwin(torch.nn.Module):
    """alpha learned through a path that has a gradient: the Function's backward is not asked for it."""

    def __init__(self):
        super().__init__()
        self.raw_alpha = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, target):
        alpha = 1 + F.softplus(self.raw_alpha) + 0.01
        scaled = x * alpha  # the learned temperature reaches the loss here
        return _EntmaxLossFunction.apply(scaled, target.long(), alpha.detach(), 30).mean()


# -- pytorch-forecasting's replacement of a non-finite loss ------------------------------------------
def forecast_replace(x, t):
    """pytorch-forecasting metrics/base_metrics.py `_update_losses_and_lengths`: a non-finite loss is
    replaced by a constant tensor, which carries no gradient."""
    losses = (torch.exp(x * 100.0) - t * x).sum()  # a Poisson-style loss that overflows
    if not torch.isfinite(losses):
        losses = torch.tensor(1e9, device=losses.device)  # CULPRIT: forecast_replace
    return losses


def forecast_replace_twin(x, t):
    losses = (torch.exp(x.clamp(max=5.0)) - t * x).sum()
    if not torch.isfinite(losses):
        losses = torch.tensor(1e9, device=losses.device)
    return losses

