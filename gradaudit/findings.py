"""The finding IDs of CONTRACT section 4: their default severity and what they mean."""

from __future__ import annotations

SEVERITY_ORDER = {"fail": 3, "warn": 2, "info": 1}

# id -> (default severity, meaning). The order is the order of CONTRACT section 4.
FINDINGS: dict[str, tuple[str, str]] = {
    "loss-error": ("fail", "the forward call raised"),
    "loss-not-scalar": ("warn", "the loss is not a scalar; it was reduced with sum() to audit it"),
    "loss-no-grad": ("fail", "the loss does not require grad: no input can get a gradient"),
    "loss-nonfinite": ("fail", "the loss is NaN or Inf"),
    "input-disconnected": ("fail", "an input that requires grad got grad None"),
    "zero-grad": ("fail", "an input's gradient is zero everywhere, in every draw"),
    "partial-grad": ("fail", "some elements of an input never get a gradient, in every draw"),
    "nonfinite-grad": ("fail", "a gradient holds NaN or Inf"),
    "graph-break": ("fail", "an op cut the gradient path from an input"),
    "inplace-version-conflict": ("fail", "backward raised the version-counter error"),
    "inplace-on-graph-tensor": ("info", "an in-place op on a tensor in the graph that caused no conflict"),
    "backward-error": ("fail", "backward raised for another reason"),
    "device-mismatch": ("fail", "the loss or gradients differ between cpu and cuda beyond rtol/atol"),
    "device-portability": ("warn", "the loss makes tensors on a fixed device"),
    "gradcheck-mismatch": ("fail", "the analytic gradient disagrees with finite differences"),
    "unexpected-pass": ("fail", "expect.status: fail was declared but the audit found nothing"),
    # Additions to the contract:
    "leaked-state": ("warn", "the loss left process-wide state changed (grad mode, default dtype, a patched "
                     "torch attribute, sys.modules, ...) for whatever runs after it"),
    "compile-mismatch": ("fail", "the compiled loss or a gradient differs from eager beyond rtol/atol"),
    "compile-error": ("fail", "compiling or running the compiled loss raised where eager did not"),
    "compile-graph-break": ("info", "torch.compile (dynamo) breaks the graph at this line"),
    "batch-mixing": ("fail", "a per_sample loss gives a sample a gradient that depends on other samples"),
    "dead-term": ("warn", "a term cut from the gradient reaches the loss only by addition: it changes the "
                          "loss value and never training"),
    "saturated-grad": ("warn", "an op with a value range (clamp, hardtanh, ...) zeroes most of an input's "
                               "gradient in every draw, because the drawn values lie outside its range"),
}


def default_severity(finding_id: str) -> str:
    """Return the severity a finding has unless the audit says otherwise."""
    return FINDINGS[finding_id][0]
