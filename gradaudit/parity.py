"""CPU-vs-device parity: compare the loss and every input's gradient with the CPU result.

Design: the audit of a case on a non-CPU device, when the run also audits that case on the CPU,
recomputes the CPU reference of the first draw itself (same seeded inputs, made on the CPU) and
compares in the same process. Nothing large crosses a process boundary or lands in results.json,
the comparison works when worker processes (or shards on other machines) run the CPU and the CUDA
job of one case, and the price is one extra CPU forward and backward per case and device.

Tolerances are the case's `rtol`/`atol`, raised for low precision: where float16, bfloat16 or
autocast is in play, rtol is at least 10 ulps (10 x eps) and atol at least 1 ulp of the lowest
precision, so float32 keeps the user's values and float16 is not failed for rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

# eps of the dtypes whose rounding can exceed the default tolerances.
_EPS = {"float16": 2.0**-10, "half": 2.0**-10, "bfloat16": 2.0**-7,
        "float32": 2.0**-23, "float": 2.0**-23, "float64": 2.0**-52, "double": 2.0**-52}


def tolerances(rtol: float, atol: float, dtypes: list[str]) -> tuple[float, float]:
    """The (rtol, atol) to compare with, given every floating dtype in play."""
    eps = max((_EPS[d] for d in dtypes if d in _EPS), default=0.0)
    return max(rtol, 10 * eps), max(atol, eps)


@dataclass
class Mismatch:
    """Where a device's tensor differs most from the CPU's, beyond the tolerances."""

    tensor: str  # "loss" or the input's name
    index: list[int]
    reference: float  # the CPU value
    value: float  # the device's value
    max_abs_diff: float
    mismatched: int  # elements outside the tolerances
    numel: int
    note: str = ""  # a shape or presence difference, instead of values

    def detail(self, reference_device: str, device: str, rtol: float, atol: float) -> dict[str, Any]:
        return {"tensor": self.tensor, "index": self.index, "reference_device": reference_device,
                "device": device, "reference": _plain(self.reference), "value": _plain(self.value),
                "max_abs_diff": _plain(self.max_abs_diff), "mismatched": self.mismatched,
                "numel": self.numel, "rtol": rtol, "atol": atol}

    def message(self, reference_device: str, device: str, rtol: float, atol: float) -> str:
        what = "the loss" if self.tensor == "loss" else f"the gradient of {self.tensor}"
        if self.note:
            return f"{what} differs between {reference_device} and {device}: {self.note}"
        where = f" at [{', '.join(map(str, self.index))}]" if self.index else ""
        count = (f"; {self.mismatched} of {self.numel} elements are outside rtol={rtol:g}, atol={atol:g}"
                 if self.numel > 1 else f" (rtol={rtol:g}, atol={atol:g})")
        return (f"{what} differs between {reference_device} and {device}: the largest difference is "
                f"{self.max_abs_diff:.3g}{where} ({reference_device} {self.reference:.6g}, "
                f"{device} {self.value:.6g}){count}")


def _plain(x: float) -> float | str:
    """A float for JSON: NaN and Inf as strings, since JSON has no such numbers."""
    return x if math.isfinite(x) else str(x)


def compare(name: str, reference: torch.Tensor | None, value: torch.Tensor | None,
            rtol: float, atol: float) -> Mismatch | None:
    """Compare two tensors elementwise like torch.isclose (NaN equals NaN); None when close."""
    if reference is None or value is None:
        if reference is None and value is None:
            return None
        missing = "the device" if value is None else "the reference"
        return Mismatch(name, [], math.nan, math.nan, math.inf, 1, 1,
                        note=f"{missing} got no gradient (None) while the other got one")
    ref = reference.detach().to("cpu", torch.float64)
    got = value.detach().to("cpu", torch.float64)
    if ref.shape != got.shape:
        return Mismatch(name, [], math.nan, math.nan, math.inf, ref.numel(), ref.numel(),
                        note=f"shape {list(ref.shape)} on the reference, {list(got.shape)} on the device")
    close = torch.isclose(got, ref, rtol=rtol, atol=atol, equal_nan=True)
    if bool(close.all()):
        return None
    diff = (got - ref).abs()
    # A NaN or Inf on one side only is the largest difference there is.
    diff = torch.where(close, torch.zeros_like(diff), torch.where(diff.isnan(), math.inf, diff))
    flat = int(torch.argmax(diff))
    index = list(torch.unravel_index(torch.tensor(flat), ref.shape)) if ref.dim() else []
    return Mismatch(tensor=name, index=[int(i) for i in index], reference=float(ref.reshape(-1)[flat]),
                    value=float(got.reshape(-1)[flat]), max_abs_diff=float(diff.reshape(-1)[flat]),
                    mismatched=int((~close).sum()), numel=ref.numel())


def compare_draw(reference: tuple[torch.Tensor, dict[str, torch.Tensor | None]],
                 value: tuple[torch.Tensor, dict[str, torch.Tensor | None]],
                 rtol: float, atol: float) -> list[Mismatch]:
    """Compare one draw's (loss, {input: grad}) of the device against the CPU reference."""
    found = []
    loss = compare("loss", reference[0], value[0], rtol, atol)
    if loss:
        found.append(loss)
    for name, ref_grad in reference[1].items():
        mismatch = compare(name, ref_grad, value[1].get(name), rtol, atol)
        if mismatch:
            found.append(mismatch)
    return found
