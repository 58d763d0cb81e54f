"""Correct losses whose zeros move with the data, and broken twins with a detached slice.

The correct ones must give no finding on any seed and at any size; each twin detaches a column, a
block of rows or a channel of its first input (the `# CULPRIT` line), which must be found on every
seed, located at that line.
"""

import torch
import torch.nn.functional as F


def _sign(t):
    """A 0/1 integer tensor as -1/+1 labels."""
    return t.float() * 2 - 1


# -- correct losses with moving zeros ----------------------------------------------------------
def hinge(scores, labels):
    """A binary hinge: scores beyond the margin get no gradient."""
    return torch.clamp(1 - scores * _sign(labels), min=0).mean()


def relu_sq(x):
    """relu(x) ** 2: negative elements get no gradient."""
    return (torch.relu(x) ** 2).mean()


def triplet(anchor, positive, negative):
    """torch's triplet margin loss: a row that satisfies the margin gets no gradient."""
    return F.triplet_margin_loss(anchor, positive, negative)


def margin_ranking(x1, x2, labels):
    return F.margin_ranking_loss(x1, x2, _sign(labels))


def hinge_embedding(x, labels):
    return F.hinge_embedding_loss(x, _sign(labels))


def multi_margin(x, target):
    return F.multi_margin_loss(x, target)


def box_clamps(pred, target):
    """A GIoU-style box loss: clamps of widths, heights and intersections zero some coordinates."""
    p = torch.cat([pred[:, :2], pred[:, :2] + pred[:, 2:].abs() + 1e-3], dim=1)
    t = torch.cat([target[:, :2], target[:, :2] + target[:, 2:].abs() + 1e-3], dim=1)
    area_p = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])
    area_t = (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])
    lt = torch.max(p[:, :2], t[:, :2])
    rb = torch.min(p[:, 2:], t[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = area_p + area_t - inter
    iou = inter / union
    lt_c = torch.min(p[:, :2], t[:, :2])
    rb_c = torch.max(p[:, 2:], t[:, 2:])
    wh_c = (rb_c - lt_c).clamp(min=0)
    area_c = wh_c[:, 0] * wh_c[:, 1]
    return (1 - iou + (area_c - union) / area_c).mean()


def ohem(logits, target, keep=0.25):
    """Online hard example mining: only the hardest quarter of the per-element losses count."""
    per = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none").flatten()
    k = max(1, int(per.numel() * keep))
    return per.topk(k).values.mean()


def channel_relu(x):
    """A feature-map loss on [B, C, H, W]: relu zeros move with the data."""
    return torch.relu(x - 0.5).pow(2).mean()


def ce_ignore(logits, target):
    """Cross-entropy that ignores class 0: the rows of ignored targets get no gradient."""
    return F.cross_entropy(logits, target, ignore_index=0)


# -- broken twins: one slice of the first input is cut from the graph --------------------------
def _detach_column(x):
    return torch.cat([x[:, :-1], x[:, -1:].detach()], dim=1)  # CULPRIT: column


def _detach_rows(x):
    rows = max(1, x.shape[0] // 8)
    return torch.cat([x[:rows].detach(), x[rows:]], dim=0)  # CULPRIT: rows


def _detach_channel(x):
    return torch.cat([x[:, :1], x[:, 1:2].detach(), x[:, 2:]], dim=1)  # CULPRIT: channel


def hinge_rows(scores, labels):
    return hinge(_detach_rows(scores), labels)


def relu_sq_column(x):
    return relu_sq(_detach_column(x))


def relu_sq_rows(x):
    return relu_sq(_detach_rows(x))


def triplet_column(anchor, positive, negative):
    return triplet(_detach_column(anchor), positive, negative)


def margin_ranking_rows(x1, x2, labels):
    return margin_ranking(_detach_rows(x1), x2, labels)


def hinge_embedding_column(x, labels):
    return hinge_embedding(_detach_column(x), labels)


def multi_margin_column(x, target):
    return multi_margin(_detach_column(x), target)


def box_clamps_column(pred, target):
    return box_clamps(_detach_column(pred), target)


def box_clamps_rows(pred, target):
    return box_clamps(_detach_rows(pred), target)


def ohem_column(logits, target):
    return ohem(_detach_column(logits), target)


def ohem_rows(logits, target):
    return ohem(_detach_rows(logits), target)


def channel_relu_channel(x):
    return channel_relu(_detach_channel(x))


# -- the cases: loss -> inputs (config input keys), at a size -----------------------------------
def _labels(*shape):
    return {"shape": list(shape), "dtype": "int64", "init": "randint", "low": 0, "high": 2}


def cases(n: int = 8) -> dict[str, tuple]:
    """Each correct loss with its inputs for a batch of `n`, and its broken twins."""
    x2 = {"shape": [n, 4]}
    return {
        "hinge": (hinge, {"scores": {"shape": [n * 4]}, "labels": _labels(n * 4)}, ["hinge_rows"]),
        "relu_sq": (relu_sq, {"x": x2}, ["relu_sq_column", "relu_sq_rows"]),
        "triplet": (triplet, {"anchor": x2, "positive": x2, "negative": x2}, ["triplet_column"]),
        "margin_ranking": (margin_ranking, {"x1": {"shape": [n]}, "x2": {"shape": [n]}, "labels": _labels(n)},
                           ["margin_ranking_rows"]),
        "hinge_embedding": (hinge_embedding, {"x": x2, "labels": _labels(n, 4)}, ["hinge_embedding_column"]),
        "multi_margin": (multi_margin, {"x": x2, "target": {"shape": [n], "dtype": "int64", "init": "randint",
                                                             "low": 0, "high": 4}}, ["multi_margin_column"]),
        "box_clamps": (box_clamps, {"pred": x2, "target": x2}, ["box_clamps_column", "box_clamps_rows"]),
        # Top-k keeps a quarter: twice the rows, so a column's siblings live in most draws.
        "ohem": (ohem, {"logits": {"shape": [2 * n, 4]}, "target": _labels(2 * n, 4)}, ["ohem_column", "ohem_rows"]),
        "channel_relu": (channel_relu, {"x": {"shape": [max(1, n // 4), 3, 4, 4]}}, ["channel_relu_channel"]),
    }
