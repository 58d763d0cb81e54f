"""Grouping results by cause, and reading tracebacks back into frames (no torch)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gradaudit.causes import cause_key, group_by_cause, kind_of
from gradaudit.model import CaseResult, ErrorInfo
from gradaudit.tracebacks import first_user_frame, frame_kind, frames_of, segments
from tests import reportdata
from tests.conftest import REPO


def _template(case: str) -> CaseResult:
    doc = json.loads(reportdata.TEMPLATE.read_text())
    return CaseResult.from_dict(next(r for r in doc["results"] if r["case"] == case))


def test_the_same_bug_in_many_cases_is_one_cause():
    results = [reportdata.ratio_fail(case=f"c{i}", device=d) for i in range(5) for d in ("cpu", "cuda")]
    (cause,) = group_by_cause(results)
    assert cause.id == "partial-grad" and cause.where == "losses/ratio.py:7" and cause.function == "ratio_loss"
    assert len(cause.results) == 10 and cause.cases == [f"c{i}" for i in range(5)]
    assert cause.devices == ["cpu", "cuda"] and cause.reach() == "10 results (5 cases) on cpu, cuda"
    assert cause.location.context and cause.title == "partial-grad at losses/ratio.py:7"


def test_a_different_line_or_finding_is_a_different_cause():
    moved = reportdata.ratio_fail(case="moved")
    moved.findings[1].location.line = 9
    other = reportdata.ratio_fail(case="other")
    other.findings[1].id = "zero-grad"
    causes = group_by_cause([reportdata.ratio_fail(), moved, other])
    assert sorted(c.title for c in causes) == ["partial-grad at losses/ratio.py:7", "partial-grad at losses/ratio.py:9",
                                               "zero-grad at losses/ratio.py:7"]


def test_errors_without_a_line_are_told_apart_by_their_message():
    one, two = reportdata.erroring(), reportdata.erroring()
    one.error.traceback = two.error.traceback = ""
    two.error.message = "cannot import loss 'other:f': No module named 'other'"
    two.case = "broken_other"
    causes = group_by_cause([one, two, reportdata.crashing()])
    assert len(causes) == 3
    assert {c.id for c in causes} == {"error: ModuleNotFoundError", "crash: Crash"}
    assert all(c.where == "" for c in causes)


def test_a_crash_is_located_at_the_users_frame_of_its_dump():
    crash = _template("segfault")
    assert cause_key(crash) == ("crash: SIGSEGV", "tests/losses/faults.py:12", "")
    (cause,) = group_by_cause([crash])
    assert cause.function == "segfault"


def test_kinds_order_and_new_failures_first():
    new = reportdata.ratio_fail(case="new_one")
    new.findings[1].location.line = 99
    new.baseline = "new-failure"
    old = [reportdata.ratio_fail(case=f"old{i}", baseline="still-failing") for i in range(3)]
    fixed = reportdata.passing("fixed_one")
    fixed.baseline = "fixed"
    results = [reportdata.passing("fine"), reportdata.skipped(), reportdata.warning(), fixed,
               reportdata.ratio_fail(case="known_bad", expected=True), *old, new]
    causes = group_by_cause(results)
    assert [c.kind for c in causes] == ["fail", "fail", "warn", "expected", "fixed"]
    # The cause with a new failure leads, though another one breaks more cases.
    assert causes[0].where == "losses/ratio.py:99" and causes[0].new == 1 and len(causes[1].results) == 3
    assert kind_of(reportdata.passing("x")) is None and kind_of(reportdata.skipped()) is None
    assert sum(len(c.results) for c in causes) == len(results) - 2  # the pass and the skip belong to none


def test_the_nightly_has_seven_failing_causes():
    run = reportdata.nightly_run(2000)
    causes = group_by_cause(run.results)
    failing = [c for c in causes if c.kind == "fail"]
    assert len(failing) == 7 and sum(len(c.results) for c in failing) == len(run.bad) == 100
    assert len({c.title for c in failing}) == 7


def test_traceback_frames_user_first_others_folded():
    loss_error = _template("example_2_argmax_loop")
    runs = segments(loss_error.error.traceback)
    shown = [s for s in runs if not s.folded]
    folded = [s for s in runs if s.folded]
    assert [f.where for s in shown for f in s.frames] == ["sample_configs/seed_losses.py:41"]
    assert [s.label for s in folded] == ["2 frames in gradaudit", "2 frames in gradaudit"]
    # The first frame shown in full is the user's; the exception line stays in view.
    first_frame_run = next(s for s in runs if s.frames)
    assert first_frame_run.folded and "Traceback (most recent call last):" in runs[0].text
    assert runs[-1].text.startswith("RuntimeError: mean(): could not infer output dtype")
    # Nothing is lost: the runs hold every line of the traceback, in order.
    assert "\n".join(s.text for s in runs) == loss_error.error.traceback.rstrip("\n")
    torch_too = _template("pairwise_distance").error.anomaly_trace
    assert any("torch" in s.label for s in segments(torch_too) if s.folded)


def test_a_faulthandler_dump_is_read_innermost_first():
    dump = _template("segfault").error.traceback
    frames = frames_of(dump)
    assert [f.kind for f in frames[:3]] == ["python", "user", "gradaudit"]
    assert first_user_frame(dump).where == "tests/losses/faults.py:12"


@pytest.mark.parametrize(("path", "kind"), [
    ("/home/me/proj/losses.py", "user"),
    ("losses/ratio.py", "user"),
    ("/usr/lib/python3.11/site-packages/torch/_tensor.py", "torch"),
    ("/venv/lib/python3.12/site-packages/gradaudit/audit.py", "gradaudit"),
    ("gradaudit/tracing.py", "gradaudit"),
    ("/venv/lib/python3.11/site-packages/numpy/core/x.py", "library"),
    ("/usr/lib/python3.11/multiprocessing/process.py", "python"),
    ("<frozen runpy>", "python"),
    ("/home/me/gradaudit-demo/losses.py", "user"),
])
def test_frame_kinds(path, kind):
    assert frame_kind(path) == kind


def test_an_error_with_no_traceback_has_no_frames():
    result = CaseResult("c", "cpu", "error", error=ErrorInfo("ValueError", "bad", ""))
    assert segments("") == [] and first_user_frame("") is None
    assert cause_key(result) == ("error: ValueError", "", "bad")


def test_causes_do_not_import_torch():
    code = ("import sys; import gradaudit.causes, gradaudit.tracebacks, gradaudit.markdownreport; "
            "assert 'torch' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
