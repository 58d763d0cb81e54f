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
