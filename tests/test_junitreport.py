"""JUnit XML, read back with junitparser (a real consumer of the format)."""

from __future__ import annotations

import io

import junitparser
import pytest

from gradaudit.junitreport import write_junit
from gradaudit.model import ErrorInfo
from tests import reportdata


def read_back(results, tmp_path) -> junitparser.JUnitXml:
    path = tmp_path / "junit.xml"
    stream = io.StringIO()
    write_junit(results, stream)
    path.write_text(stream.getvalue(), encoding="utf-8")
    return junitparser.JUnitXml.fromfile(str(path))


def cases_of(xml) -> dict[str, junitparser.TestCase]:
    return {case.name: case for suite in xml for case in suite}


def test_one_testcase_per_case_and_device(tmp_path):
    run = reportdata.sample_run()
    xml = read_back(run, tmp_path)
    cases = cases_of(xml)
    assert sorted(cases) == sorted(f"{r.case}[{r.device}]" for r in run.results)
    for r in run.results:
        assert cases[f"{r.case}[{r.device}]"].classname == r.group


def test_statuses_map_to_junit_outcomes(tmp_path):
    run = reportdata.sample_run()
    cases = cases_of(read_back(run, tmp_path))
    for r in run.results:
        outcome = cases[f"{r.case}[{r.device}]"].result
        kinds = [type(o) for o in outcome]
        if r.expected or r.status == "skip":
            assert kinds == [junitparser.Skipped], r.key
        elif r.status == "fail":
            assert kinds == [junitparser.Failure], r.key
        elif r.status in ("error", "crash", "timeout"):
            assert kinds == [junitparser.Error], r.key
        else:
            assert kinds == [], r.key


def test_suite_totals_add_up(tmp_path):
    run = reportdata.sample_run()
    xml = read_back(run, tmp_path)
    (suite,) = list(xml)
    bad = [r for r in run.results if not r.expected]
    assert suite.tests == len(run.results)
    assert suite.failures == sum(r.status == "fail" for r in bad)
    assert suite.errors == sum(r.status in ("error", "crash", "timeout") for r in bad)
    assert suite.skipped == sum(r.status == "skip" or r.expected for r in run.results)
    props = {p.name: p.value for p in suite.properties()}
    assert props["torch"] == run.environment["torch"] and props["config"] == run.config["path"]


def test_failure_carries_finding_messages_and_locations(tmp_path):
    run = reportdata.sample_run()
    case = cases_of(read_back(run, tmp_path))["ratio_loss[cpu]"]
    (failure,) = case.result
    assert failure.type == "partial-grad"
    assert failure.message == reportdata.ratio_fail().summary_line
    text = failure.text
    assert "partial-grad (fail): column 1 of predictions [8, 2] never receives a gradient" in text
    assert "at losses/ratio.py:7 in ratio_loss: b = predictions[:, 1].detach()" in text
    assert "called from train.py:30 in step" in text
    assert "graph-break (info)" in text
    assert "Reproduce: gradaudit run config.yaml --case ratio_loss --device cpu" in text


def test_error_carries_traceback(tmp_path):
    run = reportdata.sample_run()
    (error,) = cases_of(read_back(run, tmp_path))["broken_import[cpu]"].result
    assert error.type == "ModuleNotFoundError"
    assert "RuntimeError: boom" in error.text  # the traceback


def test_hostile_and_control_characters_survive_as_text(tmp_path):
    r = reportdata.ratio_fail()
    r.case = reportdata.HOSTILE
    r.summary_line = "bad \x1b[31mred\x1b[0m " + reportdata.HOSTILE
    r.error = ErrorInfo("RuntimeError", "x\x00y", "tb \x1b[0m")
    xml = read_back(reportdata.sample_run([r]), tmp_path)
    (case,) = list(cases_of(xml).values())
    assert case.name == f"{reportdata.HOSTILE}[cpu]"
    assert case.result[0].message == "bad \\x1b[31mred\\x1b[0m " + reportdata.HOSTILE  # shown, not acted on


@pytest.mark.parametrize("status", ["timeout", "crash"])
def test_timeouts_and_crashes_are_errors(tmp_path, status):
    r = reportdata.crashing()
    r.status = status
    (outcome,) = cases_of(read_back(reportdata.sample_run([r]), tmp_path))["segfaults[cpu]"].result
    assert isinstance(outcome, junitparser.Error)


def test_testcases_carry_the_culprit_file_and_line(tmp_path):
    """CI annotation tools read testcase file/line: the worst located finding, relative to where
    gradaudit ran (the config's folder joined onto its location)."""
    run = reportdata.sample_run()
    run.config["path"] = "ci/gradaudit.yaml"
    cases = cases_of(read_back(run, tmp_path))
    failing = cases["ratio_loss[cpu]"]  # info graph-break (no location) and partial-grad at ratio.py:7
    assert (failing._elem.get("file"), failing._elem.get("line")) == ("ci/losses/ratio.py", "7")
    assert cases["sigmoid_inplace[cpu]"]._elem.get("file") == "ci/losses/act.py"
    assert cases["sigmoid_inplace[cpu]"]._elem.get("line") == "3"
    for unlocated in ("mse[cpu]", "broken_import[cpu]", "per_sample[cpu]"):
        assert cases[unlocated]._elem.get("file") is None and cases[unlocated]._elem.get("line") is None
    run.config["path"] = "gradaudit.yaml"
    assert cases_of(read_back(run, tmp_path))["ratio_loss[cpu]"]._elem.get("file") == "losses/ratio.py"
