"""results.json as written: the same data as the result model, one line a result, NaN as text."""

from __future__ import annotations

import io
import json
import math

from gradaudit.jsonreport import read_json, write_json
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
