"""Audit one case on one device: draw inputs, run forward and backward, judge every gradient.

Verdicts come from the real gradients of plain runs; anomaly mode is only a witness, re-run on a
failing draw to record the forward trace that explains it (it raises on NaN in intermediate nodes
that a later `where` masks, so it never decides a verdict).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import re
import shlex
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gradaudit.config import CaseSpec
from gradaudit.devices import AUTOCAST_DTYPE, CONTEXT, MIXED, OOM, DeviceLayer, classify, current, format_bytes
from gradaudit.findings import default_severity
from gradaudit.frames import frames_from_text, location_from
from gradaudit.inputs import draw_seed, make_inputs, to_device, torch_dtype
from gradaudit.loading import group_of, resolve
from gradaudit.model import (
    CaseResult,
    ErrorInfo,
    Finding,
    InputResult,
    Location,
    LossInfo,
    status_of,
)
from gradaudit.opscan import OpHit, first_nonfinite, stray_tensors
from gradaudit.parity import compare_draw, tolerances
from gradaudit.shapes import describe_dead, fold_map
from gradaudit.wording import never_receives

# A suspected zero pattern is confirmed by extra draws: the chance that elements which do get a
# gradient now and then (at the rarer end of the observed rates) stayed zero in every draw by luck
# must fall below FALSE_ALARM; an unconfirmed pattern at MAX_DRAWS is no finding.
FALSE_ALARM = 1e-3
RATE_QUANTILE = 0.1
PRIOR_RATE = 0.5  # when no element ever got a gradient: how often one would, if it could
MAX_DRAWS = 40
LOSS_RNG_SALT = 0x5EED  # the loss's own random stream differs from its inputs'

VERSION_ERROR = "modified by an inplace operation"


@dataclass
class AuditContext:
    """What every case of a run shares: the config's folder and how to name it."""

    root: Path
    config_display: str = "config.yaml"
    # Objects with `draw_context(draw, inputs)` and `explain(result, state)`; see tracing.
    observers: list[Any] = field(default_factory=list)
    # The DeviceLayer to use; None: gradaudit.devices.current() (tests inject a fake).
    devices: DeviceLayer | None = None


@dataclass
class _Track:
    """What the draws so far say about one audited tensor's gradient."""

    name: str
    shape: list[int]
    dtype: str
    requires_grad: bool
    alive_counts: torch.Tensor | None = None  # per element: draws in which its gradient was nonzero
    draws: int = 0
    none_draws: int = 0
    nonfinite: int = 0
    norms: list[float] = field(default_factory=list)
    # Counting in bytes is a quarter of the memory traffic; wide enough unless repeats > 255.
    count_dtype: torch.dtype = torch.uint8

    def add(self, grad: torch.Tensor | None) -> None:
        self.draws += 1
        if self.alive_counts is None:
            self.alive_counts = torch.zeros(self.shape, dtype=self.count_dtype)
        if grad is None:
            self.none_draws += 1
            return
        g = grad.detach()
        # The common case costs one pass: a finite norm means every element is finite. Only a
        # non-finite norm (a NaN/Inf, or an overflow in low precision) pays for the masked passes.
        norm = torch.linalg.vector_norm(g)
        if not bool(torch.isfinite(norm)):
            finite = torch.isfinite(g)
            self.nonfinite = max(self.nonfinite, int((~finite).sum()))
            norm = torch.linalg.vector_norm(torch.where(finite, g, 0), dtype=torch.float64)
        self.alive_counts += (g != 0).cpu()
        self.norms.append(float(norm))

    @property
    def ever_nonzero(self) -> torch.Tensor | None:
        return None if self.alive_counts is None else self.alive_counts > 0

    @property
    def dead(self) -> int:
        return 0 if self.alive_counts is None else int((self.alive_counts == 0).sum())

    def false_alarm_odds(self) -> float:
        """Expected number of dead elements that are only dead by chance, after these draws.

        Elements that do get a gradient get it in some fraction of draws; a dead element with the
        rate of the rarer live ones stays dead by chance with probability (1 - rate) ** draws.
        """
        counts = self.alive_counts
        alive = counts[counts > 0]
        if alive.numel():
            rate = float(torch.quantile(alive.double() / self.draws, RATE_QUANTILE))
        else:
            rate = PRIOR_RATE
        return self.dead * (1.0 - min(rate, 1.0)) ** self.draws

    @property
    def confirmed(self) -> bool:
        return self.false_alarm_odds() < FALSE_ALARM

    def verdict(self, draws: int) -> str:
        if not self.requires_grad:
            return "not-required"
        if self.nonfinite:
            return "nonfinite"
        if self.none_draws == draws:
            return "none"
        if not self.dead or not self.confirmed:
            return "ok"
        if self.dead == self.alive_counts.numel():
            return "zero"
        return "partial"

    def to_result(self, draws: int) -> InputResult:
        # No draw reached a gradient (backward raised in the first one): nothing got one.
        verdict = self.verdict(draws) if draws else ("none" if self.requires_grad else "not-required")
        result = InputResult(name=self.name, shape=self.shape, dtype=self.dtype,
                             requires_grad=self.requires_grad, grad=verdict)
        if self.requires_grad and self.alive_counts is not None:
            numel = self.alive_counts.numel()
            result.zero_fraction = round(self.dead / numel, 6) if numel else 0.0
            result.nonfinite_count = self.nonfinite
            result.grad_norm = round(sum(self.norms) / len(self.norms), 6) if self.norms else None
            if verdict in ("zero", "partial"):
                result.grad_map = fold_map(self.ever_nonzero)
        return result


class _ForwardError(Exception):
    """The loss's own forward raised."""


def error_info(exc: BaseException, anomaly_trace: str | None = None) -> ErrorInfo:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return ErrorInfo(type=type(exc).__name__, message=str(exc).strip(), traceback=text,
                     anomaly_trace=anomaly_trace)


def _short(message: str, limit: int = 300) -> str:
    first = message.strip().splitlines()[0] if message.strip() else message
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _user_location_of(exc: BaseException, root: Path) -> Location | None:
    frames = [(f.filename, f.lineno, f.name) for f in traceback.extract_tb(exc.__traceback__)]
    return location_from(frames, root)


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


class CaseAudit:
    """The audit of one case on one device; `run()` returns its CaseResult."""

    def __init__(self, spec: CaseSpec, device: str, ctx: AuditContext) -> None:
        self.spec = spec
        self.device_name = device
        self.layer: DeviceLayer = ctx.devices or current()
        self.device = self.layer.torch_device(device)
        self.ctx = ctx
        # The autocast dtype of the forward, or None; the CPU reference of a parity check uses the
        # device's, so both sides compute at the same precision.
        self.autocast = AUTOCAST_DTYPE.get(device.partition(":")[0], "float16") if spec.autocast else None
        # A non-CPU audit compares with the CPU where the run audits this case on the CPU too;
        # `first` keeps the first draw's loss and gradients (on the CPU) for that.
        self.parity = device != "cpu" and "cpu" in spec.devices
        self.first: tuple[torch.Tensor, dict[str, torch.Tensor | None]] | None = None
        self.free_memory = False
        self.nonfinite_draw = 0
        self.result = CaseResult(
            case=spec.name, device=device, status="pass", seed=spec.seed, loss_ref=spec.loss,
            group=group_of(spec.loss),
            reproduce=(f"gradaudit run {shlex.quote(ctx.config_display)} --case {shlex.quote(spec.name)}"
                       f" --device {device}"),
        )
        self.findings: list[Finding] = []
        self.tracks: dict[str, _Track] = {}
        self.draws = 0
        self.module: torch.nn.Module | None = None
        self.fn: Any = None
        self.params: dict[str, torch.Tensor] = {}
        self.anomaly_error: str | None = None
        self.picked: str | None = None  # where in the returned value the loss tensor was

    # -- the parts of one audit -------------------------------------------------------------
    def run(self) -> CaseResult:
        start = time.perf_counter()
        try:
            if self._device_ready() and self._load():
                self._draws()
                if self.spec.gradcheck:
                    self._gradcheck()
                if self.parity and self.first is not None and self.result.status != "error":
                    self._compare_with_cpu()
        except Exception as exc:
            if not self._device_failure(exc, "set-up"):
                raise
        finally:
            if self.free_memory:
                self.layer.free_memory(self.device)
            self.result.duration_s = time.perf_counter() - start
        return self.finish()

    def _error(self, exc: BaseException, what: str) -> None:
        self.result.status = "error"
        self.result.error = error_info(exc)
        self.result.error.message = f"{what}: {self.result.error.message}"

    def _load(self) -> bool:
        try:
            obj = self.spec.loss_obj if self.spec.loss_obj is not None else resolve(self.spec.loss,
                                                                                    self.ctx.root)
        except BaseException as exc:  # noqa: BLE001 - any import failure is this case's error
            if isinstance(exc, KeyboardInterrupt):
                raise
            self._error(exc, f"cannot import loss {self.spec.loss!r}")
            return False
        if isinstance(obj, type):
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.spec.seed)
                    built = obj(**self.spec.init_kwargs)
            except Exception as exc:  # noqa: BLE001
                self._error(exc, f"cannot build {obj.__name__}(**init_kwargs)")
                return False
        else:
            built = obj  # a function, or an nn.Module instance handed to the Python API
        if isinstance(built, torch.nn.Module):
            built = built.to(self.device)
            if "dtype" in self.spec.matrix:  # the precision matrix casts floating parameters too
                built = built.to(dtype=torch_dtype(self.spec.dtype))
            self.module = built
            self.params = {f"param:{n}": p for n, p in built.named_parameters() if p.requires_grad}
            for name, p in built.named_parameters():
                if not p.requires_grad:
                    self.tracks[f"param:{name}"] = _Track(f"param:{name}", list(p.shape),
                                                          str(p.dtype).removeprefix("torch."), False)
        self.fn = built
        for spec in self.spec.inputs:
            self.tracks[spec.name] = _Track(spec.name, list(spec.shape), spec.dtype, spec.requires_grad)
        for name, p in self.params.items():
            self.tracks[name] = _Track(name, list(p.shape), str(p.dtype).removeprefix("torch."), True)
        if max(self.spec.repeats, MAX_DRAWS) > 255:
            for track in self.tracks.values():
                track.count_dtype = torch.int32
        return True

    def _inputs(self, draw: int) -> dict[str, torch.Tensor] | None:
        try:
            cpu = make_inputs(self.spec.inputs, self.spec.seed, self.spec.draw_name, draw, self.ctx.root)
            return to_device(cpu, self.spec.inputs, self.device)
        except Exception as exc:  # noqa: BLE001
            if not self._device_failure(exc, "inputs"):
                self._error(exc, "cannot generate inputs")
            return None

    def _call(self, inputs: dict[str, torch.Tensor]) -> Any:
        """Call the loss on `inputs` the way every draw does (under autocast where asked)."""
        with self.layer.forward_context(self.device_name, self.autocast):
            loss, self.picked = pick_loss(self.fn(*inputs.values(), **self.spec.kwargs))
            return loss

    def _forward(self, inputs: dict[str, torch.Tensor]) -> Any:
        try:
            loss = self._call(inputs)
            # An asynchronous device error of the forward surfaces here, not in a later case.
            self.layer.synchronize(self.device)
            return loss
        except Exception as exc:
            raise _ForwardError() from exc

    def _draws(self) -> None:
        while True:
            inputs = self._inputs(self.draws)
            if inputs is None:
                return
            if not self._one_draw(inputs):
                return
            self.draws += 1
            if not self._want_more():
                return

    def _want_more(self) -> bool:
        """Draw again until every suspected zero pattern is confirmed or ruled out."""
        if self.draws < self.spec.repeats:
            return True
        if self.draws >= MAX_DRAWS:
            return False
        declared = set(self.spec.expect.no_grad)
        for track in self.tracks.values():
            if not track.requires_grad or track.name in declared or track.nonfinite:
                continue
            if track.none_draws == track.draws or not track.dead:
                continue
            if not track.confirmed:
                return True
        return False

    def _one_draw(self, inputs: dict[str, torch.Tensor]) -> bool:
        """Run one draw; return False when the audit must stop (an error or a defect found)."""
        leaves = {**{k: v for k, v in inputs.items() if v.requires_grad}, **self.params}
        contexts = [obs.draw_context(self.draws, inputs) for obs in self.ctx.observers]
        with contextlib.ExitStack() as stack:
            # The user's warnings are recorded, never raised by a caller's "error" filter.
            caught = stack.enter_context(warnings.catch_warnings(record=True))
            warnings.simplefilter("always")
            # torch warns some things once per process: which case would see them would then
            # depend on which worker ran what before it.
            stack.callback(torch.set_warn_always, torch.is_warn_always_enabled())
            torch.set_warn_always(True)
            stack.callback(self._keep_warnings, caught)
            # Randomness inside the loss (dropout, sampled negatives, random masks) is seeded per
            # draw too, so a case gives the same verdict alone, in any order and on any worker;
            # the caller's own random state is restored afterwards.
            devices = [self.device] if self.device.type == "cuda" else []
            stack.enter_context(torch.random.fork_rng(devices=devices))
            torch.manual_seed(draw_seed(self.spec.seed, self.spec.draw_name, self.draws) ^ LOSS_RNG_SALT)
            for cm in contexts:
                stack.enter_context(cm)
            try:
                loss = self._forward(inputs)
            except _ForwardError as wrapped:
                exc = wrapped.__cause__
                if self._device_failure(exc, "forward"):
                    return False
                self._add("loss-error", f"the loss raised {type(exc).__name__}: {_short(str(exc))}",
                          location=_user_location_of(exc, self.ctx.root))
                self.result.error = error_info(exc)
                return False
            for obs in self.ctx.observers:
                if hasattr(obs, "loss_returned"):
                    obs.loss_returned(loss)
            loss = self._classify_loss(loss)
            if loss is None:
                return False
            for leaf in leaves.values():
                leaf.grad = None
            try:
                # backward(), as training calls it: it walks the whole graph, so a graph kept
                # alive across calls fails here as it would in step two of training.
                loss.backward()
                self._sync()
            except Exception as exc:  # noqa: BLE001
                if not self._device_failure(exc, "backward"):
                    self._backward_failed(exc)
                return False
        by_name = {name: leaf.grad for name, leaf in leaves.items()}
        if self.parity and self.draws == 0:
            self.first = (loss.detach().cpu(),
                          {n: g.detach().cpu() if g is not None else None for n, g in by_name.items()})
        for name, track in self.tracks.items():
            if track.requires_grad:
                track.add(by_name.get(name))
        return True

    def _keep_warnings(self, caught: list[warnings.WarningMessage]) -> None:
        for w in caught:
            text = f"{w.category.__name__}: {str(w.message).split(' (Triggered internally')[0]}"
            if "Anomaly Detection has been enabled" not in text and text not in self.result.warnings:
                self.result.warnings.append(text)

    def _sync(self) -> None:
        self.layer.synchronize(self.device)

    def _classify_loss(self, loss: Any) -> torch.Tensor | None:
        if not isinstance(loss, torch.Tensor):
            if isinstance(loss, (int, float)) or type(loss).__module__ == "numpy":
                self.result.loss = LossInfo(value=float(loss), shape=[], dtype=type(loss).__name__,
                                            requires_grad=False, grad_fn=None, finite=math.isfinite(float(loss)))
                self._add("loss-no-grad", f"the loss returned a Python {type(loss).__name__}, not a tensor:"
                          " the graph was cut before the loss (.item(), float(), .tolist()?)")
            else:
                self._add("loss-error", f"the loss returned {type(loss).__name__}, not a tensor (a tuple or "
                          "list whose first item, or a dict whose 'loss' entry, is the loss tensor is fine)")
            return None
        if self.draws == 0:
            self.result.loss = LossInfo(
                value=None, shape=list(loss.shape), dtype=str(loss.dtype).removeprefix("torch."),
                requires_grad=loss.requires_grad,
                grad_fn=type(loss.grad_fn).__name__ if loss.grad_fn is not None else None, finite=True,
                picked=self.picked)
        if loss.dim() != 0 or loss.numel() != 1:
            if self.draws == 0:
                self._add("loss-not-scalar", f"the loss has shape {list(loss.shape)}, not a scalar; "
                          "it was reduced with sum() to audit it")
            loss = loss.sum()
        if loss.is_floating_point() or loss.is_complex():
            value = loss.detach().float().cpu()
            finite = bool(torch.isfinite(value).all())
        else:
            value, finite = loss.detach().double().cpu(), True
        if self.draws == 0 and self.result.loss is not None:
            self.result.loss.value = float(value.real if value.is_complex() else value)
            self.result.loss.finite = finite
        if not loss.requires_grad:
            self._add("loss-no-grad", "the loss does not require grad"
                      + (f" (dtype {str(loss.dtype).removeprefix('torch.')})" if not loss.is_floating_point()
                         else "") + ": no input can get a gradient")
            return None
        if not finite and not any(f.id == "loss-nonfinite" for f in self.findings):
            self.nonfinite_draw = self.draws
            self._add("loss-nonfinite", f"the loss is {float(value)} in draw {self.draws}")
        return loss

    def _backward_failed(self, exc: BaseException) -> None:
        message = str(exc)
        trace = self._anomaly_trace()
        self.result.error = error_info(exc, trace)
        location = location_from(frames_from_text(trace), self.ctx.root) if trace else None
        if VERSION_ERROR in message:
            saved = re.search(r"which is output (\d+) of (\w+)", message)
            versions = re.search(r"is at version (\d+); expected version (\d+)", message)
            detail: dict[str, Any] = {}
            text = "backward failed: a tensor saved for backward was modified in place"
            if saved:
                detail.update(saved_by=saved.group(2), output=int(saved.group(1)))
                text = f"a tensor that {saved.group(2).removesuffix('Backward0')} saved for backward " \
                       "was modified in place before backward"
            if versions:
                detail.update(version_now=int(versions.group(1)), version_saved=int(versions.group(2)))
                text += f" (version {versions.group(2)} -> {versions.group(1)})"
            self._add("inplace-version-conflict", text, location=location, detail=detail)
        else:
            self._add("backward-error", f"backward raised {type(exc).__name__}: {_short(message)}",
                      location=location)

    def _anomaly_trace(self, check_nan: bool = False) -> str | None:
        """Re-run the current draw under anomaly mode and return the forward trace it records."""
        inputs = self._inputs(self.draws)
        if inputs is None:
            return None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with torch.autograd.detect_anomaly(check_nan=check_nan):
                    loss = self._call(inputs)
                    if isinstance(loss, torch.Tensor) and loss.requires_grad:
                        loss.sum().backward()
                        self._sync()
            except Exception as exc:  # noqa: BLE001 - the witness's own failure is what we want
                self.anomaly_error = str(exc)
        for w in caught:
            text = str(w.message)
            if "Traceback of forward call" in text:
                return text.split(" (Triggered internally")[0].strip()
        return None

    def _gradcheck(self) -> None:
        """Compare the analytic gradient with finite differences, where the audit found no defect."""
        from gradaudit.gradcheck import check_gradients

        if self.result.status == "error" or any(f.severity == "fail" for f in self.findings):
            return
        declared = set(self.spec.expect.no_grad)
        if any(t.verdict(self.draws) not in ("ok", "not-required") and t.name not in declared
               for t in self.tracks.values()):
            return  # a gradient that is missing or zero is reported as such; gradcheck adds nothing
        check_gradients(self)

    # -- devices and precision ---------------------------------------------------------------
    def _device_ready(self) -> bool:
        """Whether the device can run this case; a poisoned context or a pending error cannot."""
        reason = self.layer.poisoned_reason(self.device_name)
        if reason is None:
            try:
                # Flush work queued before this case, so its asynchronous error is not ours.
                self.layer.synchronize(self.device)
                return True
            except Exception as exc:  # noqa: BLE001
                if classify(exc) != CONTEXT:
                    raise
                reason = f"an asynchronous {self.device_name} error from before this case: {_short(str(exc))}"
                self.layer.mark_poisoned(self.device_name, reason)
        self.result.status = "error"
        self.result.error = ErrorInfo(
            type="DeviceContextPoisoned",
            message=f"not audited: the {self.device_name} context of this process is unusable ({reason}); "
                    "run with worker isolation (the default) so a fresh process audits each later case",
            traceback="")
        return False

    def _device_failure(self, exc: BaseException, stage: str) -> bool:
        """Report an out-of-memory, a poisoned context or mixed devices; False for other errors."""
        kind = classify(exc)
        if kind == OOM:
            sizes = ", ".join(f"{i.name} {i.shape} {i.dtype} "
                              f"({format_bytes(math.prod(i.shape) * torch_dtype(i.dtype).itemsize)})"
                              for i in self.spec.inputs)
            memory = self.layer.memory_note(self.device)
            where = {"inputs": "while copying the inputs to it", "set-up": "while setting up the case"}
            self.result.status = "error"
            self.result.error = error_info(exc)
            self.result.error.message = (
                f"out of memory on {self.device_name} {where.get(stage, f'in the {stage} pass')} "
                f"(draw {self.draws}); inputs: {sizes or 'none'}" + (f"; {memory}" if memory else "")
                + f": {_short(str(exc), 200)}")
            # The traceback's frames hold the tensors; drop them so the memory can be given back.
            traceback.clear_frames(exc.__traceback__)
            self.free_memory = True
            return True
        if kind == CONTEXT and stage in ("forward", "backward"):
            first = _short(str(exc), 160)
            self.layer.mark_poisoned(self.device_name, f"case {self.spec.name} hit: {first}")
            self._add("loss-error" if stage == "forward" else "backward-error",
                      f"{first} in the {stage} pass on {self.device_name}; the device context is now "
                      "unusable and this worker is replaced. Often an index out of range (a class "
                      "target >= the number of classes): run with --device cpu for the exact error",
                      location=_user_location_of(exc, self.ctx.root),
                      detail={"device_error": first, "context_poisoned": True,
                              "hint": "CUDA_LAUNCH_BLOCKING=1 makes the error surface at the op that "
                                      "caused it"})
            self.result.error = error_info(exc)
            return True
        if kind == CONTEXT:
            self.layer.mark_poisoned(self.device_name, f"case {self.spec.name} hit: {_short(str(exc), 160)}")
            self._error(exc, f"the {self.device_name} context failed ({stage})")
            return True
        if kind == MIXED and stage == "forward":
            self._mixed_devices(exc)
            return True
        return False

    def _mixed_devices(self, exc: BaseException) -> None:
        """The loss mixed devices: point at the op that made the stray tensor."""
        inputs = self._inputs(self.draws)
        hits = stray_tensors(lambda: self._call(inputs), self.device, self.ctx.root) if inputs else []
        located = next((h for h in hits if h.location), None)
        text = f"the loss mixes devices on {self.device_name}: {_short(str(exc), 160)}"
        detail: dict[str, Any] = {"device_error": _short(str(exc), 160)}
        if located:
            text = (f"the loss mixes devices: {located.op} makes a tensor on {located.device} while the "
                    f"inputs are on {self.device_name}; create it on the inputs' device "
                    "(device=x.device, or a *_like factory)")
            detail.update(stray_op=located.op, stray_device=located.device)
        self._add("loss-error", text, location=located.location if located else
                  _user_location_of(exc, self.ctx.root), detail=detail)
        self.result.error = error_info(exc)

    def _low_precision(self) -> str | None:
        """The dtype below float32 that the case computes in (autocast's first), else None."""
        if self.autocast:
            return self.autocast
        low = [i.dtype for i in self.spec.inputs if i.dtype in ("float16", "half", "bfloat16")]
        return low[0] if low else None

    def _explain_nonfinite(self) -> None:
        """Name the op and the dtype of a NaN/Inf: the tracer names the op where it ran, else a scan."""
        dtype = self._low_precision()
        for f in self.findings:
            if f.id not in ("loss-nonfinite", "nonfinite-grad"):
                continue
            if f.id == "loss-nonfinite" and "op" not in f.detail:
                hit = self._nonfinite_op(self.nonfinite_draw)
                if hit:
                    f.message += f": {_overflow_text(hit)}"
                    f.location = f.location or hit.location
                    f.detail = {**f.detail, "op": hit.op}
            if dtype:
                how = f"autocast to {dtype}" if self.autocast else dtype
                largest = f", whose largest finite value is {_LARGEST[dtype]}" if dtype in _LARGEST else ""
                op = f.detail.get("op") or f.detail.get("node")
                f.message += f" ({op + ' ' if op else ''}at {how}{largest})"
                f.detail = {**f.detail, "dtype": dtype, "autocast": bool(self.autocast)}

    def _nonfinite_op(self, draw: int) -> OpHit | None:
        """Re-run a draw's forward to find the first op that made NaN/Inf from finite values."""
        try:
            inputs = to_device(make_inputs(self.spec.inputs, self.spec.seed, self.spec.draw_name, draw,
                                           self.ctx.root), self.spec.inputs, self.device)
        except Exception:  # noqa: BLE001 - the draw worked a moment ago; a witness is optional
            return None
        return first_nonfinite(lambda: self._call(inputs), self.ctx.root)

    def _first_draw(self) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]] | None:
        """Draw 0's loss and gradients, plainly, for a parity reference; None where it fails."""
        try:
            inputs = to_device(make_inputs(self.spec.inputs, self.spec.seed, self.spec.draw_name, 0,
                                           self.ctx.root), self.spec.inputs, self.device)
            leaves = {**{k: v for k, v in inputs.items() if v.requires_grad}, **self.params}
            loss = self._call(inputs)
            if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
                return None
            if loss.dim() != 0 or loss.numel() != 1:
                loss = loss.sum()
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True) if leaves else ()
        except Exception:  # noqa: BLE001 - the CPU job reports its own failure
            return None
        return loss.detach(), {n: g.detach() if g is not None else None for n, g in zip(leaves, grads, strict=True)}

    def _compare_with_cpu(self) -> None:
        """Compare the first draw with the CPU's: device-mismatch for what differs beyond tolerance."""
        spec = self.spec
        if isinstance(spec.loss_obj, torch.nn.Module):  # a live module from the API: keep it where it is
            spec = dataclasses.replace(spec, loss_obj=copy.deepcopy(spec.loss_obj))
        reference = CaseAudit(spec, "cpu", self.ctx)
        reference.autocast = self.autocast
        if not reference._load():
            return
        expected = reference._first_draw()
        if expected is None:
            return
        dtypes = [i.dtype for i in self.spec.inputs] + [str(self.first[0].dtype).removeprefix("torch.")]
        dtypes += [self.autocast] if self.autocast else []
        dtypes += [str(p.dtype).removeprefix("torch.") for p in self.params.values()]
        rtol, atol = tolerances(self.spec.rtol, self.spec.atol, dtypes)
        for mismatch in compare_draw(expected, self.first, rtol, atol):
            self._add("device-mismatch", mismatch.message("cpu", self.device_name, rtol, atol),
                      input=None if mismatch.tensor == "loss" else mismatch.tensor,
                      detail=mismatch.detail("cpu", self.device_name, rtol, atol))

    # -- verdicts ---------------------------------------------------------------------------
    def _add(self, finding_id: str, message: str, *, input: str | None = None,
             location: Location | None = None, severity: str | None = None,
             detail: dict[str, Any] | None = None) -> None:
        self.findings.append(Finding(id=finding_id, severity=severity or default_severity(finding_id),
                                     message=message, input=input, location=location,
                                     detail=detail or {}))

    def _judge_inputs(self) -> None:
        declared = set(self.spec.expect.no_grad)
        nonfinite_located = False
        for name, track in self.tracks.items():
            verdict = track.verdict(self.draws)
            shape = f"{name} {track.shape}"
            if name in declared or verdict in ("ok", "not-required"):
                continue
            if verdict == "none":
                self._add("input-disconnected", f"{shape} requires grad but got no gradient (grad None): "
                          "nothing in the loss depends on it through a differentiable path", input=name)
            elif verdict == "zero":
                self._add("zero-grad", f"{shape} gets a gradient that is zero everywhere, "
                          f"in all {self.draws} draws", input=name)
            elif verdict == "partial":
                text, _ = describe_dead(~track.ever_nonzero, name)
                self._add("partial-grad", f"{never_receives(text)} a gradient "
                          f"({track.dead} of {track.ever_nonzero.numel()} elements, {self.draws} draws)",
                          input=name)
            elif verdict == "nonfinite":
                if any(f.id == "loss-nonfinite" for f in self.findings):
                    continue  # the loss itself is NaN/Inf: that finding already says it
                location, node = (None, None) if nonfinite_located else self._nonfinite_origin()
                nonfinite_located = True
                where = f"; first produced by {node}" if node else ""
                self._add("nonfinite-grad", f"the gradient of {shape} holds {track.nonfinite} NaN/Inf "
                          f"value{'s' if track.nonfinite != 1 else ''}{where}", input=name,
                          location=location, detail={"node": node} if node else None)

    def _nonfinite_origin(self) -> tuple[Location | None, str | None]:
        """Re-run the first draw with anomaly mode's NaN check to find the backward node and its op."""
        saved = self.draws
        self.draws = 0
        self.anomaly_error = None
        try:
            trace = self._anomaly_trace(check_nan=True)
        finally:
            self.draws = saved
        node = None
        if self.anomaly_error:
            match = re.search(r"Function '(\w+)' returned nan", self.anomaly_error)
            node = match.group(1) if match else None
        if trace and self.result.error is None:
            self.result.error = ErrorInfo(type="NonfiniteGradient", message=self.anomaly_error or
                                          "a gradient holds NaN or Inf", traceback="", anomaly_trace=trace)
        return (location_from(frames_from_text(trace), self.ctx.root) if trace else None), node

    def finish(self) -> CaseResult:
        """Turn the draws into input verdicts, findings and a status, applying `expect`."""
        result = self.result
        result.draws = self.draws
        if result.status != "error":
            if self.draws and not any(f.id in ("loss-error", "loss-no-grad") for f in self.findings):
                self._judge_inputs()
            for obs in self.ctx.observers:
                obs.explain(self)
            self._explain_nonfinite()
            ignored = set(self.spec.expect.ignore)
            findings = [f for f in self.findings if f.id not in ignored]
            findings.sort(key=lambda f: -f.rank)
            result.findings = findings
            result.status = status_of(findings)
            if self.spec.expect.status == "fail":
                if result.status == "fail":
                    result.expected = True
                else:
                    result.findings.insert(0, Finding(
                        id="unexpected-pass", severity="fail",
                        message="expect.status is fail, but the audit found no failure: "
                                "the known bug is fixed, or the audit missed it; update the config"))
                    result.status = "fail"
        if self.draws or result.loss is not None:
            result.inputs = [t.to_result(self.draws) for t in self.tracks.values()]
        result.summary_line = summary_line(result)
        return result


_LARGEST = {"float16": "65504", "half": "65504"}


def _overflow_text(hit: OpHit) -> str:
    """`torch.exp is the first op to give inf`."""
    return f"{hit.op} is the first op to give {hit.what}"


def summary_line(result: CaseResult) -> str:
    """The one line that says what is wrong with a result, for terminals and reports."""
    if result.status == "error" and result.error:
        return _short(result.error.message, 200)
    worst = result.worst_finding()
    if worst is None or worst.severity == "info":
        return ""
    text = worst.message
    if worst.location and worst.location.where not in text:
        text += f" at {worst.location.where}"
        if worst.location.code:
            text += f": {worst.location.code}"
    return text


def audit_case(spec: CaseSpec, device: str, ctx: AuditContext) -> CaseResult:
    """Audit one case on one device (already known to be available)."""
    return CaseAudit(spec, device, ctx).run()
