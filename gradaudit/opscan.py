"""Scan a loss's forward under a TorchFunctionMode to find one op and the user line that called it.

Two questions are answered this way, each on a draw that already failed, so the scan costs
nothing on healthy cases: which op first made an Inf or NaN out of finite values (a float16
`exp` that overflows, say), and which op made a tensor off the audit's device (the `torch.zeros(n)`
that breaks a loss on CUDA with "Expected all tensors to be on the same device").
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from gradaudit.frames import location_from
from gradaudit.model import Location


@dataclass
class OpHit:
    """One op the scan was looking for: its name, its output's dtype and device, and where."""

    op: str
    dtype: str
    device: str
    location: Location | None
    what: str = ""  # "inf", "nan" or "inf and nan" for a non-finite hit
    count: int = 0  # non-finite elements of the output, of `total`
    total: int = 0


def op_name(func: Any) -> str:
    """`torch.exp`, `Tensor.exp`, `Tensor.__truediv__`, `torch.nn.functional.softmax` ..."""
    name = getattr(func, "__name__", repr(func))
    module = getattr(func, "__module__", None) or ""
    qual = getattr(func, "__qualname__", name)
    if qual.startswith("TensorBase.") or qual.startswith("Tensor."):
        return "Tensor." + qual.partition(".")[2]
    if module.startswith("torch.nn.functional"):
        return f"torch.nn.functional.{name}"
    if module in ("torch", "torch._C._VariableFunctions", "") or module.startswith("torch._C"):
        return f"torch.{name}"
    return f"{module}.{name}"


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _tensors(item)]
    return []


def _nonfinite(t: torch.Tensor) -> str:
    if not (t.is_floating_point() or t.is_complex()) or t.device.type == "meta" or not t.numel():
        return ""
    t = t.detach()
    has_nan, has_inf = bool(torch.isnan(t).any()), bool(torch.isinf(t).any())
    return " and ".join(w for w, flag in (("inf", has_inf), ("nan", has_nan)) if flag)


def _here(root: Path | None) -> Location | None:
    """The user's line that made the call the scan is looking at (the stack above this module)."""
    stack = traceback.extract_stack()
    while stack and stack[-1].filename == __file__:
        stack.pop()
    return location_from([(f.filename, f.lineno, f.name) for f in stack], root)


def _on(t: torch.Tensor, device: torch.device) -> bool:
    return t.device.type == device.type and (device.index is None or t.device.index == device.index)


class _Scan(TorchFunctionMode):
    """A function mode that runs every torch call and keeps the first `limit` hits of `test`."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.hits: list[OpHit] = []
        self.limit = limit

    def test(self, func: Any, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> OpHit | None:
        raise NotImplementedError

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if len(self.hits) < self.limit:
            outs = _tensors(out)
            if outs:
                hit = self.test(func, _tensors(args) + _tensors(kwargs), outs)
                if hit is not None:
                    self.hits.append(hit)
        return out


class NonfiniteScan(_Scan):
    """Finds the first op that made NaN/Inf from finite inputs."""

    def __init__(self, root: Path | None) -> None:
        super().__init__(1)
        self.root = root

    def test(self, func, inputs, outputs):
        if any(_nonfinite(t) for t in inputs):
            return None
        for out in outputs:
            what = _nonfinite(out)
            if what:
                count = int((~torch.isfinite(out.detach())).sum())
                return OpHit(op_name(func), str(out.dtype).removeprefix("torch."), str(out.device),
                             _here(self.root), what, count, out.numel())
        return None


class StrayScan(_Scan):
    """Finds the ops that made a tensor off `device` from nothing on another device.

    Later ops on such a stray tensor stay off the device too; only the op that started it counts.
    """

    def __init__(self, device: torch.device, root: Path | None, limit: int = 5) -> None:
        super().__init__(limit)
        self.device = device
        self.root = root

    def test(self, func, inputs, outputs):
        if any(not _on(t, self.device) for t in inputs):
            return None
        for out in outputs:
            if not _on(out, self.device) and out.dim() > 0:  # 0-dim CPU tensors mix with any device
                return OpHit(op_name(func), str(out.dtype).removeprefix("torch."), str(out.device),
                             _here(self.root))
        return None


def _run(call: Callable[[], Any], scan: _Scan) -> list[OpHit]:
    with torch.enable_grad(), scan:
        try:
            call()
        except Exception:  # noqa: BLE001, S110 - the op we look for may well make the loss raise
            pass
    return scan.hits


def first_nonfinite(call: Callable[[], Any], root: Path | None) -> OpHit | None:
    """Run `call` (a forward) and return the first op that made NaN/Inf from finite inputs."""
    hits = _run(call, NonfiniteScan(root))
    return hits[0] if hits else None


def stray_tensors(call: Callable[[], Any], device: torch.device, root: Path | None,
                  limit: int = 5) -> list[OpHit]:
    """Run `call` and return the ops that made a tensor off `device` from nothing on another device."""
    return _run(call, StrayScan(device, root, limit))
