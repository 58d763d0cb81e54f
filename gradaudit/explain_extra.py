"""Explanations added for issue 11 (where and why), on the trace explanation's records.

What no break explains: a loss replaced by a constant, a custom Function's backward that returns
None, the op that selected the live part of a partial gradient; a range op that saturates the
gradient; plain module attributes that forward uses on the wrong device. Each function takes the
trace explanation (`explain._TraceExplanation`: its tracer, its `TraceFacts` with the witnesses'
records, its findings) and edits its findings; none runs the user's loss.
"""

from __future__ import annotations

from typing import Any

from gradaudit.frames import location_from
from gradaudit.model import Finding
from gradaudit.portability import attribute_finding
from gradaudit.saturation import saturation_finding
from gradaudit.wording import quote as _quote


def replaced_loss(ex: Any) -> None:
    """A loss without grad that no break explains, made by `torch.tensor(...)` of Python values:
    that factory replaced the computed loss (pytorch-forecasting's `torch.tensor(1e9)`)."""
    no_grad = next((f for f in ex.findings if f.id == "loss-no-grad"), None)
    on_path = ex.tracer.loss_breaks
    if no_grad is None or no_grad.location is not None or on_path is None:
        return
    made = [r for r in ex.tracer.records if r.kind == "made" and r.id in on_path]
    if not made:
        return
    rec = made[-1]
    loc = ex.location(rec)
    message = (f"{_quote(loc, rec.op)}{f' at {loc.where}' if loc else ''} makes the loss a new tensor from Python "
               "values, which has no gradient path to any input: it replaces the computed loss; keep the "
               "computed tensor (mask or clamp it) instead")
    ex.findings.insert(0, Finding(id="graph-break", severity="fail", message=message, location=loc,
                                  detail={"op": rec.op, "kind": "replace", "inputs": [], "calls": rec.calls}))
    no_grad.location = loc


def custom_functions(ex: Any) -> None:
    """A custom Function's backward that returns None: the break for inputs that got no gradient."""
    missing = [f for f in ex.findings if f.id in ("input-disconnected", "zero-grad") and f.input
               and f.location is None]
    fails = []
    for hit in ex.facts.none_grads if missing else []:
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
        fails.append(Finding(id="graph-break", severity="fail", message=message, input=lost[0], location=loc,
                             detail={"op": f"{hit.function}.backward", "kind": "custom-backward",
                                     "inputs": lost, "function": hit.function}))
        for f in targets:
            f.location = loc
    ex.findings[:0] = fails


def selections(ex: Any) -> None:
    """A partial gradient that no break explains: the op that selected the live part."""
    for f in ex.findings:
        if f.id != "partial-grad" or not f.input or f.location is not None:
            continue
        sels = ex.facts.selections.get(f.input)
        if not sels:
            continue
        loc = location_from(sels[0].frames, ex.root)
        if loc is None:
            continue
        f.location = loc
        part = f"`{f.input}`" if sels[0].direct else f"a tensor computed from `{f.input}`"
        f.message += (f"; {_quote(loc, sels[0].op)} at {loc.where} keeps only part of {part}, and the rest "
                      "reaches the loss by no other path")
        others = [w.where for w in (location_from(s.frames, ex.root) for s in sels[1:]) if w is not None]
        f.detail = {**f.detail, "selected_by": sels[0].op, "also_selected_at": others}


def saturation(ex: Any) -> None:
    """A range op that clips most of an input's values, where most of its gradient is zero."""
    failing = {f.input: f for f in ex.findings if f.id in ("zero-grad", "partial-grad") and f.input}
    for rec in ex.tracer.records:
        if rec.kind != "range" or "range" not in rec.facts:
            continue
        loc = ex.location(rec)
        for name in sorted(ex.lost_names(rec)):
            if name not in ex.facts.zeros:
                continue
            zeros, total, draws = ex.facts.zeros[name]
            found = saturation_finding(rec.op, *rec.facts["range"], rec.facts["outside"], rec.facts["seen"],
                                       name, zeros, total, draws, loc, _quote(loc, rec.op))
            if found is None:
                continue
            if name in failing:  # the verdict already fails it: the range op is where
                if failing[name].location is None:
                    failing[name].location = loc
                continue
            ex.findings.append(found)


def unregistered_tensors(ex: Any) -> None:
    """Plain tensor attributes of a module loss that `.to(device)` leaves behind and forward uses
    with the inputs as they are (the attribute witness's records), at their declaration."""
    uses = ex.facts.attributes
    if ex.facts.module is None or uses is None and not ex.facts.unmoved:
        return
    if uses is None:  # the witness could not run: say so, as an info
        uses = [dict(name=a.name, attr=a.attr, owner=a.owner, device=str(a.tensor.device), met=None)
                for a in ex.facts.unmoved]
    else:
        uses = [vars(u) for u in uses]
    for use in uses:
        loc = ex.declaration(use["owner"], use["attr"])
        found = attribute_finding(use["name"], use["attr"], use["device"], use["met"], loc,
                                  _quote(loc, "self." + use["attr"]))
        if found is not None:
            ex.findings.append(found)
