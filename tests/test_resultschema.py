"""The published JSON Schema of results.json: valid, shipped, at least as strict as the contract
checker, and what `gradaudit report` says about a bad results file (one screen, exit 2, no traceback)."""

from __future__ import annotations

import copy
import json

import pytest
from jsonschema import Draft202012Validator

from gradaudit.jsonreport import finite_json
from gradaudit.model import SCHEMA
from gradaudit.resultschema import load_results, schema, schema_text, updated_schema_text, validate_results
from tests import reportdata
from tests.conftest import REPO


def _doc() -> dict:
    return finite_json(reportdata.sample_run().to_dict())


def test_the_schema_is_a_valid_json_schema_with_the_contract_id():
    Draft202012Validator.check_schema(schema())
    assert schema()["$id"] == SCHEMA == "gradaudit.results/1"
    assert schema()["properties"]["schema"] == {"const": SCHEMA}


def test_the_finding_ids_are_generated_from_findings_py():
    assert updated_schema_text(schema_text()) == schema_text(), "run: python -m gradaudit.resultschema"


def test_the_schema_ships_as_package_data_and_jsonschema_is_a_dependency():
    project = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    dependencies = project.split("dependencies = [", 1)[1].split("]", 1)[0]
    package_data = project.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    assert '"jsonschema>=4"' in dependencies
    assert '"gradaudit" = ["results.schema.json"]' in package_data


def test_the_readme_documents_the_schema_and_its_id():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "gradaudit/results.schema.json" in readme and "`gradaudit.results/1`" in readme


def test_a_written_run_is_valid_including_optional_fields():
    doc = _doc()
    assert validate_results(doc) == []
    # The optional additions are really present (so the schema checks them, not just allows them).
    results = doc["results"]
    assert any("grad_map" in i for r in results for i in r["inputs"])
    assert any(r.get("expected") for r in results) and any(r.get("warnings") for r in results)


def _set(path: str, value):
    """A mutation of the good document: set `a.b[0].c` to value (a function of the doc: delete)."""

    def mutate(doc: dict) -> None:
        *head, last = _parts(path)
        target = doc
        for part in head:
            target = target[part]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value

    return mutate


def _parts(path: str) -> list:
    parts: list = []
    for piece in path.replace("]", "").split("."):
        name, *indexes = piece.split("[")
        parts += [name, *map(int, indexes)]
    return parts


_DELETE = object()
# Every rule of the contract checker (the reference checker kept outside this repository), and what it cannot see.
BROKEN = [
    (_set("schema", "gradaudit.results/2"), "schema: \"gradaudit.results/2\", expected"),
    (_set("results", _DELETE), "missing key 'results'"),
    (_set("duration_s", "3s"), "duration_s: \"3s\" is a string, expected a number"),
    (_set("environment.torch", _DELETE), "environment: missing key 'torch'"),
    (_set("config.sha256", _DELETE), "config: missing key 'sha256'"),
    (_set("results[0].status", "failed"), "results[0].status: \"failed\" is not one of pass, warn, fail"),
    (_set("results[0].seed", 1.5), "results[0].seed: 1.5 is a number, expected an integer"),
    (_set("results[0].loss", []), "results[0].loss: an array is an array, expected null or an object"),
    (_set("results[0].reproduce", None), "results[0].reproduce: is null, expected a string"),
    (_set("results[0].case", None), "results[0].case: is null, expected a string"),
    (_set("results[0].inputs[0].grad", "partly"), "results[0].inputs[0].grad: \"partly\" is not one of"),
    (_set("results[0].inputs[0].dtype", _DELETE), "results[0].inputs[0]: missing key 'dtype'"),
    (_set("results[0].findings[0].id", "partial-grads"), "(did you mean 'partial-grad'?)"),
    (_set("results[0].findings[0].severity", "error"), "results[0].findings[0].severity: \"error\" is not one of"),
    (_set("results[0].findings[0].message", ""), "results[0].findings[0].message: is empty"),
    (_set("results[0].findings[1].location.line", _DELETE), "results[0].findings[1].location: missing key 'line'"),
    (_set("results[2].error.anomaly_trace", _DELETE), "results[2].error: missing key 'anomaly_trace'"),
    (_set("summary.total", 99), "summary.total: 99, but there are 3 results"),
    (_set("summary.skip", 0), "summary.skip: 0, but 1 results have status skip"),
    # Beyond the contract checker: values a reporter would choke on.
    (_set("results[0].seed", 10**400), "results[0].seed: an integer of 401 digits is above the maximum"),
    (_set("results[0].duration_s", float("inf")), "results[0].duration_s: inf (not finite) is above"),
    (_set("results[0].inputs[0].shape", [8, -2]), "results[0].inputs[0].shape[1]: -2 is below the minimum 0"),
    (_set("results[0].device", "gpu"), "results[0].device: \"gpu\" is not a device name"),
    (_set("results[0].loss.value", "big"), "results[0].loss.value: \"big\" is a string, expected a number or"),
    (_set("results[0].findings[1].location.chain[0].line", "30"), "chain[0].line: \"30\" is a string"),
    (_set("results[0].baseline", "worse"), "results[0].baseline: \"worse\" is not one of"),
    (_set("environment.cuda", "12.1"), "environment.cuda: \"12.1\" is a string, expected null or an object"),
]


@pytest.mark.parametrize(("mutate", "problem"), BROKEN, ids=[p for _, p in BROKEN])
def test_each_broken_document_is_named_precisely(mutate, problem):
    doc = finite_json(reportdata.sample_run([reportdata.ratio_fail(), reportdata.skipped(),
                                             reportdata.inplace_fail()]).to_dict())
    assert [r["status"] for r in doc["results"]] == ["fail", "skip", "fail"] and validate_results(doc) == []
    mutate(doc)
    problems = validate_results(doc)
    assert any(problem in p for p in problems), problems


def test_nan_literals_non_utf8_and_giant_integers_are_refused_by_the_reader():
    good = json.dumps(_doc())
    with pytest.raises(ValueError, match="NaN is not JSON"):
        load_results(good.replace('"duration_s": 3.2', '"duration_s": NaN', 1))
    with pytest.raises(ValueError, match="not UTF-8 text: byte 0xff at offset 0"):
        load_results(b"\xff" + good.encode())
    with pytest.raises(ValueError, match="not valid JSON: an integer of 5001 digits"):
        load_results(good.replace('"seed": 0', '"seed": 1' + "0" * 5000, 1))


def _report_on(tmp_path, cli_invoke, content: bytes | str):
    path = tmp_path / "results.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return cli_invoke(["report", path, "-o", tmp_path / "out"], exit_code=2)


def _broken_texts() -> dict[str, bytes]:
    good = json.dumps(_doc(), indent=2)
    doc = _doc()
    doc["results"][0]["seed"] = 10**400
    doc["results"][1]["case"] = None
    doc["results"][2]["inputs"] = "x"
    many = _doc()
    for r in many["results"]:
        r["status"] = "bad"
        r["device"] = None
    return {
        "non-utf8": b"\xff\xfe" + good.encode(),
        "invalid-json": good[:200].encode(),
        "wrong-types": json.dumps(doc).encode(),
        "nan-literal": good.replace('"duration_s": 3.2', '"duration_s": NaN', 1).encode(),
        "giant-digits": good.replace('"seed": 0', '"seed": 1' + "0" * 5000, 1).encode(),
        "float-overflow": good.replace('"duration_s": 3.2', '"duration_s": 1e400', 1).encode(),
        "many-problems": json.dumps(many).encode(),
        "not-an-object": b"[1, 2]",
    }


@pytest.mark.parametrize("kind", list(_broken_texts()))
def test_report_says_what_is_wrong_in_one_screen(tmp_path, cli_invoke, kind):
    result = _report_on(tmp_path, cli_invoke, _broken_texts()[kind])
    text = result.output
    assert "Traceback" not in text and str(tmp_path / "results.json") in text, text
    assert len(text.splitlines()) <= 20 and max(len(line) for line in text.splitlines()) < 200, text
    assert not (tmp_path / "out").exists()
    expected = {
        "non-utf8": "not UTF-8 text: byte 0xff at offset 0",
        "invalid-json": "not valid JSON:",
        "wrong-types": "results[0].seed: an integer of 401 digits is above the maximum",
        "nan-literal": "NaN is not JSON",
        "giant-digits": "not valid JSON: an integer of 5001 digits",
        "float-overflow": "duration_s: inf (not finite) is above the maximum",
        "many-problems": "... and",
        "not-an-object": "not a gradaudit results file",
    }[kind]
    assert expected in text, text
    if kind == "wrong-types":
        assert "results[1].case: is null, expected a string" in text
        assert "results[2].inputs: \"x\" is a string, expected an array" in text


def test_a_baseline_is_checked_too(tmp_path, cli_invoke):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_doc()), encoding="utf-8")
    bad = copy.deepcopy(_doc())
    bad["results"][0]["findings"] = None
    old = tmp_path / "old.json"
    old.write_text(json.dumps(bad), encoding="utf-8")
    result = cli_invoke(["report", good, "-o", tmp_path / "out", "--baseline", old], exit_code=2)
    assert f"{old}: not a valid results file" in result.output and "findings: is null" in result.output
