"""Audit one case on one device: load the loss, run the draws, call the witnesses, explain, judge.

The parts, in the order one audit uses them:
- `losscall`: the only code that runs the user's loss (inputs of draw k, seeding, warnings, autocast);
- `draws`: the draw loop, feeding one `tracks.Track` per audited tensor until they have said enough;
- `witnesses`: re-runs of a failing draw (anomaly mode, scans, version hooks) that return records;
- `explain`: pure functions from those records (and the tracer's) to findings, with all the wording;
- this module: the order of those steps, device failures, gradcheck and parity, and the result.

Verdicts come from the real gradients of plain draws; anomaly mode is only a witness, re-run on a
failing draw to record the forward trace that explains it (it raises on NaN in intermediate nodes
that a later `where` masks, so it never decides a verdict).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shlex
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from gradaudit import explain, witnesses
from gradaudit.config import CaseSpec
from gradaudit.devices import AUTOCAST_DTYPE, CONTEXT, MIXED, OOM, DeviceLayer, classify, current, format_bytes
from gradaudit.draws import DrawLoop, DrawRecord, Observer
from gradaudit.inputs import torch_dtype
from gradaudit.loading import group_of
from gradaudit.losscall import DrawOutcome, LoadError, LossCall, load_loss
from gradaudit.model import CaseResult, ErrorInfo, Finding, status_of
from gradaudit.parity import compare_draw, tolerances
from gradaudit.portability import unmoved_attributes
from gradaudit.tracks import FIXED_INITS, StopRule

_T = TypeVar("_T")


@dataclass
class AuditContext:
    """What every case of a run shares: the config's folder and how to name it."""

    root: Path
    config_display: str = "config.yaml"
    # Observers of the draws (the tracer); one with `take()` hands over a trace that
    # `explain.explain_trace` explains.
    observers: list[Observer] = field(default_factory=list)
    # The DeviceLayer to use; None: gradaudit.devices.current() (tests inject a fake).
    devices: DeviceLayer | None = None


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
        # A non-CPU audit compares its first draw with the CPU's where the run audits this case on
        # the CPU too.
        # (A compiled entry compares with eager on its own device instead; see gradaudit.compiled.)
        self.parity = device != "cpu" and "cpu" in spec.devices and not spec.compile
        self.free_memory = False
        self.result = CaseResult(
            case=spec.name, device=device, status="pass", seed=spec.seed, loss_ref=spec.loss,
            group=group_of(spec.loss),
            reproduce=(f"gradaudit run {shlex.quote(ctx.config_display)} --case {shlex.quote(spec.name)}"
                       f" --device {device}" + (f" --compile {shlex.quote(spec.compile)}" if spec.compile else "")),
        )
        self.findings: list[Finding] = []
        self.call: LossCall | None = None
        self.compiled: Any = None  # the CompiledLoss of a `case[compile=BACKEND]` entry
        self.record = DrawRecord()
        self.rule = StopRule(self.record.tracks, spec)

    # -- the steps of one audit -------------------------------------------------------------
    def run(self) -> CaseResult:
        start = time.perf_counter()
        try:
            if self._device_ready() and self._load():
                self._draws()
                if self.spec.gradcheck and self.compiled is None:
                    self._gradcheck()
                elif self.spec.gradcheck:
                    self.result.gradcheck = {"skipped": "a compiled entry is compared with eager; "
                                                        "gradcheck runs on the eager entry"}
                if self.spec.per_sample:
                    self._batch_independence()
                if self.parity and self.record.first is not None and self.result.status != "error":
                    self._compare_with_cpu()
        except Exception as exc:
            if not self._device_failure(exc, "set-up", 0):
                raise
        finally:
            if self.free_memory:
                self.layer.free_memory(self.device)
            self.result.duration_s = time.perf_counter() - start
        return self.finish()

    def _error(self, exc: BaseException, what: str) -> None:
        self.result.status = "error"
        self.result.error = explain.error_info(exc)
        self.result.error.message = f"{what}: {self.result.error.message}"

    def _load(self) -> bool:
        try:
            self.call = load_loss(self.spec, self.device_name, self.ctx.root, self.layer, self.autocast)
        except LoadError as exc:
            self._error(exc.cause, exc.what)
            return False
        return self._compile_loss() if self.spec.compile else True

    def _compile_loss(self) -> bool:
        """A compiled entry audits the loss under torch.compile (compiled on its first call)."""
        from gradaudit.compiled import CompiledLoss, UnknownBackend

        call = self.call
        dtypes = [i.dtype for i in self.spec.inputs] + ([self.autocast] if self.autocast else [])
        dtypes += [str(p.dtype).removeprefix("torch.") for p in call.params.values()]
        try:
            self.compiled = CompiledLoss(call.fn, self.spec.compile, [i.name for i in self.spec.inputs],
                                         call.params, self.ctx.root, self.spec.rtol, self.spec.atol, dtypes,
                                         self.layer.generator(self.device))
        except UnknownBackend as exc:
            self._error(exc, "cannot compile")
            return False
        call.fn = self.compiled
        return True

    def _draws(self) -> None:
        observers = [*self.ctx.observers, self.compiled] if self.compiled is not None else self.ctx.observers
        loop = DrawLoop(self.call, self.spec, observers, keep_first=self.parity)
        self.rule = loop.rule
        self.record = loop.run()
        self.result.warnings = list(self.record.warnings)
        self.result.loss = self.record.loss.info
        self.findings += explain.loss_findings(self.record.loss)
        failure, self.record.failure = self.record.failure, None
        if failure is not None:
            self._draw_failed(failure)

    def _draw_failed(self, out: DrawOutcome) -> None:
        """Report the draw whose inputs, forward or backward raised."""
        exc, stage = out.error, out.stage
        out.inputs = out.value = out.loss = None  # the tensors go, so a device can give memory back
        out.grads = {}
        if self._device_failure(exc, stage, out.draw):
            return
        if stage == "inputs":
            self._error(exc, "cannot generate inputs")
        elif stage == "forward":
            self.findings.append(explain.forward_error(exc, self.ctx.root))
            self.result.error = explain.error_info(exc)
        else:
            witness = self._witness(witnesses.anomaly, self.call, out.draw)
            self.result.error = explain.error_info(exc, witness.trace if witness else None)
            self.findings.append(explain.backward_error(exc, witness))

    def _witness(self, run: Callable[..., _T], *args: Any, **kwargs: Any) -> _T | None:
        """A witness's record; None where the witness itself fails (it is optional)."""
        try:
            return run(*args, **kwargs)
        except Exception:  # noqa: BLE001 - the draw worked a moment ago; a witness is optional
            return None

    def _gradcheck(self) -> None:
        """Compare the analytic gradient with finite differences, where the audit found no defect."""
        from gradaudit.gradcheck import check_gradients

        if self.result.status == "error" or any(f.severity == "fail" for f in self.findings):
            return
        declared = set(self.spec.expect.no_grad)
        if any(t.verdict(self.record.draws) not in ("ok", "not-required") and t.name not in declared
               for t in self.record.tracks.values()):
            return  # a gradient that is missing or zero is reported as such; gradcheck adds nothing
        self.result.gradcheck, mismatch = check_gradients(self.call)
        if mismatch is not None:
            self.findings.append(mismatch)

    def _batch_independence(self) -> None:
        """Check that each sample's gradient depends on it alone, where the audit found no defect."""
        from gradaudit import batchmix

        if self.result.status == "error" or not self.record.draws:
            return
        declared = set(self.spec.expect.no_grad)
        if any(f.severity == "fail" for f in self.findings) or any(
                t.verdict(self.record.draws) not in ("ok", "not-required") and t.name not in declared
                for t in self.record.tracks.values()):
            self.result.batch_independence = batchmix.not_run(self.spec, "the audit found a failure first")
            return
        found = batchmix.check_call(self.call)
        self.result.batch_independence = found.summary()
        if found.coupling is not None:
            self.findings.append(found.finding())

    def _compare_with_cpu(self) -> None:
        """Compare the first draw with the CPU's: device-mismatch for what differs beyond tolerance."""
        spec = self.spec
        if isinstance(spec.loss_obj, torch.nn.Module):  # a live module from the API: keep it where it is
            spec = dataclasses.replace(spec, loss_obj=copy.deepcopy(spec.loss_obj))
        try:
            reference = load_loss(spec, "cpu", self.ctx.root, self.layer, self.autocast)
        except LoadError:
            return
        expected = witnesses.cpu_reference(reference)
        if expected is None:
            return
        first = self.record.first
        dtypes = [i.dtype for i in self.spec.inputs] + [str(first[0].dtype).removeprefix("torch.")]
        dtypes += [self.autocast] if self.autocast else []
        dtypes += [str(p.dtype).removeprefix("torch.") for p in self.call.params.values()]
        rtol, atol = tolerances(self.spec.rtol, self.spec.atol, dtypes)
        self.findings += explain.parity_findings(compare_draw(expected, first, rtol, atol), self.device_name,
                                                 rtol, atol)

    # -- devices ----------------------------------------------------------------------------
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
                reason = f"an asynchronous {self.device_name} error from before this case: {explain.short(str(exc))}"
                self.layer.mark_poisoned(self.device_name, reason)
        self.result.status = "error"
        self.result.error = ErrorInfo(
            type="DeviceContextPoisoned",
            message=f"not audited: the {self.device_name} context of this process is unusable ({reason}); "
                    "run with worker isolation (the default) so a fresh process audits each later case",
            traceback="")
        return False

    def _device_failure(self, exc: BaseException, stage: str, draw: int) -> bool:
        """Report an out-of-memory, a poisoned context or mixed devices; False for other errors."""
        kind = classify(exc)
        if kind == OOM:
            sizes = ", ".join(f"{i.name} {i.shape} {i.dtype} "
                              f"({format_bytes(math.prod(i.shape) * torch_dtype(i.dtype).itemsize)})"
                              for i in self.spec.inputs)
            self.result.status = "error"
            self.result.error = explain.error_info(exc)
            self.result.error.message = explain.out_of_memory(exc, self.device_name, stage, draw, sizes,
                                                              self.layer.memory_note(self.device))
            # The traceback's frames hold the tensors; drop them so the memory can be given back.
            traceback.clear_frames(exc.__traceback__)
            self.free_memory = True
            return True
        if kind == CONTEXT:
            first = explain.short(str(exc), 160)
            self.layer.mark_poisoned(self.device_name, f"case {self.spec.name} hit: {first}")
            if stage in ("forward", "backward"):
                self.findings.append(explain.context_poisoned(exc, self.device_name, stage, self.ctx.root))
                self.result.error = explain.error_info(exc)
            else:
                self._error(exc, f"the {self.device_name} context failed ({stage})")
            return True
        if kind == MIXED and stage == "forward":
            hits = self._witness(witnesses.stray_tensors, self.call, draw) or []
            self.findings.append(explain.mixed_devices(exc, self.device_name, hits, self.ctx.root))
            self.result.error = explain.error_info(exc)
            return True
        return False

    def _low_precision(self) -> str | None:
        """The dtype below float32 that the case computes in (autocast's first), else None."""
        if self.autocast:
            return self.autocast
        low = [i.dtype for i in self.spec.inputs if i.dtype in ("float16", "half", "bfloat16")]
        return low[0] if low else None

    # -- verdicts ---------------------------------------------------------------------------
    def _explained(self) -> list[Finding]:
        """Every finding of the case: the verdicts, then what the witnesses and the trace say."""
        record, call = self.record, self.call
        findings = list(self.findings)
        ids = {f.id for f in findings}
        declared = set(self.spec.expect.no_grad)
        if record.draws and not ids & {"loss-error", "loss-no-grad"}:
            self.rule.settle(record.draws)
            nan_draw = record.nonfinite_grad_draw
            nan_witness = None
            if nan_draw is not None and "loss-nonfinite" not in ids:
                nan_witness = self._witness(witnesses.anomaly, call, nan_draw, check_nan=True)
                if nan_witness and nan_witness.trace and self.result.error is None:
                    self.result.error = ErrorInfo(type="NonfiniteGradient", message=nan_witness.error or
                                                  "a gradient holds NaN or Inf", traceback="",
                                                  anomaly_trace=nan_witness.trace)
            fixed = [(i.name, i.init, list(i.shape)) for i in self.spec.inputs if i.init in FIXED_INITS]
            findings += explain.input_findings(record.tracks, record.draws, declared, "loss-nonfinite" in ids,
                                               nan_witness, fixed)
        ids = {f.id for f in findings}
        failing_draw = record.draws  # a backward that failed stopped the draws at this one
        facts = explain.TraceFacts(
            root=self.ctx.root, declared=declared, module=call.module if call else None,
            dead={f.input: record.tracks[f.input].pattern for f in findings
                  if f.id == "partial-grad" and f.input in record.tracks},
            conflict=self._witness(witnesses.version_conflict, call, failing_draw)
            if "inplace-version-conflict" in ids else None)
        self._where_facts(facts, findings)
        for obs in self.ctx.observers:
            take = getattr(obs, "take", None)
            if take is None:
                continue
            try:
                findings = explain.explain_trace(take(), facts, findings)
            except Exception as exc:  # noqa: BLE001 - an explanation that fails must not lose the verdicts
                self.result.warnings.append(f"gradaudit could not trace this case: {type(exc).__name__}: {exc}")
        node = op = None
        if "nonfinite-grad" in ids:
            first = [record.nonfinite_grad_draw] if record.nonfinite_grad_draw is not None else []
            draws = first + [d for d in range(min(record.draws, 3)) if d not in first]
            node = self._witness(witnesses.nonfinite_node, call, draws)
        if "loss-nonfinite" in ids and record.loss.nonfinite_draw is not None:
            op = self._witness(witnesses.nonfinite_op, call, record.loss.nonfinite_draw)
        return explain.explain_nonfinite(findings, record.tracks, node, op, self._low_precision(),
                                         bool(self.autocast))

    def _where_facts(self, facts: explain.TraceFacts, findings: list[Finding]) -> None:
        """The witnesses of issue 11 (a Function's backward returning None, the op that selected the
        live part, plain module attributes) and the gradients' zero counts, into `facts`."""
        record, call = self.record, self.call
        if call is None or not record.draws:
            return
        ids = {f.id for f in findings}
        if ids & {"input-disconnected", "zero-grad"}:
            facts.none_grads = self._witness(witnesses.none_grads, call, 0) or []
        if facts.dead:
            facts.selections = self._witness(witnesses.selections, call, 0, facts.dead) or {}
        if call.module is not None:
            facts.unmoved = unmoved_attributes(call.module)
            if facts.unmoved:
                facts.attributes = self._witness(witnesses.attribute_uses, call, 0, facts.unmoved)
        for name, track in record.tracks.items():
            if track.requires_grad and track.draws:
                facts.zeros[name] = (*track.zero_counts(), track.draws)

    def finish(self) -> CaseResult:
        """Turn the draws into input verdicts, findings and a status, applying `expect`."""
        result = self.result
        result.draws = self.record.draws
        if result.status != "error":
            ignored = set(self.spec.expect.ignore)
            findings = self._explained()
            if self.compiled is not None:
                findings = self.compiled.review(findings)
            findings = [f for f in findings if f.id not in ignored]
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
        else:
            for obs in self.ctx.observers:  # the trace of a case in error explains nothing
                if hasattr(obs, "take"):
                    obs.take()
        if self.record.draws or result.loss is not None:
            result.inputs = [t.to_result(self.record.draws) for t in self.record.tracks.values()]
        if self.compiled is not None:
            result.compile = self.compiled.info()
            result.warnings += self.compiled.notes()
        result.summary_line = summary_line(result)
        return result


def summary_line(result: CaseResult) -> str:
    """The one line that says what is wrong with a result, for terminals and reports."""
    if result.status == "error" and result.error:
        return explain.short(result.error.message, 200)
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
