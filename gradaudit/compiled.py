"""torch.compile parity: audit a loss under a compile backend, draw by draw beside its eager twin.

Design. A compiled entry (`case[compile=BACKEND]`) is a normal audit whose loss function is a
`CompiledLoss`: every verdict (zero, partial, NaN gradients) comes from the compiled loss's own
gradients. Besides, each verdict draw recomputes the eager loss and gradients of the same draw (same
inputs, same seeded random state, same autocast) in the same process and compares them with the
compiled ones, with the case's tolerances raised for low precision as CPU-vs-device parity does.

- Compiled once per entry, on the first call, and reused for every draw; dynamo's caches are
  reset first, so an entry never reuses (or runs out of) another entry's compiled code.
- Before compiling, `torch._dynamo.explain` traces the eager function once: its graph breaks
  become `compile-graph-break` findings at the user's line.
- gradaudit's tracer is a TorchFunctionMode, which dynamo cannot run compiled code under. In the
  traced draw the eager function (the draw's reference) runs under it, so the trace and the
  explanations are the eager code's, at the user's lines; the compiled function then runs with
  the modes set aside, from the same random state, and its result, carrying the trace's tag of
  the eager one, is what the audit judges. Witnesses that re-run a draw to explain a finding (calls
  outside `start_draw`) run the eager function.
- Randomness: the first eager call notes every aten op tagged `nondeterministic_seeded` (dropout's
  bernoulli, rand, randn, randperm, multinomial). `eager` and `aot_eager` run those ops as eager
  does, so draws match; Inductor is compiled with `fallback_random=True` where the loss draws
  random numbers, so it uses eager's random kernels too. Any other backend is compared only when its
  first draw's loss equals eager's; otherwise the comparison is skipped and results.json says why.
- A compiled run that raises where the eager run of the same draw does not is `compile-error`;
  where eager raises too, the finding is eager's (`loss-error`, `backward-error`), as in the eager
  entry. Compiling traces the backward, so it can raise what only eager's backward raises (a
  version-counter conflict): then the entry audits the eager loss and reports eager's failure.
"""

from __future__ import annotations

import contextlib
import difflib
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gradaudit.findings import default_severity
from gradaudit.frames import location_from
from gradaudit.losscall import DrawInputs, DrawOutcome, kept_random_state, pick_loss
from gradaudit.model import Finding, Location
from gradaudit.parity import Mismatch, compare_draw, tolerances

# Backends that run aten's random ops as eager does (Inductor: with fallback_random, set below).
FAITHFUL_RANDOM = frozenset({"eager", "aot_eager", "inductor"})
_MAX_BREAKS = 20


def available_backends() -> list[str]:
    """Every registered torch.compile backend name (the debug ones such as aot_eager too)."""
    return sorted(torch._dynamo.list_backends(exclude_tags=()))


class UnknownBackend(Exception):
    """A backend name that no one registered (checked after the loss module is imported)."""


def check_backend(name: str) -> None:
    """Raise UnknownBackend, with the registered names, where `name` is not one of them."""
    names = available_backends()
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UnknownBackend(f"unknown torch.compile backend {name!r}{hint}; registered backends: "
                         f"{', '.join(names)}. A backend of your own must be registered (with "
                         "torch._dynamo.register_backend) by the loss's module, or one it imports")


class CompileFailure(Exception):
    """The compiled loss raised where the eager loss of the same call did not."""

    def __init__(self, stage: str, backend: str, cause: BaseException) -> None:
        super().__init__(f"torch.compile(backend={backend!r}) raised {type(cause).__name__} in the "
                         f"{stage}: {_first_line(str(cause))}")
        self.stage = stage
        self.cause = cause


def _first_line(text: str, limit: int = 300) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = next((line for line in lines if not line.startswith("backend=")), lines[0] if lines else "")
    return first if len(first) <= limit else first[: limit - 1] + "…"


@contextlib.contextmanager
def _modes_aside():
    """Pop every TorchFunctionMode (dynamo cannot run compiled code under one); put them back after."""
    popped = []
    while torch._C._len_torch_function_stack():
        popped.append(torch._C._pop_torch_function_stack())
    try:
        yield popped
    finally:
        for mode in reversed(popped):
            torch._C._push_on_torch_function_stack(mode)


class _RandomOps(TorchDispatchMode):
    """Note the aten ops that draw random numbers, with the user's line of the first of each."""

    def __init__(self, root: Path | None) -> None:
        super().__init__()
        self.root = root
        self.hits: dict[str, Location | None] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if torch.Tag.nondeterministic_seeded in func.tags:
            name = str(func.overloadpacket)
            if name not in self.hits:
                # Without this frame: the user's line is the innermost user frame after ours.
                frames = [(f.filename, f.lineno or 0, f.name) for f in traceback.extract_stack()[:-1]]
                self.hits[name] = location_from(frames, self.root)
        return func(*args, **(kwargs or {}))


def _tensors(obj: Any) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(obj) if isinstance(t, torch.Tensor)]


def _copies(args: tuple) -> tuple:
    """The inputs again, for the compiled run: a differentiable copy (gradients still reach the
    audit's leaves) that the eager run's in-place ops cannot touch."""
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


@dataclass
class _Reference:
    """The eager run of one verdict call: its output (graph alive until its gradients are taken)."""

    out: Any = None
    leaves: dict[str, torch.Tensor] = field(default_factory=dict)
    error: BaseException | None = None
    stage: str = "forward"
    result: tuple[torch.Tensor, dict[str, torch.Tensor | None]] | None = None

    def settle(self) -> None:
        """Take the eager gradients (once); an exception is this reference's error."""
        if self.result is not None or self.error is not None:
            return
        loss, _ = pick_loss(self.out)
        self.out = None
        if not isinstance(loss, torch.Tensor):
            self.error, self.stage = TypeError("the eager loss is not a tensor"), "forward"
            return
        if loss.dim() != 0 or loss.numel() != 1:
            loss = loss.sum()
        grads: dict[str, torch.Tensor | None] = {}
        try:
            if loss.requires_grad and self.leaves:
                got = torch.autograd.grad(loss, list(self.leaves.values()), allow_unused=True)
                grads = {n: g.detach() if g is not None else None
                         for n, g in zip(self.leaves, got, strict=True)}
        except Exception as exc:  # noqa: BLE001 - the eager backward's failure is a fact to report
            self.error, self.stage = exc, "backward"
            return
        self.result = (loss.detach(), grads)


class CompiledLoss:
    """The loss under `torch.compile(backend=...)`: compiled on the first call, reused after.

    It observes the draws like the tracer: inside a draw's context, the call also runs the eager
    loss of that draw; `draw_done(outcome)` after its backward compares the two.
    """

    def __init__(self, fn: Any, backend: str, input_names: list[str], params: dict[str, torch.Tensor],
                 root: Path | None, rtol: float, atol: float, dtypes: list[str],
                 generator: torch.Generator | None = None) -> None:
        check_backend(backend)
        self.eager = fn
        self.generator = generator  # the audited device's random generator (None on the CPU)
        self.backend = backend
        self.input_names = input_names
        self.params = params
        self.root = root
        self.rtol, self.atol, self.dtypes = rtol, atol, list(dtypes)
        self.compiled: Any = None
        self.compile_s: float | None = None
        self.explain_s: float | None = None
        self.graphs: int | None = None
        self.breaks: list[tuple[str, Location | None]] = []
        self.explain_error: str | None = None
        self.random: dict[str, Location | None] = {}
        self.fallback_random = False
        self.compare = True
        self.not_compared: str | None = None
        self.compared_draws = 0
        self.mismatches: dict[str, tuple[int, Mismatch, float, float]] = {}
        self.failure: CompileFailure | None = None
        self.eager_failed: str | None = None  # a draw where eager raised and the compiled loss did not
        self.like_eager: str | None = None  # compiling raised what eager's backward raises
        self._armed = False
        self._pending: _Reference | None = None
        self._backward_started: float | None = None

    # -- the draw loop's hooks (an observer, like the tracer) --------------------------------
    @contextlib.contextmanager
    def draw_context(self, draw: int, inputs: DrawInputs):
        """Around verdict draw `draw`: its call runs the eager loss beside the compiled one."""
        self._armed, self._pending = not self.like_eager, None
        try:
            yield
        finally:
            self._armed = False

    def loss_returned(self, value: Any) -> None:
        """Nothing to note: the comparison waits for the gradients."""

    def draw_done(self, out: DrawOutcome) -> None:
        """Compare a verdict draw's compiled loss and gradients with the eager ones."""
        self._compare(out.draw, out.loss, out.grads)

    def _compare(self, draw: int, loss: torch.Tensor, grads: dict[str, torch.Tensor | None]) -> None:
        if self._backward_started is not None:
            self.compile_s = (self.compile_s or 0.0) + time.perf_counter() - self._backward_started
            self._backward_started = None
        ref, self._pending = self._pending, None
        if ref is None or not self.compare:
            return
        ref.settle()
        if ref.result is None:  # eager's own failure: the eager entry reports it
            if self.eager_failed is None:
                self.eager_failed = (f"the eager loss raised {type(ref.error).__name__} in the {ref.stage} of "
                                     f"draw {draw} where the compiled one did not: {_first_line(str(ref.error))}")
            return
        got = (loss.detach(), {n: g.detach() if g is not None else None for n, g in grads.items()})
        if draw == 0 and self.random and self.backend not in FAITHFUL_RANDOM:
            rtol, atol = self._tolerances(got[0])
            if compare_draw((ref.result[0], {}), (got[0], {}), rtol, atol):
                self.compare = False
                self.not_compared = (f"the loss draws random numbers ({self._random_text()}) and backend "
                                     f"{self.backend!r} draws them differently from eager (the first draw's "
                                     "loss differs), so values are not compared")
                return
        rtol, atol = self._tolerances(got[0])
        self.compared_draws += 1
        for mismatch in compare_draw(ref.result, got, rtol, atol):
            self.mismatches.setdefault(mismatch.tensor, (draw, mismatch, rtol, atol))

    # -- the call ---------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self._armed or self.like_eager:
            # A witness re-running a draw to explain a finding: the eager code explains it (and a
            # loss whose compile fails as its eager backward does is audited as eager).
            return self.eager(*args, **kwargs)
        self._armed = False
        traced = torch._C._len_torch_function_stack() > 0
        first = self.compiled is None
        with _modes_aside():
            copies = _copies(args)
        # The eager run: the draw's reference, what the tracer sees, the random ops. The random
        # state is restored after it, so the compiled run draws from the same state.
        with kept_random_state(self.generator):
            detector = _RandomOps(self.root) if first else None
            try:
                with detector if detector is not None else contextlib.nullcontext():
                    eager_out = self.eager(*args, **kwargs)  # an exception here is eager's finding
            except Exception:
                if detector is None:
                    raise
                detector = None
                eager_out = self.eager(*args, **kwargs)  # again, for a traceback without the detector
        if detector is not None:
            self.random = detector.hits
        self._pending = _Reference(out=eager_out, leaves=self._leaves(args))
        with _modes_aside() as modes:
            if first:
                self._explain(_copies(copies), kwargs)
            try:
                started = time.perf_counter()
                out = self._compiled()(*copies, **kwargs)
                if first:
                    self.compile_s = time.perf_counter() - started
                    self._backward_started = time.perf_counter()
            except Exception as exc:
                compiling = isinstance(exc, torch._dynamo.exc.TorchDynamoException)
                self._pending.settle()
                if self._pending.error is not None and self._pending.stage == "backward":
                    # Compiling traces the backward too: it raised what eager's backward raises.
                    self.like_eager = (f"torch.compile raised {type(exc).__name__} as the eager loss's "
                                       f"backward does ({_first_line(str(self._pending.error), 160)}): "
                                       "the entry reports the eager failure")
                    return self.eager(*args, **kwargs)
                self.failure = CompileFailure("compile" if compiling else "forward", self.backend, exc)
                raise self.failure from exc
            if traced:
                _carry_tags(modes, eager_out, out)
        return out

    def _leaves(self, args: tuple) -> dict[str, torch.Tensor]:
        leaves = {n: a for n, a in zip(self.input_names, args, strict=False)
                  if isinstance(a, torch.Tensor) and a.requires_grad}
        return {**leaves, **self.params}

    def _compiled(self) -> Any:
        if self.compiled is None:
            torch._dynamo.reset()  # this entry's code only: no cache of another entry, no recompile limit
            self.compiled = torch.compile(self.eager, backend=self.backend)
            if self.random and self.backend == "inductor":
                self.fallback_random = True
                self.compiled = _with_fallback_random(self.compiled)
        return self.compiled

    def _explain(self, args: tuple, kwargs: dict) -> None:
        """Trace the eager function with dynamo once: its graphs and graph breaks, with user lines."""
        started = time.perf_counter()
        try:
            with kept_random_state(self.generator):
                explained = torch._dynamo.explain(self.eager)(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the real compile reports its own failure
            self.explain_error = f"{type(exc).__name__}: {_first_line(str(exc))}"
            return
        finally:
            self.explain_s = time.perf_counter() - started
        self.graphs = explained.graph_count
        seen = set()
        for reason in explained.break_reasons:
            frames = [(f.filename, f.lineno or 0, f.name) for f in reason.user_stack]
            location = location_from(frames, self.root)
            text = _first_line(reason.reason, 200)
            key = (text, location.where if location else None)
            if key not in seen and len(seen) < _MAX_BREAKS:
                seen.add(key)
                self.breaks.append((text, location))

    def _tolerances(self, loss: torch.Tensor) -> tuple[float, float]:
        dtypes = self.dtypes + [str(loss.dtype).removeprefix("torch.")]
        return tolerances(self.rtol, self.atol, dtypes)

    def _random_text(self) -> str:
        parts = []
        for op, loc in list(self.random.items())[:3]:
            parts.append(f"{op} at {loc.where}" if loc else op)
        return ", ".join(parts)

    # -- findings ---------------------------------------------------------------------------
    def review(self, findings: list[Finding]) -> list[Finding]:
        """The entry's findings with the compile ones added, and a compiled run's own failure
        (where the eager run of that draw worked) turned into compile-error."""
        out = list(findings)
        ours: list[Finding] = []  # the compile findings lead: they say why the others differ from eager
        failed = next((f for f in out if f.id == "loss-error"), None)
        if failed is not None and self.failure is not None:
            out[out.index(failed)] = self._error_finding(self.failure.stage, self.failure.cause,
                                                         failed.location)
        broken = next((f for f in out if f.id in ("backward-error", "inplace-version-conflict")), None)
        if broken is not None and self._pending is not None:
            ref, self._pending = self._pending, None
            ref.settle()
            if ref.error is None:  # eager's backward of that draw runs: the compiled one is at fault
                out[out.index(broken)] = self._error_finding("backward", None, None,
                                                             detail_message=broken.message)
        for tensor, (draw, mismatch, rtol, atol) in self.mismatches.items():
            detail = mismatch.detail("eager", f"compile:{self.backend}", rtol, atol)
            detail.update(backend=self.backend, draw=draw)
            ours.append(_finding("compile-mismatch", self._mismatch_text(mismatch, draw, rtol, atol),
                                 input=None if tensor == "loss" else tensor, detail=detail))
        for reason, location in self.breaks:
            where = f"`{location.code}`" if location and location.code else "a line of the loss"
            out.append(_finding("compile-graph-break",
                                f"torch.compile splits the loss into {self.graphs} graphs: dynamo breaks "
                                f"the graph at {where}: {reason}", location=location,
                                detail={"reason": reason, "graphs": self.graphs, "backend": self.backend}))
        return ours + out

    def _mismatch_text(self, m: Mismatch, draw: int, rtol: float, atol: float) -> str:
        what = "the loss" if m.tensor == "loss" else f"the gradient of {m.tensor}"
        head = f"under torch.compile(backend={self.backend!r}) {what} differs from eager"
        if m.note:
            return f"{head}: {m.note.replace('the device', 'the compiled loss')} (draw {draw})"
        where = f" at [{', '.join(map(str, m.index))}]" if m.index else ""
        count = (f"; {m.mismatched} of {m.numel} elements are outside rtol={rtol:g}, atol={atol:g}"
                 if m.numel > 1 else f" (rtol={rtol:g}, atol={atol:g})")
        return (f"{head}: the largest difference is {m.max_abs_diff:.3g}{where} (eager {m.reference:.6g}, "
                f"compiled {m.value:.6g}){count}, draw {draw}")

    def _error_finding(self, stage: str, cause: BaseException | None, location: Location | None,
                       detail_message: str = "") -> Finding:
        if cause is not None:
            doing = "while compiling the loss" if stage == "compile" else "running the compiled forward"
            text = (f"torch.compile(backend={self.backend!r}) failed {doing} ({type(cause).__name__}): "
                    f"{_first_line(str(cause))}; the eager loss runs")
            frames = [(f.filename, f.lineno or 0, f.name) for f in traceback.extract_tb(cause.__traceback__)]
            location = location_from(frames, self.root) or location
        else:
            text = (f"the compiled ({self.backend}) backward raised where eager's runs: "
                    f"{detail_message.removeprefix('backward raised ')}")
        return _finding("compile-error", text, location=location,
                        detail={"backend": self.backend, "stage": stage,
                                **({"exception": type(cause).__name__} if cause is not None else {})})

    def notes(self) -> list[str]:
        """What a reader of the entry must know: a comparison skipped, graph breaks not listed."""
        notes = [f"gradaudit: {self.not_compared}"] if self.not_compared else []
        if self.eager_failed:
            notes.append(f"gradaudit: {self.eager_failed}; that draw is not compared")
        if self.like_eager:
            notes.append(f"gradaudit: {self.like_eager}")
        if self.explain_error:
            notes.append(f"gradaudit: could not list the graph breaks (torch._dynamo.explain raised "
                         f"{self.explain_error})")
        return notes

    def info(self) -> dict[str, Any]:
        """The `compile` block of the entry's results.json."""
        data: dict[str, Any] = {
            "backend": self.backend,
            "compile_s": round(self.compile_s, 3) if self.compile_s is not None else None,
            "explain_s": round(self.explain_s, 3) if self.explain_s is not None else None,
            "graphs": self.graphs,
            "graph_breaks": [{"reason": r, "where": loc.where if loc else None} for r, loc in self.breaks],
            "compared_draws": self.compared_draws,
        }
        if self.random:
            data["random_ops"] = [{"op": op, "where": loc.where if loc else None}
                                  for op, loc in self.random.items()]
            data["fallback_random"] = self.fallback_random
        if self.not_compared:
            data["not_compared"] = self.not_compared
        if self.eager_failed:
            data["eager_failed"] = self.eager_failed
        if self.like_eager:
            data["like_eager"] = self.like_eager
        if self.explain_error:
            data["explain_error"] = self.explain_error
        return data


def _finding(finding_id: str, message: str, *, input: str | None = None, location: Location | None = None,
             detail: dict[str, Any] | None = None) -> Finding:
    return Finding(id=finding_id, severity=default_severity(finding_id), message=message, input=input,
                   location=location, detail=detail or {})


def _with_fallback_random(compiled: Any) -> Any:
    """Compile (on each call that compiles) with Inductor's eager random kernels, so dropout masks
    match eager's; the switch is on only during the call."""

    def call(*args: Any, **kwargs: Any) -> Any:
        with torch._inductor.config.patch(fallback_random=True):
            return compiled(*args, **kwargs)

    return call


def _carry_tags(modes: list[Any], eager_out: Any, out: Any) -> None:
    """Give the compiled result the tracer's tag of the eager one, so the trace explains it."""
    pairs = list(zip(_tensors(eager_out), _tensors(out), strict=False))
    for mode in modes:
        tracer = getattr(mode, "tracer", None)
        if tracer is None or not hasattr(tracer, "tag") or not hasattr(tracer, "set_tag"):
            continue
        for eager_t, compiled_t in pairs:
            tag = tracer.tag(eager_t)
            if tag is not None:
                tracer.set_tag(compiled_t, tag)
