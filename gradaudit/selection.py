"""Where a partial gradient comes from: the op that kept only part of a tensor.

`self.log_vars[0]` used and `[1]` not, or smp's `loss = loss[self.classes]`: no op cuts a gradient
path, so the tracer has no break to blame. A witness re-runs one draw and records every selecting op
(indexing, gather, narrow, split, ...) whose input reaches an audited tensor; then autograd says,
per line, which elements of that tensor the op's input and its output reach (a backward from each
with random weights). The culprit is a selection whose input reaches the dead elements and whose
output reaches none of them, while the loss depends on that output, and no selection the loss uses
reaches them (where one does, the dead elements reach the loss and their gradients cancel there).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from gradaudit.frames import is_user_file

SELECT_OPS = frozenset({"__getitem__", "index_select", "gather", "narrow", "select", "take", "take_along_dim",
                        "masked_select", "split", "chunk", "unbind", "tensor_split", "split_with_sizes",
                        "diagonal", "diag", "triu", "tril", "masked_fill", "index_fill"})
MAX_LINES = 64  # selecting lines examined; each costs two backward passes
_OURS = str(Path(__file__).resolve().parent)


@dataclass
class Selection:
    """The calls of one selecting op at one user line."""

    op: str
    frames: list[tuple[str, int, str]]
    inputs: list[torch.Tensor] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)
    direct: set[str] = field(default_factory=set)  # the audited names it indexes themselves


def _user_frames() -> list[tuple[str, int, str]] | None:
    """The user frames of the stack, outermost first, up to gradaudit's own call; None inside a
    custom autograd.Function's forward or where no user code is on the stack."""
    frames = []
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith(_OURS):
            break
        if is_user_file(filename):
            frames.append((filename, frame.f_lineno, frame.f_code.co_name))
        elif frame.f_code.co_name == "apply" and filename.endswith(("autograd/function.py",
                                                                    "autograd\\function.py")):
            return None
        frame = frame.f_back
    frames.reverse()
    return frames or None


class Recorder(TorchFunctionMode):
    """Record each selecting op whose input carries a gradient, by user line."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[tuple[str, int, str], Selection] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if name in SELECT_OPS and args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
            outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,))
                    if isinstance(o, torch.Tensor) and o.requires_grad and o.is_floating_point()]
            if outs:
                frames = _user_frames()
                if frames is not None:
                    key = (frames[-1][0], frames[-1][1], name)
                    sel = self.lines.get(key)
                    if sel is None and len(self.lines) < MAX_LINES:
                        sel = self.lines[key] = Selection(f"{name}", frames)
                    if sel is not None:
                        sel.inputs.append(args[0])
                        sel.outputs.extend(outs)
        return out


def _reach(tensors: list[torch.Tensor], leaf: torch.Tensor) -> torch.Tensor | None:
    """Which elements of `leaf` the tensors depend on (a backward with random weights), or None."""
    total = sum((t * torch.randn_like(t)).sum() for t in tensors)
    (grad,) = torch.autograd.grad(total, [leaf], retain_graph=True, allow_unused=True)
    return None if grad is None else (grad != 0).cpu()


def dropping(recorder: Recorder, loss: torch.Tensor, leaves: dict[str, torch.Tensor],
             dead: dict[str, torch.Tensor],
             received: dict[str, torch.Tensor] | None = None) -> dict[str, list[Selection]]:
    """The selecting ops that `recorder` saw in the forward of `loss` that drop exactly the `dead`
    elements (a bool mask per audited name): their input reaches some, their output none, the
    loss depends on their output, and no other selection the loss uses reaches them. Runs before
    the loss's backward (it keeps the graph)."""
    found: dict[str, list[Selection]] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        used = [sel for sel in recorder.lines.values()
                if any(g is not None for g in torch.autograd.grad(loss, sel.outputs, retain_graph=True,
                                                                   allow_unused=True))]
        for name, leaf in leaves.items():
            mask = dead.get(name)
            if mask is None or not mask.any():
                continue
            culprits, elsewhere = [], False
            for sel in used:
                out = _reach(sel.outputs, leaf)
                if out is None or not out.any():
                    continue
                if (out & mask.to(out.device)).any():
                    elsewhere = True  # the dead part reaches the loss another way: their gradients cancel
                    break
                into = _reach(sel.inputs, leaf)
                if into is not None and (into & mask.to(into.device)).any():
                    given = (received or {}).get(name)  # what the loss received: the leaf or its copy
                    if any(t is leaf or t is given for t in sel.inputs):
                        sel.direct.add(name)
                    culprits.append(sel)
            if culprits and not elsewhere:
                found[name] = culprits
    return found
