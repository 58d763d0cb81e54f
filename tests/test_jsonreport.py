"""results.json as written: the same data as the result model, one line a result, NaN as text."""

from __future__ import annotations

import io
import json
import math

from gradaudit.jsonreport import JsonCheckpoint, read_json, write_json
from gradaudit.model import RunResults
from tests import reportdata


def _written(run: RunResults) -> str:
    stream = io.StringIO()
    write_json(run, stream)
    return stream.getvalue()


def test_the_file_holds_the_models_dict_with_one_line_a_result(tmp_path):
    run = reportdata.sample_run()
    text = _written(run)
    assert json.loads(text) == json.loads(json.dumps(run.to_dict()))
    lines = text.splitlines()
    result_lines = [line for line in lines if line.startswith('    {"case": ')]
    assert len(result_lines) == len(run.results)
    cases = [json.loads(line.rstrip(","))["case"] for line in result_lines]
    assert cases == [r.case for r in run.results]
    assert lines[0] == "{" and lines[-1] == "}" and '  "schema": "gradaudit.results/1",' in lines
    path = tmp_path / "results.json"
    path.write_text(text)
    assert read_json(path).to_dict() == run.to_dict()


def test_nan_and_inf_are_written_as_strings_only_where_they_are():
    run = reportdata.sample_run()
    first = next(r for r in run.results if r.inputs)
    first.inputs[0].grad_norm = math.nan
    run.duration_s = math.inf
    data = json.loads(_written(run))  # strict JSON: no bare NaN or Infinity
    written = next(r for r in data["results"] if r["case"] == first.case and r["device"] == first.device)
    assert written["inputs"][0]["grad_norm"] == "nan" and data["duration_s"] == "inf"
    others = [r for r in data["results"] if r is not written and r["inputs"]]
    assert all(not isinstance(i["grad_norm"], str) for r in others for i in r["inputs"])


def test_a_run_without_results_is_still_json():
    data = json.loads(_written(RunResults(results=[])))
    assert data["results"] == [] and data["summary"]["total"] == 0


# -- the checkpoint of an in-process run: each result encoded once ------------------------------------

def test_written_with_a_line_cache_the_file_is_the_same_and_a_seen_result_is_not_encoded_again(monkeypatch):
    from gradaudit.model import CaseResult

    run = reportdata.sample_run()
    next(r for r in run.results if r.inputs).inputs[0].grad_norm = math.nan  # a cached line's NaN too
    plain = _written(run)
    lines: dict = {}
    stream = io.StringIO()
    write_json(run, stream, lines)
    assert stream.getvalue() == plain
    encoded = []
    real = CaseResult.to_dict
    monkeypatch.setattr(CaseResult, "to_dict", lambda self: encoded.append(self.case) or real(self))
    again = io.StringIO()
    write_json(run, again, lines)
    assert again.getvalue() == plain and encoded == []
    # A new object in a result's place (the same case) is encoded, never taken for the old one.
    replaced = CaseResult.from_dict(run.results[1].to_dict())
    replaced.summary_line = "changed"
    encoded.clear()
    run.results[1] = replaced
    third = io.StringIO()
    write_json(run, third, lines)
    assert encoded == [replaced.case]
    assert json.loads(third.getvalue())["results"][1]["summary_line"] == "changed"


def test_an_in_process_run_encodes_each_result_once_over_its_checkpoints(tmp_path, monkeypatch):
    """Before each job the checkpoint rewrites results.json; it used to encode every result so far
    each time (1,000 cases: 93 s of checkpoints against 2 s of audits)."""
    from gradaudit import files
    from gradaudit.config import load_config
    from gradaudit.model import CaseResult
    from gradaudit.runner import RunOptions, run
    from tests.conftest import LOSSES, check_contract

    cases = 12
    config = tmp_path / "c.yaml"
    config.write_text("version: 1\n" f"sys_path: [{LOSSES}]\n" "defaults: {devices: [cpu]}\ncases:\n" + "".join(
        f"  - {{name: c{i:02}, loss: 'faults:good', inputs: {{x: {{shape: [4]}}}}}}\n" for i in range(cases)))
    encoded, synced = [], []
    real = CaseResult.to_dict
    monkeypatch.setattr(CaseResult, "to_dict", lambda self: encoded.append(self.case) or real(self))
    monkeypatch.setattr(files.os, "fsync", lambda fd: synced.append(fd))
    out = tmp_path / "out"
    out.mkdir()
    seen = []
    checkpoint = JsonCheckpoint([out / "results.json"])

    def keep(partial):
        checkpoint(partial)
        doc = json.loads((out / "results.json").read_text())
        seen.append(sorted(r["status"] for r in doc["results"]))

    results = run(load_config(config), RunOptions(isolate=False), on_checkpoint=keep)
    assert results.summary.counts["pass"] == cases
    # Before job i: i passes, the job running as a crash, the rest not run.
    assert seen == [sorted(["pass"] * i + ["crash"] + ["skip"] * (cases - i - 1)) for i in range(cases)]
    check_contract(out / "results.json")
    # Each finished result once, each job's crash marker once, each not-run skip once: linear.
    assert len(encoded) <= 3 * cases, len(encoded)
    assert synced == []  # a checkpoint outlives a crash of this process without an fsync
