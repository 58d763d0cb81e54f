"""The shipped sample configs, end to end through the real CLI, checked against the contract."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, by_case, check_contract, finding_ids, run_gradaudit

pytestmark = pytest.mark.slow  # whole runs: CI runs them, `-m "not slow"` (the fast lane) does not

SAMPLES = REPO / "sample_configs"


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("seed")
    proc = run_gradaudit("run", SAMPLES / "seed_examples.yaml", "-o", out, cwd=REPO)
    check_contract(out / "results.json")
    return proc, json.loads((out / "results.json").read_text())


def test_seed_sample_runs_green_with_its_known_bad_cases(seed_run):
    proc, doc = seed_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cpu = by_case(doc)
    assert {name for name, r in cpu.items() if r.get("expected")} == {
        "example_1_detached_ratio", "example_2_argmax_loop", "sigmoid_inplace"}
    assert all(r["status"] == "skip" and "cuda" in r["skip_reason"] for r in doc["results"]
               if r["device"] == "cuda")


def test_detached_ratio_is_partial_not_none(seed_run):
    """The article says None or zeros; torch gives column 0 a gradient and column 1 exactly zero."""
    r = by_case(seed_run[1])["example_1_detached_ratio"]
    assert r["status"] == "fail"
    assert "partial-grad" in finding_ids(r)
    predictions = next(i for i in r["inputs"] if i["name"] == "predictions")
    assert predictions["grad"] == "partial"
    assert predictions["zero_fraction"] == 0.5
    partial = next(f for f in r["findings"] if f["id"] == "partial-grad")
    assert partial["input"] == "predictions"
    assert "column 1 of predictions [8, 2]" in partial["message"]


def test_argmax_loop_fails_in_the_forward_pass(seed_run):
    r = by_case(seed_run[1])["example_2_argmax_loop"]
    assert finding_ids(r)[0] == "loss-error"
    assert "mean(): could not infer output dtype" in r["error"]["message"]
    assert r["findings"][0]["location"]["code"] == "loss = torch.mean(torch.tensor(loss_values))"


def test_clone_then_mul_is_fine(seed_run):
    cpu = by_case(seed_run[1])
    for name in ("example_3_clone_mul_", "example_1_fixed", "example_2_fixed", "example_3_fixed"):
        assert cpu[name]["status"] == "pass", (name, cpu[name]["findings"])
        assert all(i["grad"] in ("ok", "not-required") for i in cpu[name]["inputs"])


def test_sigmoid_inplace_is_a_version_conflict(seed_run):
    r = by_case(seed_run[1])["sigmoid_inplace"]
    conflict = next(f for f in r["findings"] if f["id"] == "inplace-version-conflict")
    assert conflict["location"]["file"] == "seed_losses.py"
    assert ".mul_(" in conflict["location"]["code"]  # the in-place op: the line to change
    assert "torch.sigmoid(predictions)" in conflict["second"]["code"]


def test_seed_summary_is_printed(seed_run):
    proc, _ = seed_run
    assert "14 results: 4 pass, 3 fail, 7 skip (3 expected)" in proc.stdout


def test_torch_losses_all_pass(tmp_path):
    proc = run_gradaudit("run", SAMPLES / "torch_losses.yaml", "-o", tmp_path, "--device", "cpu", cwd=REPO)
    check_contract(tmp_path / "results.json")
    doc = json.loads((tmp_path / "results.json").read_text())
    failing = {r["case"]: r["summary_line"] for r in doc["results"] if r["status"] != "pass"}
    assert failing == {}
    assert proc.returncode == 0
    assert doc["summary"]["total"] >= 21


def test_same_seed_same_results(tmp_path, cli_invoke):
    """Determinism: two runs, and a case run alone, give identical results apart from times."""
    config = SAMPLES / "seed_examples.yaml"
    docs = []
    for name in ("a", "b"):
        cli_invoke(["run", config, "-o", tmp_path / name, "--device", "cpu"])
        docs.append(json.loads((tmp_path / name / "results.json").read_text()))
    cli_invoke(["run", config, "-o", tmp_path / "alone", "--device", "cpu", "--case", "example_1_fixed"])
    alone = json.loads((tmp_path / "alone" / "results.json").read_text())

    def scrub(doc):
        for key in ("started_at", "duration_s", "command"):
            doc.pop(key)
        for r in doc["results"]:
            r.pop("duration_s")
        return doc

    assert scrub(docs[0]) == scrub(docs[1])
    assert scrub(alone)["results"] == [r for r in docs[0]["results"] if r["case"] == "example_1_fixed"]
    cli_invoke(["run", config, "-o", tmp_path / "c", "--device", "cpu", "--seed", "7"])
    other = json.loads((tmp_path / "c" / "results.json").read_text())
    loss = {r["case"]: r["loss"]["value"] for r in other["results"] if r["loss"]}
    assert loss != {r["case"]: r["loss"]["value"] for r in docs[0]["results"] if r["loss"]}


def test_case_glob_that_matches_nothing_is_a_usage_error(cli_invoke):
    result = cli_invoke(["run", SAMPLES / "seed_examples.yaml", "--case", "nope*"], exit_code=2)
    assert "matches no case" in result.output
