"""Numerical gradcheck: torch.autograd.gradcheck of a case in float64, on inputs shrunk to a budget.

A hand-written backward of a custom autograd.Function can be wrong while every gradient is
connected, finite and nonzero; only comparing with finite differences finds it. Inputs are made
small first (dims halved, largest first, while the loss still runs), and where they are still
larger than the budget a sample of their elements is checked. A mismatch must hold in every one of
a few draws, later draws jittered, so a draw that lands on a kink (abs, relu, max at a tie) does
not make the verdict flap.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
from typing import TYPE_CHECKING, Any

import torch
from torch.autograd.gradcheck import GradcheckError

from gradaudit.findings import default_severity
from gradaudit.frames import location_from
from gradaudit.inputs import make_inputs, to_device
from gradaudit.losscall import LossCall
from gradaudit.model import Finding

if TYPE_CHECKING:
    from gradaudit.config import InputSpec

EPS = 1e-6  # torch.autograd.gradcheck's defaults
ATOL = 1e-5
RTOL = 1e-3
TRIES = 3
JITTER = 1e-3  # relative noise of the retries: far larger than EPS, so a retry leaves a kink
MIN_DIM = 2  # never shrink a dim below this: a batch of one hides batch-coupling bugs


class _Skip(Exception):
    """gradcheck cannot run for this case; the reason goes into the result."""


def _shapes(specs: list[InputSpec], dims: dict[str, int]) -> list[InputSpec]:
    """The inputs with their sizes recomputed from `dims`, floating ones in float64."""
    out = []
    for spec in specs:
        shape = [dims[n] if n else size for size, n in zip(spec.shape, spec.shape_dims or
                                                            [None] * len(spec.shape), strict=True)]
        dtype = "float64" if spec.is_floating and "complex" not in spec.dtype else spec.dtype
        out.append(dataclasses.replace(spec, shape=shape, dtype=dtype))
    return out


def _elements(specs: list[InputSpec]) -> int:
    return sum(math.prod(s.shape) for s in specs if s.requires_grad)


class _Check:
    """One gradcheck of one case on one device."""

    def __init__(self, call: LossCall) -> None:
        self.spec = call.spec
        self.device = call.device
        self.root = call.root
        # Every call of the loss goes through the case's LossCall (its seeding, its warnings), here
        # without autocast and, for a module, on a float64 copy whose parameters are held fixed.
        fn = cpu_fn = call.fn
        if call.module is not None:
            fn = copy.deepcopy(call.module).double()
            cpu_fn = copy.deepcopy(fn).cpu()
        self.call = call.replace(fn=fn, autocast=None, draw_name=f"{self.spec.name}#gradcheck")
        self.cpu_call = self.call.replace(fn=cpu_fn, device=torch.device("cpu"), device_name="cpu")
        self.budget = self.spec.gradcheck_elements

    # -- inputs -------------------------------------------------------------------------------
    def _draw(self, specs: list[InputSpec], attempt: int,
              device: torch.device | None = None) -> dict[str, torch.Tensor]:
        cpu = make_inputs(specs, self.spec.seed, f"{self.spec.name}#gradcheck", attempt, self.root)
        if attempt:
            gen = torch.Generator().manual_seed(attempt)
            for spec in specs:
                if spec.requires_grad:
                    t = cpu[spec.name]
                    # At least JITTER / 2 (relative) in a random direction: far beyond EPS.
                    size = 0.5 + torch.rand(t.shape, generator=gen, dtype=t.dtype)
                    sign = torch.randint(0, 2, t.shape, generator=gen).to(t.dtype) * 2 - 1
                    cpu[spec.name] = t + JITTER * size * sign * (1 + t.abs())
        return to_device(cpu, specs, device or self.device)

    def _loss(self, inputs: dict[str, torch.Tensor], attempt: int, call: LossCall | None = None) -> torch.Tensor:
        out = (call or self.call).invoke(inputs, attempt)
        if not isinstance(out, torch.Tensor):
            raise _Skip(f"the loss returned {type(out).__name__}")
        return out.sum() if out.dim() else out

    def _runs(self, specs: list[InputSpec]) -> bool:
        """Whether the loss runs and is finite on inputs of these sizes.

        Tried on the CPU: a size that breaks an index would trip a CUDA device assert, and that
        poisons the CUDA context for the rest of the process.
        """
        try:
            with torch.no_grad():
                loss = self._loss(self._draw(specs, 0, torch.device("cpu")), 0, self.cpu_call)
            return bool(torch.isfinite(loss).all())
        except Exception:  # noqa: BLE001 - a size the loss cannot take is simply not used
            return False

    def shrink(self) -> tuple[dict[str, int], list[InputSpec]]:
        """Halve the largest dims that differentiable inputs use until they fit the budget."""
        dims = dict(self.spec.dims)
        specs = _shapes(self.spec.inputs, dims)
        used = {n for s in self.spec.inputs if s.requires_grad for n in (s.shape_dims or []) if n}
        frozen: set[str] = set()
        while _elements(specs) > self.budget:
            movable = [d for d in used if d not in frozen and dims[d] > MIN_DIM]
            if not movable:
                break
            dim = max(movable, key=lambda d: (dims[d], d))
            trial = {**dims, dim: max(MIN_DIM, dims[dim] // 2)}
            trial_specs = _shapes(self.spec.inputs, trial)
            if self._runs(trial_specs):
                dims, specs = trial, trial_specs
            else:
                frozen.add(dim)  # the loss ties this size to something else (classes, say)
        return dims, specs

    # -- the check ----------------------------------------------------------------------------
    def _subsets(self, specs: list[InputSpec], attempt: int) -> dict[str, torch.Tensor]:
        """Which flat elements of each differentiable input to check: all, or a sample."""
        grad_specs = [s for s in specs if s.requires_grad]
        total = _elements(specs)
        gen = torch.Generator().manual_seed(1000 + attempt)
        out = {}
        for s in grad_specs:
            n = math.prod(s.shape)
            if total <= self.budget:
                out[s.name] = torch.arange(n)
            else:
                share = max(1, round(self.budget * n / total))
                out[s.name] = torch.randperm(n, generator=gen)[:share].sort().values
        return out

    def _function(self, inputs: dict[str, torch.Tensor], subsets: dict[str, torch.Tensor], attempt: int):
        base = {k: v.detach() for k, v in inputs.items()}

        def f(*values: torch.Tensor) -> torch.Tensor:
            args = dict(base)
            for (name, idx), value in zip(subsets.items(), values, strict=True):
                flat = base[name].flatten().index_put((idx.to(self.device),), value)
                args[name] = flat.view(base[name].shape)
            return self._loss(args, attempt)

        starts = [base[name].flatten()[idx.to(self.device)].clone().requires_grad_(True)
                  for name, idx in subsets.items()]
        return f, starts

    def attempt(self, specs: list[InputSpec], attempt: int) -> dict[str, Any] | None:
        """One draw: None when gradcheck passes, else the worst element's facts."""
        inputs = self._draw(specs, attempt)
        subsets = self._subsets(specs, attempt)
        f, starts = self._function(inputs, subsets, attempt)
        probe = f(*starts)
        if probe.dtype != torch.float64:
            raise _Skip(f"the loss computes in {str(probe.dtype).removeprefix('torch.')} even on "
                        "float64 inputs, too coarse for finite differences")
        if not bool(torch.isfinite(probe)):
            raise _Skip("the loss is not finite on the gradcheck inputs")
        try:
            ok = torch.autograd.gradcheck(f, tuple(starts), eps=EPS, atol=ATOL, rtol=RTOL,
                                          raise_exception=True, check_undefined_grad=False)
            message = ""
        except GradcheckError as exc:
            ok, message = False, str(exc).strip().splitlines()[0]
        if ok:
            return None
        return self._worst(f, starts, subsets, specs, message, probe)

    def _worst(self, f, starts, subsets, specs, message: str, probe: torch.Tensor) -> dict[str, Any]:
        analytic = torch.autograd.grad(probe, starts, allow_unused=True)
        worst: dict[str, Any] = {"excess": -math.inf, "mismatches": 0, "message": message}
        shapes = {s.name: s.shape for s in specs}
        with torch.no_grad():
            for k, (name, idx) in enumerate(subsets.items()):
                a_all = analytic[k] if analytic[k] is not None else torch.zeros_like(starts[k])
                for j in range(starts[k].numel()):
                    values = [s.detach() for s in starts]
                    plus, minus = values[k].clone(), values[k].clone()
                    plus[j] += EPS
                    minus[j] -= EPS
                    hi = f(*values[:k], plus, *values[k + 1:])
                    lo = f(*values[:k], minus, *values[k + 1:])
                    numerical = float((hi - lo) / (2 * EPS))
                    a = float(a_all[j])
                    excess = abs(a - numerical) - (ATOL + RTOL * abs(numerical))
                    if excess > 0:
                        worst["mismatches"] += 1
                    if excess > worst["excess"]:
                        flat = int(idx[j])
                        index = list(torch.unravel_index(torch.tensor(flat), shapes[name])) \
                            if shapes[name] else []
                        worst.update(excess=excess, input=name, index=[int(i) for i in index],
                                     analytic=a, numerical=numerical)
        worst["graph"] = _custom_functions(probe)
        return worst

    def run(self) -> tuple[dict[str, Any], Finding | None]:
        """What gradcheck did (for `CaseResult.gradcheck`), and its gradcheck-mismatch if any."""
        if self.device.type == "mps":
            return {"skipped": "mps has no float64"}, None
        if any(s.requires_grad and "complex" in s.dtype for s in self.spec.inputs):
            return {"skipped": "complex inputs are not checked"}, None
        if not any(s.requires_grad for s in self.spec.inputs):
            return {"skipped": "no input requires grad (module parameters are held fixed)"}, None
        try:
            dims, specs = self.shrink()
        except _Skip as exc:
            return {"skipped": str(exc)}, None
        info: dict[str, Any] = {"dims": dims, "elements": _elements(specs), "budget": self.budget}
        if dims != self.spec.dims:
            info["shrunk_from"] = dict(self.spec.dims)
        if _elements(specs) > self.budget:
            info["sampled"] = self.budget
        worst = None
        for attempt in range(TRIES):
            try:
                worst = self.attempt(specs, attempt)
            except _Skip as exc:
                return {**info, "skipped": str(exc)}, None
            except Exception as exc:  # noqa: BLE001 - the loss failing in float64 is no gradient defect
                return {**info, "skipped": f"the loss raised {type(exc).__name__} in "
                        f"float64: {str(exc).strip().splitlines()[0] if str(exc) else ''}"}, None
            info["draws"] = attempt + 1
            if worst is None:
                break
        info["passed"] = worst is None
        return info, self._report(worst, info) if worst is not None else None

    def _report(self, worst: dict[str, Any], info: dict[str, Any]) -> Finding:
        on = ", ".join(f"{d}={v}" for d, v in info["dims"].items())
        if "shrunk_from" in info:
            before = ", ".join(f"{d}={v}" for d, v in info["shrunk_from"].items()
                               if v != info["dims"].get(d))
            on += f", shrunk from {before} to fit gradcheck_elements={self.budget}"
        if "sampled" in info:
            on += (", " if on else "") + f"{info['sampled']} sampled elements"
        if "input" in worst and worst["excess"] > 0:
            n = worst["mismatches"]
            text = (f"d loss / d {worst['input']}{worst['index']}: analytic {worst['analytic']:.6g} vs "
                    f"numerical {worst['numerical']:.6g} ({n} element{'s' if n != 1 else ''} disagree")
        else:
            text = f"gradcheck failed: {worst['message']} ("
        text += f"; float64{' on ' + on if on else ''}; in all {info['draws']} draws)"
        functions = worst["graph"]
        if functions:
            text += f"; custom autograd.Function in the graph: {', '.join(n for n, _ in functions)}"
        location = location_from([functions[0][1]], self.root) if functions else None
        detail = {k: worst[k] for k in ("input", "index", "analytic", "numerical", "mismatches")
                  if k in worst}
        return Finding(id="gradcheck-mismatch", severity=default_severity("gradcheck-mismatch"), message=text,
                       input=worst.get("input"), location=location, detail=detail)


def _custom_functions(loss: torch.Tensor) -> list[tuple[str, tuple[str, int, str]]]:
    """The custom autograd.Functions in the loss's graph (nearest the loss first), with where
    their backward is defined: a hand-written backward is the usual suspect."""
    found: list[tuple[str, tuple[str, int, str]]] = []
    seen: set[int] = set()
    stack = [loss.grad_fn] if loss.grad_fn is not None else []
    while stack:
        node = stack.pop(0)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        cls = getattr(node, "_forward_cls", None)
        if cls is not None and not any(name == cls.__qualname__ for name, _ in found):
            try:
                backward = inspect.unwrap(cls.backward)
                lines, start = inspect.getsourcelines(backward)
                # Point at the last `return` of backward: where the gradient is formed.
                returns = [i for i, line in enumerate(lines) if line.strip().startswith("return")]
                line = start + (returns[-1] if returns else 0)
                found.append((cls.__qualname__, (inspect.getsourcefile(backward), line,
                                                 f"{cls.__qualname__}.backward")))
            except (OSError, TypeError):
                pass
        stack.extend(fn for fn, _ in node.next_functions)
    return found


def check_gradients(call: LossCall) -> tuple[dict[str, Any], Finding | None]:
    """Run gradcheck for a case's loss: what it did (`CaseResult.gradcheck`) and its
    gradcheck-mismatch finding, or None."""
    return _Check(call).run()
