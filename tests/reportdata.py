"""Hand-built results for reporter tests: every status, located findings, tracebacks, maps (no torch)."""

from __future__ import annotations

import copy
import json
import random
import re
from pathlib import Path

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


# -- a big, realistic nightly, from the real results of tests/data/nightly_template.yaml ---------------

DATA = Path(__file__).resolve().parent / "data"
TEMPLATE_CONFIG = DATA / "nightly_template.yaml"
TEMPLATE = DATA / "nightly_template.json"
# The template's failing cases, each one distinct cause (finding ID and culprit line), and the share
# of the nightly's failures each cause gets: a shared helper breaks many cases, a one-off few.
CAUSE_CASES = ("example_1_detached_ratio", "data_attribute", "example_2_argmax_loop", "sigmoid_inplace",
               "pairwise_distance", "segfault", "broken_import")
CAUSE_WEIGHTS = (30, 22, 16, 12, 10, 6, 4)
WORDS = ("contrastive", "focal", "dice", "triplet", "margin", "ranking", "smooth_l1", "huber", "kl_div",
         "info_nce", "tversky", "lovasz", "center", "arcface", "cosface", "poly", "wing", "chamfer")


def refresh_template() -> None:
    """Run tests/data/nightly_template.yaml and keep its results.json, machine paths scrubbed."""
    import subprocess
    import sys
    import tempfile

    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "gradaudit", "run", str(TEMPLATE_CONFIG), "-o", tmp],
                       cwd=repo, check=False)
        text = (Path(tmp) / "results.json").read_text(encoding="utf-8")
    text = text.replace(str(repo) + "/", "")
    text = re.sub(r'/[^"\s]*?/lib/python3\.\d+/', "/usr/lib/python3.11/", text)
    text = re.sub(r"0x[0-9a-f]{16}", "0x00007f0000000000", text)
    doc = json.loads(text)
    doc["environment"]["executable"] = "/usr/bin/python3"
    doc["config"]["path"] = "gradaudit.yaml"
    doc["command"] = "gradaudit run gradaudit.yaml -o tonight --baseline last-night/results.json"
    TEMPLATE.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def _renamed(template: CaseResult, case: str, device: str, group: str) -> CaseResult:
    result = CaseResult.from_dict(copy.deepcopy(template.to_dict()))
    result.case, result.device, result.group = case, device, group
    result.loss_ref = f"{group}:{case}"
    result.reproduce = f"gradaudit run gradaudit.yaml --case {case} --device {device}"
    return result


def nightly_run(n_results: int = 2000, failing: int = 100, devices: tuple[str, ...] = ("cpu", "cuda"),
                seed: int = 0, baseline: bool = True) -> RunResults:
    """A nightly of `n_results` results (cases x devices) shaped like real ones.

    `failing` results fail, from the len(CAUSE_CASES) = 7 distinct causes of the template (weighted
    by CAUSE_WEIGHTS; a failing case fails on every device); besides them a few warnings, four
    known-bad fixtures, and, against a baseline, the third cause's failures are new, the rest
    still failing, and five passing cases are fixed. Failing cases are spread over the nightly,
    as a sort by name spreads them.
    """
    rng = random.Random(seed)
    by_case = {r["case"]: CaseResult.from_dict(r) for r in json.loads(TEMPLATE.read_text())["results"]}
    n_cases = n_results // len(devices)
    names = []
    for i in range(n_cases):
        word = WORDS[i % len(WORDS)]
        names.append(f"{word}_loss_v{i // len(WORDS)}_{['batch', 'pairs', 'masked', 'weighted'][i % 4]}")
    order = list(range(n_cases))
    rng.shuffle(order)
    fail_cases = failing // len(devices)
    total = sum(CAUSE_WEIGHTS)
    plan: dict[int, str] = {}
    picked = iter(order)
    for template, weight in zip(CAUSE_CASES, CAUSE_WEIGHTS, strict=True):
        for _ in range(max(1, round(fail_cases * weight / total))):
            plan[next(picked)] = template
    extra = {next(picked): kind for kind in ["warn"] * 6 + ["expected"] * 2 + ["fixed"] * 5}
    results = []
    for i, case in enumerate(names):
        group = f"losses.{WORDS[i % len(WORDS)]}"
        for device in devices:
            kind = extra.get(i)
            if i in plan:
                r = _renamed(by_case[plan[i]], case, device, group)
                r.baseline = "new-failure" if plan[i] == CAUSE_CASES[2] else "still-failing"
            elif kind == "expected":
                r = _renamed(by_case[CAUSE_CASES[0]], case, device, group)
                r.expected = True
                r.baseline = "still-failing"
            else:
                r = _renamed(by_case["example_1_fixed"], case, device, group)
                r.duration_s = round(rng.uniform(0.02, 0.4), 4)
                r.inputs[0].grad_norm = round(rng.uniform(0.1, 9.0), 6)
                if kind == "warn":
                    r.status = "warn"
                    r.findings = [Finding("loss-not-scalar", "warn", "the loss has shape [8], not a scalar; "
                                          "it was reduced with sum() to audit it")]
                    r.summary_line = r.findings[0].message
                elif kind == "fixed":
                    r.baseline = "fixed"
            results.append(r)
    run = RunResults.from_dict({k: v for k, v in json.loads(TEMPLATE.read_text()).items() if k != "results"})
    run.results = results
    run.sort()
    if baseline:
        counts = {m: sum(r.baseline == m for r in results) for m in ("new-failure", "still-failing", "fixed",
                                                                       "new-case")}
        run.baseline = {"path": "last-night/results.json", "started_at": "2026-11-25T03:00:12+00:00",
                        "counts": counts, "gone": []}
    else:
        for r in results:
            r.baseline = None
    return run


if __name__ == "__main__":
    refresh_template()
