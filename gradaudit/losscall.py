"""The one place that runs the user's loss: draw k's inputs, its seeding, warnings capture, autocast.

Every call of the loss goes through a `LossCall`: the draws, every re-run that explains one (the
witnesses), the CPU reference of a parity check and gradcheck. So a re-run sees the inputs and the
random numbers of the draw it explains, and the caller's random state is as it was afterwards.

A draw, as training calls a loss:
- its inputs are made on the CPU from (seed, case, draw), then moved to the device as leaves that
  the audit owns; a differentiable input reaches the loss as a non-leaf copy of its leaf (as a
  model output would), unless its spec says `leaf: true`; gradients are read from the leaves;
- the loss's own randomness (dropout, sampled negatives) comes from torch's CPU generator, the
  audited device's generator, Python's `random` and numpy's global RNG, all seeded from the draw
  and restored to the caller's state afterwards;
- warnings are recorded (never raised by a caller's "error" filter), torch's warn-once warnings
  show every time, and the forward runs under autocast where the case asks;
- a loss that returns `(loss, logs)` or `{"loss": ...}` is audited on that tensor.
"""

from __future__ import annotations

import _random
import contextlib
import dataclasses
import random
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gradaudit.config import CaseSpec, InputSpec
from gradaudit.devices import DeviceLayer
from gradaudit.inputs import draw_seed, make_inputs, to_device, torch_dtype
from gradaudit.loading import resolve

try:  # numpy is optional; a loss that samples with it gets it seeded per draw too
    import numpy
except Exception:  # noqa: BLE001 - a broken numpy install is as good as none here
    numpy = None

LOSS_RNG_SALT = 0x5EED  # the loss's own random stream differs from its inputs'
_NO_CONTEXT = contextlib.nullcontext()  # stateless: one serves every run


class LoadError(Exception):
    """The loss cannot be imported or built: the case is an error, worded by `what`."""

    def __init__(self, what: str, cause: BaseException) -> None:
        super().__init__(what)
        self.what = what
        self.cause = cause


# -- randomness ------------------------------------------------------------------------------

# The instance behind `random.random()`, `random.sample()`...: for an int seed, `random.seed(seed)`
# is its C seeding and a reset of the cached gauss value, which `seed_all` does without the Python
# method's type checks around them (a third of the draw's seeding time where caches are cold).
_PYTHON_RNG = random._inst
_seed_python = _random.Random.seed


def seed_all(seed: int, device_generator: torch.Generator | None = None) -> None:
    """Seed every random stream a loss may draw from: torch's CPU generator and the audited
    device's, Python's `random` and numpy's global RNG."""
    torch.default_generator.manual_seed(seed)
    if device_generator is not None:
        device_generator.manual_seed(seed)
    _seed_python(_PYTHON_RNG, seed)  # random.seed(seed), as said above
    _PYTHON_RNG.gauss_next = None
    if numpy is not None:
        numpy.random.seed(seed & 0xFFFFFFFF)


# In a worker process there is no caller whose random state must come back, and saving numpy's
# alone costs about 0.2 ms a case (as much as a small case's two draws). There each case instead
# leaves every stream reseeded to one fixed state (`reseed_between_cases`), so that whatever a loss
# draws unseeded never depends on which cases the worker ran before it.
_FIXED_STATE_SEED = 0
_reseed_between_cases = False


def reseed_between_cases() -> None:
    """Switch this process (a worker) from keeping the caller's random state to starting every
    case from one fixed state; seed it now, for the first case."""
    global _reseed_between_cases
    _reseed_between_cases = True
    seed_all(_FIXED_STATE_SEED)


@contextlib.contextmanager
def callers_random_state(device_generator: torch.Generator | None = None) -> Iterator[None]:
    """What a case leaves behind in the streams: the caller's state, given back (in a worker: the
    one fixed state every case starts from)."""
    if not _reseed_between_cases:
        with kept_random_state(device_generator):
            yield
        return
    try:
        yield
    finally:
        seed_all(_FIXED_STATE_SEED, device_generator)


@contextlib.contextmanager
def kept_random_state(device_generator: torch.Generator | None = None) -> Iterator[None]:
    """Give the streams that `seed_all` seeds back to their state on the way in (a compiled
    entry's run draws from the state its eager twin drew from)."""
    cpu = torch.default_generator.get_state()
    device = device_generator.get_state() if device_generator is not None else None
    python = random.getstate()
    np_state = numpy.random.get_state() if numpy is not None else None
    try:
        yield
    finally:
        torch.default_generator.set_state(cpu)
        if device_generator is not None:
            device_generator.set_state(device)
        random.setstate(python)
        if numpy is not None:
            numpy.random.set_state(np_state)


def captured_warnings() -> AbstractContextManager[list[warnings.WarningMessage]]:
    """Record the loss's warnings, every time (torch's warn-once ones too), never raising them."""
    return _CapturedWarnings()


class _CapturedWarnings:
    """`captured_warnings()`, entered around every draw: a plain class, not a generator."""

    def __enter__(self) -> list[warnings.WarningMessage]:
        self._catching = warnings.catch_warnings(record=True)
        caught = self._catching.__enter__()
        try:
            warnings.simplefilter("always")
            # torch warns some things once per process: which case would see them would then
            # depend on which worker ran what before it.
            self._always = torch.is_warn_always_enabled()
            torch.set_warn_always(True)
        except BaseException:
            self._catching.__exit__(*sys.exc_info())
            raise
        return caught

    def __exit__(self, *exc_info: Any) -> None:
        try:
            torch.set_warn_always(self._always)
        finally:
            self._catching.__exit__(*exc_info)


def pick_loss(out: Any) -> tuple[Any, str | None]:
    """The loss tensor in what a loss returned, and where it was found.

    Many losses return `(loss, logs)` or `{"loss": loss, ...}`; training backpropagates the first
    item or the "loss" entry, so that is what is audited.
    """
    if isinstance(out, dict) and isinstance(out.get("loss"), torch.Tensor):
        return out["loss"], "['loss']"
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0], "[0]"
    return out, None


# -- one draw --------------------------------------------------------------------------------

@dataclass
class DrawInputs:
    """One draw's tensors: what the loss receives, and the leaves the audit owns."""

    received: dict[str, torch.Tensor]  # input name -> the tensor passed to the loss, in order
    leaves: dict[str, torch.Tensor]  # audited name -> its leaf (inputs that require grad, parameters)


@dataclass
class DrawOutcome:
    """What one call of the loss did."""

    draw: int
    inputs: DrawInputs | None = None
    value: Any = None  # what the loss returned (the loss tensor picked out of a tuple or dict)
    picked: str | None = None  # where it was picked: "[0]", "['loss']", or None
    loss: torch.Tensor | None = None  # with grads: the scalar backward runs on (value, or value.sum())
    backward: bool = False  # backward ran to the end; `grads` holds the leaves' gradients
    grads: dict[str, torch.Tensor | None] = field(default_factory=dict)
    error: Exception | None = None
    stage: str = ""  # where `error` happened: "inputs", "forward" or "backward"
    warnings: list[warnings.WarningMessage] = field(default_factory=list)


# A context entered around the forward and backward of a draw, made from its inputs (a tracer, a
# scan, anomaly mode).
Mode = Callable[[DrawInputs], AbstractContextManager[Any]]


@dataclass
class LossCall:
    """A case's loss, ready to call: `run(draw, grads=...)` is one draw, as the audit sees it."""

    fn: Any  # the function or the built module
    spec: CaseSpec
    device_name: str
    device: torch.device
    layer: DeviceLayer
    root: Path
    autocast: str | None = None  # the dtype name the forward autocasts to, or None
    module: torch.nn.Module | None = None
    params: dict[str, torch.Tensor] = field(default_factory=dict)  # "param:name" -> trainable parameter
    draw_name: str = ""  # the name that seeds draws ("" means spec.draw_name)
    # Inside `keeping_random_state()`: the caller's state is kept once around many runs.
    _holding: bool = field(default=False, init=False, repr=False)
    # Inside `holding()`: the list the warnings of its runs are recorded in, captured once.
    _caught: list[warnings.WarningMessage] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        # Read once a call: each draw asks for them (the spec does not change under a call).
        self._seed_name = self.draw_name or self.spec.draw_name
        self._factory_inputs = any(s.init == "factory" for s in self.spec.inputs)

    def replace(self, **changes: Any) -> LossCall:
        """This call with some fields changed (gradcheck's float64 copy of the module, say)."""
        return dataclasses.replace(self, **changes)

    @property
    def specs(self) -> list[InputSpec]:
        return self.spec.inputs

    def input_seed(self, draw: int) -> int:
        """The seed of draw `draw`'s inputs."""
        return draw_seed(self.spec.seed, self._seed_name, draw)

    def seed_of(self, draw: int) -> int:
        """The seed of the loss's own randomness in draw `draw`."""
        return self.input_seed(draw) ^ LOSS_RNG_SALT

    def inputs(self, draw: int) -> DrawInputs:
        """Draw `draw`'s inputs on the device: fresh leaves, and what the loss receives."""
        cpu = make_inputs(self.specs, self.spec.seed, self._seed_name, draw, self.root)
        return self.place(cpu)

    def place(self, cpu: Mapping[str, torch.Tensor]) -> DrawInputs:
        """CPU-made inputs (a draw's, or one changed from it) on the device, as a draw receives them."""
        leaves = to_device(dict(cpu), self.specs, self.device)
        received = {}
        for spec in self.specs:
            t = leaves[spec.name]
            # A model output is a non-leaf: in-place ops on it work, and its grad reaches the leaf.
            received[spec.name] = t.clone() if t.requires_grad and not spec.leaf else t
        audited = {k: v for k, v in leaves.items() if v.requires_grad}
        return DrawInputs(received=received, leaves={**audited, **self.params})

    def _forward(self, received: Mapping[str, torch.Tensor]) -> tuple[Any, str | None]:
        """The one line that calls the user's loss (under autocast where asked)."""
        with self.layer.forward_context(self.device_name, self.autocast):
            return pick_loss(self.fn(*received.values(), **self.spec.kwargs))

    @contextlib.contextmanager
    def keeping_random_state(self) -> Iterator[None]:
        """Keep the caller's random state once around many runs (a case's draws), so that each run
        only seeds: saving and restoring numpy's and Python's states costs more than a small loss's
        forward. Nothing between the runs draws random numbers, and every run seeds all of them."""
        if self._holding:
            yield
            return
        with callers_random_state(self.layer.generator(self.device)):
            self._holding = True
            try:
                yield
            finally:
                self._holding = False

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Around a case's draws: the caller's random state kept once (`keeping_random_state`),
        and the warnings captured once, each run still getting those raised while it ran."""
        if self._caught is not None:
            yield
            return
        with self.keeping_random_state(), captured_warnings() as caught:
            self._caught = caught
            try:
                yield
            finally:
                self._caught = None

    def _kept(self, generator: torch.Generator | None) -> AbstractContextManager[Any]:
        return contextlib.nullcontext() if self._holding else callers_random_state(generator)

    def run(self, draw: int, *, grads: bool, mode: Mode | None = None,
            before_backward: Callable[[torch.Tensor], Any] | None = None,
            forward_mode: Mode | None = None) -> DrawOutcome:
        """Run draw `draw`: its inputs, the loss under its seeding, then (with `grads`) backward.

        `mode` wraps the forward and backward (a witness: anomaly mode, saved-tensor hooks);
        `forward_mode` wraps the forward alone (the draw loop's observers, which watch the loss's
        own calls: under a function mode, `loss.backward()` and each `.grad` would go through its
        Python dispatch for nothing); `before_backward` sees the scalar loss first (to hook its
        graph). Backward runs only on a tensor that requires grad, as `loss.backward()`
        (it walks the whole graph, as training does). Errors come back in the outcome, with
        their stage; the caller's random state and warning filters are kept.
        """
        out = DrawOutcome(draw)
        caught = self._caught
        if caught is None:
            with captured_warnings() as caught, self._kept(self.layer.generator(self.device)):
                out.warnings = caught
                return self._run(out, grads, mode, before_backward, forward_mode)
        caught.clear()  # what came between the runs (the audit's own work) is not the loss's
        try:
            return self._run(out, grads, mode, before_backward, forward_mode)
        finally:
            out.warnings = caught[:]
            caught.clear()

    def _run(self, out: DrawOutcome, grads: bool, mode: Mode | None,
             before_backward: Callable[[torch.Tensor], Any] | None, forward_mode: Mode | None) -> DrawOutcome:
        """`run`'s work, inside its warnings capture and random state."""
        draw, generator = out.draw, self.layer.generator(self.device)
        try:
            if self._factory_inputs:  # a factory may use the global RNG
                seed_all(self.input_seed(draw), generator)
            out.inputs = self.inputs(draw)
        except Exception as exc:  # noqa: BLE001 - reported as the case's error
            out.error, out.stage = exc, "inputs"
            return out
        seed_all(self.seed_of(draw), generator)
        with mode(out.inputs) if mode is not None else _NO_CONTEXT:
            try:
                # `forward_mode` sees the loss's own calls only: the audit's reading of what it
                # returned (its `dim()`, its sum) is no op of the loss, and under a function mode
                # each such call would cost a Python dispatch.
                with forward_mode(out.inputs) if forward_mode is not None else _NO_CONTEXT:
                    out.value, out.picked = self._forward(out.inputs.received)
                # An asynchronous device error of the forward surfaces here, not in a later case.
                self.layer.synchronize(self.device)
            except Exception as exc:  # noqa: BLE001 - the loss's failure is a finding
                out.error, out.stage = exc, "forward"
                return out
            value = out.value
            if grads and isinstance(value, torch.Tensor):
                out.loss = value if value.dim() == 0 and value.numel() == 1 else value.sum()
            if out.loss is not None and out.loss.requires_grad:
                if before_backward is not None:
                    before_backward(out.loss)
                self._backward(out)
        return out

    def _backward(self, out: DrawOutcome) -> None:
        leaves = out.inputs.leaves
        # Parameters keep the caller's .grad: it is put back once this draw's is read.
        kept = {name: p.grad for name, p in self.params.items()}
        for leaf in leaves.values():
            leaf.grad = None
        try:
            out.loss.backward()
            self.layer.synchronize(self.device)
            out.backward = True
        except Exception as exc:  # noqa: BLE001 - a failing backward is a finding
            out.error, out.stage = exc, "backward"
        finally:
            out.grads = {name: leaf.grad for name, leaf in leaves.items()}
            for name, p in self.params.items():
                p.grad = kept[name]

    def invoke(self, received: Mapping[str, torch.Tensor], draw: int) -> Any:
        """The loss (as picked) on tensors given as they are, under draw `draw`'s seeding and with
        its warnings dropped; its errors propagate. For gradcheck, which perturbs the inputs."""
        generator = self.layer.generator(self.device)
        with captured_warnings(), self._kept(generator):
            seed_all(self.seed_of(draw), generator)
            return self._forward(received)[0]


def load_loss(spec: CaseSpec, device_name: str, root: Path, layer: DeviceLayer,
              autocast: str | None = None) -> LossCall:
    """Import (and build, for an nn.Module class) a case's loss on a device; raise LoadError."""
    device = layer.torch_device(device_name)
    try:
        obj = spec.loss_obj if spec.loss_obj is not None else resolve(spec.loss, root)
    except BaseException as exc:  # noqa: BLE001 - any import failure is this case's error
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise LoadError(f"cannot import loss {spec.loss!r}", exc) from exc
    if isinstance(obj, type):
        try:
            with kept_random_state():
                seed_all(spec.seed)  # the module's initial parameters are the same in every run
                built = obj(**spec.init_kwargs)
        except Exception as exc:  # noqa: BLE001
            raise LoadError(f"cannot build {obj.__name__}(**init_kwargs)", exc) from exc
    else:
        built = obj  # a function, or an nn.Module instance handed to the Python API
    call = LossCall(fn=built, spec=spec, device_name=device_name, device=device, layer=layer, root=root,
                    autocast=autocast)
    if isinstance(built, torch.nn.Module):
        built = built.to(device)
        if "dtype" in spec.matrix:  # the precision matrix casts floating parameters too
            built = built.to(dtype=torch_dtype(spec.dtype))
        call.fn = call.module = built
        call.params = {f"param:{n}": p for n, p in built.named_parameters() if p.requires_grad}
    return call
