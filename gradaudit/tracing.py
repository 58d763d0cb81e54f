"""Trace the forward pass of an audited loss: where the gradient path breaks, and why.

One `TorchFunctionMode` sees every Python-level torch call the loss makes (methods, `.data`,
`.item()`, `float()`, `__setitem__`, factories, grad-mode switches) in the audit's own forward
pass. Each tensor it sees carries a small tag: which audited leaves its gradient path still reaches,
whether its values derive from an input, which recorded breaks its values passed through, and
which fixed-device factories it came from. An op whose output lost a leaf that its inputs reached
is a graph break, located at the user's line. When backward hits torch's version error, the draw
is re-run with saved-tensor hooks that pack each saved tensor with its version and check it on
unpack (a pack hook that just returned the tensor would silence torch's own version check), so the
conflict names both the saving op and the in-place op.

`TraceObserver.explain` turns the records into findings after the verdicts are known.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from gradaudit.deadterm import WORDS as DEAD_WORDS
from gradaudit.deadterm import combine, dead_breaks
from gradaudit.frames import frames_from_text, is_user_file, location_from
from gradaudit.model import Finding, Location
from gradaudit.opscan import first_nonfinite
from gradaudit.portability import (
    INDEX_ALLOWS_CPU,
    factory_finding,
    follows_device,
    gradient_args,
)
from gradaudit.saturation import RANGE_OPS, outside, value_range
from gradaudit.shapes import describe_dead
from gradaudit.wording import no_grad_hint, zero_incoming_hint

_EMPTY: frozenset = frozenset()
_OURS = str(Path(__file__).resolve().parent)
_THIS = str(Path(__file__).resolve())

# Calls whose result is a Python value (or numpy array) read from a tensor's values.
ESCAPES = frozenset({"item", "tolist", "numpy", "__float__", "__int__", "__index__", "__bool__",
                     "__complex__", "__array__"})
# Ops whose derivative is zero everywhere: the path survives, the gradient does not.
ZERO_DERIVATIVE = frozenset({"round", "floor", "ceil", "sign", "sgn", "trunc", "fix",
                             "round_", "floor_", "ceil_", "sign_", "sgn_", "trunc_", "fix_"})
# Calls that read only a tensor's shape, dtype or device, or are the audit's own.
SHAPE_ONLY = frozenset({
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "randint_like",
    "new_zeros", "new_ones", "new_empty", "new_full", "size", "dim", "numel", "__len__", "stride",
    "is_floating_point", "is_complex", "data_ptr", "element_size", "nelement", "ndimension",
    "__repr__", "__str__", "__format__", "__hash__", "register_hook", "retain_grad", "backward",
    "grad", "_version", "requires_grad_", "is_contiguous", "get_device", "untyped_storage",
})
# Factories that build a tensor from Python data (values may come from an earlier `.item()`).
FROM_DATA = frozenset({"tensor", "as_tensor", "from_numpy", "asarray", "new_tensor", "Tensor",
                       "FloatTensor", "LongTensor"})
# Factories that make a tensor on the default device unless told otherwise.
FACTORIES = frozenset({"tensor", "as_tensor", "asarray", "zeros", "ones", "full", "empty", "arange",
                       "linspace", "logspace", "eye", "rand", "randn", "randint", "randperm",
                       "from_numpy", "tril_indices", "triu_indices"})
INPLACE_DUNDERS = frozenset({"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__",
                             "__ifloordiv__", "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__",
                             "__ilshift__", "__irshift__", "__imatmul__"})
NOT_INPLACE = frozenset({"requires_grad_", "share_memory_", "retain_grad"})
SKIP = frozenset({"grad", "backward", "_set_grad_enabled", "__get__:grad", "__get__:requires_grad",
                  "__get__:grad_fn", "__get__:is_leaf", "__get__:shape", "__get__:device",
                  "__get__:dtype", "__get__:_version", "__get__:layout", "__get__:ndim",
                  "__get__:names", "__get__:_base", "__get__:is_cuda"})

# Which ops cut the gradient, in words, and how sure a cut they are (lower: the likelier culprit).
_KIND_WORDS = {
    "detach": ("detach() returns a tensor with no gradient", 0),
    "data": (".data reads the values without the gradient", 0),
    "no_grad": ("it runs with gradients disabled (torch.no_grad / inference_mode)", 0),
    "escape": ("it turns tensor values into Python values, which carry no gradient", 0),
    "rebuild": ("torch.tensor() of tensors copies their values and drops the gradient", 0),
    "cast": ("an integer or bool cast has no gradient", 1),
    "index": ("it returns integer indices, which have no gradient", 1),
    "zero-derivative": ("its derivative is zero everywhere", 2),
    "compare": ("a comparison returns a bool tensor, which has no gradient", 3),
    "other": ("its result has no gradient", 2),
}
_INDEX_OPS = frozenset({"argmax", "argmin", "argsort", "topk", "sort", "max", "min", "kthvalue",
                        "median", "mode", "nonzero", "argwhere", "unique", "searchsorted", "bucketize",
                        "where", "multinomial"})
_COMPARE_OPS = frozenset({"gt", "lt", "ge", "le", "eq", "ne", "__gt__", "__lt__", "__ge__", "__le__",
                          "__eq__", "__ne__", "greater", "less", "greater_equal", "less_equal",
                          "not_equal", "isclose", "isnan", "isinf", "isfinite", "logical_and",
                          "logical_or", "logical_not", "logical_xor", "__and__", "__or__", "__xor__",
                          "__invert__", "signbit", "isneginf", "isposinf", "equal", "allclose"})

_MAX_LIST_SCAN = 64
# The draws traced: the first only. Breaks, in-place ops and factories are properties of the code,
# which the first draw runs; the other draws, which confirm verdicts, run at the spine's own cost.
TRACED_DRAWS = 1


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or type(func).__name__
    if name == "__get__":
        owner = getattr(func, "__self__", None)
        return f"__get__:{getattr(owner, '__name__', '?')}"
    return name


def _display_op(name: str, func: Any) -> str:
    if name.startswith("__get__:"):
        return f"Tensor.{name.split(':', 1)[1]}"
    qual = getattr(func, "__qualname__", "") or ""
    if qual.startswith(("TensorBase.", "Tensor.")) or getattr(torch.Tensor, name, None) is func:
        return f"Tensor.{name}"
    module = getattr(func, "__module__", None) or "torch"
    if module.startswith("torch._C") or module == "torch.functional":
        module = "torch"
    return f"{module}.{name}"


class Tag:
    """What the trace knows about one tensor, for the draw that made it."""

    __slots__ = ("token", "grad", "derived", "breaks", "fixed", "terms")

    def __init__(self, token: object, grad: frozenset = _EMPTY, derived: bool = False,
                 breaks: frozenset = _EMPTY, fixed: frozenset = _EMPTY, terms: frozenset = _EMPTY) -> None:
        self.token = token
        self.grad = grad  # audited leaves its gradient path reaches
        self.derived = derived  # its values depend on an input
        self.breaks = breaks  # ids of recorded breaks its values passed through
        self.fixed = fixed  # ids of fixed-device factories it came from
        self.terms = terms  # breaks added to it as terms, since then only linearly (gradaudit.deadterm)


@dataclass
class Record:
    """One recorded op at one line of user code (merged over calls and draws)."""

    id: int
    kind: str  # break / inplace / factory
    op: str
    frames: list[tuple[str, int, str]]
    why: str = ""
    lost: set[str] = field(default_factory=set)
    calls: int = 0
    graph: bool = False  # in-place: on a tensor in the graph
    conflict: bool = False
    met: bool = False  # factory: its result met an input-derived tensor
    device: str = ""
    facts: dict[str, Any] = field(default_factory=dict)  # range: its bounds and the values outside them


@dataclass
class Conflict:
    """A tensor saved for backward and changed in place afterwards."""

    saved_by: str
    version_saved: int
    version_now: int
    shape: list[int]
    modified_by: Record | None


_FILE_KIND: dict[str, str] = {}


def _file_kind(filename: str) -> str:
    kind = _FILE_KIND.get(filename)
    if kind is None:
        resolved = str(Path(filename).resolve()) if filename and not filename.startswith("<") else filename
        if resolved == _THIS:
            kind = "tracer"
        elif resolved.startswith(_OURS):
            kind = "ours"
        else:
            kind = "user" if is_user_file(filename) else "other"
        _FILE_KIND[filename] = kind
    return kind


def _user_frames() -> list[tuple[str, int, str]] | None:
    """The user frames of the stack above the tracer, outermost first, up to gradaudit's call.

    None: the op is not the user's (the audit's own call), or runs inside a custom
    autograd.Function's forward, where gradients are off by design.
    """
    frames: list[tuple[str, int, str]] = []
    frame = sys._getframe(1)
    while frame is not None and _file_kind(frame.f_code.co_filename) == "tracer":
        frame = frame.f_back
    while frame is not None:
        code = frame.f_code
        kind = _file_kind(code.co_filename)
        if kind in ("ours", "tracer"):
            break
        if kind == "user":
            frames.append((code.co_filename, frame.f_lineno, code.co_name))
        elif code.co_name == "apply" and code.co_filename.endswith(("autograd/function.py",
                                                                     "autograd\\function.py")):
            return None  # inside a custom autograd.Function's forward: no_grad there is by design
        frame = frame.f_back
    if not frames:
        return None
    frames.reverse()
    return frames


_KINDS: dict[Any, tuple[str, str]] = {}
_FOLLOWS = object()  # a `.to(...)` whose device comes from a tensor


def _classify(func: Any) -> str:
    """How the tracer treats a torch function: skip, escape, data, factory, move, inplace or op."""
    name = _op_name(func)
    if name in SKIP or func is torch.autograd.grad or func is torch.autograd.backward:
        return "skip"
    if name in SHAPE_ONLY or name.startswith("__get__:") and name != "__get__:data":
        return "skip" if name not in ("__get__:T", "__get__:mT", "__get__:H", "__get__:mH",
                                      "__get__:real", "__get__:imag") else "op"
    if name in ESCAPES:
        return "escape"
    if name in FROM_DATA:
        return "data"
    if name in FACTORIES:
        return "factory"
    if name in ("cuda", "cpu", "to"):
        return "move"
    if name in INPLACE_DUNDERS or (name.endswith("_") and not name.startswith("__")
                                   and name not in NOT_INPLACE):
        return "inplace"
    return "op"


class _Mode(TorchFunctionMode):
    """The function mode that feeds every torch call of the forward pass to its Tracer."""

    def __init__(self, tracer: Tracer) -> None:
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return self.tracer.call(func, args, kwargs or {})


class Tracer:
    """The records of one case, collected over its draws."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.by_key: dict[tuple, Record] = {}
        self.leaf_names: dict[int, str] = {}
        self.token: object = object()
        self.escaped: frozenset = _EMPTY  # breaks whose values left as Python values
        self.loss_breaks: set[int] | None = None
        self.conflicts: list[Conflict] = []
        self.current: str = ""
        # Tensors the draw starts with on a fixed device (a module's plain attributes), each with
        # its `factory` record: whether they meet the inputs is what the portability check asks.
        self.sources: list[tuple[torch.Tensor, Record]] = []
        self.modulating: set[int] = set()  # breaks whose values shape a live path (gradaudit.deadterm)
        self.loss_terms: set[int] = set()  # breaks added to the loss as terms, linearly since
        self.loss_modulating: set[int] = set()  # `modulating` as it stood when the loss returned

    # -- tags -------------------------------------------------------------------------------
    def tag(self, t: torch.Tensor) -> Tag | None:
        tag = t.__dict__.get("_gradaudit_tag")
        if tag is not None and tag.token is self.token:
            return tag
        if not t.requires_grad:
            return None
        if t.grad_fn is None:
            names = frozenset({self.leaf_names.get(id(t), f"@{id(t)}")})
        else:
            names = self._graph_leaves(t)
        tag = Tag(self.token, grad=names, derived=True)
        t.__dict__["_gradaudit_tag"] = tag
        return tag

    def _graph_leaves(self, t: torch.Tensor) -> frozenset:
        """Leaves under a tensor the trace did not see made (a custom Function's output, say)."""
        seen, stack, found = set(), [t.grad_fn], set()
        while stack and len(seen) < 5000:
            node = stack.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            var = getattr(node, "variable", None)
            if var is not None:
                found.add(self.leaf_names.get(id(var), f"@{id(var)}"))
            stack.extend(n for n, _ in node.next_functions)
        return frozenset(found)

    def set_tag(self, t: torch.Tensor, tag: Tag) -> None:
        t.__dict__["_gradaudit_tag"] = tag

    @contextlib.contextmanager
    def tracing(self, inputs: dict[str, torch.Tensor], versions: bool = False):
        """Trace a draw on `inputs`; with `versions`, also check saved tensors' versions.

        The version hooks are for the re-run of a draw whose backward hit torch's version error:
        the normal path leaves saved tensors to torch, whose own check then stands.
        """
        self.start_draw(inputs)
        with contextlib.ExitStack() as stack:
            if versions:
                stack.enter_context(torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack))
            stack.enter_context(_Mode(self))
            yield self

    def start_draw(self, inputs: dict[str, torch.Tensor]) -> None:
        self.token = object()
        self.escaped = _EMPTY
        for name, t in inputs.items():
            if isinstance(t, torch.Tensor):
                self.leaf_names[id(t)] = name
                grad = frozenset({name}) if t.requires_grad else _EMPTY
                self.set_tag(t, Tag(self.token, grad=grad, derived=True))
        for t, rec in self.sources:
            self.set_tag(t, Tag(self.token, fixed=frozenset({rec.id})))

    # -- records ----------------------------------------------------------------------------
    def record(self, kind: str, op: str, frames: list[tuple[str, int, str]], **extra: Any) -> Record:
        """The record of this kind at this line of user code (one per line: the op most to blame)."""
        key = (kind, frames[-1][0], frames[-1][1], op if kind == "factory" else "")
        rec = self.by_key.get(key)
        if rec is None:
            rec = Record(id=len(self.records), kind=kind, op=op, frames=frames, **extra)
            self.records.append(rec)
            self.by_key[key] = rec
        elif kind == "break" and _KIND_WORDS[extra["why"]][1] < _KIND_WORDS[rec.why][1]:
            rec.op, rec.why = op, extra["why"]
        rec.calls += 1
        return rec

    # -- the call ---------------------------------------------------------------------------
    def call(self, func: Any, args: tuple, kwargs: dict) -> Any:
        known = _KINDS.get(func)
        if known is None:
            known = _KINDS[func] = (_classify(func), _op_name(func))
        kind, name = known
        if kind == "skip":
            return func(*args, **kwargs)
        tensors: list[Tag] = []
        scan, scan_kwargs = gradient_args(name, args, kwargs)
        for i, v in enumerate(scan):
            if isinstance(v, torch.Tensor):
                tag = self.tag(v)
                if tag is not None:
                    tensors.append(tag)
            elif isinstance(v, (list, tuple)) and v:
                start = len(tensors)
                self._collect(v, tensors, 1)
                if i == 1 and name in INDEX_ALLOWS_CPU:  # a CPU index may index any device's tensor
                    tensors[start:] = [_unfixed(t) for t in tensors[start:]]
                continue
            else:
                continue
            if i == 1 and name in INDEX_ALLOWS_CPU and tensors and tensors[-1].fixed:
                tensors[-1] = _unfixed(tensors[-1])
        if scan_kwargs:
            self._collect(tuple(scan_kwargs.values()), tensors, 0)
        target = args[0] if kind == "inplace" and args and isinstance(args[0], torch.Tensor) else None
        before = (target._version, target.requires_grad) if target is not None else None
        factory = None
        if kind in ("move", "factory", "data"):
            factory = self._factory_before(func, name, args, kwargs)
        previous, self.current = self.current, name
        try:
            out = func(*args, **kwargs)
        finally:
            self.current = previous
        if name in RANGE_OPS and tensors and args and isinstance(args[0], torch.Tensor):
            self._range(func, name, args, kwargs)
        if tensors or factory is not None or kind in ("data", "escape"):
            if tensors and follows_device(name, args, kwargs):
                factory = _FOLLOWS  # moved to a device taken from a tensor: portable again
            self._after(func, name, kind, tensors, out, target, before, factory, scan)
        return out

    def _collect(self, values: tuple | list, out: list, depth: int) -> None:
        for i, v in enumerate(values):
            if isinstance(v, torch.Tensor):
                tag = self.tag(v)
                if tag is not None:
                    out.append(tag)
            elif isinstance(v, (list, tuple)) and depth < 3 and v:
                self._collect(v, out, depth + 1)
            elif i >= 1 and depth > 0:
                return  # a list of Python numbers: nothing more to see
            if depth > 0 and i >= _MAX_LIST_SCAN:
                return

    def _terms(self, name: str, tags: list[Tag], args: tuple, out: Any = None) -> frozenset:
        """The dead-term bookkeeping of one op (gradaudit.deadterm); the terms its result carries."""
        if not any(t.terms or (t.breaks and not t.grad) for t in tags):
            return _EMPTY  # the common case: no cut value and no term in sight
        carried, shaping, added = combine(name, tags)
        if shaping:
            self.modulating.update(shaping)
        if added:  # cut values added to a live path: a term, unless they are all zero (0.0 * metric)
            cut = [v for v in args if isinstance(v, torch.Tensor) and (t := self.tag(v)) is not None
                   and not t.grad and t.breaks]
            # `x - x.detach()` (zero, with x's gradient) injects a gradient: an idiom, not a term.
            idiom = isinstance(out, torch.Tensor) and out.device.type != "meta" and not bool(out.any())
            if not idiom and any(bool((v != 0).any()) for v in cut if v.numel() and v.device.type != "meta"):
                carried = carried | added
        return carried

    def _after(self, func, name, kind, tags, out, target, before, factory, args=()) -> None:
        if len(tags) == 1:
            only = tags[0]
            grad_in, breaks_in, fixed_in, derived = only.grad, only.breaks, only.fixed, only.derived
        else:
            grad_in = _union([t.grad for t in tags])
            breaks_in = _union([t.breaks for t in tags])
            fixed_in = _union([t.fixed for t in tags])
            derived = any(t.derived for t in tags)
        if factory is _FOLLOWS:
            factory, fixed_in = None, _EMPTY
        if fixed_in and any(t.derived and not t.fixed for t in tags):
            for rid in fixed_in:
                self.records[rid].met = True
            fixed_in = _EMPTY
        if kind == "escape":
            if name == "__bool__":
                return  # `if not torch.isfinite(loss):` decides a branch; no value flows on
            if grad_in:
                rec = self._break(func, name, "escape", grad_in)
                if rec is not None:
                    breaks_in = breaks_in | {rec.id}
            self.escaped = self.escaped | breaks_in
            return
        if kind == "data" and self.escaped:
            breaks_in = breaks_in | self.escaped
            derived = True
        if kind == "data" and not grad_in:
            made = self._made(func, name)  # a new tensor from Python values: it may replace the loss
            if made is not None:
                breaks_in = breaks_in | {made.id}
        terms = self._terms(name, tags, args, out) if grad_in else _EMPTY
        if kind == "inplace" and target is not None:
            self._inplace(func, name, target, before, grad_in, breaks_in, derived, fixed_in, terms)
            return
        outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(o, torch.Tensor)]
        lost_rec = None
        for o in outs:
            requires = o.requires_grad
            grad_out = grad_in if (requires and name not in ZERO_DERIVATIVE) else _EMPTY
            brk = breaks_in
            if grad_in and grad_out != grad_in:
                if lost_rec is None:
                    lost_rec = self._break(func, name, self._break_kind(name, kind, o), grad_in - grad_out)
                if lost_rec is not None:
                    brk = brk | {lost_rec.id}
            elif requires and not grad_in:
                grad_out = self._graph_leaves(o) if o.grad_fn is not None else frozenset({f"@{id(o)}"})
            fixed = fixed_in
            if factory is not None and o.dim() > 0:
                fixed = fixed | {factory.id}
            first = tags[0] if len(tags) == 1 else None
            if (first is not None and grad_out is first.grad and brk is first.breaks and fixed is first.fixed
                    and derived == first.derived and terms == first.terms):
                o.__dict__["_gradaudit_tag"] = tags[0]  # nothing changed: share the input's tag
            else:
                self.set_tag(o, Tag(self.token, grad=grad_out, derived=derived, breaks=brk, fixed=fixed,
                                    terms=terms if grad_out else _EMPTY))

    def _inplace(self, func, name, target, before, grad_in, breaks_in, derived, fixed_in, terms=_EMPTY) -> None:
        version_before, was_graph = before
        grad_out = grad_in if target.requires_grad and name not in ZERO_DERIVATIVE else _EMPTY
        brk = breaks_in
        if grad_in and grad_out != grad_in:
            rec = self._break(func, name, self._break_kind(name, "inplace", target), grad_in - grad_out)
            if rec is not None:
                brk = brk | {rec.id}
        tag = Tag(self.token, grad=grad_out, derived=derived, breaks=brk, fixed=fixed_in,
                  terms=terms if grad_out else _EMPTY)
        self.set_tag(target, tag)
        base = target._base
        if base is not None:
            old = self.tag(base)
            if old is not None:
                self.set_tag(base, Tag(self.token, grad=old.grad | grad_out, derived=old.derived or derived,
                                       breaks=old.breaks | brk, fixed=old.fixed | fixed_in))
        frames = _user_frames()
        if frames is None:
            return
        try:
            storage = target.untyped_storage().data_ptr()
        except Exception:  # noqa: BLE001 - tensors without storage cannot conflict
            storage = None
        rec = self.record("inplace", _display_op(name, func), frames)
        rec.graph = rec.graph or bool(was_graph)
        rec.__dict__.setdefault("events", []).append((self.token, storage, version_before, target._version))

    def _break_kind(self, name: str, kind: str, out: torch.Tensor) -> str:
        if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
            return "no_grad"
        if name in ("detach", "detach_"):
            return "detach"
        if name == "__get__:data":
            return "data"
        if kind == "data":
            return "rebuild"
        if name in ZERO_DERIVATIVE:
            return "zero-derivative"
        if name in _COMPARE_OPS:
            return "compare"
        if name in _INDEX_OPS:
            return "index"
        if not (out.is_floating_point() or out.is_complex()):
            return "cast"
        return "other"

    def _break(self, func: Any, name: str, why: str, lost: frozenset) -> Record | None:
        frames = _user_frames()
        if frames is None:
            return None  # the audit's own call, or inside a custom autograd.Function
        rec = self.record("break", _display_op(name, func), frames, why=why)
        rec.lost.update(lost)
        return rec

    def _range(self, func: Any, name: str, args: tuple, kwargs: dict) -> None:
        """Count the values a range op clips (gradaudit.saturation), for a gradient-carrying input."""
        tag = self.tag(args[0])
        bounds = value_range(name, args, kwargs) if tag is not None and tag.grad else None
        frames = _user_frames() if bounds is not None else None
        if frames is None:
            return
        clipped, seen = outside(args[0], *bounds)
        rec = self.record("range", _display_op(name, func), frames)
        rec.lost.update(tag.grad)
        facts = rec.facts
        facts.setdefault("range", bounds)
        facts["outside"] = facts.get("outside", 0) + clipped
        facts["seen"] = facts.get("seen", 0) + seen

    def _made(self, func: Any, name: str) -> Record | None:
        frames = _user_frames()
        return None if frames is None else self.record("made", _display_op(name, func), frames)

    def _factory_before(self, func, name, args, kwargs) -> Record | None:
        """Note a factory with no device (or a fixed one), or a move to a fixed device."""
        device = kwargs.get("device")
        if name in ("cuda", "cpu"):
            fixed = name
        elif name == "to":
            fixed = next((a for a in (*args[1:], device) if isinstance(a, str)), None)
            if fixed is None:
                return None
        elif name == "from_numpy":
            fixed = "cpu"
        else:
            if isinstance(device, torch.device) or (args and isinstance(args[0], torch.Tensor)):
                return None  # a device taken from a tensor, or data already on one
            fixed = device if isinstance(device, str) else ("" if device is None else None)
        if fixed is None:
            return None
        frames = _user_frames()
        if frames is None:
            return None
        return self.record("factory", _display_op(name, func), frames, device=str(fixed))

    # -- saved tensors ----------------------------------------------------------------------
    def pack(self, t: torch.Tensor) -> tuple:
        return (t, t._version, self.current)

    def unpack(self, packed: tuple) -> torch.Tensor:
        t, version, saved_by = packed
        now = t._version
        if now != version:
            modified = self._mutation_of(t, version)
            if modified is not None:
                modified.conflict = True
            self.conflicts.append(Conflict(saved_by, version, now, list(t.shape), modified))
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an inplace "
                f"operation: [{t.type()} {list(t.shape)}], saved by {saved_by or 'an op'}, is at version "
                f"{now}; expected version {version} instead.")
        return t

    def _mutation_of(self, t: torch.Tensor, version: int) -> Record | None:
        try:
            storage = t.untyped_storage().data_ptr()
        except Exception:  # noqa: BLE001
            return None
        best = None
        for rec in self.records:
            for token, where, v_before, _ in rec.__dict__.get("events", ()):
                if token is self.token and where == storage and v_before >= version:
                    if best is None or v_before < best[0]:
                        best = (v_before, rec)
        return best[1] if best else None


def _unfixed(tag: Tag) -> Tag:
    """A tag's view without its fixed-device sources (an index tensor, which may stay on the CPU)."""
    return Tag(tag.token, grad=tag.grad, derived=tag.derived, breaks=tag.breaks, terms=tag.terms)


def _union(sets: list[frozenset]) -> frozenset:
    result = _EMPTY
    for s in sets:
        if s and s is not result:
            result = s if not result else result | s
    return result


# -- the observer ----------------------------------------------------------------------------

class TraceObserver:
    """Trace each draw's forward pass; explain the case's findings from the records."""

    def __init__(self, traced_draws: int = TRACED_DRAWS) -> None:
        self.tracer = Tracer()
        self.traced_draws = traced_draws
        self.tracing = False

    def draw_context(self, draw: int, inputs: dict[str, torch.Tensor]):
        """Trace draws 0..traced_draws-1; the draws that only confirm a zero pattern run bare."""
        if draw == 0:
            self.tracer = Tracer()
        self.tracing = draw < self.traced_draws
        return self._traced(inputs) if self.tracing else contextlib.nullcontext()

    def _traced(self, inputs: dict[str, torch.Tensor]):
        return self.tracer.tracing(inputs, versions=False)

    def loss_returned(self, loss: Any) -> None:
        """Note which breaks the loss's values passed through (Python values: every escape)."""
        if not self.tracing:
            return
        tracer = self.tracer
        if isinstance(loss, torch.Tensor):
            tag = loss.__dict__.get("_gradaudit_tag")
            found = set(tag.breaks) if tag is not None and tag.token is tracer.token else set()
            if tag is not None and tag.token is tracer.token:
                tracer.loss_terms |= tag.terms
        else:
            found = set()
        # What shaped the gradient up to here: the audit's own use of the loss afterwards does not count.
        tracer.loss_modulating |= tracer.modulating
        # Python values carry no tag: any value that left as one may have reached the loss.
        found |= tracer.escaped
        tracer.loss_breaks = found if tracer.loss_breaks is None else tracer.loss_breaks | found

    def explain(self, audit: Any) -> None:
        try:
            Explainer(self.tracer, audit).run()
        except Exception as exc:  # noqa: BLE001 - an explanation that fails must not lose the verdicts
            warnings_list = getattr(audit.result, "warnings", None)
            if isinstance(warnings_list, list):
                warnings_list.append(f"gradaudit could not trace this case: {type(exc).__name__}: {exc}")
        finally:
            self.tracer = Tracer()


def default_observers() -> list[Any]:
    """The observers every audit runs with: the forward trace that explains findings."""
    return [TraceObserver()]


# -- turning records into findings -----------------------------------------------------------

_TRAILING_COMMENT = re.compile(r"\s+#[^'\"]*$")


def _quote(loc: Location | None, fallback: str) -> str:
    """The culprit's source line in backticks, without a trailing comment; else the op's name."""
    if loc is None or not loc.code:
        return f"`{fallback}`"
    return f"`{_TRAILING_COMMENT.sub('', loc.code)}`"


_FAILING = ("input-disconnected", "zero-grad", "partial-grad")


class Explainer:
    """Match the trace's records to one case's findings."""

    def __init__(self, tracer: Tracer, audit: Any) -> None:
        self.tracer = tracer
        self.audit = audit
        self.root = audit.ctx.root
        self.names = {f"@{id(t)}": name for name, t in audit.params.items()}

    def location(self, rec: Record) -> Location | None:
        return location_from(rec.frames, self.root)

    def run(self) -> None:
        from gradaudit import explain_extra as extra  # it builds on this module's records

        self.graph_breaks()
        extra.replaced_loss(self)
        extra.custom_functions(self)
        extra.selections(self)
        self.unused_parameters()
        self.inplace()
        self.portability()
        extra.unregistered_tensors(self)
        extra.saturation(self)
        nonfinite = [f for f in self.audit.findings if f.id == "nonfinite-grad"]
        if nonfinite:
            self.nonfinite_origin(nonfinite)
        loss_nonfinite = next((f for f in self.audit.findings if f.id == "loss-nonfinite"), None)
        if loss_nonfinite is not None:
            self.loss_nonfinite_origin(loss_nonfinite)

    def lost_names(self, rec: Record) -> set[str]:
        return {self.names.get(n, n) for n in rec.lost if not n.startswith("@") or n in self.names}

    # -- graph breaks -----------------------------------------------------------------------
    def graph_breaks(self) -> None:
        audit, tracer = self.audit, self.tracer
        breaks = [r for r in tracer.records if r.kind == "break"]
        if not breaks:
            return
        on_path = tracer.loss_breaks
        failing = [f for f in audit.findings if f.id in _FAILING and f.input]
        no_grad = next((f for f in audit.findings if f.id == "loss-no-grad"), None)
        declared = set(audit.spec.expect.no_grad)
        explained: dict[int, list[Finding]] = {}

        def blame(finding: Finding, candidates: list[Record]) -> None:
            # The surest cuts explain it (a detach beside a mask: the detach, not the mask).
            if candidates:
                surest = min(_KIND_WORDS[r.why][1] for r in candidates)
                for rec in candidates:
                    if _KIND_WORDS[rec.why][1] == surest:
                        explained.setdefault(rec.id, []).append(finding)

        for finding in failing:
            blame(finding, [r for r in breaks if finding.input in self.lost_names(r)
                            and (on_path is None or r.id in on_path)])
        if no_grad is not None:
            blame(no_grad, [r for r in breaks if (on_path is None or r.id in on_path)
                            and self.lost_names(r) - declared])
        fails: list[Finding] = []
        warns: list[Finding] = []
        infos: list[Finding] = []
        dead = dead_breaks(tracer.loss_terms, tracer.loss_modulating, set(explained))
        culprit_of: dict[int, Finding] = {}  # id(failing finding) -> its best graph-break
        for rec in sorted(breaks, key=lambda r: (_KIND_WORDS[r.why][1], r.id)):
            lost = sorted(self.lost_names(rec))
            if not lost:
                continue
            if rec.id not in explained and on_path is not None and rec.id not in on_path:
                continue  # values that never reached the loss: a side computation
            loc = self.location(rec)
            code = _quote(loc, rec.op)
            where = f" at {loc.where}" if loc else ""
            words = _KIND_WORDS[rec.why][0]
            detail = {"op": rec.op, "kind": rec.why, "inputs": lost, "calls": rec.calls}
            if loc and loc.chain:
                detail["chain"] = [f.where for f in loc.chain] + [loc.where]
            if rec.id in explained:
                targets = explained[rec.id]
                first = targets[0]
                what = self.what(first, rec)
                if rec.why == "zero-derivative":
                    text = f"{code}{where} passes {what} on with a zero gradient: {words}"
                else:
                    text = f"{code}{where} cuts {what} from the loss: {words}"
                if rec.why in ("detach", "no_grad"):  # a stop-gradient on a whole input: maybe by design
                    text += no_grad_hint([t.input for t in targets if t.id == "input-disconnected"
                                          and t.input and not t.input.startswith("param:")])
                finding = Finding(id="graph-break", severity="fail", message=text,
                                  input=first.input, location=loc, detail=detail)
                fails.append(finding)
                for target in targets:
                    culprit_of.setdefault(id(target), finding)
            elif rec.id in dead:
                warns.append(Finding(id="dead-term", severity="warn", message=f"{code}{where}: "
                                     + DEAD_WORDS.format(why=words), input=lost[0] if len(lost) == 1 else None,
                                     location=loc, detail=detail))
            else:
                subject = ", ".join(f"`{n}`" for n in lost)
                text = (f"{code}{where} cuts the gradient path from {subject} ({words}); "
                        "no input lost its gradient")
                infos.append(Finding(id="graph-break", severity="info", message=text,
                                     input=lost[0] if len(lost) == 1 else None, location=loc, detail=detail))
        for f in audit.findings:
            best = culprit_of.get(id(f))
            if best is not None and f.location is None:
                f.location = best.location
        audit.findings[:0] = fails
        audit.findings.extend(warns + infos)

    def what(self, finding: Finding, rec: Record) -> str:
        if finding.id == "loss-no-grad":
            lost = sorted(self.lost_names(rec))
            return ", ".join(f"`{n}`" for n in lost) if lost else "every input"
        name = finding.input
        track = self.audit.tracks.get(name)
        if finding.id == "partial-grad" and track is not None and track.ever_nonzero is not None:
            text, _ = describe_dead(~track.ever_nonzero, f"`{name}`")
            return text.rsplit(" [", 1)[0]
        return f"`{name}`"

    # -- in-place ---------------------------------------------------------------------------
    def inplace(self) -> None:
        audit, tracer = self.audit, self.tracer
        finding = next((f for f in audit.findings if f.id == "inplace-version-conflict"), None)
        conflict = tracer.conflicts[0] if tracer.conflicts else None
        if finding is not None and conflict is None:
            conflict = self.conflict_rerun()
            mod = conflict.modified_by if conflict else None
            if mod is not None:  # the same line in this trace caused it: no "harmless" info for it
                same = tracer.by_key.get(("inplace", mod.frames[-1][0], mod.frames[-1][1], ""))
                if same is not None:
                    same.conflict = True
        if finding is not None and conflict is not None:
            saved_loc = finding.location  # anomaly mode's trace of the node that saved it
            mod = conflict.modified_by
            mod_loc = self.location(mod) if mod else None
            saver = conflict.saved_by or "an op"
            saved_code = _quote(saved_loc, saver)
            saved_where = f" at {saved_loc.where}" if saved_loc else ""
            detail = dict(finding.detail)
            detail.update(version_saved=conflict.version_saved, version_now=conflict.version_now,
                          saved_by={"op": saver, "location": saved_loc.to_dict() if saved_loc else None})
            if mod is not None:
                detail["modified_by"] = {"op": mod.op, "location": mod_loc.to_dict() if mod_loc else None}
                mod_code = _quote(mod_loc, mod.op)
                finding.message = (
                    f"{mod_code} at {mod_loc.where if mod_loc else '?'} changed in place a tensor that "
                    f"{saved_code}{saved_where} saved for backward (version {conflict.version_saved} -> "
                    f"{conflict.version_now}), so backward cannot run; use the out-of-place op")
                # The line to change is the in-place op; the saver is the second line.
                finding.location = mod_loc or saved_loc
                if mod_loc is not None and saved_loc is not None:
                    finding.second = dataclasses.replace(saved_loc, label="saved for backward at")
            else:
                finding.message = (f"a tensor that {saved_code}{saved_where} saved for backward was changed "
                                   f"in place (version {conflict.version_saved} -> {conflict.version_now})")
            finding.detail = detail
        for rec in tracer.records:
            if rec.kind == "inplace" and rec.graph and not rec.conflict:
                loc = self.location(rec)
                code = _quote(loc, rec.op)
                audit.findings.append(Finding(
                    id="inplace-on-graph-tensor", severity="info", location=loc,
                    message=f"{code}{f' at {loc.where}' if loc else ''} changes a tensor of the graph in "
                            "place; no saved tensor depended on it, so backward is correct",
                    detail={"op": rec.op, "calls": rec.calls}))

    def conflict_rerun(self) -> Conflict | None:
        """Re-run draw 0 with version-checking saved-tensor hooks to name both ends of a conflict."""
        audit = self.audit
        inputs = audit._inputs(0)
        if inputs is None:
            return None
        leaves = [v for v in inputs.values() if v.requires_grad] + list(audit.params.values())
        call = getattr(audit, "_call", None) or (lambda i: audit.fn(*i.values(), **audit.spec.kwargs))
        tracer = Tracer()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                with tracer.tracing(inputs, versions=True):
                    loss = call(inputs)
                    if isinstance(loss, torch.Tensor) and loss.requires_grad and leaves:
                        loss = loss.sum() if loss.dim() else loss
                        torch.autograd.grad(loss, leaves, allow_unused=True)
            except Exception:  # noqa: BLE001 - the conflict raising is the point
                pass
        return tracer.conflicts[0] if tracer.conflicts else None

    # -- device portability -----------------------------------------------------------------
    def portability(self) -> None:
        for rec in self.tracer.records:
            if rec.kind == "factory":
                loc = self.location(rec)
                finding = factory_finding(rec, loc, _quote(loc, rec.op))
                if finding is not None:
                    self.audit.findings.append(finding)

    # -- parameters nothing uses --------------------------------------------------------------
    def unused_parameters(self) -> None:
        module = self.audit.module
        if module is None:
            return
        for f in self.audit.findings:
            if f.id != "input-disconnected" or not (f.input or "").startswith("param:") or f.location:
                continue
            owner_path, _, attr = f.input.removeprefix("param:").rpartition(".")
            try:
                owner = module.get_submodule(owner_path) if owner_path else module
            except AttributeError:
                continue
            loc = self.declaration(type(owner), attr)
            if loc is not None:
                f.location = loc
                f.message += "; it is declared here and never used by forward"

    def declaration(self, cls: type, attr: str) -> Location | None:
        """The line of a class's source that assigns `self.<attr>` (in __init__, usually)."""
        try:
            lines, start = inspect.getsourcelines(cls)
            filename = inspect.getsourcefile(cls)
        except (OSError, TypeError):
            return None
        pattern = re.compile(rf"self\.{re.escape(attr)}\s*(:[^=]*)?=[^=]")
        for offset, text in enumerate(lines):
            if filename and pattern.search(text):
                return location_from([(filename, start + offset, cls.__name__)], self.root)
        return None

    # -- NaN / Inf --------------------------------------------------------------------------
    def _rerun(self, draw: int, mode: Any = None) -> tuple[Any, list[torch.Tensor]]:
        audit = self.audit
        inputs = audit._inputs(draw)
        if inputs is None:
            return None, []
        leaves = [v for v in inputs.values() if v.requires_grad] + list(audit.params.values())
        call = getattr(audit, "_call", None) or (lambda i: audit.fn(*i.values(), **audit.spec.kwargs))
        with mode if mode is not None else contextlib.nullcontext():
            loss = call(inputs)  # as the draw ran it (under autocast where the case asks)
        return loss, leaves

    def nonfinite_origin(self, findings: list[Finding]) -> None:
        """Re-run a draw with hooks on every backward node; the first to emit NaN/Inf is the origin."""
        origin = None
        for draw in range(min(self.audit.draws, 3)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    with torch.autograd.detect_anomaly(check_nan=False):
                        origin = self._first_nonfinite_node(draw)
                except Exception:  # noqa: BLE001 - the witness failing is no finding of ours
                    origin = None
            if origin is not None:
                break
        if origin is None:
            return
        node, grad_in, grad_out, parents = origin
        loc = location_from(frames_from_text("".join(node.metadata.get("traceback_", []) or [])), self.root)
        after = []  # the ops its incoming gradient came from, with their lines
        for parent in parents:
            ploc = location_from(frames_from_text("".join(parent.metadata.get("traceback_", []) or [])), self.root)
            after.append((parent.name(), ploc.where if ploc else None))
        facts = _boundary_facts(node, grad_in, grad_out, after)
        code = _quote(loc, node.name())
        where = f" at {loc.where}" if loc else ""
        for f in findings:
            track = self.audit.tracks.get(f.input)
            count = f" ({track.nonfinite} NaN/Inf in the gradient of `{f.input}`)" if track else ""
            f.message = f"{code}{where} {facts}{count}"
            f.location = loc or f.location
            f.detail = {**f.detail, "node": node.name(), "op": node.name().removesuffix("Backward0")}

    def _first_nonfinite_node(self, draw: int):
        loss, leaves = self._rerun(draw)
        if not isinstance(loss, torch.Tensor) or not loss.requires_grad or not leaves:
            return None
        loss = loss.sum() if loss.dim() else loss
        found: list[tuple] = []
        seen: set[int] = set()
        stack = [loss.grad_fn]
        handles = []
        parents: dict[int, list] = {}
        while stack:
            node = stack.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            stack.extend(n for n, _ in node.next_functions)
            for child, _ in node.next_functions:
                if child is not None:
                    parents.setdefault(id(child), []).append(node)
            if hasattr(node, "variable"):
                continue

            def hook(grad_in, grad_out, node=node):
                if found:
                    return
                bad = any(g is not None and not bool(torch.isfinite(g).all()) for g in grad_in)
                if bad and all(g is None or bool(torch.isfinite(g).all()) for g in grad_out):
                    found.append((node, grad_in, grad_out))

            handles.append(node.register_hook(hook))
        try:
            torch.autograd.grad(loss, leaves, allow_unused=True, retain_graph=True)
        finally:
            for h in handles:
                h.remove()
        return (*found[0], parents.get(id(found[0][0]), [])) if found else None

    def loss_nonfinite_origin(self, finding: Finding) -> None:
        """Re-run the first draw and find the first forward op whose output is NaN or Inf."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hit = first_nonfinite(lambda: self._rerun(0), self.root)
        if hit is None:
            return
        loc = hit.location
        what = "NaN" if "nan" in hit.what else "Inf"
        began = f"{hit.op} in {_quote(loc, hit.op)} at {loc.where}" if loc and loc.code else f"`{hit.op}`"
        finding.message += (f"; it began at {began}, whose result holds {what} ({hit.count} of {hit.total} "
                            "elements) while its inputs are finite")
        finding.location = loc
        finding.detail = {**finding.detail, "op": hit.op}


# What each backward node's saved tensors say about why its gradient is not finite:
# node -> (saved attribute, why, which elements, what they are called, what they are).
_BOUNDARY = {
    "SqrtBackward0": ("_saved_result", "has an infinite derivative at 0", lambda t: t == 0, "its input", "0"),
    "LogBackward0": ("_saved_self", "has an infinite derivative at 0", lambda t: t == 0, "its input", "0"),
    "Log2Backward0": ("_saved_self", "has an infinite derivative at 0", lambda t: t == 0, "its input", "0"),
    "Log10Backward0": ("_saved_self", "has an infinite derivative at 0", lambda t: t == 0, "its input", "0"),
    "PowBackward0": ("_saved_self", "has an infinite derivative at 0 for exponents below 1",
                     lambda t: t == 0, "the base", "0"),
    "AcosBackward0": ("_saved_self", "has an infinite derivative at -1 and 1",
                      lambda t: t.abs() >= 1, "its input", "at -1 or 1"),
    "AsinBackward0": ("_saved_self", "has an infinite derivative at -1 and 1",
                      lambda t: t.abs() >= 1, "its input", "at -1 or 1"),
    "DivBackward0": ("_saved_other", "divides by 0", lambda t: t == 0, "the divisor", "0"),
    "RsqrtBackward0": ("_saved_result", "has an infinite derivative at 0", lambda t: ~torch.isfinite(t),
                       "its input", "0"),
}


def _boundary_facts(node: Any, grad_in: tuple, grad_out: tuple, after: list[tuple[str, str | None]] = ()) -> str:
    """Say why a node's gradient is NaN/Inf: '... has an infinite derivative at 0; 8 of 64 elements ...'.

    `after`: the backward nodes its incoming gradient came from (name, line), to say what passed a
    zero gradient into an infinite derivative.
    """
    name = node.name()
    bad = next((g for g in grad_in if g is not None and not bool(torch.isfinite(g).all())), None)
    n_bad = int((~torch.isfinite(bad)).sum()) if bad is not None else 0
    total = bad.numel() if bad is not None else 0
    text = (f"is the first backward step ({name}) to produce NaN/Inf: {n_bad} of {total} elements of its "
            "gradient are not finite")
    entry = _BOUNDARY.get(name)
    if entry is not None:
        attr, why, test, subject, what = entry
        saved = getattr(node, attr, None)
        if isinstance(saved, torch.Tensor):
            saved = saved.detach()
            hits = test(saved)
            nan = torch.isnan(saved)
            k = int(hits.sum())
            if k:
                text = f"{why}; {k} of {saved.numel()} elements of {subject} {'is' if k == 1 else 'are'} {what}"
            elif bool(nan.any()):
                text = (f"is NaN where its input is outside its domain ({int(nan.sum())} of {saved.numel()} "
                        "elements), so its gradient is NaN there")
    incoming = next((g for g in grad_out if g is not None), None)
    if bad is not None and incoming is not None and incoming.shape == bad.shape:
        masked = (~torch.isfinite(bad)) & (incoming == 0)
        if bool(masked.any()):
            text += (f"; the incoming gradient there is 0 ({zero_incoming_hint(after)}), but 0 × Inf or 0 × NaN "
                     "is NaN in backward")
    return text
