"""Losses that cut the gradient path (graph-break), each beside its correct-but-tricky twin.

Each buggy loss marks its culprit line with `# CULPRIT: <loss name>`; tests/test_corpus.py finds
the marker and asserts that the audit points exactly there.
"""

import numpy as np
import torch
import torch.nn.functional as F


# -- detach / .data ---------------------------------------------------------------------------
def ratio_detached(x, t):
    a = x[:, 0]
    b = x[:, 1].detach()  # CULPRIT: ratio_detached
    return ((a / b - t) ** 2).mean()


def ratio_detached_twin(x, t):
    return ((x[:, 0] / x[:, 1] - t) ** 2).mean()


def data_attribute(x, y):
    centred = x.data - y  # CULPRIT: data_attribute
    return (centred**2).mean()


def data_attribute_twin(x, y):
    return ((x - y) ** 2).mean()


def self_target(x):
    target = x.detach()  # CULPRIT: self_target
    return ((x - target) ** 2).mean()


def self_target_twin(x):
    """Stop-gradient on a statistic, not on the tensor itself: x still learns."""
    return ((x - x.mean(0, keepdim=True).detach()) ** 2).mean()


def detach_beside_mask(x, t):
    gated = torch.where(x > 0, x, 0.1 * x)  # a leaky gate: the comparison cuts nothing that matters
    return ((gated[:, 0] * x[:, 1].detach() - t[:, 0]) ** 2).mean()  # CULPRIT: detach_beside_mask


def detach_beside_mask_twin(x, t):
    gated = torch.where(x > 0, x, 0.1 * x)
    return ((gated[:, 0] * x[:, 1] - t[:, 0]) ** 2).mean()


# -- values leaving as Python numbers ---------------------------------------------------------
def item_scale(x, y):
    scale = x.abs().mean().item()  # CULPRIT: item_scale
    return (y * scale).sum()


def item_scale_twin(x, y):
    return (y * x.abs().mean()).sum()


def tolist_roundtrip(x, y):
    values = x.tolist()  # CULPRIT: tolist_roundtrip
    return (torch.tensor(values) * y).sum()


def tolist_roundtrip_twin(x, y):
    shape = list(x.shape)  # sizes, not values: nothing is cut
    return (x.reshape(shape) * y).sum()


def float_mean(x, y):
    m = float(x.mean())  # CULPRIT: float_mean
    return ((y - m) ** 2).mean()


def float_mean_twin(x, y):
    n = float(x.shape[0])
    return ((y - x.mean()) ** 2).sum() / n


def numpy_roundtrip(x, y):
    arr = x.detach().cpu().numpy()  # CULPRIT: numpy_roundtrip
    soft = np.exp(arr) / np.exp(arr).sum(axis=1, keepdims=True)
    return (torch.from_numpy(soft) * y).sum()


def numpy_roundtrip_twin(x, y):
    return (torch.softmax(x, dim=1) * y).sum()


def item_loop(x, y):
    total = 0.0
    for i in range(x.shape[0]):
        total += x[i].pow(2).sum().item()  # CULPRIT: item_loop
    return y.sum() * total


def item_loop_twin(x, y):
    total = torch.zeros(())
    for i in range(x.shape[0]):
        total = total + x[i].pow(2).sum()
    return y.sum() * total


def rewrap_requires_grad(x, t):
    value = ((x - t) ** 2).mean().item()  # CULPRIT: rewrap_requires_grad
    return torch.tensor(value, requires_grad=True)


def rewrap_requires_grad_twin(x, t):
    loss = ((x - t) ** 2).mean()
    logged = loss.item()  # for a progress bar: never reaches the loss
    assert logged == logged
    return loss


def rebuild_rows(x, t):
    rows = [((x[i] - t[i]) ** 2).sum() for i in range(x.shape[0])]
    return torch.tensor(rows).mean()  # CULPRIT: rebuild_rows


def rebuild_rows_twin(x, t):
    rows = [((x[i] - t[i]) ** 2).sum() for i in range(x.shape[0])]
    return torch.stack(rows).mean()


def new_tensor_copy(x, y):
    w = y.new_tensor(x)  # CULPRIT: new_tensor_copy
    return (w * y).sum()


def new_tensor_copy_twin(x, y):
    w = y.new_ones(x.shape)  # shape only
    return (w * x * y).sum()


# -- gradients switched off -------------------------------------------------------------------
def no_grad_normalise(x, y):
    with torch.no_grad():
        z = x / x.norm(dim=1, keepdim=True)  # CULPRIT: no_grad_normalise
    return (z * y).sum()


def no_grad_target_twin(x, y):
    """Stop-gradient on the declared target branch (y is in expect.no_grad)."""
    with torch.no_grad():
        target = torch.softmax(y, dim=1)
    return -(target * torch.log_softmax(x, dim=1)).sum(1).mean()


def inference_mode_weights(x, y):
    with torch.inference_mode():
        w = torch.sigmoid(x)  # CULPRIT: inference_mode_weights
    return (w + y).sum()


def inference_mode_weights_twin(x, y):
    w = torch.sigmoid(x)
    return (w + y).sum()


# -- casts and indices ------------------------------------------------------------------------
def int_cast(x, t):
    bins = (x * 4).long()  # CULPRIT: int_cast
    return (bins.float() * t).mean()


def int_cast_twin(x, t):
    bins = (t * 4).long()  # the cast is on the target branch, which needs no gradient
    return (bins.float() * x).mean()


def dtype_cast(x, y):
    level = x.to(torch.int32)  # CULPRIT: dtype_cast
    return (level * y).sum()


def dtype_cast_twin(x, y):
    return (x.to(torch.float64) * y.double()).sum()


def argmax_onehot(x, t):
    pred = x.argmax(dim=1)  # CULPRIT: argmax_onehot
    onehot = F.one_hot(pred, x.shape[1]).float()
    return ((onehot - t) ** 2).mean()


def argmax_onehot_twin(x, t):
    accuracy = (x.argmax(dim=1) == t.argmax(dim=1)).float().mean()  # a metric beside the loss
    assert 0 <= float(accuracy) <= 1
    return ((torch.softmax(x, dim=1) - t) ** 2).mean()


def argsort_ranks(x, t):
    ranks = x.argsort(dim=1).float()  # CULPRIT: argsort_ranks
    return ((ranks - t) ** 2).mean()


def argsort_ranks_twin(x, t):
    soft_ranks = torch.sigmoid(x[:, :, None] - x[:, None, :]).sum(-1)
    return ((soft_ranks - t) ** 2).mean()


def topk_indices(x, t):
    _, idx = x.topk(2, dim=1)  # CULPRIT: topk_indices
    return ((idx.float() - t[:, :2]) ** 2).mean()


def topk_indices_twin(x, t):
    """Legitimately sparse: only the top 2 of each row get a gradient, a different 2 each draw."""
    values, _ = x.topk(2, dim=1)
    return ((values - t[:, :2]) ** 2).mean()


def accuracy_as_loss(x, t):
    hits = (x > 0).float()  # CULPRIT: accuracy_as_loss
    return 1 - (hits * t).mean()


def accuracy_as_loss_twin(x, t):
    return 1 - (torch.sigmoid(x) * t).mean() + 0.0 * (x > 0).float().mean()


# -- zero-derivative ops ----------------------------------------------------------------------
def round_quantize(x, t):
    q = torch.round(x * 4) / 4  # CULPRIT: round_quantize
    return ((q - t) ** 2).mean()


def round_quantize_twin(x, t):
    """The straight-through estimator: round in the forward pass, identity in backward."""
    q = x + (torch.round(x * 4) / 4 - x).detach()
    return ((q - t) ** 2).mean()


def floor_bins(x, t):
    return ((torch.floor(x) - t) ** 2).mean()  # CULPRIT: floor_bins


def floor_bins_twin(x, t):
    return ((x - torch.floor(x).detach() - t) ** 2).mean()


def sign_margin(x, t):
    return F.relu(1 - torch.sign(x) * t).mean()  # CULPRIT: sign_margin


def sign_margin_twin(x, t):
    return F.relu(1 - torch.tanh(x) * t).mean()


# -- a break two helper calls deep ------------------------------------------------------------
def _stop(v):
    return v.detach()  # CULPRIT: helper_chain


def _normalise(v):
    return _stop(v) / v.shape[1]


def helper_chain(x, y):
    return ((_normalise(x) - y) ** 2).mean()


def _keep(v):
    return v * 1.0


def helper_chain_twin(x, y):
    return ((_keep(x) / x.shape[1] - y) ** 2).mean()


# -- gradients off by design: inside a custom autograd.Function ------------------------------
class _Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v):
        ctx.save_for_backward(v)
        return v.detach() ** 3  # grad mode is off here anyway: no break

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        return grad * 3 * v**2


def custom_function_twin(x, y):
    return ((_Cube.apply(x) - y) ** 2).mean()


# -- a stop-gradient target the config does not declare ---------------------------------------
def byol_target(x, y):
    """lightly / byol-pytorch's BYOL loss: the target projection is detached by design."""
    p = F.normalize(x, dim=-1)
    z = F.normalize(y.detach(), dim=-1)  # CULPRIT: byol_target
    return 2 - 2 * (p * z).sum(dim=-1).mean()


def byol_target_twin(x, y):
    p = F.normalize(x, dim=-1)
    z = F.normalize(y.detach(), dim=-1)  # declared: expect.no_grad
    return 2 - 2 * (p * z).sum(dim=-1).mean()
