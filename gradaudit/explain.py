"""Explanations: pure functions from what the draws, witnesses and tracer recorded to findings.

All the wording of the audit's findings is here. Nothing here runs the user's loss: each function
takes records (a `DrawRecord`, a witness's record, the tracer's records) and returns findings,
new ones or copies of the findings it was given with their messages and locations filled in.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gradaudit.deadterm import WORDS as DEAD_WORDS
from gradaudit.deadterm import dead_breaks
from gradaudit.draws import LossFacts
from gradaudit.findings import default_severity
from gradaudit.frames import location_from
from gradaudit.model import ErrorInfo, Finding, Location
from gradaudit.opscan import OpHit
from gradaudit.parity import Mismatch
from gradaudit.portability import factory_finding
from gradaudit.shapes import describe_dead
from gradaudit.tracing import BREAK_RANK, Conflict, Record, Tracer
from gradaudit.tracks import Track
from gradaudit.witnesses import AnomalyRecord, AttributeUse, NoneGrad, NonfiniteNode, SelectionRecord
from gradaudit.wording import never_receives, no_grad_hint, quote, zero_incoming_hint

VERSION_ERROR = "modified by an inplace operation"


def finding(finding_id: str, message: str, *, input: str | None = None, location: Location | None = None,
            severity: str | None = None, detail: dict[str, Any] | None = None) -> Finding:
    """A finding with its ID's default severity."""
    return Finding(id=finding_id, severity=severity or default_severity(finding_id), message=message,
                   input=input, location=location, detail=detail or {})


def error_info(exc: BaseException, anomaly_trace: str | None = None) -> ErrorInfo:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return ErrorInfo(type=type(exc).__name__, message=str(exc).strip(), traceback=text,
                     anomaly_trace=anomaly_trace)


def short(message: str, limit: int = 300) -> str:
    """The first line of a message, cut to `limit` characters."""
    first = message.strip().splitlines()[0] if message.strip() else message
    return first if len(first) <= limit else first[: limit - 1] + "…"


def user_location_of(exc: BaseException, root: Path) -> Location | None:
    """The user's line in an exception's traceback."""
    frames = [(f.filename, f.lineno, f.name) for f in traceback.extract_tb(exc.__traceback__)]
    return location_from(frames, root)


_quote = quote  # the culprit's source line in backticks (gradaudit.wording.quote)


# -- what the loss returned, and how a draw failed ------------------------------------------

def loss_findings(loss: LossFacts) -> list[Finding]:
    """loss-not-scalar, loss-nonfinite, and why the draws stopped at the loss (loss-no-grad, loss-error)."""
    found = []
    if loss.shape is not None:
        found.append(finding("loss-not-scalar", f"the loss has shape {loss.shape}, not a scalar; "
                             "it was reduced with sum() to audit it"))
    if loss.nonfinite_draw is not None:
        found.append(finding("loss-nonfinite", f"the loss is {loss.nonfinite_value} in draw {loss.nonfinite_draw}"))
    if loss.stop == "number":
        found.append(finding("loss-no-grad", f"the loss returned a Python {loss.returned}, not a tensor:"
                             " the graph was cut before the loss (.item(), float(), .tolist()?)"))
    elif loss.stop == "other":
        found.append(finding("loss-error", f"the loss returned {loss.returned}, not a tensor (a tuple or "
                             "list whose first item, or a dict whose 'loss' entry, is the loss tensor is fine)"))
    elif loss.stop == "no-grad":
        found.append(finding("loss-no-grad", "the loss does not require grad"
                             + (f" (dtype {loss.returned})" if loss.returned else "")
                             + ": no input can get a gradient"))
    return found


def forward_error(exc: BaseException, root: Path) -> Finding:
    return finding("loss-error", f"the loss raised {type(exc).__name__}: {short(str(exc))}",
                   location=user_location_of(exc, root))


def backward_error(exc: BaseException, witness: AnomalyRecord | None) -> Finding:
    """inplace-version-conflict from torch's version error, else backward-error; located by anomaly mode."""
    message = str(exc)
    location = witness.location if witness else None
    if VERSION_ERROR not in message:
        return finding("backward-error", f"backward raised {type(exc).__name__}: {short(message)}",
                       location=location)
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
    return finding("inplace-version-conflict", text, location=location, detail=detail)


def out_of_memory(exc: BaseException, device: str, stage: str, draw: int, sizes: str, memory: str) -> str:
    """The error message of an out-of-memory: where, the inputs' sizes, the device's memory."""
    where = {"inputs": "while copying the inputs to it", "set-up": "while setting up the case"}
    return (f"out of memory on {device} {where.get(stage, f'in the {stage} pass')} "
            f"(draw {draw}); inputs: {sizes or 'none'}" + (f"; {memory}" if memory else "")
            + f": {short(str(exc), 200)}")


def context_poisoned(exc: BaseException, device: str, stage: str, root: Path) -> Finding:
    """A sticky device error in the forward or backward pass (an index out of range, usually)."""
    first = short(str(exc), 160)
    return finding("loss-error" if stage == "forward" else "backward-error",
                   f"{first} in the {stage} pass on {device}; the device context is now "
                   "unusable and this worker is replaced. Often an index out of range (a class "
                   "target >= the number of classes): run with --device cpu for the exact error",
                   location=user_location_of(exc, root),
                   detail={"device_error": first, "context_poisoned": True,
                           "hint": "CUDA_LAUNCH_BLOCKING=1 makes the error surface at the op that caused it"})


def mixed_devices(exc: BaseException, device: str, hits: list[OpHit], root: Path) -> Finding:
    """The loss mixed devices: point at the op that made the stray tensor."""
    located = next((h for h in hits if h.location), None)
    text = f"the loss mixes devices on {device}: {short(str(exc), 160)}"
    detail: dict[str, Any] = {"device_error": short(str(exc), 160)}
    if located:
        text = (f"the loss mixes devices: {located.op} makes a tensor on {located.device} while the "
                f"inputs are on {device}; create it on the inputs' device "
                "(device=x.device, or a *_like factory)")
        detail.update(stray_op=located.op, stray_device=located.device)
    return finding("loss-error", text, location=located.location if located else user_location_of(exc, root),
                   detail=detail)


# -- the gradients --------------------------------------------------------------------------

def input_findings(tracks: dict[str, Track], draws: int, declared: set[str], loss_nonfinite: bool,
                   nan_witness: AnomalyRecord | None,
                   fixed: list[tuple[str, str, list[int]]] | None = None) -> list[Finding]:
    """input-disconnected, zero-grad, partial-grad and nonfinite-grad from the tracks' verdicts.

    `fixed`: (name, init, shape) of the inputs that are the same in every draw; a zero pattern
    may follow their values, and its finding says so.
    """
    found = []
    nonfinite_located = False
    for name, track in tracks.items():
        verdict = track.verdict(draws)
        shape = f"{name} {track.shape}"
        if name in declared or verdict in ("ok", "not-required"):
            continue
        if verdict == "none":
            found.append(finding("input-disconnected", f"{shape} requires grad but got no gradient (grad None): "
                                 "nothing in the loss depends on it through a differentiable path", input=name))
        elif verdict == "zero":
            found.append(finding("zero-grad", f"{shape} gets a gradient that is zero everywhere, "
                                 f"in all {draws} draws" + fixed_note(track, fixed or []), input=name))
        elif verdict == "partial":
            pattern = track.pattern
            text, _ = describe_dead(pattern, name)
            found.append(finding("partial-grad", f"{never_receives(text)} a gradient "
                                 f"({int(pattern.sum())} of {pattern.numel()} elements, {draws} draws)"
                                 + fixed_note(track, fixed or []), input=name))
        elif verdict == "nonfinite" and not loss_nonfinite:  # else the loss's finding says it
            node = nan_witness.node if nan_witness and not nonfinite_located else None
            location = nan_witness.location if nan_witness and not nonfinite_located else None
            nonfinite_located = True
            where = f"; first produced by {node}" if node else ""
            found.append(finding("nonfinite-grad", f"the gradient of {shape} holds {track.nonfinite} NaN/Inf "
                                 f"value{'s' if track.nonfinite != 1 else ''}{where}", input=name,
                                 location=location, detail={"node": node} if node else None))
    return found


def fixed_note(track: Track, fixed: list[tuple[str, str, list[int]]]) -> str:
    """`; `target` is the same in every draw (value), so the pattern follows its values ...`."""
    if not fixed:
        return ""
    dims = track.decision.dims if track.decision is not None else ()
    sizes = {track.shape[d] for d in dims}
    # First the fixed inputs that share a size with the dead slices (labels [B] beside rows of
    # logits [B, C]), then the tensor itself where it is fixed, then the rest.
    ranked = sorted(fixed, key=lambda f: (not sizes & set(f[2]), f[0] != track.name))[:3]
    names = ", ".join(f"`{n}`" for n, _, _ in ranked)
    one = len(ranked) == 1
    return (f"; {names} {'is' if one else 'are'} the same in every draw ({ranked[0][1]}), so the pattern "
            f"follows {'its' if one else 'their'} values (positions {'it masks' if one else 'they mask'} "
            "or ignores): fixed, not chance")


def parity_findings(mismatches: list[Mismatch], device: str, rtol: float, atol: float) -> list[Finding]:
    """device-mismatch for each tensor that differs from the CPU's beyond the tolerances."""
    return [finding("device-mismatch", m.message("cpu", device, rtol, atol),
                    input=None if m.tensor == "loss" else m.tensor, detail=m.detail("cpu", device, rtol, atol))
            for m in mismatches]


# -- NaN and Inf ----------------------------------------------------------------------------

# node -> (why its gradient is infinite, what its saved input's elements are there)
_BOUNDARY_WORDS = {  # node -> (why, what its saved elements are called, what they are)
    "SqrtBackward0": ("has an infinite derivative at 0", "its input", "0"),
    "LogBackward0": ("has an infinite derivative at 0", "its input", "0"),
    "Log2Backward0": ("has an infinite derivative at 0", "its input", "0"),
    "Log10Backward0": ("has an infinite derivative at 0", "its input", "0"),
    "PowBackward0": ("has an infinite derivative at 0 for exponents below 1", "the base", "0"),
    "AcosBackward0": ("has an infinite derivative at -1 and 1", "its input", "at -1 or 1"),
    "AsinBackward0": ("has an infinite derivative at -1 and 1", "its input", "at -1 or 1"),
    "DivBackward0": ("divides by 0", "the divisor", "0"),
    "RsqrtBackward0": ("has an infinite derivative at 0", "its input", "0"),
}
_LARGEST = {"float16": "65504", "half": "65504"}


def _node_facts(node: NonfiniteNode) -> str:
    """Why a node's gradient is NaN/Inf: '... has an infinite derivative at 0; 8 of 8 elements ...'."""
    text = (f"is the first backward step ({node.node}) to produce NaN/Inf: {node.bad} of {node.total} elements "
            "of its gradient are not finite")
    words = _BOUNDARY_WORDS.get(node.node)
    if words is not None and node.saved_numel:
        why, subject, what = words
        if node.boundary_hits:
            verb = "is" if node.boundary_hits == 1 else "are"
            text = f"{why}; {node.boundary_hits} of {node.saved_numel} elements of {subject} {verb} {what}"
        elif node.saved_nan:
            text = (f"is NaN where its input is outside its domain ({node.saved_nan} of {node.saved_numel} "
                    "elements), so its gradient is NaN there")
    if node.masked:  # the hint names what passed the zero: a where, a triu, atan at infinity, ...
        text += (f"; the incoming gradient there is 0 ({zero_incoming_hint(node.after)}), but 0 × Inf or "
                 "0 × NaN is NaN in backward")
    return text


def explain_nonfinite(findings: list[Finding], tracks: dict[str, Track], node: NonfiniteNode | None,
                      op: OpHit | None, low_precision: str | None, autocast: bool) -> list[Finding]:
    """Name the op of a NaN/Inf: the backward node of a gradient's, the forward op of the loss's,
    and the low precision it ran at."""
    findings = copy.deepcopy(findings)
    for f in findings:
        if f.id == "nonfinite-grad" and node is not None:
            code = _quote(node.location, node.node)
            where = f" at {node.location.where}" if node.location else ""
            track = tracks.get(f.input)
            count = f" ({track.nonfinite} NaN/Inf in the gradient of `{f.input}`)" if track else ""
            f.message = f"{code}{where} {_node_facts(node)}{count}"
            f.location = node.location or f.location
            f.detail = {**f.detail, "node": node.node, "op": node.node.removesuffix("Backward0")}
        elif f.id == "loss-nonfinite" and op is not None:
            loc = op.location
            what = "NaN" if "nan" in op.what else "Inf"
            began = f"{op.op} in {_quote(loc, op.op)} at {loc.where}" if loc and loc.code else f"`{op.op}`"
            f.message += (f"; it began at {began}, whose result holds {what} ({op.count} of {op.total} "
                          "elements) while its inputs are finite")
            f.location = loc
            f.detail = {**f.detail, "op": op.op}
        if f.id in ("loss-nonfinite", "nonfinite-grad") and low_precision:
            how = f"autocast to {low_precision}" if autocast else low_precision
            largest = f", whose largest finite value is {_LARGEST[low_precision]}" if low_precision in _LARGEST else ""
            name = f.detail.get("op") or f.detail.get("node")
            f.message += f" ({name + ' ' if name else ''}at {how}{largest})"
            f.detail = {**f.detail, "dtype": low_precision, "autocast": autocast}
    return findings


# -- the trace ------------------------------------------------------------------------------

# Which ops cut the gradient, in words (their ranks are tracing.BREAK_RANK).
BREAK_WORDS = {
    "detach": "detach() returns a tensor with no gradient",
    "data": ".data reads the values without the gradient",
    "no_grad": "it runs with gradients disabled (torch.no_grad / inference_mode)",
    "escape": "it turns tensor values into Python values, which carry no gradient",
    "rebuild": "torch.tensor() of tensors copies their values and drops the gradient",
    "cast": "an integer or bool cast has no gradient",
    "index": "it returns integer indices, which have no gradient",
    "zero-derivative": "its derivative is zero everywhere",
    "compare": "a comparison returns a bool tensor, which has no gradient",
    "other": "its result has no gradient",
}

_FAILING = ("input-disconnected", "zero-grad", "partial-grad")


@dataclass
class TraceFacts:
    """What the trace's explanation needs besides the trace: the case and the witnesses."""

    root: Path
    declared: set[str] = field(default_factory=set)  # expect.no_grad
    dead: dict[str, torch.Tensor] = field(default_factory=dict)  # input -> its zero pattern (partial-grad)
    module: torch.nn.Module | None = None
    conflict: Conflict | None = None  # the version-conflict witness's record
    # Issue 11's witnesses (gradaudit.witnesses) and draws, for gradaudit.explain_extra:
    none_grads: list[NoneGrad] = field(default_factory=list)  # custom Functions' backward returning None
    selections: dict[str, list[SelectionRecord]] = field(default_factory=dict)  # partial-grad -> selecting ops
    unmoved: list[Any] = field(default_factory=list)  # plain module attributes .to() leaves (portability.Attribute)
    attributes: list[AttributeUse] | None = None  # what the witness saw of them; None: it failed
    zeros: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # name -> (zero, total, draws)


def explain_trace(tracer: Tracer, facts: TraceFacts, findings: list[Finding]) -> list[Finding]:
    """The findings, located and worded from the trace: graph breaks, in-place ops, devices, modules."""
    return _TraceExplanation(tracer, facts, copy.deepcopy(findings)).run()


class _TraceExplanation:
    """Match the trace's records to one case's findings (on its own copy of them)."""

    def __init__(self, tracer: Tracer, facts: TraceFacts, findings: list[Finding]) -> None:
        self.tracer = tracer
        self.facts = facts
        self.root = facts.root
        self.findings = findings

    def location(self, rec: Record) -> Location | None:
        return location_from(rec.frames, self.root)

    def run(self) -> list[Finding]:
        from gradaudit import explain_extra as extra  # issue 11's explanations, on this one's records

        self.graph_breaks()
        extra.replaced_loss(self)
        extra.custom_functions(self)
        extra.selections(self)
        self.unused_parameters()
        self.inplace()
        self.portability()
        extra.unregistered_tensors(self)
        extra.saturation(self)
        return self.findings

    def lost_names(self, rec: Record) -> set[str]:
        return {n for n in rec.lost if not n.startswith("@")}

    # -- graph breaks -----------------------------------------------------------------------
    def graph_breaks(self) -> None:
        tracer = self.tracer
        breaks = [r for r in tracer.records if r.kind == "break"]
        if not breaks:
            return
        on_path = tracer.loss_breaks
        failing = [f for f in self.findings if f.id in _FAILING and f.input]
        no_grad = next((f for f in self.findings if f.id == "loss-no-grad"), None)
        declared = self.facts.declared
        explained: dict[int, list[Finding]] = {}

        def blame(target: Finding, candidates: list[Record]) -> None:
            # The surest cuts explain it (a detach beside a mask: the detach, not the mask).
            if candidates:
                surest = min(BREAK_RANK[r.why] for r in candidates)
                for rec in candidates:
                    if BREAK_RANK[rec.why] == surest:
                        explained.setdefault(rec.id, []).append(target)

        for f in failing:
            blame(f, [r for r in breaks if f.input in self.lost_names(r) and (on_path is None or r.id in on_path)])
        if no_grad is not None:
            blame(no_grad, [r for r in breaks if (on_path is None or r.id in on_path)
                            and self.lost_names(r) - declared])
        fails: list[Finding] = []
        warns: list[Finding] = []
        infos: list[Finding] = []
        dead = dead_breaks(tracer.loss_terms, tracer.loss_modulating, set(explained))
        culprit_of: dict[int, Finding] = {}  # id(failing finding) -> its best graph-break
        for rec in sorted(breaks, key=lambda r: (BREAK_RANK[r.why], r.id)):
            lost = sorted(self.lost_names(rec))
            if not lost:
                continue
            if rec.id not in explained and on_path is not None and rec.id not in on_path:
                continue  # values that never reached the loss: a side computation
            loc = self.location(rec)
            code = _quote(loc, rec.op)
            where = f" at {loc.where}" if loc else ""
            words = BREAK_WORDS[rec.why]
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
                brk = Finding(id="graph-break", severity="fail", message=text,
                              input=first.input, location=loc, detail=detail)
                fails.append(brk)
                for target in targets:
                    culprit_of.setdefault(id(target), brk)
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
        for f in self.findings:
            best = culprit_of.get(id(f))
            if best is not None and f.location is None:
                f.location = best.location
        self.findings[:0] = fails
        self.findings.extend(warns + infos)

    def what(self, f: Finding, rec: Record) -> str:
        if f.id == "loss-no-grad":
            lost = sorted(self.lost_names(rec))
            return ", ".join(f"`{n}`" for n in lost) if lost else "every input"
        name = f.input
        dead = self.facts.dead.get(name)
        if f.id == "partial-grad" and dead is not None:
            text, _ = describe_dead(dead, f"`{name}`")
            return text.rsplit(" [", 1)[0]
        return f"`{name}`"

    # -- in-place ---------------------------------------------------------------------------
    def inplace(self) -> None:
        tracer = self.tracer
        conflict_finding = next((f for f in self.findings if f.id == "inplace-version-conflict"), None)
        conflict = tracer.conflicts[0] if tracer.conflicts else None
        conflicting: set[int] = set()  # records of in-place ops that caused the conflict
        if conflict_finding is not None and conflict is None:
            conflict = self.facts.conflict
            mod = conflict.modified_by if conflict else None
            if mod is not None:  # the same line in this trace caused it: no "harmless" info for it
                same = tracer.by_key.get(("inplace", mod.frames[-1][0], mod.frames[-1][1], ""))
                if same is not None:
                    conflicting.add(same.id)
        if conflict_finding is not None and conflict is not None:
            f = conflict_finding
            saved_loc = f.location  # anomaly mode's trace of the node that saved it
            mod = conflict.modified_by
            mod_loc = self.location(mod) if mod else None
            saver = conflict.saved_by or "an op"
            saved_code = _quote(saved_loc, saver)
            saved_where = f" at {saved_loc.where}" if saved_loc else ""
            detail = dict(f.detail)
            detail.update(version_saved=conflict.version_saved, version_now=conflict.version_now,
                          saved_by={"op": saver, "location": saved_loc.to_dict() if saved_loc else None})
            if mod is not None:
                detail["modified_by"] = {"op": mod.op, "location": mod_loc.to_dict() if mod_loc else None}
                mod_code = _quote(mod_loc, mod.op)
                f.message = (
                    f"{mod_code} at {mod_loc.where if mod_loc else '?'} changed in place a tensor that "
                    f"{saved_code}{saved_where} saved for backward (version {conflict.version_saved} -> "
                    f"{conflict.version_now}), so backward cannot run; use the out-of-place op")
                # The line to change is the in-place op; the saver is the second line.
                f.location = mod_loc or saved_loc
                if mod_loc is not None and saved_loc is not None:
                    f.second = dataclasses.replace(saved_loc, label="saved for backward at")
            else:
                f.message = (f"a tensor that {saved_code}{saved_where} saved for backward was changed "
                             f"in place (version {conflict.version_saved} -> {conflict.version_now})")
            f.detail = detail
        for rec in tracer.records:
            if rec.kind == "inplace" and rec.graph and not rec.conflict and rec.id not in conflicting:
                loc = self.location(rec)
                code = _quote(loc, rec.op)
                self.findings.append(Finding(
                    id="inplace-on-graph-tensor", severity="info", location=loc,
                    message=f"{code}{f' at {loc.where}' if loc else ''} changes a tensor of the graph in "
                            "place; no saved tensor depended on it, so backward is correct",
                    detail={"op": rec.op, "calls": rec.calls}))

    # -- device portability -----------------------------------------------------------------
    def portability(self) -> None:
        for rec in self.tracer.records:
            if rec.kind == "factory":
                loc = self.location(rec)
                found = factory_finding(rec, loc, _quote(loc, rec.op))
                if found is not None:
                    self.findings.append(found)

    # -- parameters nothing uses --------------------------------------------------------------
    def unused_parameters(self) -> None:
        module = self.facts.module
        if module is None:
            return
        for f in self.findings:
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
