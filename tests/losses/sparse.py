"""Correct losses whose gradients are legitimately sparse (zeros that move with the data), and
broken twins whose zeros are structural. The audit must flag only the twins."""

import torch
import torch.nn.functional as F


def label_smoothed_ce(logits, target, ignore_index=0, smoothing=0.1):
    """Hand-written label-smoothed cross-entropy with ignore_index."""
    logp = F.log_softmax(logits, dim=-1)
    classes = logits.shape[-1]
    keep = target != ignore_index
    safe = target.clamp(min=0)
    true = torch.zeros_like(logp).scatter_(1, safe[:, None], 1.0)
    soft = true * (1 - smoothing) + smoothing / classes
    per_row = -(soft * logp).sum(-1)
    return (per_row * keep).sum() / keep.sum().clamp(min=1)


def label_smoothed_ce_broken(logits, target, ignore_index=0, smoothing=0.1):
    """Broken twin: the last class's logit is sliced away before the softmax."""
    return label_smoothed_ce(F.pad(logits[:, :-1], (0, 1)), target, ignore_index, smoothing)


def triplet_margin(anchor, positive, negative, margin=1.0):
    """Hand-written triplet margin loss: rows that satisfy the margin get no gradient."""
    d_pos = (anchor - positive).pow(2).sum(-1)
    d_neg = (anchor - negative).pow(2).sum(-1)
    return torch.relu(d_pos - d_neg + margin).mean()


def triplet_margin_broken(anchor, positive, negative, margin=1.0):
    """Broken twin: the negative distance is computed on detached embeddings."""
    d_pos = (anchor - positive).pow(2).sum(-1)
    d_neg = (anchor.detach() - negative.detach()).pow(2).sum(-1)
    return torch.relu(d_pos - d_neg + margin).mean()


def masked_steps(pred, target, mask):
    """A sequence loss over the steps a mask keeps: masked steps get no gradient."""
    err = (pred - target).pow(2) * mask
    return err.sum() / mask.sum().clamp(min=1)


def masked_steps_broken(pred, target, mask):
    """Broken twin: an off-by-one drops the last step of every sequence."""
    err = (pred[:, :-1] - target[:, :-1]).pow(2) * mask[:, :-1]
    return err.sum() / mask.sum().clamp(min=1)


class SparseEmbeddingLoss(torch.nn.Module):
    """Correct: an embedding with sparse (COO) gradients; each draw's indices touch most rows."""

    def __init__(self, rows=6, dim=3, used=None):
        super().__init__()
        self.emb = torch.nn.Embedding(rows, dim, sparse=True)
        self.used = used or rows

    def forward(self, idx, x):
        return (self.emb(idx % self.used).sum(-1) * x).sum()


class SparseEmbeddingDeadRows(SparseEmbeddingLoss):
    """Broken twin: indices folded onto the first half of the rows; the others never train."""

    def __init__(self):
        super().__init__(rows=6, dim=3, used=3)
