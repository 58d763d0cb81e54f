"""Generate a case's input tensors: seeded per case and draw, made on CPU, then moved."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import torch

from gradaudit.config import InputSpec
from gradaudit.loading import resolve


class InputError(Exception):
    """An input spec or factory that fails: the case is an error, not a defect of the loss."""


@functools.lru_cache(maxsize=4096)
def draw_seed(seed: int, case: str, draw: int) -> int:
    """A stable 63-bit seed from (seed, case, draw): the same tensors in any order or selection.
    (Cached: a draw asks for its inputs' seed and for the loss's, derived from it.)"""
    digest = hashlib.sha256(f"{seed}\0{case}\0{draw}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise InputError(f"unknown dtype {name!r}")
    return dtype


def make_input(spec: InputSpec, generator: torch.Generator, root: Path) -> torch.Tensor:
    """Draw one input on the CPU, with no grad yet."""
    dtype = torch_dtype(spec.dtype)
    shape = tuple(spec.shape)
    p = spec.params
    work = torch.float32 if dtype.is_floating_point and dtype != torch.float64 else (
        torch.float64 if dtype == torch.float64 else torch.float32)
    init = spec.init
    if init in ("randn", "normal"):
        t = torch.randn(shape, generator=generator, dtype=work)
        std, mean = float(p["std"]), float(p["mean"])
        if (std, mean) != (1.0, 0.0):  # x * 1 + 0 is x: two ops fewer a draw in the common case
            t = t * std + mean
    elif init in ("rand", "uniform"):
        low, high = float(p["low"]), float(p["high"])
        t = torch.rand(shape, generator=generator, dtype=work)
        if (low, high) != (0.0, 1.0):
            t = t * (high - low) + low
    elif init == "randint":
        low, high = int(p["low"]), int(p["high"])
        if high <= low:
            raise InputError(f"randint needs high > low, got low={low} high={high}")
        t = torch.randint(low, high, shape, generator=generator, dtype=torch.int64)
    elif init == "bernoulli":
        t = torch.bernoulli(torch.full(shape, float(p["p"]), dtype=torch.float32), generator=generator)
    elif init == "zeros":
        t = torch.zeros(shape, dtype=work)
    elif init == "ones":
        t = torch.ones(shape, dtype=work)
    elif init == "full":
        t = torch.full(shape, p["value"], dtype=work if dtype.is_floating_point else dtype)
    elif init in ("softmax", "log_softmax"):
        logits = torch.randn(shape, generator=generator, dtype=work)
        t = getattr(torch, init)(logits, dim=int(p["dim"]))
    elif init == "one_hot":
        if not shape:
            raise InputError("one_hot needs a shape with the classes as last dim")
        classes = int(p["num_classes"] or shape[-1])
        if classes != shape[-1]:
            raise InputError(f"one_hot: num_classes {classes} differs from the last dim {shape[-1]}")
        idx = torch.randint(0, classes, shape[:-1], generator=generator)
        t = torch.nn.functional.one_hot(idx, classes)
    elif init == "value" and isinstance(p["value"], torch.Tensor):
        # A real tensor handed to the Python API: used as is, on a copy.
        t = p["value"].detach().to("cpu", copy=True)
        if tuple(t.shape) != shape:
            raise InputError(f"value has shape {list(t.shape)}, but shape says {list(shape)}")
    elif init == "value":
        try:
            t = torch.tensor(p["value"], dtype=dtype)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"value cannot be made a {spec.dtype} tensor: {exc}") from None
        if shape and tuple(t.shape) != shape:
            raise InputError(f"value has shape {list(t.shape)}, but shape says {list(shape)}")
    elif init == "factory":
        factory = resolve(str(p["factory"]), root)
        t = factory(shape, dtype, torch.device("cpu"), generator)
        if not isinstance(t, torch.Tensor):
            raise InputError(f"factory {p['factory']!r} returned {type(t).__name__}, not a tensor")
    else:  # pragma: no cover - the config checks init names
        raise InputError(f"unknown init {init!r}")
    return t.to(dtype).detach()


def make_inputs(specs: list[InputSpec], seed: int, case: str, draw: int, root: Path) -> dict[str, torch.Tensor]:
    """Draw every input of a case for one draw, on the CPU, in order."""
    generator = torch.Generator().manual_seed(draw_seed(seed, case, draw))
    tensors: dict[str, Any] = {}
    for spec in specs:
        try:
            tensors[spec.name] = make_input(spec, generator, root)
        except InputError as exc:
            raise InputError(f"input {spec.name!r}: {exc}") from None
    return tensors


def to_device(tensors: dict[str, torch.Tensor], specs: list[InputSpec],
              device: torch.device) -> dict[str, torch.Tensor]:
    """Copy CPU-made inputs to the device as fresh leaves, requiring grad where the spec says."""
    out = {}
    for spec in specs:
        t = tensors[spec.name].to(device).detach()
        out[spec.name] = t.requires_grad_(spec.requires_grad)
    return out
