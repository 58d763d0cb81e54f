"""Golden files of the HTML skeleton and the JUnit XML, scrubbed of times, versions and paths."""

from __future__ import annotations

import io
import json
import platform
import re
from datetime import datetime, timezone

from gradaudit import __version__
from gradaudit.htmlreport import render_html
from gradaudit.junitreport import write_junit
from tests import goldtest, reportdata

# What changes from run to run or machine to machine, and what stands in for it.
SCRUBS = [
    (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00", "TIMESTAMP"),
    (r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00:00", "TIMESTAMP"),
    (r"\d{1,2} [A-Z][a-z]{2} \d{4}, \d\d:\d\d UTC", "READABLE_TIME"),
    (r'time="\d+\.\d+"', 'time="SECONDS"'),
    (r"\b\d+(\.\d+)? (ms|s)\b", "DURATION"),
    (r"\d+ min \d+ s", "DURATION"),
    (re.escape(platform.python_version()), "PYTHON_VERSION"),
    (r"(gradaudit[\" ]+(value=\")?)" + re.escape(__version__), r"\1GRADAUDIT_VERSION"),
    (r"/[^\s\"<>']*/(config\.yaml)", r"TMP/\1"),
    (r'file="/[^"]*/(losses/[^"/]+)"', r'file="TMP/\1"'),  # JUnit's culprit files, beside the config
]


def realistic_run(tmp_path):
    """The hand-built sample with what a real run would vary: clock, durations, versions, paths."""
    run = reportdata.sample_run()
    run.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    run.duration_s = 12.345
    run.gradaudit_version = __version__
    run.environment["python"] = platform.python_version()
    run.config["path"] = str(tmp_path / "config.yaml")
    run.command = f"gradaudit run {tmp_path / 'config.yaml'}"
    for i, r in enumerate(run.results):
        r.duration_s = 0.001 * (i + 1) * 37
    return run


def skeleton(page: str) -> str:
    """The page without the bodies of the inlined CSS and JS (their own files are their record), and
    its data block one key a line, so a change to the data reads as a diff."""
    page = re.sub(r"<style>.*?</style>", "<style>/* templates/report.css */</style>", page, flags=re.S)
    page = re.sub(r"<script>\n.*?</script>", "<script>/* templates/report.js */</script>", page, flags=re.S)
    return re.sub(r'(<script type="application/json" id="gradaudit-data">)(.*?)(</script>)',
                  lambda m: m[1] + "\n" + json.dumps(json.loads(m[2]), indent=1, ensure_ascii=False) + "\n" + m[3],
                  page, flags=re.S)


def test_html_skeleton(tmp_path):
    goldtest.compare(skeleton(render_html(realistic_run(tmp_path))), "report_skeleton.html", SCRUBS)


def test_junit(tmp_path):
    stream = io.StringIO()
    write_junit(realistic_run(tmp_path), stream)
    goldtest.compare(stream.getvalue(), "junit.xml", SCRUBS)


def test_scrubs_remove_what_varies(tmp_path):
    one, two = realistic_run(tmp_path / "a"), realistic_run(tmp_path / "b")
    two.started_at = "2031-01-02T03:04:05+00:00"
    two.duration_s = 99.0
    first = goldtest.scrub(skeleton(render_html(one)), SCRUBS)
    assert first == goldtest.scrub(skeleton(render_html(two)), SCRUBS)
    assert str(tmp_path) not in first and "TIMESTAMP" in first and "DURATION" in first
