"""Explanations added for issue 11 (where and why): each a function of the tracer's Explainer.

What no break explains: a loss replaced by a constant, a custom Function's backward that returns
None, the op that selected the live part of a partial gradient; a range op that saturates the
gradient; plain module attributes that forward uses on the wrong device. The witnesses that re-run
a draw (gradaudit.customfn, gradaudit.selection, the attribute re-run here) return records; these
functions turn them into findings or locations.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from gradaudit.customfn import none_grads
from gradaudit.frames import location_from
from gradaudit.model import Finding, Location
from gradaudit.portability import attribute_finding, attributes_met, unmoved_attributes
from gradaudit.saturation import saturation_finding
from gradaudit.selection import selections_dropping
from gradaudit.tracing import Record, Tracer, _quote


def replaced_loss(ex: Any) -> None:
    """A loss without grad that no break explains, made by `torch.tensor(...)` of Python values:
    that factory replaced the computed loss (pytorch-forecasting's `torch.tensor(1e9)`)."""
    no_grad = next((f for f in ex.audit.findings if f.id == "loss-no-grad"), None)
    on_path = ex.tracer.loss_breaks
    if no_grad is None or no_grad.location is not None or on_path is None:
        return
    made = [r for r in ex.tracer.records if r.kind == "made" and r.id in on_path]
    if not made:
        return
    rec = made[-1]
    loc = ex.location(rec)
    code = _quote(loc, rec.op)
    message = (f"{code}{f' at {loc.where}' if loc else ''} makes the loss a new tensor from Python values, "
               "which has no gradient path to any input: it replaces the computed loss; keep the "
               "computed tensor (mask or clamp it) instead")
    ex.audit.findings.insert(0, Finding(id="graph-break", severity="fail", message=message, location=loc,
                                        detail={"op": rec.op, "kind": "replace", "inputs": [], "calls": rec.calls}))
    no_grad.location = loc


# -- witnesses for what no break explains ------------------------------------------------
def witness_leaves(ex: Any) -> tuple[dict[str, torch.Tensor], Any] | None:
    """Draw 0's inputs and the module's parameters by audited name, and a call of the loss."""
    audit = ex.audit
    inputs = audit._inputs(0)
    if inputs is None:
        return None
    leaves = {**{k: v for k, v in inputs.items() if v.requires_grad}, **audit.params}
    call = getattr(audit, "_call", None) or (lambda i: audit.fn(*i.values(), **audit.spec.kwargs))
    return leaves, lambda: call(inputs)


def custom_functions(ex: Any) -> None:
    """A custom Function's backward that returns None: the break for inputs that got none."""
    missing = [f for f in ex.audit.findings if f.id in ("input-disconnected", "zero-grad")
               and f.input and f.location is None]
    witness = witness_leaves(ex) if missing else None
    if witness is None:
        return
    leaves, run = witness
    names = {id(t): name for name, t in leaves.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            hits = none_grads(run, names, list(leaves.values()))
        except Exception:  # noqa: BLE001 - a witness that fails explains nothing
            return
    fails = []
    for hit in hits:
        targets = [f for f in missing if f.input in hit.leaves]
        if not targets:
            continue
        loc = location_from(hit.frames, ex.root)
        lost = sorted(f.input for f in targets)
        which = f" `{hit.inputs[0]}`" if len(hit.inputs) == 1 else ""
        message = (f"{_quote(loc, hit.function + '.backward')}{f' at {loc.where}' if loc else ''}: the "
                   f"backward of the custom autograd.Function `{hit.function}` returns None for its input"
                   f"{which} that {', '.join(f'`{n}`' for n in lost)} reaches it through, so no gradient "
                   "flows there (gradients being off in its forward is by design); return that input's "
                   "gradient, or pass it detached if it is not meant to learn")
        fails.append(Finding(id="graph-break", severity="fail", message=message, input=lost[0],
                             location=loc, detail={"op": f"{hit.function}.backward", "kind": "custom-backward",
                                                   "inputs": lost, "function": hit.function}))
        for f in targets:
            f.location = loc
    ex.audit.findings[:0] = fails


def selections(ex: Any) -> None:
    """A partial gradient that no break explains: the op that selected the live part."""
    audit = ex.audit
    partial = [f for f in audit.findings if f.id == "partial-grad" and f.input and f.location is None]
    dead = {}
    for f in partial:
        track = audit.tracks.get(f.input)
        if track is not None and track.ever_nonzero is not None:
            dead[f.input] = ~track.ever_nonzero
    witness = witness_leaves(ex) if dead else None
    if witness is None:
        return
    leaves, run = witness
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            found = selections_dropping(run, {n: leaves[n] for n in dead if n in leaves}, dead)
        except Exception:  # noqa: BLE001 - a witness that fails explains nothing
            return
    for f in partial:
        sels = found.get(f.input)
        if not sels:
            continue
        loc = location_from(sels[0].frames, ex.root)
        if loc is None:
            continue
        f.location = loc
        part = f"`{f.input}`" if f.input in sels[0].direct else f"a tensor computed from `{f.input}`"
        f.message += (f"; {_quote(loc, sels[0].op)} at {loc.where} keeps only part of {part}, and the rest "
                      "reaches the loss by no other path")
        f.detail = {**f.detail, "selected_by": sels[0].op,
                    "also_selected_at": [w.where for w in (location_from(s.frames, ex.root) for s in sels[1:])
                                         if w is not None]}


def saturation(ex: Any) -> None:
    """A range op that clips most of an input's values, where most of its gradient is zero."""
    audit = ex.audit
    failing = {f.input: f for f in audit.findings if f.id in ("zero-grad", "partial-grad") and f.input}
    for rec in ex.tracer.records:
        if rec.kind != "range" or "range" not in rec.facts:
            continue
        loc = ex.location(rec)
        for name in sorted(ex.lost_names(rec)):
            track = audit.tracks.get(name)
            if track is None or track.alive_counts is None or not track.draws:
                continue
            total = track.alive_counts.numel() * track.draws
            zeros = total - int(track.alive_counts.sum())
            finding = saturation_finding(rec.op, *rec.facts["range"], rec.facts["outside"], rec.facts["seen"],
                                         name, zeros, total, track.draws, loc, _quote(loc, rec.op))
            if finding is None:
                continue
            if name in failing:  # the verdict already fails it: the range op is where
                if failing[name].location is None:
                    failing[name].location = loc
                continue
            audit.findings.append(finding)


def unregistered_tensors(ex: Any) -> None:
    """Plain tensor attributes of a module loss that `.to(device)` leaves behind and forward uses
    with the inputs as they are: re-run draw 0 with them as fixed-device sources to see."""
    module = ex.audit.module
    if module is None:
        return
    attrs = unmoved_attributes(module)
    if not attrs:
        return
    located = [ex.declaration(a.owner, a.attr) for a in attrs]
    met = attributes_met(attrs, lambda sources: sources_rerun(ex, sources, located))
    for i, (attr, loc) in enumerate(zip(attrs, located, strict=True)):
        finding = attribute_finding(attr, None if met is None else met[i], loc,
                                    _quote(loc, "self." + attr.attr))
        if finding is not None:
            ex.audit.findings.append(finding)


def sources_rerun(ex: Any, sources: dict[int, torch.Tensor], located: list[Location | None]) -> dict[int, bool]:
    """Re-run draw 0's forward with `sources` as fixed-device tensors; which met the inputs."""
    audit = ex.audit
    inputs = audit._inputs(0)
    if inputs is None:
        raise RuntimeError("no inputs")
    call = getattr(audit, "_call", None) or (lambda i: audit.fn(*i.values(), **audit.spec.kwargs))
    tracer = Tracer()
    records = {}
    for i, t in sources.items():
        loc = located[i]
        frames = [(loc.file, loc.line, loc.function)] if loc else [("<attribute>", i, "")]
        records[i] = Record(id=len(tracer.records), kind="factory", op="attribute", frames=frames,
                            device=str(t.device))
        tracer.records.append(records[i])
        tracer.sources.append((t, records[i]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with tracer.tracing(inputs):
            call(inputs)
    return {i: rec.met for i, rec in records.items()}
