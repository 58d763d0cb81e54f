"""Describe which elements of a tensor never get a gradient, in words and as a small map."""

from __future__ import annotations

import torch

MAP_CELLS = 64


def _ranges(indices: list[int]) -> str:
    """`[0, 1, 2, 5]` -> `0-2, 5`."""
    parts, start, prev = [], None, None
    for i in indices:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = i
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(parts[:8]) + (", ..." if len(parts) > 8 else "")


def describe_dead(dead: torch.Tensor, name: str) -> tuple[str, tuple[int, list[int]] | None]:
    """Say which part of `name` the boolean mask `dead` covers.

    Returns the words ("column 1 of predictions [8, 2]") and, where the mask is exactly a set of
    whole slices along one dim, that (dim, indices); None means scattered elements.
    """
    shape = list(dead.shape)
    label = f"{name} {shape}"
    if dead.numel() == 0 or not dead.any():
        return f"no element of {label}", None
    if bool(dead.all()):
        return f"all of {label}", (0, list(range(shape[0]))) if shape else None
    for dim in range(dead.dim() - 1, -1, -1):
        others = [d for d in range(dead.dim()) if d != dim]
        whole = dead.all(dim=others) if others else dead
        covered = dead.any(dim=others) if others else dead
        if bool((whole == covered).all()):
            idx = whole.nonzero().flatten().tolist()
            noun = {(2, 0): "row", (2, 1): "column"}.get((dead.dim(), dim))
            along = ""
            if noun is None:
                noun = "element" if dead.dim() == 1 else "index"
                plural = "elements" if dead.dim() == 1 else "indices"
                along = "" if dead.dim() == 1 else f" along dim {dim}"  # "index 0 along dim 1 of x"
            else:
                plural = noun + "s"
            word = noun if len(idx) == 1 else plural
            return f"{word} {_ranges(idx)}{along} of {label}", (dim, idx)
    return f"{int(dead.sum())} scattered elements of {label}", None


def fold_map(alive: torch.Tensor) -> list[list[float]]:
    """Fold a boolean "ever got a gradient" mask to at most 64x64 cells of alive fractions.

    N-D tensors fold to 2-D as (first dims, last dim); a 1-D tensor is one row.
    """
    t = alive.detach().to(torch.float32).cpu()
    if t.dim() == 0:
        t = t.reshape(1, 1)
    elif t.dim() == 1:
        t = t.reshape(1, -1)
    elif t.dim() > 2:
        t = t.reshape(-1, t.shape[-1])
    rows, cols = t.shape
    if rows == 0 or cols == 0:
        return []
    out_r, out_c = min(rows, MAP_CELLS), min(cols, MAP_CELLS)
    pooled = torch.nn.functional.adaptive_avg_pool2d(t[None, None], (out_r, out_c))[0, 0]
    return [[round(float(v), 3) for v in row] for row in pooled]
