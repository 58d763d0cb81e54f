"""Hand-built results for reporter tests: every status, located findings, tracebacks, maps (no torch)."""

from __future__ import annotations

from gradaudit.model import (
    CaseResult,
    ErrorInfo,
    Finding,
    Frame,
    InputResult,
    Location,
    LossInfo,
    RunResults,
)

HOSTILE = "<script>alert('x')</script> \"quoted\" &amp; &lt;b&gt;"
TRACEBACK = """Traceback (most recent call last):
  File "/home/me/proj/losses/ratio.py", line 7, in ratio_loss
    b = predictions[:, 1].detach()
RuntimeError: boom
"""


def ratio_fail(device: str = "cpu", **overrides) -> CaseResult:
    """A partial-grad failure located at a detach, with context, a chain and a gradient map."""
    loc = Location(file="losses/ratio.py", line=7, function="ratio_loss", code="b = predictions[:, 1].detach()",
                   chain=[Frame("train.py", 30, "step", "loss = ratio_loss(p, t)")], context_start=5,
                   context=["def ratio_loss(predictions, targets):", "    a = predictions[:, 0]",
                            "    b = predictions[:, 1].detach()", "    return ((a / b - targets) ** 2).mean()"])
    result = CaseResult(
        case="ratio_loss", device=device, status="fail", duration_s=0.04, seed=0,
        loss=LossInfo(0.02, [], "float32", True, "MeanBackward0", True),
        inputs=[InputResult("predictions", [8, 2], "float32", True, "partial", 0.5, 0, 0.14,
                            grad_map=[[1.0, 0.0]] * 8),
                InputResult("targets", [8], "float32", False)],
        findings=[Finding("graph-break", "info", "detach() cut the gradient path", "predictions"),
                  Finding("partial-grad", "fail", "column 1 of predictions [8, 2] never receives a gradient",
                          "predictions", loc)],
        reproduce=f"gradaudit run config.yaml --case ratio_loss --device {device}",
        loss_ref="losses.ratio:ratio_loss", group="losses.ratio", draws=8,
        summary_line="column 1 of predictions [8, 2] never receives a gradient at losses/ratio.py:7: "
                     "b = predictions[:, 1].detach()")
    for key, value in overrides.items():
        setattr(result, key, value)
    return result


def passing(case: str, device: str = "cpu", group: str = "losses.good") -> CaseResult:
    return CaseResult(case=case, device=device, status="pass", duration_s=0.01,
                      loss=LossInfo(1.5, [], "float32", True, "MeanBackward0", True),
                      inputs=[InputResult("x", [4, 3], "float32", True, "ok", 0.0, 0, 2.5)],
                      reproduce=f"gradaudit run config.yaml --case {case} --device {device}",
                      loss_ref=f"{group}:{case}", group=group, draws=2)


def erroring(device: str = "cpu") -> CaseResult:
    return CaseResult(case="broken_import", device=device, status="error",
                      error=ErrorInfo("ModuleNotFoundError", "cannot import loss 'nope:f': No module named 'nope'",
                                      TRACEBACK),
                      reproduce="gradaudit run config.yaml --case broken_import --device cpu",
                      loss_ref="nope:f", group="nope",
                      summary_line="cannot import loss 'nope:f': No module named 'nope'")


def crashing(device: str = "cpu") -> CaseResult:
    return CaseResult(case="segfaults", device=device, status="crash", group="losses.native",
                      error=ErrorInfo("Crash", "the worker died with signal 11 (SIGSEGV)", ""),
                      summary_line="the worker died with signal 11 (SIGSEGV)", loss_ref="losses.native:f")


def inplace_fail(device: str = "cpu") -> CaseResult:
    loc = Location(file="losses/act.py", line=3, function="sig", code="p = torch.sigmoid(x)")
    return CaseResult(
        case="sigmoid_inplace", device=device, status="fail", group="losses.act", loss_ref="losses.act:sig",
        findings=[Finding("inplace-version-conflict", "fail", "a tensor that Sigmoid saved for backward was "
                          "modified in place before backward (version 0 -> 1)", None, loc,
                          {"saved_by": "SigmoidBackward0"})],
        error=ErrorInfo("RuntimeError", "one of the variables needed for gradient computation has been "
                        "modified by an inplace operation", TRACEBACK,
                        anomaly_trace='  File "losses/act.py", line 3, in sig\n    p = torch.sigmoid(x)\n'),
        reproduce="gradaudit run config.yaml --case sigmoid_inplace --device cpu",
        summary_line="a tensor that Sigmoid saved for backward was modified in place at losses/act.py:3")


def warning(device: str = "cpu") -> CaseResult:
    return CaseResult(case="per_sample", device=device, status="warn", group="losses.good",
                      loss_ref="losses.good:per_sample",
                      findings=[Finding("loss-not-scalar", "warn", "the loss has shape [4], not a scalar")],
                      summary_line="the loss has shape [4], not a scalar", warnings=["UserWarning: careful"])


def skipped(case: str = "ratio_loss", device: str = "cuda") -> CaseResult:
    return CaseResult(case=case, device=device, status="skip", group="losses.ratio",
                      skip_reason="cuda is not available here", summary_line="cuda is not available here")


def sample_run(results: list[CaseResult] | None = None) -> RunResults:
    """A small run with every kind of result, sorted as the runner sorts."""
    run = RunResults(
        results=results if results is not None else [
            ratio_fail(), skipped(), passing("mse"), passing("mse", "cuda"), erroring(), crashing(),
            inplace_fail(), warning(), ratio_fail("cpu", case="known_bad", expected=True)],
        gradaudit_version="0.1.0", started_at="2026-11-26T04:00:00+00:00", duration_s=3.2,
        environment={"python": "3.11.7", "torch": "2.13.0", "platform": "Linux", "cuda": None},
        config={"path": "config.yaml", "sha256": "ab" * 32}, command="gradaudit run config.yaml")
    run.sort()
    return run
