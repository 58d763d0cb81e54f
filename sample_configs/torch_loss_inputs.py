"""Input factories for torch_losses.yaml: targets whose shape of values no plain init gives."""

import torch


def plus_minus_one(shape, dtype, device, generator):
    """Targets of +1 / -1, as hinge, soft-margin and cosine-embedding losses want."""
    return (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(dtype=dtype, device=device)


def multilabel_targets(shape, dtype, device, generator):
    """multilabel_margin_loss targets: each row lists class indices, then -1 pads the rest."""
    rows, classes = shape
    out = torch.full(shape, -1, dtype=torch.int64)
    for r in range(rows):
        count = int(torch.randint(1, classes, (1,), generator=generator))
        out[r, :count] = torch.randperm(classes, generator=generator)[:count]
    return out.to(device)
