"""Batch independence (`per_sample: DIM`): show that each sample's gradient depends on it alone.

A loss that declares `per_sample: B` claims to reduce per-sample terms over B. Then re-drawing
some samples must leave the gradient of every other sample as it was. Two splits are tried:
  1. the second half of the batch, re-drawing only the inputs that require grad (predictions,
     embeddings); nothing else changes, so the first half's gradients must stay exactly as they
     were, scale included;
  2. the odd samples, re-drawing every input that carries the dim (targets and masks too). A
     batch-wide normaliser may change here (the mean over the non-ignored targets, over the
     targets' class weights, over the positives) and rescale every sample's gradient by one
     common factor, so the even samples' gradients of each input are compared after fitting one
     scalar to them.
The two layouts of pairs (two concatenated halves, or interleaved) are separated by one split or
the other. A legitimately per-sample loss computes every untouched sample with the same ops on
the same values, so what may differ is rounding of that factor: a few ulps. Each split costs one
call; only where a change shows is the unperturbed call repeated, to tell coupling from a loss
that does not repeat itself (a nondeterministic kernel, state that changes per call).

Where samples mix, two more forward calls under a TorchFunctionMode find the op: the first op
whose output changes for untouched samples while its inputs did not (a softmax over B, a
BatchNorm, a similarity matrix), or, where that output combines a batch aggregate, the reduction
that made the aggregate (the `mean(0)` of `x - x.mean(0)`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.overrides import TorchFunctionMode

from gradaudit.findings import default_severity
from gradaudit.frames import location_from
from gradaudit.inputs import make_inputs, torch_dtype
from gradaudit.model import Finding, Location
from gradaudit.opscan import op_name

if TYPE_CHECKING:
    from gradaudit.config import CaseSpec
    from gradaudit.losscall import LossCall

# An untouched sample's gradient may move by this many ulps of its dtype (relative to its norm,
# or the batch's typical norm where its own is smaller) before it counts as changed. Where only
# graded inputs are re-drawn a per-sample loss mostly repeats every untouched sample bit for bit,
# but not always: prod's backward takes another formula for the whole batch once any sample has a
# zero (up to 7 ulps apart, measured). Where targets are re-drawn too, rescaling by a batch-wide
# count rounds by up to 9 ulps more (benchmarks/bench_batchmix.py). Both keep a margin of 2x-7x.
EXACT_ULPS = 16
TOL_ULPS = 64
# Run-to-run noise (a nondeterministic kernel) widens the tolerance by this factor of it; noise
# above NOISY (relative) makes the check inconclusive: the loss does not repeat itself.
NOISE_FACTOR = 8
NOISY = 1e-2
# The locator keeps every op output of two forwards; beyond this many elements it gives up.
LOCATE_ELEMENTS = 50_000_000
SALT = "#batchmix"  # the re-drawn samples come from a draw of their own

# (inputs on the CPU, a context to enter around the forward) -> (loss, {input: gradient})
GradsOf = Callable[[dict[str, torch.Tensor], AbstractContextManager | None],
                   tuple[torch.Tensor, dict[str, torch.Tensor | None]]]

# Ops whose reduction is a normalisation more than a sum: preferred when several reduce.
_NORMALISERS = ("softmax", "log_softmax", "logsumexp", "std", "var", "norm", "normalize",
                "batch_norm", "layer_norm", "group_norm", "instance_norm", "max", "min", "amax",
                "amin", "median", "quantile", "sort", "topk", "argsort", "cumsum", "cumprod")


@dataclass
class Plan:
    """What a case's `per_sample` means for its inputs."""

    dim: str
    size: int
    axes: dict[str, int]  # input name -> the axis that is `dim`, for inputs that carry it
    graded: list[str]  # those of them that require grad: whose gradients are compared


@dataclass(frozen=True)
class Split:
    """Which samples are re-drawn, in which inputs, and whether a common factor is allowed."""

    name: str
    perturbed: slice
    untouched: slice
    every_input: bool  # targets and masks too (a normaliser may change) or only graded inputs
    ulps: int  # the tolerance, in ulps of the gradient's dtype

    def indexes(self, size: int, which: slice) -> list[int]:
        return list(range(size))[which]


def splits(size: int) -> list[Split]:
    """The second half (graded inputs only, exact), then the odd samples (every input)."""
    return [Split("half", slice(size // 2, size), slice(0, size // 2), False, EXACT_ULPS),
            Split("odd", slice(1, size, 2), slice(0, size, 2), True, TOL_ULPS)]


@dataclass
class Coupling:
    """The worst coupling a split showed: whose gradient moved, for which re-drawn samples."""

    input: str
    shape: list[int]
    perturbed: list[int]
    redrawn: list[str]  # the inputs whose samples were re-drawn
    changed: list[int]  # untouched samples whose gradient moved beyond the tolerance
    untouched: int
    sample: int  # the one that moved most
    change: float  # its relative change
    split: str


@dataclass
class BatchCheck:
    """What the batch-independence check did and found; `summary()` goes into results.json."""

    checked: bool
    dim: str
    size: int = 0
    reason: str = ""
    calls: int = 0
    splits: int = 0
    # Per split: the largest relative change of an untouched sample's gradient, and the tolerance.
    changes: dict[str, float] = field(default_factory=dict)
    tolerances: dict[str, float] = field(default_factory=dict)
    rescaled: bool = False  # a batch-wide normaliser changed (one common factor was allowed)
    noise: float | None = None  # relative change between two identical calls, where measured
    coupling: Coupling | None = None
    split: Split | None = None
    op: str | None = None
    location: Location | None = None

    def summary(self) -> dict[str, Any]:
        """The record for results.json (`batch_independence`)."""
        data: dict[str, Any] = {"checked": self.checked, "dim": self.dim, "size": self.size}
        if not self.checked:
            data["reason"] = self.reason
            return data
        data.update(splits=self.splits, calls=self.calls,
                    max_change={k: _round(v) for k, v in self.changes.items()},
                    tolerance={k: _round(v) for k, v in self.tolerances.items()},
                    rescaled=self.rescaled, coupled=self.coupling is not None)
        if self.noise is not None:
            data["noise"] = _round(self.noise)
        return data

    def message(self) -> str:
        """The batch-mixing finding's text: which samples were coupled and by how much."""
        c = self.coupling
        assert c is not None
        moved = ("the other sample" if c.untouched == 1 else
                 f"all {c.untouched} untouched samples" if len(c.changed) == c.untouched
                 else f"{len(c.changed)} of {c.untouched} untouched samples")
        what = ", ".join(c.redrawn)
        text = (f"samples mix along {self.dim} although the case declares per_sample: {self.dim}: "
                f"re-drawing {_samples(c.perturbed)} of {self.dim}={self.size} ({what}) changed the "
                f"gradient of {c.input} {c.shape} for {moved}, by up to {_percent(c.change)} "
                f"(sample {c.sample})")
        if self.op:
            text += f"; {self.op} combines samples along {self.dim}"
        return text

    def finding(self) -> Finding:
        """The batch-mixing finding, located at the op that combines the samples."""
        assert self.coupling is not None
        return Finding(id="batch-mixing", severity=default_severity("batch-mixing"), message=self.message(),
                       input=self.coupling.input, location=self.location, detail=self.detail())

    def detail(self) -> dict[str, Any]:
        """The finding's plain-data detail."""
        c = self.coupling
        assert c is not None
        data: dict[str, Any] = {"dim": self.dim, "size": self.size, "perturbed": c.perturbed[:32],
                                "redrawn": c.redrawn, "changed": c.changed[:32], "sample": c.sample,
                                "change": _round(c.change), "tolerance": _round(self.tolerances[c.split])}
        if self.op:
            data["op"] = self.op
        return data


def _round(x: float) -> float:
    return float(f"{x:.4g}")


def _percent(x: float) -> str:
    return f"{x * 100:.3g}%"


def _samples(index: list[int]) -> str:
    """`sample 1`, `samples 4-7`, `the odd samples (1, 3, 5, ...)`."""
    if len(index) == 1:
        return f"sample {index[0]}"
    if index == list(range(index[0], index[-1] + 1)):
        return f"samples {index[0]}-{index[-1]}"
    if index == list(range(1, 2 * len(index), 2)):
        shown = ", ".join(map(str, index[:3])) + (", ..." if len(index) > 3 else "")
        return f"the odd samples ({shown})"
    return "samples " + ", ".join(map(str, index[:6])) + (", ..." if len(index) > 6 else "")


def plan(spec: CaseSpec) -> Plan | str:
    """Which inputs carry the declared dim, at which axis; a reason string where nothing to check."""
    dim = spec.per_sample or ""
    size = spec.dims.get(dim, 0)
    if size < 2:
        return f"{dim}={size}: a batch of {size} sample{'s' if size != 1 else ''} has nothing to mix"
    axes: dict[str, int] = {}
    for inp in spec.inputs:
        where = [i for i, name in enumerate(inp.shape_dims) if name == dim]
        if len(where) > 1:
            return f"input {inp.name} uses {dim} {len(where)} times; its samples are not separable"
        if where:
            axes[inp.name] = where[0]
    graded = [i.name for i in spec.inputs if i.name in axes and i.requires_grad]
    if any("complex" in i.dtype for i in spec.inputs if i.name in graded):
        return "complex inputs are not checked"
    if not graded:
        return f"no input that carries {dim} requires grad: no per-sample gradient to compare"
    return Plan(dim, size, axes, graded)


def _at(axis: int, which: slice) -> tuple:
    return (slice(None),) * axis + (which,)


def _mix(inputs: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor], axes: dict[str, int],
         which: slice, names: list[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The inputs with the samples `which` of the inputs `names` taken from `fresh`.

    `fresh` holds at least as many samples as `which` selects. An input it lacks (a fixed
    `value`), or whose fresh samples equal the old, takes the next sample's values instead (the
    last takes the first's): real samples, and the batch's statistics change, which a rotation
    among the re-drawn samples alone would leave as they were. Returns the inputs and the names
    of those that changed.
    """
    out = dict(inputs)
    changed = []
    for name in names:
        x, at = inputs[name], _at(axes[name], which)
        y = x.clone()
        count = y[at].shape[axes[name]]
        if name in fresh:
            y[at] = fresh[name].narrow(axes[name], 0, count)
        if torch.equal(y, x):
            y[at] = x.roll(-1, dims=axes[name])[at]
        if not torch.equal(y, x):
            out[name] = y
            changed.append(name)
    return out, changed


def _rows(t: torch.Tensor, axis: int) -> torch.Tensor:
    """The tensor as one row per sample of `axis`, on the CPU (a view where it can be)."""
    t = t.detach().cpu()
    return t.movedim(axis, 0).reshape(t.shape[axis], -1) if t.dim() else t.reshape(1, 1)


def _eps(*dtypes: torch.dtype | None) -> float:
    return max(torch.finfo(d).eps for d in dtypes if d is not None and d.is_floating_point)


def _change(first: torch.Tensor, second: torch.Tensor, fit: bool) -> tuple[torch.Tensor, float]:
    """Per row of two [samples, features] tensors: how much the second moved (in float64), and
    the common factor fitted first (1 where `fit` is false).

    A sample's change is measured against its own gradient, or against the rows' root-mean-square
    gradient where its own is smaller: a sample near its optimum has a gradient made of terms that
    nearly cancel, and their rounding is the size of the terms, not of their sum.
    """
    factor = 1.0
    if torch.equal(first, second):  # what a per-sample loss gives where nothing rescales
        return torch.zeros(first.shape[0], dtype=torch.float64), factor
    first, second = first.double(), second.double()
    if fit:
        denom = float(torch.dot(first.flatten(), first.flatten()))
        factor = float(torch.dot(first.flatten(), second.flatten())) / denom if denom > 0 else 1.0
    residual = torch.linalg.vector_norm(second - factor * first, dim=1)
    own = torch.maximum(abs(factor) * torch.linalg.vector_norm(first, dim=1),
                        torch.linalg.vector_norm(second, dim=1))
    typical = float(own.square().mean().sqrt()) if own.numel() else 0.0
    if typical == 0:
        return torch.zeros_like(residual), factor
    return residual / own.clamp_min(typical), factor


def _finite(loss: torch.Tensor, rows: dict[str, torch.Tensor]) -> bool:
    """Whether the loss and the gradients are finite (one norm each proves it where they are)."""
    return bool(torch.isfinite(loss).all()) and all(
        bool(torch.isfinite(torch.linalg.vector_norm(g))) or bool(torch.isfinite(g).all())
        for g in rows.values() if g.numel())


def _other(rows: dict[str, torch.Tensor], name: str, like: torch.Tensor) -> torch.Tensor:
    """A later call's gradient rows of `name`; zeros where that call gave it no gradient."""
    return rows[name] if name in rows else torch.zeros_like(like)


class _Inconclusive(Exception):
    """The check cannot say either way; the message is the reason."""


class _Calls:
    """Runs and counts the calls of the loss; a call that raises makes the check inconclusive."""

    def __init__(self, grads_of: GradsOf, how: Plan) -> None:
        self.grads_of = grads_of
        self.how = how
        self.count = 0
        self.shapes: dict[str, list[int]] = {}  # of the gradients, as the first call gave them
        self.dtypes: list[torch.dtype] = []

    def __call__(self, inputs: dict[str, torch.Tensor], what: str,
                 observe: AbstractContextManager | None = None) -> dict[str, torch.Tensor] | None:
        """The graded inputs' gradients as [samples, features] rows; None where not finite."""
        self.count += 1
        try:
            loss, grads = self.grads_of(inputs, observe)
        except Exception as exc:  # noqa: BLE001 - the loss's own failure on re-drawn samples
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            raise _Inconclusive(f"the loss raised {type(exc).__name__} {what}: {first}") from None
        grads = {n: grads.get(n) for n in self.how.graded}
        if not self.shapes:
            self.shapes = {n: list(g.shape) for n, g in grads.items() if g is not None}
            self.dtypes = [g.dtype for g in grads.values() if g is not None]
        rows = {n: _rows(g, self.how.axes[n]) for n, g in grads.items() if g is not None}
        if not _finite(loss, rows):
            return None
        return rows


def check(grads_of: GradsOf, inputs: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor],
          how: Plan, compute_dtype: torch.dtype | None = None, root: Path | None = None) -> BatchCheck:
    """Re-draw parts of the batch and compare the untouched samples' gradients with `inputs`'.

    `inputs` are the draw's CPU inputs; `fresh` another draw of the inputs that carry the dim,
    with as many samples as a split re-draws; `compute_dtype` autocast's dtype, where it is on.
    """
    result = BatchCheck(checked=False, dim=how.dim, size=how.size)
    calls = _Calls(grads_of, how)
    try:
        mixed = _judge(calls, inputs, fresh, how, compute_dtype, result)
    except _Inconclusive as why:
        result.reason = str(why)
        result.calls = calls.count
        return result
    result.checked = True
    if mixed is not None and result.split is not None:
        try:
            hit = locate(calls, inputs, mixed, result.split, how,
                         result.tolerances[result.split.name], root)
        except Exception:  # noqa: BLE001 - the location is a witness; the finding stands without it
            hit = None
        if hit is not None:
            result.op, result.location = hit
    result.calls = calls.count
    return result


def _judge(calls: _Calls, inputs: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor], how: Plan,
           compute_dtype: torch.dtype | None, result: BatchCheck) -> dict[str, torch.Tensor] | None:
    """Run the splits and fill `result`; return the perturbed inputs of the worst coupling."""
    base = calls(inputs, "on the draw's inputs")
    if base is None:
        raise _Inconclusive("the loss or a gradient is not finite on the draw's inputs")
    if not base:
        raise _Inconclusive(f"no input that carries {how.dim} gets a gradient")
    eps = _eps(compute_dtype, *calls.dtypes)
    runs: list[tuple[Split, dict[str, torch.Tensor], list[str], dict[str, torch.Tensor]]] = []
    skipped: list[str] = []
    for split in splits(how.size):
        perturbed = split.indexes(how.size, split.perturbed)
        names = list(how.axes) if split.every_input else how.graded
        mixed, changed = _mix(inputs, fresh, how.axes, split.perturbed, names)
        if not changed:
            skipped.append(f"re-drawing {_samples(perturbed)} changed no input")
            continue
        grads = calls(mixed, f"with {_samples(perturbed)} re-drawn")
        if grads is None:
            skipped.append(f"with {_samples(perturbed)} re-drawn the loss or a gradient is not finite")
            continue
        runs.append((split, mixed, changed, grads))
        result.tolerances[split.name] = split.ulps * eps
    if not runs:
        raise _Inconclusive("; ".join(skipped))
    result.splits = len(runs)
    worst = _worst(runs, base, calls.shapes, how, result)
    if worst is None:
        return None
    # Something moved: is it the loss's own noise? Call the draw's inputs again.
    again = calls(inputs, "when called again")
    if again is None:
        raise _Inconclusive("the loss or a gradient is not finite when called again on the same inputs")
    # Measured as each split compares (a loss that rescales itself per call is noise to the exact
    # split only); a split whose noise is past NOISY cannot judge.
    noise = {split.name: max(float(_change(g, _other(again, n, g), fit=split.every_input)[0].max())
                             for n, g in base.items()) for split, *_ in runs}
    result.noise = max(noise.values())
    runs = [run for run in runs if noise[run[0].name] <= NOISY]
    if not runs:
        raise _Inconclusive(f"two identical calls gave gradients {_percent(result.noise)} apart: "
                            "the loss is stateful or nondeterministic")
    result.tolerances = {k: max(v, NOISE_FACTOR * noise[k]) for k, v in result.tolerances.items()
                         if k in {split.name for split, *_ in runs}}
    result.splits = len(runs)
    result.changes = {}
    result.rescaled = False
    worst = _worst(runs, base, calls.shapes, how, result)
    if worst is None:
        return None
    split, mixed, coupling = worst
    result.coupling, result.split = coupling, split
    return mixed


def _worst(runs: list, base: dict[str, torch.Tensor], shapes: dict[str, list[int]], how: Plan,
           result: BatchCheck) -> tuple[Split, dict[str, torch.Tensor], Coupling] | None:
    """The split and input whose untouched samples moved most beyond the tolerance, if any."""
    worst = None
    everyone = torch.arange(how.size)
    for split, mixed, changed, grads in runs:
        untouched = everyone[split.untouched]
        tolerance = result.tolerances[split.name]
        for n, g0 in base.items():
            g1 = _other(grads, n, g0)
            change, factor = _change(g0[split.untouched], g1[split.untouched], fit=split.every_input)
            if abs(factor - 1.0) > tolerance:
                result.rescaled = True
            top = float(change.max()) if change.numel() else 0.0
            result.changes[split.name] = max(result.changes.get(split.name, 0.0), top)
            moved = change > tolerance
            if bool(moved.any()) and (worst is None or top > worst[2].change):
                coupling = Coupling(n, shapes[n], split.indexes(how.size, split.perturbed),
                                    changed, untouched[moved].tolist(), len(untouched),
                                    int(untouched[int(change.argmax())]), top, split.name)
                worst = (split, mixed, coupling)
    return worst


# -- where the samples mix -------------------------------------------------------------------

SAME, CLEAN, OPAQUE, MIXED = "same", "clean", "opaque", "mixed"


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _tensors(item)]
    return []


class _Record(TorchFunctionMode):
    """The first forward: every torch call's name and a copy of its outputs, up to a budget."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, list[torch.Tensor]]] = []
        self.elements = 0
        self.full = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = _tensors(out)
        if outs and not self.full:
            self.elements += sum(t.numel() for t in outs)
            self.full = self.elements > LOCATE_ELEMENTS
            if not self.full:
                self.ops.append((op_name(func), [t.detach().clone() for t in outs]))
        return out


class _Follow(TorchFunctionMode):
    """The perturbed forward: each call's outputs judged against the first forward's, as they come.

    An output is `same` (unchanged), `clean` (changed only in the re-drawn samples, along an axis
    of the dim's size), `mixed` (changed for untouched samples too, or an aggregate that changed)
    or `opaque` (reshaped past recognition, from clean values). Stops at the first mixed output
    that has an axis of the dim's size: where samples leak into each other.
    """

    def __init__(self, before: _Record, size: int, split: Split, tolerance: float,
                 root: Path | None) -> None:
        super().__init__()
        self.before, self.size, self.split, self.tolerance, self.root = before, size, split, tolerance, root
        self.states: dict[int, tuple[str, int]] = {}  # id of a tensor -> its state, the op that made it
        self.ops: list[tuple[str, Location | None, list[int], list[str]]] = []  # name, line, args, states
        self.keep: list[torch.Tensor] = []  # keeps the ids in `states` unique while this lives
        self.manifest: int | None = None
        self.done = False
        self.diverged = False  # the ops stopped corresponding (or the first record ended)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outs = _tensors(out)
        if self.done or not outs:
            return out
        i = len(self.ops)
        name = op_name(func)
        if i >= len(self.before.ops) or self.before.ops[i][0] != name or \
                [t.shape for t in self.before.ops[i][1]] != [t.shape for t in outs]:
            self.done = self.diverged = True  # past the budget, or the forwards took different paths
            return out
        ins = [id(t) for t in _tensors(args) + _tensors(kwargs)]
        arg_states = [self.states.get(t, (OPAQUE, -1))[0] for t in ins]
        states = []
        for a, b in zip(self.before.ops[i][1], outs, strict=True):
            state = _state(a, b.detach(), self.size, self.split.untouched, self.split.every_input,
                           self.tolerance)
            if state == MIXED and self.size not in b.shape and MIXED not in arg_states and _reshapes(name):
                state = OPAQUE
            self.states[id(b)] = (state, i)
            states.append(state)
        self.keep.extend(outs)
        self.ops.append((name, _here(self.root), ins, states))
        if any(s == MIXED and self.size in b.shape for s, b in zip(states, outs, strict=True)):
            self.manifest, self.done = i, True
        return out


def _here(root: Path | None) -> Location | None:
    stack = traceback.extract_stack()
    while stack and stack[-1].filename == __file__:
        stack.pop()
    return location_from([(f.filename, f.lineno, f.name) for f in stack], root)


def _state(a: torch.Tensor, b: torch.Tensor, size: int, untouched: slice, fit: bool,
           tolerance: float) -> str:
    """How tensor `b` of the perturbed forward relates to `a` of the first: same, clean or mixed."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return MIXED
    if torch.equal(a, b):
        return SAME
    axes = [i for i, s in enumerate(a.shape) if s == size]
    if a.is_floating_point() or a.is_complex():
        x, y = a.cpu(), b.cpu()
        if a.is_complex():
            x, y = torch.view_as_real(x), torch.view_as_real(y)
        if not bool(torch.isfinite(x).all() and torch.isfinite(y).all()):
            return MIXED
        scale = float(torch.maximum(x.abs().max(), y.abs().max()))
        if float((x.double() - y.double()).abs().max()) <= tolerance * scale:
            return SAME
        for axis in axes:
            change, _ = _change(_rows(x, axis)[untouched], _rows(y, axis)[untouched], fit)
            if not change.numel() or float(change.max()) <= tolerance:
                return CLEAN
        return MIXED
    for axis in axes:
        if torch.equal(a[_at(axis, untouched)], b[_at(axis, untouched)]):
            return CLEAN
    return MIXED


def locate(calls: _Calls, first: dict[str, torch.Tensor], mixed: dict[str, torch.Tensor],
           split: Split, how: Plan, tolerance: float,
           root: Path | None) -> tuple[str, Location | None] | None:
    """The op that combines samples along the dim, and its user line; None where none is clear.

    The first mixed output with an axis of the dim's size is where samples leak into each other;
    where one of its arguments is itself a mixed aggregate, the op that made that aggregate
    (walking back) is the one to change: the `mean(0)` of `x - x.mean(0)`.
    """
    before = _Record()
    calls(first, "when recorded", before)
    after = _Follow(before, how.size, split, tolerance, root)
    calls(mixed, "when recorded", after)
    ops = after.ops
    if after.manifest is not None:
        at = after.manifest
        while True:  # an aggregate came in: who made it (an earlier op: in-place ops keep their ids)
            made_by = [op for state, op in (after.states.get(t, (OPAQUE, -1)) for t in ops[at][2])
                       if state == MIXED and 0 <= op < at]
            if not made_by:
                return ops[at][0], ops[at][1]
            at = made_by[0]
    if before.full or after.diverged:
        return None  # stopped early (the budget, or another path): what came after is unknown
    # No per-sample tensor mixed in the forward: the coupling is in how reductions combine (a mean
    # divided by a std). Take a reduction of unmixed values other than the last, normalisers first.
    made = [(name, loc, [after.states.get(t, (OPAQUE, -1))[0] for t in args], outs)
            for name, loc, args, outs in ops]
    sources = [i for i, (_, _, args, outs) in enumerate(made) if MIXED in outs and MIXED not in args]
    last = max((i for i, (_, _, _, outs) in enumerate(made) if MIXED in outs), default=None)
    sources = [i for i in sources if i != last]
    if not sources:
        return None
    preferred = [i for i in sources if made[i][0].rpartition(".")[2].strip("_") in _NORMALISERS]
    at = (preferred or sources)[0]
    return made[at][0], made[at][1]


def _reshapes(name: str) -> bool:
    """Ops that move elements without combining them: their outputs lose the sample axis."""
    short = name.rpartition(".")[2]
    return short in ("view", "reshape", "flatten", "unflatten", "permute", "transpose", "t", "T",
                     "contiguous", "squeeze", "unsqueeze", "expand", "expand_as", "repeat",
                     "__getitem__", "narrow", "select", "index_select", "gather", "take", "split",
                     "chunk", "unbind", "cat", "stack", "clone", "to", "float", "double", "half",
                     "movedim", "swapaxes", "view_as", "reshape_as", "ravel", "mT", "mH")


def _redrawn(spec: CaseSpec, how: Plan) -> list:
    """The specs of the inputs that carry the dim, sized to the most samples a split re-draws.

    A fixed `value` has no other draw; it lends its other samples instead (see `_mix`).
    """
    most = max(len(split.indexes(how.size, split.perturbed)) for split in splits(how.size))
    return [dataclasses.replace(i, shape=[most if d == how.dim else n for n, d in zip(i.shape, i.shape_dims,
                                                                                       strict=True)])
            for i in spec.inputs if i.name in how.axes and i.init != "value"]


def grads_of(call: LossCall, draw: int = 0) -> GradsOf:
    """The loss call of the check: inputs placed as draw `draw` places them, its seeding and
    autocast, the loss as picked (summed where not a scalar), the inputs' gradients."""
    def run(cpu: dict[str, torch.Tensor], observe: AbstractContextManager | None = None):
        # A copy per call: a loss that edits its targets in place must not edit the next call's.
        inputs = call.place({name: t.clone() for name, t in cpu.items()})
        with observe if observe is not None else contextlib.nullcontext():
            value = call.invoke(inputs.received, draw)
        if not isinstance(value, torch.Tensor) or not value.requires_grad:
            raise TypeError(f"the loss returned {type(value).__name__} without a gradient")
        loss = value if value.dim() == 0 and value.numel() == 1 else value.sum()
        names = [s.name for s in call.specs if s.name in inputs.leaves]
        grads = torch.autograd.grad(loss, [inputs.leaves[n] for n in names], allow_unused=True)
        return loss.detach(), dict(zip(names, grads, strict=True))

    return run


def check_call(call: LossCall) -> BatchCheck:
    """Check a loaded case that declares `per_sample`, on draw 0, through its loss call."""
    compute = torch_dtype(call.autocast) if call.autocast else None
    return check_case(call.spec, grads_of(call), call.root, compute)


def not_run(spec: CaseSpec, why: str) -> dict[str, Any]:
    """The results.json record of a case whose check did not run."""
    dim = spec.per_sample or ""
    return BatchCheck(checked=False, dim=dim, size=spec.dims.get(dim, 0), reason=f"not run: {why}").summary()


def check_case(spec: CaseSpec, grads_of: GradsOf, root: Path,
               compute_dtype: torch.dtype | None = None) -> BatchCheck:
    """Check a case that declares `per_sample`, on its draw-0 inputs, with `grads_of` calling it."""
    how = plan(spec)
    dim = spec.per_sample or ""
    if isinstance(how, str):
        return BatchCheck(checked=False, dim=dim, size=spec.dims.get(dim, 0), reason=how)
    try:
        inputs = make_inputs(spec.inputs, spec.seed, spec.draw_name, 0, root)
        fresh = make_inputs(_redrawn(spec, how), spec.seed, spec.draw_name + SALT, 0, root)
    except Exception as exc:  # noqa: BLE001 - a factory that fails on another draw
        return BatchCheck(checked=False, dim=dim, size=how.size,
                          reason=f"cannot draw other samples: {type(exc).__name__}: {exc}")
    return check(grads_of, inputs, fresh, how, compute_dtype, root)

