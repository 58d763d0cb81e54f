"""docs/nightly.md: the workflow is valid, and its shard and merge steps, run as written, give the
report of an unsharded run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, check_contract

DOC = REPO / "docs" / "nightly.md"


def _workflow() -> dict:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 1, "docs/nightly.md should hold exactly one workflow"
    return yaml.safe_load(blocks[0])


def _step(job: dict, name_start: str) -> dict:
    return next(s for s in job["steps"] if s.get("name", "").startswith(name_start))


def test_the_workflow_has_shards_a_gpu_job_and_a_merge():
    flow = _workflow()
    jobs = flow["jobs"]
    shards = jobs["cpu"]["strategy"]["matrix"]["shard"]
    assert shards == list(range(1, len(shards) + 1)) and len(shards) > 1
    assert jobs["cpu"]["strategy"]["fail-fast"] is False
    audit = _step(jobs["cpu"], "Audit")["run"]
    assert f"--shard ${{{{ matrix.shard }}}}/{len(shards)}" in audit
    assert "--device cpu" in audit and "--device cuda" in _step(jobs["gpu"], "Audit")["run"]
    assert "gpu" in jobs["gpu"]["runs-on"]
    merge = jobs["report"]
    assert merge["needs"] == ["cpu", "gpu"] and "cancelled()" in merge["if"]
    merge_run = _step(merge, "Merge")["run"]
    assert "gradaudit report shards/*/results.json" in merge_run and "--markdown" in merge_run
    assert "GITHUB_STEP_SUMMARY" in merge_run
    uploads = [s for s in merge["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert uploads and uploads[0]["with"]["path"] == "report/"
    for job in ("cpu", "gpu"):
        keep = next(s for s in jobs[job]["steps"] if s.get("uses", "").startswith("actions/upload-artifact"))
        assert keep["with"]["name"].startswith("results-") and "cancelled()" in keep["if"]


@pytest.mark.slow
def test_the_steps_as_written_merge_into_the_unsharded_report(tmp_path):
    from tests.test_findings import _config

    config = tmp_path / "gradaudit.yaml"
    config.write_text(_config())
    flow = _workflow()
    env = {**os.environ, "CONFIG": str(config), "PYTHONPATH": str(REPO),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "GITHUB_STEP_SUMMARY": str(tmp_path / "step-summary.md")}
    assert shutil.which("gradaudit", path=env["PATH"]), "the gradaudit console script is not installed"

    def bash(script: str, cwd: Path) -> int:
        cwd.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["bash", "-e", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode in (0, 1), proc.stdout + proc.stderr
        return proc.returncode

    cpu = flow["jobs"]["cpu"]
    audit = _step(cpu, "Audit")["run"]
    for k in cpu["strategy"]["matrix"]["shard"]:
        runner = tmp_path / f"runner{k}"
        bash(audit.replace("${{ matrix.shard }}", str(k)), runner)
        # What upload-artifact and download-artifact (one folder per artifact) leave for the merge.
        artifact = tmp_path / "merge" / "shards" / f"results-cpu-{k}"
        artifact.mkdir(parents=True)
        shutil.copy(runner / "report" / "results.json", artifact / "results.json")
    bash(_step(flow["jobs"]["report"], "Merge")["run"], tmp_path / "merge")

    report = tmp_path / "merge" / "report"
    check_contract(report / "results.json")
    assert (report / "index.html").stat().st_size > 0 and (report / "junit.xml").stat().st_size > 0
    summary = (report / "summary.md").read_text()
    assert summary and summary in (tmp_path / "step-summary.md").read_text()

    bash(f'gradaudit run "$CONFIG" --device cpu -o {tmp_path / "whole"} -q', tmp_path)
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    merged = json.loads((report / "results.json").read_text())

    def scrub(doc: dict) -> dict:
        doc = {k: v for k, v in doc.items() if k not in ("started_at", "duration_s", "command")}
        doc["results"] = [{k: v for k, v in r.items() if k != "duration_s"} for r in doc["results"]]
        return doc

    assert len(merged["results"]) == len(whole["results"]) > 20
    assert scrub(merged) == scrub(whole)
