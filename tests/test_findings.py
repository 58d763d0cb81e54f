"""Each finding the spine reports: triggered by a loss in tests/losses/spine.py, not by its twin."""

from __future__ import annotations

import json
import textwrap

import pytest
from typer.testing import CliRunner

from tests.conftest import LOSSES, by_case, check_contract, finding_ids

CASES = {
    # case name: (loss, inputs yaml, extra yaml)
    "raises": ("spine:raises", "x: {shape: [4, 3]}", ""),
    "raises_twin": ("spine:raises_twin", "x: {shape: [4, 3]}", ""),
    "per_sample": ("spine:per_sample", "x: {shape: [4, 3]}", ""),
    "per_sample_twin": ("spine:per_sample_twin", "x: {shape: [4, 3]}", ""),
    "via_item": ("spine:via_item", "x: {shape: [4, 3]}", ""),
    "via_item_twin": ("spine:via_item_twin", "x: {shape: [4, 3]}", ""),
    "python_float": ("spine:python_float", "x: {shape: [4, 3]}", ""),
    "log_of_negative": ("spine:log_of_negative", "x: {shape: [4, 3]}", ""),
    "log_of_negative_twin": ("spine:log_of_negative_twin", "x: {shape: [4, 3]}", ""),
    "unused_input": ("spine:unused_input", "x: {shape: [4, 3]}\n      y: {shape: [4, 3]}", ""),
    "unused_input_twin": ("spine:unused_input_twin", "x: {shape: [4, 3]}\n      y: {shape: [4, 3]}", ""),
    "unused_input_declared": ("spine:unused_input", "x: {shape: [4, 3]}\n      y: {shape: [4, 3]}",
                              "expect: {no_grad: [y]}"),
    "times_zero": ("spine:times_zero", "x: {shape: [4, 3]}", ""),
    "times_zero_twin": ("spine:times_zero_twin", "x: {shape: [4, 3]}", ""),
    "first_column": ("spine:first_column", "x: {shape: [4, 3]}", ""),
    "first_column_twin": ("spine:first_column_twin", "x: {shape: [4, 3]}", ""),
    "sqrt_at_zero": ("spine:sqrt_at_zero", "x: {shape: [4, 3]}", ""),
    "sqrt_at_zero_twin": ("spine:sqrt_at_zero_twin", "x: {shape: [4, 3]}", ""),
    "inplace": ("spine:sigmoid_then_inplace", "x: {shape: [4, 3]}", ""),
    "inplace_twin": ("spine:sigmoid_then_inplace_twin", "x: {shape: [4, 3]}", ""),
    "backward_raises": ("spine:backward_raises", "x: {shape: [4, 3]}", ""),
    "backward_raises_twin": ("spine:backward_raises_twin", "x: {shape: [4, 3]}", ""),
    "unexpected_pass": ("spine:raises_twin", "x: {shape: [4, 3]}", "expect: {status: fail}"),
    "expected_fail": ("spine:raises", "x: {shape: [4, 3]}", "expect: {status: fail}"),
    "ignored": ("spine:per_sample", "x: {shape: [4, 3]}", "expect: {ignore: [loss-not-scalar]}"),
    "unused_param": ("spine:WithUnusedParam", "x: {shape: [4, 3]}", ""),
    "used_params": ("spine:WithUsedParams", "x: {shape: [4, 3]}", ""),
    "keeps_graph": ("spine:KeepsGraph", "x: {shape: [4, 3]}", ""),
    "keeps_value": ("spine:KeepsValue", "x: {shape: [4, 3]}", ""),
    "returns_tuple": ("spine:returns_tuple", "x: {shape: [4, 3]}", ""),
    "returns_dict": ("spine:returns_dict", "x: {shape: [4, 3]}", ""),
    "returns_list_of_floats": ("spine:returns_list_of_floats", "x: {shape: [4, 3]}", ""),
    "not_importable": ("spine_missing_module:loss", "x: {shape: [4, 3]}", ""),
    "no_such_function": ("spine:no_such_function", "x: {shape: [4, 3]}", ""),
}


def _config() -> str:
    lines = ["version: 1", f"sys_path: [{LOSSES}]", "defaults: {devices: [cpu]}", "cases:"]
    for name, (loss, inputs, extra) in CASES.items():
        lines += [f"  - name: {name}", f"    loss: {loss}", "    inputs:", f"      {inputs}"]
        if extra:
            lines.append(f"    {extra}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def spine_run(tmp_path_factory):
    """Audit every case above once, through the CLI; return (exit code, results by case)."""
    from gradaudit.cli import app

    folder = tmp_path_factory.mktemp("spine")
    config = folder / "spine.yaml"
    config.write_text(_config())
    result = CliRunner().invoke(app, ["run", str(config), "-o", str(folder / "out")])
    results = folder / "out" / "results.json"
    assert results.exists(), result.output
    check_contract(results)
    return result.exit_code, by_case(json.loads(results.read_text()))


TRIGGERS = [
    ("raises", "loss-error"),
    ("per_sample", "loss-not-scalar"),
    ("via_item", "loss-no-grad"),
    ("python_float", "loss-no-grad"),
    ("log_of_negative", "loss-nonfinite"),
    ("unused_input", "input-disconnected"),
    ("times_zero", "zero-grad"),
    ("first_column", "partial-grad"),
    ("sqrt_at_zero", "nonfinite-grad"),
    ("inplace", "inplace-version-conflict"),
    ("backward_raises", "backward-error"),
    ("keeps_graph", "backward-error"),
    ("unused_param", "input-disconnected"),
    ("unexpected_pass", "unexpected-pass"),
]


@pytest.mark.parametrize("case, finding", TRIGGERS)
def test_finding_is_reported(spine_run, case, finding):
    _, results = spine_run
    assert finding in finding_ids(results[case]), results[case]["findings"]


@pytest.mark.parametrize("case, finding", [(c + "_twin", f) for c, f in TRIGGERS
                                           if c + "_twin" in CASES])
def test_twin_is_clean(spine_run, case, finding):
    _, results = spine_run
    assert results[case]["status"] == "pass", results[case]["findings"]
    assert results[case]["findings"] == []


def test_statuses_follow_severity(spine_run):
    _, results = spine_run
    assert results["per_sample"]["status"] == "warn"
    assert results["raises"]["status"] == "fail"
    assert results["first_column"]["status"] == "fail"


def test_partial_grad_names_the_slice(spine_run):
    _, results = spine_run
    finding = next(f for f in results["first_column"]["findings"] if f["id"] == "partial-grad")
    assert finding["input"] == "x"
    assert "columns 1-2 of x [4, 3]" in finding["message"]
    x = next(i for i in results["first_column"]["inputs"] if i["name"] == "x")
    assert x["grad"] == "partial"
    assert x["zero_fraction"] == pytest.approx(2 / 3, abs=1e-4)


def test_input_verdicts(spine_run):
    _, results = spine_run
    grads = {i["name"]: i["grad"] for i in results["unused_input"]["inputs"]}
    assert grads == {"x": "ok", "y": "none"}
    assert {i["name"]: i["grad"] for i in results["times_zero"]["inputs"]} == {"x": "zero"}
    assert {i["name"]: i["grad"] for i in results["sqrt_at_zero"]["inputs"]} == {"x": "nonfinite"}
    x = results["sqrt_at_zero"]["inputs"][0]
    assert x["nonfinite_count"] == 12


def test_loss_record(spine_run):
    _, results = spine_run
    loss = results["raises_twin"]["loss"]
    assert loss["shape"] == [] and loss["dtype"] == "float32" and loss["finite"] is True
    assert loss["grad_fn"] == "MeanBackward0" and loss["requires_grad"] is True
    assert results["log_of_negative"]["loss"]["finite"] is False
    assert results["via_item"]["loss"]["requires_grad"] is False


def test_loss_error_keeps_traceback_and_line(spine_run):
    _, results = spine_run
    r = results["raises"]
    assert r["error"]["type"] == "ValueError"
    assert "shapes do not match" in r["error"]["traceback"]
    loc = r["findings"][0]["location"]
    assert loc["function"] == "raises" and "raise ValueError" in loc["code"]


def test_version_conflict_has_anomaly_trace(spine_run):
    _, results = spine_run
    r = results["inplace"]
    assert "sigmoid" in r["error"]["anomaly_trace"]
    assert r["findings"][0]["location"]["code"] == "p.mul_(2.0)"  # the in-place op: the line to change
    assert r["findings"][0]["second"]["code"] == "p = torch.sigmoid(x)"  # the op that saved the tensor


def test_expect_no_grad_allows_declared_input(spine_run):
    _, results = spine_run
    assert results["unused_input_declared"]["status"] == "pass"
    grads = {i["name"]: i["grad"] for i in results["unused_input_declared"]["inputs"]}
    assert grads["y"] == "none"  # the verdict still tells the truth


def test_expect_ignore_drops_the_finding(spine_run):
    _, results = spine_run
    assert results["ignored"]["status"] == "pass"
    assert "loss-not-scalar" not in finding_ids(results["ignored"])


def test_expected_failure(spine_run):
    _, results = spine_run
    assert results["expected_fail"]["status"] == "fail"
    assert results["expected_fail"]["expected"] is True
    assert results["unexpected_pass"]["status"] == "fail"
    assert results["unexpected_pass"].get("expected") is False


def test_module_parameters_are_audited(spine_run):
    _, results = spine_run
    grads = {i["name"]: i["grad"] for i in results["unused_param"]["inputs"]}
    assert grads == {"param:frozen": "not-required", "x": "ok", "param:weight": "ok", "param:scale": "none"}
    disconnected = [f for f in results["unused_param"]["findings"] if f["id"] == "input-disconnected"]
    assert [f["input"] for f in disconnected] == ["param:scale"]
    assert results["used_params"]["status"] == "pass"


def test_stateful_module_is_called_across_draws(spine_run):
    _, results = spine_run
    message = next(f for f in results["keeps_graph"]["findings"] if f["id"] == "backward-error")["message"]
    assert "second time" in message
    assert results["keeps_value"]["status"] == "pass"


def test_import_errors_are_errors_of_that_case_alone(spine_run):
    code, results = spine_run
    assert results["not_importable"]["status"] == "error"
    assert "spine_missing_module" in results["not_importable"]["error"]["message"]
    assert results["no_such_function"]["status"] == "error"
    assert "no_such_function" in results["no_such_function"]["error"]["message"]
    assert results["raises_twin"]["status"] == "pass"  # the others still ran
    assert code == 1


@pytest.mark.slow
def test_exit_codes(audit_config):
    good = textwrap.dedent("""\
        cases:
          - name: fine
            loss: spine:raises_twin
            inputs: {x: {shape: [2, 2]}}
    """)
    code, _ = audit_config(good)
    assert code == 0
    warn = good.replace("raises_twin", "per_sample")
    assert audit_config(warn)[0] == 0
    assert audit_config(warn, "--fail-on", "warn")[0] == 1
    assert audit_config(good.replace("raises_twin", "raises"))[0] == 1
    expected = good.replace("inputs:", "expect: {status: fail}\n    inputs:").replace("raises_twin", "raises")
    assert audit_config(expected)[0] == 0


def test_inputs_of_a_draw_that_never_reached_a_gradient_are_not_called_ok(spine_run):
    _, results = spine_run
    r = results["inplace"]
    assert r["draws"] == 0
    assert {i["name"]: i["grad"] for i in r["inputs"]} == {"x": "none"}


@pytest.mark.slow
def test_many_repeats_do_not_wrap_the_gradient_counts(audit_config):
    """Counts are bytes by default; 256 draws must not wrap them round to zero."""
    _, doc = audit_config("""\
        cases:
          - name: many
            loss: spine:raises_twin
            repeats: 256
            inputs: {x: {shape: [2]}}
    """)
    (result,) = doc["results"]
    assert result["draws"] == 256
    assert result["status"] == "pass" and result["inputs"][0]["grad"] == "ok"


def test_a_loss_returned_with_its_logs_is_audited(spine_run):
    """`(loss, logs)` and `{"loss": ...}` are audited as training would backpropagate them."""
    _, results = spine_run
    assert results["returns_tuple"]["status"] == "pass"
    assert results["returns_tuple"]["loss"]["picked"] == "[0]"
    assert results["returns_dict"]["loss"]["picked"] == "['loss']"
    assert "partial-grad" in finding_ids(results["returns_dict"])  # only column 0 is used
    other = results["returns_list_of_floats"]
    assert finding_ids(other)[0] == "loss-error" and "not a tensor" in other["findings"][0]["message"]


def test_torch_warn_once_warnings_are_kept_for_every_case(audit_config):
    """torch warns about float() of a grad tensor once per process; each case must still show it."""
    _, doc = audit_config("""\
        cases:
          - name: first
            loss: spine:python_float
            inputs: {x: {shape: [2, 2]}}
          - name: second
            loss: spine:returns_list_of_floats
            inputs: {x: {shape: [2, 2]}}
    """, "--no-isolate")
    for result in doc["results"]:
        assert any("Converting a tensor with requires_grad=True" in w for w in result.get("warnings", [])), result


def test_randomness_inside_the_loss_is_seeded_per_draw(tmp_path):
    """A loss that draws its own random numbers gives the same result however often it runs."""
    import torch

    from gradaudit.caseaudit import AuditContext, audit_case
    from gradaudit.config import load_config
    from gradaudit.loading import add_import_roots

    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        sys_path: [{LOSSES}]
        cases:
          - name: rnd
            loss: spine:random_mask
            inputs: {{x: {{shape: [4, 3]}}}}
    """))
    config = load_config(path)
    add_import_roots(config.root, config.sys_path)
    ctx = AuditContext(root=config.root)
    first = audit_case(config.cases[0], "cpu", ctx)
    torch.rand(5)  # the caller's random stream moves on between the two audits
    second = audit_case(config.cases[0], "cpu", ctx)
    assert first.loss.value == second.loss.value
    assert first.status == second.status == "pass"
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    audit_case(config.cases[0], "cpu", ctx)
    assert torch.equal(torch.rand(3), expected)  # the caller's random stream is left as it was
