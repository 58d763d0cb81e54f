"""The tracer's own traps: saved-tensor hooks that silence torch's version check, explanations
that fail, and which draws are traced."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gradaudit.losscall import DrawInputs
from gradaudit.tracing import TRACED_DRAWS, TraceObserver, Tracer


def _sigmoid_then_mul_(x):
    p = torch.sigmoid(x)
    p.mul_(2.0)
    return p.sum()


def test_a_pack_hook_that_returns_the_tensor_silences_torchs_check():
    """The trap the tracer avoids: with identity hooks, torch no longer sees the conflict."""
    x = torch.randn(5, requires_grad=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        _sigmoid_then_mul_(x).backward()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        _sigmoid_then_mul_(x).backward()  # no error: the gradient is silently wrong
    s = torch.sigmoid(x.detach())
    right = 2 * s * (1 - s)
    assert not torch.allclose(x.grad, right)


def test_the_tracer_hooks_keep_the_version_check_and_name_the_mutation():
    x = torch.randn(5, requires_grad=True)
    tracer = Tracer()
    with pytest.raises(RuntimeError, match=r"modified by an inplace operation.*version 1; expected version 0"):
        with tracer.tracing({"x": x}, versions=True):
            _sigmoid_then_mul_(x).backward()
    [conflict] = tracer.conflicts
    assert conflict.saved_by == "sigmoid"
    assert (conflict.version_saved, conflict.version_now) == (0, 1)
    assert conflict.modified_by is not None and conflict.modified_by.op == "Tensor.mul_"
    assert conflict.modified_by.frames[-1][2] == "_sigmoid_then_mul_"


def _inputs(x: torch.Tensor) -> DrawInputs:
    return DrawInputs(received={"x": x}, leaves={"x": x})


def test_only_the_first_draws_are_traced():
    observer = TraceObserver()
    x = torch.randn(3, requires_grad=True)
    with observer.draw_context(0, _inputs(x)):
        x.detach()
    assert observer.tracing
    with observer.draw_context(TRACED_DRAWS, _inputs(x)) as traced:
        assert traced is None
    assert not observer.tracing


def test_an_explanation_that_fails_keeps_the_verdicts(monkeypatch):
    from gradaudit import explain
    from gradaudit.api import Spec, prepare
    from gradaudit.caseaudit import AuditContext, audit_case

    def boom(*args):
        raise ValueError("boom")

    monkeypatch.setattr(explain, "explain_trace", boom)
    spec = prepare(lambda x, y: (x.detach() * y).sum(), {"x": Spec(shape=(3,)), "y": Spec(shape=(3,))},
                   name="cut", devices=["cpu"])[0]
    result = audit_case(spec, "cpu", AuditContext(root=Path.cwd(), observers=[TraceObserver()]))
    assert [f.id for f in result.findings] == ["input-disconnected"]
    assert result.warnings == ["gradaudit could not trace this case: ValueError: boom"]


def test_the_normal_path_leaves_the_version_check_to_torch():
    """No saved-tensor hooks in a normal draw: torch's own message, naming the node, comes through."""
    x = torch.randn(5, requires_grad=True)
    observer = TraceObserver()
    with pytest.raises(RuntimeError, match=r"which is output 0 of Sigmoid"):
        with observer.draw_context(0, _inputs(x)):
            _sigmoid_then_mul_(x).backward()


# -- the plain-op fast path gives the tags the general path gives ----------------------------------

def _mixed_loss(pred, target, weight):
    """A loss that touches each rule of the tracer; returns the loss and every tensor it made."""
    made = [pred[:, :2], pred[:, 2:]]
    made += [made[1].abs(), made[0] + 1e-3]
    box = torch.cat([made[0], made[0] + made[2] + 1e-3], dim=1)
    ref = torch.cat([target[:, :2], target[:, :2] + target[:, 2:].abs() + 1e-3], dim=1)
    cut = (box - ref).detach()  # a break: its descendants carry it
    fixed = torch.ones(4)  # a fixed-device source meeting the inputs
    both = box * weight + cut * 0.5 + fixed  # two gradient paths meet, and a cut term is added
    picked = box[torch.arange(box.shape[0]), 0]  # a tensor index: the indexing rule applies
    rounded = torch.round(box).sum()  # a zero-derivative op on a gradient-carrying tensor
    scaled = (target * 2).exp()  # no gradient path at all
    listed, spread = pred[[0, 2]], pred[..., None, 1]  # indices without a tensor: not scanned
    made += [box, ref, cut, fixed, both, picked, rounded, scaled, box.T, listed, spread, both.mean()]
    return made[-1] + picked.sum() + rounded + ref.sum(), made


def _traced_tags(monkeypatch, fast: bool):
    from gradaudit import tracing

    monkeypatch.setattr(tracing, "_KINDS", {})
    if not fast:
        real = tracing._known
        monkeypatch.setattr(tracing, "_known", lambda func: (*real(func)[:2], False))
    torch.manual_seed(0)
    pred, weight = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4, requires_grad=True)
    target = torch.randn(6, 4)
    tracer = Tracer()
    with tracer.tracing({"pred": pred, "target": target, "weight": weight}, {"pred": pred, "weight": weight}):
        loss, made = _mixed_loss(pred, target, weight)
    tags = [tracer.tag_of(t) for t in [*made, loss]]
    seen = [None if t is None else (sorted(t.grad), t.derived, sorted(t.breaks), sorted(t.fixed), sorted(t.terms))
            for t in tags]
    records = [(r.kind, r.op, r.why, sorted(r.lost), r.calls, r.met, r.frames[-1][1]) for r in tracer.records]
    return seen, records, float(loss.detach())


def test_the_fast_path_gives_every_tensor_the_general_paths_tag(monkeypatch):
    fast_tags, fast_records, fast_loss = _traced_tags(monkeypatch, fast=True)
    slow_tags, slow_records, slow_loss = _traced_tags(monkeypatch, fast=False)
    assert fast_tags == slow_tags and fast_records == slow_records and fast_loss == slow_loss
    # The trace saw what the loss does: the detach, the round, the fixed source meeting the inputs.
    ops = {(kind, op, why) for kind, op, why, *_ in fast_records}
    assert {("break", "Tensor.detach", "detach"), ("break", "torch.round", "zero-derivative")} <= ops
    assert ("factory", "torch.ones", "") in ops
    assert all(tag is not None for tag in fast_tags[:-1]) and fast_tags[-1] is not None
    assert fast_tags[0][0] == ["pred"] and fast_tags[8][2]  # a slice of pred; the cut value's break
