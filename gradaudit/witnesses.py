"""Witnesses: re-run a failing draw through the case's LossCall to record what explains it.

Each takes the loss call and the draw it explains and returns a small record (or None where the
re-run shows nothing); none decides a verdict, and none words a finding (see `explain`). Because
every re-run goes through the LossCall, it sees the inputs and random numbers of its draw. They
run only on cases that already failed, so healthy cases pay nothing for them.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gradaudit import customfn, selection
from gradaudit.customfn import NoneGrad
from gradaudit.frames import frames_from_text, location_from
from gradaudit.losscall import LossCall
from gradaudit.model import Location
from gradaudit.opscan import NonfiniteScan, OpHit, StrayScan
from gradaudit.portability import Attribute
from gradaudit.tracing import Conflict, Record, Tracer

__all__ = ["NoneGrad"]  # re-exported: the record of `none_grads`


@dataclass
class AnomalyRecord:
    """Anomaly mode's re-run of a draw: the forward trace of the failing node, and its error."""

    trace: str | None  # torch's "Traceback of forward call" of the node that failed
    error: str | None  # what the re-run raised ("Function 'SqrtBackward0' returned nan ...")
    location: Location | None  # the user's line in `trace`

    @property
    def node(self) -> str | None:
        """The backward node that anomaly mode's NaN check named; None for a node with no forward
        trace, which the loss did not make (the copy of an input that the audit passes, say)."""
        match = re.search(r"Function '(\w+)' returned nan", self.error or "")
        return match.group(1) if match and self.trace else None


def anomaly(call: LossCall, draw: int, *, check_nan: bool = False) -> AnomalyRecord:
    """Re-run a draw's forward and backward under anomaly mode (with its NaN check if asked)."""
    out = call.run(draw, grads=True, mode=lambda _: torch.autograd.detect_anomaly(check_nan=check_nan))
    trace = next((str(w.message).split(" (Triggered internally")[0].strip() for w in out.warnings
                  if "Traceback of forward call" in str(w.message)), None)
    error = str(out.error) if out.error is not None and out.stage != "inputs" else None
    location = location_from(frames_from_text(trace), call.root) if trace else None
    return AnomalyRecord(trace, error, location)


def nonfinite_op(call: LossCall, draw: int) -> OpHit | None:
    """The first forward op of a draw that made NaN/Inf out of finite values."""
    scan = NonfiniteScan(call.root)
    call.run(draw, grads=False, mode=lambda _: scan)
    return scan.hits[0] if scan.hits else None


def stray_tensors(call: LossCall, draw: int) -> list[OpHit]:
    """The ops of a draw's forward that made a tensor off the audited device (a mixed-devices error)."""
    scan = StrayScan(call.device, call.root)
    call.run(draw, grads=False, mode=lambda _: scan)
    return scan.hits


def version_conflict(call: LossCall, draw: int) -> Conflict | None:
    """Re-run a draw with version-checking saved-tensor hooks: which op saved the tensor, which
    in-place op changed it."""
    tracer = Tracer()
    call.run(draw, grads=True, mode=lambda inputs: tracer.tracing(inputs.received, inputs.leaves, versions=True))
    return tracer.conflicts[0] if tracer.conflicts else None


# What each backward node's saved tensors say about why its gradient is not finite:
# node -> (saved attribute, the test of its elements). The words are in `explain`.
BOUNDARY_TESTS = {
    "SqrtBackward0": ("_saved_result", lambda t: t == 0),
    "LogBackward0": ("_saved_self", lambda t: t == 0),
    "Log2Backward0": ("_saved_self", lambda t: t == 0),
    "Log10Backward0": ("_saved_self", lambda t: t == 0),
    "PowBackward0": ("_saved_self", lambda t: t == 0),
    "AcosBackward0": ("_saved_self", lambda t: t.abs() >= 1),
    "AsinBackward0": ("_saved_self", lambda t: t.abs() >= 1),
    "DivBackward0": ("_saved_other", lambda t: t == 0),
    "RsqrtBackward0": ("_saved_result", lambda t: ~torch.isfinite(t)),
}


@dataclass
class NonfiniteNode:
    """The first backward node whose gradient became NaN/Inf from finite incoming gradients."""

    node: str  # "SqrtBackward0"
    location: Location | None  # the forward line that made the node
    bad: int  # non-finite elements of its gradient, of `total`
    total: int
    boundary_hits: int = 0  # elements of its saved input at its boundary (0 for sqrt, say)
    saved_numel: int = 0
    saved_nan: int = 0  # NaN elements of its saved input
    masked: bool = False  # the incoming gradient is 0 where the result is NaN/Inf (a `where`)
    # The backward nodes its incoming gradient came from, with their forward lines: what passed a zero.
    after: list[tuple[str, str | None]] = field(default_factory=list)


def nonfinite_node(call: LossCall, draws: list[int]) -> NonfiniteNode | None:
    """Re-run draws with a hook on every backward node; the first to emit NaN/Inf is the origin."""
    for draw in draws:
        found = _first_bad_node(call, draw)
        if found:
            return found
    return None


def _first_bad_node(call: LossCall, draw: int) -> NonfiniteNode | None:
    found: list[NonfiniteNode] = []
    handles: list[Any] = []

    parents: dict[int, list[Any]] = {}

    def hook(grad_in, grad_out, node):
        if found:
            return
        bad = any(g is not None and not bool(torch.isfinite(g).all()) for g in grad_in)
        if bad and all(g is None or bool(torch.isfinite(g).all()) for g in grad_out):
            # Read the node's saved tensors now: backward frees them once it is done.
            found.append(_node_record(node, grad_in, grad_out, call.root, parents.get(id(node), [])))

    def hook_graph(loss: torch.Tensor) -> None:
        seen: set[int] = set()
        stack = [loss.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            stack.extend(n for n, _ in node.next_functions)
            for child, _ in node.next_functions:
                if child is not None:
                    parents.setdefault(id(child), []).append(node)
            if not hasattr(node, "variable"):
                handles.append(node.register_hook(lambda gi, go, node=node: hook(gi, go, node)))

    try:
        # Anomaly mode (without its NaN check) records each node's forward trace.
        call.run(draw, grads=True, mode=lambda _: torch.autograd.detect_anomaly(check_nan=False),
                 before_backward=hook_graph)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


def _node_record(node: Any, grad_in: tuple, grad_out: tuple, root: Path, parents: list[Any]) -> NonfiniteNode:
    name = node.name()
    location = location_from(frames_from_text("".join(node.metadata.get("traceback_", []) or [])), root)
    bad = next((g for g in grad_in if g is not None and not bool(torch.isfinite(g).all())), None)
    record = NonfiniteNode(name, location, int((~torch.isfinite(bad)).sum()) if bad is not None else 0,
                           bad.numel() if bad is not None else 0)
    entry = BOUNDARY_TESTS.get(name)
    if entry is not None:
        attr, test = entry
        saved = getattr(node, attr, None)
        if isinstance(saved, torch.Tensor):
            saved = saved.detach()
            record.boundary_hits = int(test(saved).sum())
            record.saved_nan = int(torch.isnan(saved).sum())
            record.saved_numel = saved.numel()
    incoming = next((g for g in grad_out if g is not None), None)
    if bad is not None and incoming is not None and incoming.shape == bad.shape:
        record.masked = bool(((~torch.isfinite(bad)) & (incoming == 0)).any())
    if record.masked:
        for parent in parents:
            ploc = location_from(frames_from_text("".join(parent.metadata.get("traceback_", []) or [])), root)
            record.after.append((parent.name(), ploc.where if ploc else None))
    return record


def cpu_reference(call: LossCall) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]] | None:
    """Draw 0's loss and gradients from a LossCall on the CPU, for a parity check; None where it fails."""
    out = call.run(0, grads=True)
    if out.error is not None or not out.backward:
        return None
    return out.loss.detach(), {n: g.detach() if g is not None else None for n, g in out.grads.items()}


# -- issue 11: what no break explains ---------------------------------------------------------

def none_grads(call: LossCall, draw: int) -> list[NoneGrad]:
    """Re-run a draw with a hook on each custom autograd.Function node: the Functions whose backward
    returned None for an input that leads to an audited tensor."""
    hits: list[tuple[Any, int]] = []
    handles: list[Any] = []
    names: dict[int, str] = {}

    def mode(inputs):
        names.update({id(t): n for n, t in inputs.leaves.items()})
        return contextlib.nullcontext()

    try:
        call.run(draw, grads=True, mode=mode,
                 before_backward=lambda loss: handles.extend(customfn.hook_functions(loss, hits)))
    finally:
        for h in handles:
            h.remove()
    return customfn.summarise(hits, names)


@dataclass
class SelectionRecord:
    """An op that kept only part of a tensor, where the rest of an audited tensor reaches nothing."""

    op: str
    frames: list[tuple[str, int, str]]
    direct: bool  # it indexed the audited tensor itself, not a result computed from it


def selections(call: LossCall, draw: int, dead: dict[str, torch.Tensor]) -> dict[str, list[SelectionRecord]]:
    """Re-run a draw recording its selecting ops; per audited name with a zero pattern (`dead`), the
    ops that dropped exactly those elements (gradaudit.selection)."""
    recorder = selection.Recorder()
    leaves: dict[str, torch.Tensor] = {}
    received: dict[str, torch.Tensor] = {}
    found: dict[str, list[selection.Selection]] = {}

    def mode(inputs):
        leaves.update(inputs.leaves)
        received.update(inputs.received)
        return recorder

    def before(loss: torch.Tensor) -> None:
        found.update(selection.dropping(recorder, loss, {n: leaves[n] for n in dead if n in leaves}, dead,
                                        received))

    call.run(draw, grads=True, mode=mode, before_backward=before)
    return {name: [SelectionRecord(s.op, s.frames, name in s.direct) for s in sels] for name, sels in found.items()}


@dataclass
class AttributeUse:
    """A plain tensor attribute of a module loss that `.to(device)` leaves behind, and whether a
    re-run of a draw saw forward use it, as it is, with tensors from the inputs."""

    name: str  # dotted from the root module
    attr: str
    owner: type
    device: str
    met: bool


def attribute_uses(call: LossCall, draw: int, attrs: list[Attribute]) -> list[AttributeUse] | None:
    """Re-run a draw's forward with the attributes as fixed-device sources of the tracer; None where
    the re-run fails (then nothing is known)."""
    tracer = Tracer()
    records = []
    for i, a in enumerate(attrs):
        rec = Record(id=len(tracer.records), kind="factory", op="attribute", frames=[("<attribute>", i, "")],
                     device=str(a.tensor.device))
        tracer.records.append(rec)
        tracer.sources.append((a.tensor, rec))
        records.append(rec)
    out = call.run(draw, grads=False, mode=lambda inputs: tracer.tracing(inputs.received, inputs.leaves))
    if out.error is not None:
        return None
    return [AttributeUse(a.name, a.attr, a.owner, str(a.tensor.device), rec.met) for a, rec in zip(attrs, records,
                                                                                                    strict=True)]
