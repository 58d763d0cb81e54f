"""Trace the forward pass of an audited loss: where the gradient path breaks, and why.

One `TorchFunctionMode` sees every Python-level torch call the loss makes (methods, `.data`,
`.item()`, `float()`, `__setitem__`, factories, grad-mode switches) in the audit's own forward
pass. Each tensor it sees gets a small tag (kept in the tracer's own table, never on the tensor):
which audited leaves its gradient path still reaches,
whether its values derive from an input, which recorded breaks its values passed through, and
which fixed-device factories it came from. An op whose output lost a leaf that its inputs reached
is a graph break, located at the user's line. When backward hits torch's version error, the draw
is re-run with saved-tensor hooks that pack each saved tensor with its version and check it on
unpack (a pack hook that just returned the tensor would silence torch's own version check), so the
conflict names both the saving op and the in-place op.

The tracer only records; `explain.explain_trace` turns its records into findings once the
verdicts are known.
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.overrides import TorchFunctionMode

from gradaudit.deadterm import combine
from gradaudit.frames import is_user_file
from gradaudit.portability import INDEX_ALLOWS_CPU, LIKE_OTHER, follows_device, gradient_args
from gradaudit.saturation import RANGE_OPS, outside, value_range

if TYPE_CHECKING:
    from gradaudit.losscall import DrawInputs

_EMPTY: frozenset = frozenset()
_Tensor = torch.Tensor  # looked up once: the traced ops test their arguments against it
_ref = weakref.ref
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

# How sure a cut of the gradient each kind of break is (lower: the likelier culprit); the words
# for each kind are in `explain`.
BREAK_RANK = {"detach": 0, "data": 0, "no_grad": 0, "escape": 0, "rebuild": 0, "cast": 1, "index": 1,
              "zero-derivative": 2, "compare": 3, "other": 2}
_INDEX_OPS = frozenset({"argmax", "argmin", "argsort", "topk", "sort", "max", "min", "kthvalue",
                        "median", "mode", "nonzero", "argwhere", "unique", "searchsorted", "bucketize",
                        "where", "multinomial"})
_COMPARE_OPS = frozenset({"gt", "lt", "ge", "le", "eq", "ne", "__gt__", "__lt__", "__ge__", "__le__",
                          "__eq__", "__ne__", "greater", "less", "greater_equal", "less_equal",
                          "not_equal", "isclose", "isnan", "isinf", "isfinite", "logical_and",
                          "logical_or", "logical_not", "logical_xor", "__and__", "__or__", "__xor__",
                          "__invert__", "signbit", "isneginf", "isposinf", "equal", "allclose"})

_MAX_LIST_SCAN = 64
# Calls whose gradient arguments are fewer than their tensors, and calls that may follow a tensor's
# device (gradaudit.portability): the only ones that pay for those checks.
_NARROWED = LIKE_OTHER | {"to"}
_FOLLOWING = frozenset({"to", "type_as"})
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
    """What the trace knows about one tensor, for the draw that made it (never changed once made:
    tensors whose facts agree share one)."""

    __slots__ = ("token", "grad", "derived", "breaks", "fixed", "terms", "simple")

    def __init__(self, token: object, grad: frozenset = _EMPTY, derived: bool = False,
                 breaks: frozenset = _EMPTY, fixed: frozenset = _EMPTY, terms: frozenset = _EMPTY) -> None:
        self.token = token
        self.grad = grad  # audited leaves its gradient path reaches
        self.derived = derived  # its values depend on an input
        self.breaks = breaks  # ids of recorded breaks its values passed through
        self.fixed = fixed  # ids of fixed-device factories it came from
        self.terms = terms  # breaks added to it as terms, since then only linearly (gradaudit.deadterm)
        # Nothing cut, no term, no fixed-device source: the fast path of `_plain_call` may pass it on.
        self.simple = not (breaks or fixed or terms)


@dataclass
class Record:
    """One recorded op at one line of user code (merged over calls and draws)."""

    id: int
    kind: str  # break / inplace / factory / made (a tensor from Python values) / range (a clamp)
    op: str
    frames: list[tuple[str, int, str]]
    why: str = ""
    lost: set[str] = field(default_factory=set)
    calls: int = 0
    graph: bool = False  # in-place: on a tensor in the graph
    conflict: bool = False
    met: bool = False  # factory: its result met an input-derived tensor
    device: str = ""
    # in-place: (draw token, storage, version before, version after) of each call
    events: list[tuple[object, int | None, int, int]] = field(default_factory=list)
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


_KINDS: dict[Any, tuple[str, str, bool]] = {}


_INDEX = "index"  # `plain` of an indexing op: plain unless its index holds a tensor


def _known(func: Any) -> tuple[str, str, bool | str]:
    """(kind, name, plain) of a torch function; `plain`: an op none of the tracer's special rules
    (device, range, narrowed arguments) concerns, which takes the fast path."""
    kind, name = _classify(func), _op_name(func)
    plain: bool | str = kind == "op" and name not in _NARROWED and name not in RANGE_OPS and name not in _FOLLOWING
    if plain and name in INDEX_ALLOWS_CPU:
        plain = _INDEX  # a CPU tensor index is the only rule of an indexing op
    return kind, name, plain


def _holds_tensor(index: Any) -> bool:
    """Whether an index may hold a tensor (a loop, not any(): this runs for every indexing op)."""
    if isinstance(index, torch.Tensor):
        return True
    if isinstance(index, (list, tuple)):
        for i in index:
            if isinstance(i, (torch.Tensor, list, tuple)):
                return True
    return False


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
        self.current: str = ""  # the op running now, which the version hooks name as a saver
        self.naming = False  # whether `current` is kept: only while the version hooks are on
        # The tags of this draw's tensors, by id, beside a weak reference that proves the id still
        # names the same tensor: the user's tensors (inputs, parameters) carry no mark of ours.
        self._tags: dict[int, tuple[weakref.ref, Tag]] = {}
        # Tensors the draw starts with on a fixed device (a module's plain attributes), each with
        # its `factory` record: whether they meet the inputs is what the portability witness asks.
        self.sources: list[tuple[torch.Tensor, Record]] = []
        self.modulating: set[int] = set()  # breaks whose values shape a live path (gradaudit.deadterm)
        self.loss_terms: set[int] = set()  # breaks added to the loss as terms, linearly since
        self.loss_modulating: set[int] = set()  # `modulating` as it stood when the loss returned

    # -- tags -------------------------------------------------------------------------------
    def tag_of(self, t: torch.Tensor) -> Tag | None:
        """The tag this draw gave `t`, if any."""
        entry = self._tags.get(id(t))
        if entry is None or entry[0]() is not t or entry[1].token is not self.token:
            return None
        return entry[1]

    def tag(self, t: torch.Tensor) -> Tag | None:
        tag = self.tag_of(t)
        if tag is not None:
            return tag
        if not t.requires_grad:
            return None
        if t.grad_fn is None:
            names = frozenset({self.leaf_names.get(id(t), f"@{id(t)}")})
        else:
            names = self._graph_leaves(t)
        tag = Tag(self.token, grad=names, derived=True)
        self.set_tag(t, tag)
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
        self._tags[id(t)] = (weakref.ref(t), tag)

    def tracing(self, inputs: Mapping[str, torch.Tensor], leaves: Mapping[str, torch.Tensor] | None = None,
                versions: bool = False) -> contextlib.AbstractContextManager[Any]:
        """Trace a draw: `inputs` are the tensors the loss receives, `leaves` the audited leaves
        behind them (and the module's parameters); with `versions`, also check saved tensors'
        versions.

        The version hooks are for the re-run of a draw whose backward hit torch's version error:
        the normal path leaves saved tensors to torch, whose own check then stands.
        """
        self.start_draw(inputs, leaves or {})
        if not versions:  # a verdict draw: the function mode alone, entered without a generator
            self.naming = False
            return _Mode(self)
        return self._versioned()

    @contextlib.contextmanager
    def _versioned(self):
        self.naming = True
        try:
            with torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack), _Mode(self):
                yield self
        finally:
            self.naming = False

    def start_draw(self, inputs: Mapping[str, torch.Tensor], leaves: Mapping[str, torch.Tensor]) -> None:
        self.token = object()
        self.escaped = _EMPTY
        self._tags = {}
        self.leaf_names = {id(t): name for name, t in leaves.items()}
        for name, t in inputs.items():
            if isinstance(t, torch.Tensor):
                self.leaf_names.setdefault(id(t), name)
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
        elif kind == "break" and BREAK_RANK[extra["why"]] < BREAK_RANK[rec.why]:
            rec.op, rec.why = op, extra["why"]
        rec.calls += 1
        return rec

    # -- the call ---------------------------------------------------------------------------
    def call(self, func: Any, args: tuple, kwargs: dict) -> Any:
        # The hot path of the traced draw: every torch call of the forward comes through here, so
        # the common case (tensors in, one tensor out, nothing cut) is kept to plain lookups.
        known = _KINDS.get(func)
        if known is None:
            known = _KINDS[func] = _known(func)
        kind, name, plain = known
        if kind == "skip":
            return func(*args, **kwargs)
        if plain is True:
            return self._plain_call(func, name, args, kwargs, args)
        if plain is _INDEX and (len(args) < 2 or not _holds_tensor(args[1])):
            # An index without tensors carries no tag and is not scanned (the rest still is:
            # index_put's values).
            return self._plain_call(func, name, args, kwargs, args[:1] + args[2:])
        tensors: list[Tag] = []
        if name in _NARROWED:
            scan, scan_kwargs = gradient_args(name, args, kwargs)
        else:
            scan, scan_kwargs = args, kwargs
        table, token = self._tags, self.token
        index_op = name in INDEX_ALLOWS_CPU
        for i, v in enumerate(scan):
            if isinstance(v, torch.Tensor):
                entry = table.get(id(v))
                if entry is not None and entry[1].token is token and entry[0]() is v:
                    tag = entry[1]
                else:
                    tag = self.tag(v)
                if tag is not None:
                    tensors.append(tag)
                if i == 1 and index_op and tensors and tensors[-1].fixed:
                    tensors[-1] = _unfixed(tensors[-1])  # a CPU index may index any device's tensor
            elif isinstance(v, (list, tuple)) and v:
                start = len(tensors)
                self._collect(v, tensors, 1)
                if i == 1 and index_op:
                    tensors[start:] = [_unfixed(t) for t in tensors[start:]]
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
            if tensors and name in _FOLLOWING and follows_device(name, args, kwargs):
                factory = _FOLLOWS  # moved to a device taken from a tensor: portable again
            self._after(func, name, kind, tensors, out, target, before, factory, scan)
        return out

    def _plain_call(self, func: Any, name: str, args: tuple, kwargs: dict, scan: tuple) -> Any:
        """`call` for the common op: no device, range, in-place or narrowed-argument rules apply,
        so only the tags of its tensors (those in `scan`, and in `kwargs`) and of its outputs are
        at stake (the same tags as the general path gives)."""
        tensors: list[Tag] = []
        table, token = self._tags, self.token
        for v in scan:
            if isinstance(v, _Tensor):
                entry = table.get(id(v))
                if entry is not None and entry[1].token is token and entry[0]() is v:
                    tensors.append(entry[1])
                else:
                    tag = self.tag(v)
                    if tag is not None:
                        tensors.append(tag)
            elif isinstance(v, (list, tuple)) and v:
                self._collect(v, tensors, 1)
        if kwargs:
            for v in kwargs.values():  # `_collect(kwargs.values(), tensors, 0)`, inline: most are options
                if isinstance(v, _Tensor):
                    tag = self.tag(v)
                    if tag is not None:
                        tensors.append(tag)
                elif isinstance(v, (list, tuple)) and v:
                    self._collect(v, tensors, 1)
        if self.naming:
            previous, self.current = self.current, name
            try:
                out = func(*args, **kwargs)
            finally:
                self.current = previous
        else:
            out = func(*args, **kwargs)
        if not tensors:
            return out
        if isinstance(out, _Tensor):
            # Nothing cut, no term and no fixed-device source in sight, and at most one gradient
            # path among the inputs: the output's tag is one of theirs, or theirs with `derived`.
            grad, derived, carrier = _EMPTY, False, None
            for t in tensors:
                if not t.simple:
                    break
                g = t.grad
                if g:
                    if grad and g is not grad:
                        break  # two paths meet: the union is the general path's
                    grad, carrier = g, carrier or t
                if t.derived:
                    derived = True
            else:
                requires = out.requires_grad
                if (requires and name not in ZERO_DERIVATIVE) if grad else not requires:
                    carrier = carrier or tensors[0]
                    if carrier.derived != derived or carrier.grad is not grad:
                        carrier = Tag(token, grad, derived)
                    table[id(out)] = (_ref(out), carrier)
                    return out
        self._after(func, name, "op", tensors, out, None, None, None, args)
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
            cut_in = bool(only.terms or (breaks_in and not grad_in))
        else:  # one pass over the tags: the unions, and whether a cut value or a term is in sight
            grad_in = breaks_in = fixed_in = _EMPTY
            derived = cut_in = False
            for t in tags:
                g, b, f = t.grad, t.breaks, t.fixed
                if g and g is not grad_in:
                    grad_in = g if not grad_in else grad_in | g
                if b:
                    if b is not breaks_in:
                        breaks_in = b if not breaks_in else breaks_in | b
                    if not g:
                        cut_in = True
                if f and f is not fixed_in:
                    fixed_in = f if not fixed_in else fixed_in | f
                if t.derived:
                    derived = True
                if t.terms:
                    cut_in = True
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
        terms = self._terms(name, tags, args, out) if grad_in and cut_in else _EMPTY
        if kind == "inplace" and target is not None:
            self._inplace(func, name, target, before, grad_in, breaks_in, derived, fixed_in, terms)
            return
        if isinstance(out, torch.Tensor):
            outs: Any = (out,)
        elif isinstance(out, (tuple, list)):
            outs = [o for o in out if isinstance(o, torch.Tensor)]
        else:
            outs = ()
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
            first = tags[0] if tags else None
            terms_out = terms if grad_out else _EMPTY
            if (first is not None and grad_out is first.grad and brk is first.breaks and fixed is first.fixed
                    and derived == first.derived and terms_out == first.terms):
                self._tags[id(o)] = (weakref.ref(o), first)  # nothing changed: share the tag (immutable)
            else:
                self._tags[id(o)] = (weakref.ref(o), Tag(self.token, grad_out, derived, brk, fixed, terms_out))

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
        rec.events.append((self.token, storage, version_before, target._version))

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
            for token, where, v_before, _ in rec.events:
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
    """Trace the first draws' forward passes of each case; `take()` hands over the records."""

    def __init__(self, traced_draws: int = TRACED_DRAWS) -> None:
        self.tracer = Tracer()
        self.traced_draws = traced_draws
        self.tracing = False
        self._fresh = True  # `tracer` has traced nothing yet (a case's draw 0 may start on it)

    def draw_context(self, draw: int, inputs: DrawInputs):
        """Trace draws 0..traced_draws-1; the draws that only confirm a zero pattern run bare."""
        if draw == 0:
            if not self._fresh:
                self.tracer = Tracer()
            self._fresh = False
        self.tracing = draw < self.traced_draws
        if not self.tracing:
            return contextlib.nullcontext()
        return self.tracer.tracing(inputs.received, inputs.leaves, versions=False)

    def loss_returned(self, loss: Any) -> None:
        """Note which breaks the loss's values passed through (Python values: every escape)."""
        if not self.tracing:
            return
        tracer = self.tracer
        tag = tracer.tag_of(loss) if isinstance(loss, torch.Tensor) else None
        found = set(tag.breaks) if tag is not None else set()
        if tag is not None:
            tracer.loss_terms |= tag.terms
        # What shaped the gradient up to here (gradaudit.deadterm).
        tracer.loss_modulating |= tracer.modulating
        # Python values carry no tag: any value that left as one may have reached the loss.
        found |= tracer.escaped
        tracer.loss_breaks = found if tracer.loss_breaks is None else tracer.loss_breaks | found

    def take(self) -> Tracer:
        """The records of the case just audited; the next case starts a fresh trace."""
        tracer, self.tracer = self.tracer, Tracer()
        self._fresh = True
        tracer._tags = {}
        return tracer


def default_observers() -> list[Any]:
    """The observers every audit runs with: the forward trace that explains findings."""
    return [TraceObserver()]
