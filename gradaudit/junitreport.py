"""JUnit XML: one testcase per case x device, for CI systems that show test results."""

from __future__ import annotations

import posixpath
import re
import xml.etree.ElementTree as ET
from typing import IO

from gradaudit.baseline import LABELS
from gradaudit.model import CaseResult, Finding, RunResults
from gradaudit.safetext import safe_text

# Characters XML 1.0 cannot hold at all, beyond the controls that safe_text shows as escapes.
_NOT_XML = re.compile("[\ufffe\uffff]")
ERROR_STATUSES = ("error", "timeout", "crash")


def _text(value: object) -> str:
    return _NOT_XML.sub("?", safe_text(value))


def finding_text(finding: Finding) -> str:
    """A finding as plain text: id, severity, message, then where and the call chain."""
    lines = [f"{finding.id} ({finding.severity}): {finding.message}"]
    loc = finding.location
    if loc is not None:
        where = f"  at {loc.where}" + (f" in {loc.function}" if loc.function else "")
        lines.append(where + (f": {loc.code}" if loc.code else ""))
        for frame in reversed(loc.chain):
            lines.append(f"  called from {frame.where}" + (f" in {frame.function}" if frame.function else "")
                         + (f": {frame.code}" if frame.code else ""))
    return "\n".join(lines)


def result_text(result: CaseResult) -> str:
    """Everything a CI log needs about one result: findings, error, traces, how to reproduce."""
    parts = [finding_text(f) for f in result.findings]
    if result.error is not None:
        parts.append(f"{result.error.type}: {result.error.message}")
        if result.error.traceback:
            parts.append(result.error.traceback.rstrip())
        if result.error.anomaly_trace:
            parts.append("Forward trace recorded by anomaly mode:\n" + result.error.anomaly_trace.rstrip())
    if result.reproduce:
        parts.append(f"Reproduce: {result.reproduce}")
    return "\n\n".join(parts)


def _message(result: CaseResult) -> str:
    return result.summary_line or result.status


def culprit(result: CaseResult, config_path: str = "") -> tuple[str, int] | None:
    """The file and line CI annotation tools should mark for a result: its worst located finding.

    Locations are relative to the config's folder; here they are joined onto the config's path as
    the run was given it, so they are relative to where gradaudit ran (the checkout, in CI).
    """
    located = [f for f in result.findings if f.location is not None and f.severity != "info"]
    if not located:
        return None
    loc = max(located, key=lambda f: f.rank).location
    folder = posixpath.dirname(config_path.replace("\\", "/"))
    file = loc.file if posixpath.isabs(loc.file) else posixpath.normpath(posixpath.join(folder, loc.file))
    return file, loc.line


def _testcase(result: CaseResult, config_path: str = "") -> ET.Element:
    case = ET.Element("testcase", {
        "classname": _text(result.group or "gradaudit"),
        "name": _text(f"{result.case}[{result.device}]"),
        "time": f"{result.duration_s:.3f}",
    })
    where = culprit(result, config_path)
    if where is not None:
        case.set("file", _text(where[0]))
        case.set("line", str(where[1]))
    props = {"status": result.status, "loss": result.loss_ref}
    if result.baseline:
        props["baseline"] = LABELS.get(result.baseline, result.baseline)
    if result.expected:
        props["expected"] = "true"
    properties = ET.SubElement(case, "properties")
    for name, value in props.items():
        if value:
            ET.SubElement(properties, "property", {"name": name, "value": _text(value)})
    worst = result.worst_finding()
    if result.status == "skip":
        ET.SubElement(case, "skipped", {"message": _text(result.skip_reason or "skipped")})
    elif result.expected:
        # Like pytest's xfail: a known-bad fixture that still fails is reported, not failed.
        skipped = ET.SubElement(case, "skipped", {"type": "expected-failure",
                                                  "message": _text(f"expected failure: {_message(result)}")})
        skipped.text = _text(result_text(result))
    elif result.status == "fail":
        failure = ET.SubElement(case, "failure", {"message": _text(_message(result)),
                                                  "type": _text(worst.id if worst else "fail")})
        failure.text = _text(result_text(result))
    elif result.status in ERROR_STATUSES:
        kind = result.error.type if result.error else result.status
        error = ET.SubElement(case, "error", {"message": _text(_message(result)), "type": _text(kind)})
        error.text = _text(result_text(result))
    elif result.findings:
        # warn (and info findings of a pass): the test passes, the log still says what was seen.
        out = ET.SubElement(case, "system-out")
        out.text = _text(result_text(result))
    return case


def build_junit(results: RunResults) -> ET.Element:
    """The <testsuites> tree of a run."""
    counts = results.summary.counts
    expected = sum(1 for r in results.results if r.expected)
    failures = sum(1 for r in results.results if r.status == "fail" and not r.expected)
    errors = sum(1 for r in results.results if r.status in ERROR_STATUSES and not r.expected)
    attrs = {"tests": str(len(results.results)), "failures": str(failures), "errors": str(errors),
             "skipped": str(counts.get("skip", 0) + expected), "time": f"{results.duration_s:.3f}"}
    root = ET.Element("testsuites", {"name": "gradaudit", **attrs})
    suite = ET.SubElement(root, "testsuite", {"name": "gradaudit", **attrs})
    if results.started_at:
        suite.set("timestamp", results.started_at)
    properties = ET.SubElement(suite, "properties")
    env = results.environment or {}
    for name, value in (("gradaudit", results.gradaudit_version), ("python", env.get("python")),
                        ("torch", env.get("torch")), ("config", (results.config or {}).get("path")),
                        ("config_sha256", (results.config or {}).get("sha256")), ("command", results.command)):
        if value:
            ET.SubElement(properties, "property", {"name": name, "value": _text(value)})
    for result in results.results:
        suite.append(_testcase(result, str((results.config or {}).get("path") or "")))
    return root


def write_junit(results: RunResults, stream: IO[str]) -> None:
    """Write the run as JUnit XML."""
    root = build_junit(results)
    ET.indent(root)
    stream.write('<?xml version="1.0" encoding="utf-8"?>\n')
    stream.write(ET.tostring(root, encoding="unicode"))
    stream.write("\n")
