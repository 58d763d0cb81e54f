"""The precision matrix: `dtypes` and `autocast` expand cases; low-precision findings name dtype and op."""

from __future__ import annotations

import json

import pytest

from gradaudit.config import load_config
from gradaudit.errors import ConfigError
from gradaudit.inputs import make_inputs
from tests.conftest import REPO, by_case, check_contract, finding_ids

PRECISION = REPO / "sample_configs" / "precision.yaml"


def test_precision_entries_share_their_draws_and_dims_entries_do_not(write_config):
    path = write_config("""\
        version: 1
        cases:
          - name: c
            loss: m:f
            dims: {B: [2, 4]}
            dtypes: [float32, float16]
            autocast: true
            inputs: {x: {shape: [B]}}
    """)
    names = {c.name: c.draw_name for c in load_config(path).cases}
    assert names["c[B=2,dtype=float16,autocast=on]"] == names["c[B=2,dtype=float32,autocast=off]"] == "c[B=2]"
    assert len(set(names.values())) == 2


def test_dtypes_make_a_matrix_and_cast_floating_inputs(write_config):
    path = write_config("""\
        version: 1
        cases:
          - name: ce
            loss: m:f
            dims: {B: [2, 4]}
            dtypes: [float16, bfloat16]
            inputs:
              logits: {shape: [B, 3]}
              weights: {shape: [3], dtype: float64}
              targets: {shape: [B], init: randint, high: 3}
    """)
    cases = load_config(path).cases
    assert [c.name for c in cases] == ["ce[B=2,dtype=float16]", "ce[B=2,dtype=bfloat16]",
                                       "ce[B=4,dtype=float16]", "ce[B=4,dtype=bfloat16]"]
    first = cases[0]
    assert first.base_name == "ce" and first.dtype == "float16" and first.dims == {"B": 2}
    assert [(i.name, i.dtype, i.shape) for i in first.inputs] == [
        ("logits", "float16", [2, 3]), ("weights", "float16", [3]), ("targets", "int64", [2])]
    assert not first.autocast


def test_autocast_makes_an_off_and_an_on_case(write_config):
    path = write_config("""\
        version: 1
        defaults: {autocast: true}
        cases:
          - name: mm
            loss: m:f
            inputs: {x: {shape: [2, 2]}}
    """)
    cases = load_config(path).cases
    assert [(c.name, c.autocast, c.inputs[0].dtype) for c in cases] == [
        ("mm[autocast=off]", False, "float32"), ("mm[autocast=on]", True, "float32")]


@pytest.mark.parametrize("setting, message", [
    ("dtypes: [float32, int64]", "cases[0].dtypes[1]: dtype 'int64' must be a floating dtype"),
    ("dtypes: [float16, float61]", "dtype 'float61' must be a floating dtype (did you mean 'float"),
    ("dtypes: [float16, float16]", "dtype 'float16' is listed twice"),
    ("dtypes: []", "dtypes is empty"),
    ("dtypes: float16", "cases[0].dtypes: must be a list"),
    ("autocast: yes please", "cases[0].autocast: must be true or false"),
    ("{dtypes: [float16], dims: {dtype: 3}}", "clashes with the precision matrix"),
])
def test_bad_precision_settings_are_config_errors(write_config, setting, message):
    if setting.startswith("{"):
        extra = "\n".join(f"    {k}: {v}" for k, v in
                          [("dtypes", "[float16]"), ("dims", "{dtype: 3}")])
    else:
        extra = f"    {setting}"
    path = write_config("version: 1\ncases:\n  - name: c\n    loss: m:f\n" + extra
                        + "\n    inputs: {x: {shape: [2]}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert f"{path}:" in str(info.value)  # file and line


@pytest.fixture(scope="module")
def precision_run(tmp_path_factory):
    """The precision sample, run once on CPU through the CLI."""
    from typer.testing import CliRunner

    from gradaudit.cli import app

    out = tmp_path_factory.mktemp("precision")
    result = CliRunner().invoke(app, ["run", str(PRECISION), "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 1, result.output  # the sample's float16 overflows are real failures
    check_contract(out / "results.json")
    return by_case(json.loads((out / "results.json").read_text()))


def _loss_value(name: str, dtype: str) -> float:
    """Ground truth: the sample loss on the audit's own first-draw inputs, run by torch directly."""
    import sys

    sys.path.insert(0, str(PRECISION.parent))
    import precision_losses

    spec = next(c for c in load_config(PRECISION).cases if c.name == f"{name}[dtype={dtype}]")
    inputs = make_inputs(spec.inputs, spec.seed, spec.draw_name, 0, PRECISION.parent)
    fn = {"naive_softmax_ce": precision_losses.naive_softmax_cross_entropy,
          "pixel_sse": precision_losses.pixel_sse}[name]
    return float(fn(*inputs.values()))


@pytest.mark.parametrize("name, op, line_code", [
    ("naive_softmax_ce", "torch.exp", "e = torch.exp(logits)"),
    ("pixel_sse", "Tensor.sum", "return ((predictions - targets) ** 2).sum()"),
])
def test_the_matrix_finds_a_float16_overflow_that_float32_does_not(precision_run, name, op, line_code):
    import math

    assert math.isfinite(_loss_value(name, "float32")) and not math.isfinite(_loss_value(name, "float16"))
    fp16 = precision_run[f"{name}[dtype=float16]"]
    assert fp16["status"] == "fail" and finding_ids(fp16) == ["loss-nonfinite"]
    finding = fp16["findings"][0]
    assert f"({op} at float16, whose largest finite value is 65504)" in finding["message"]
    assert finding["detail"]["op"] == op and finding["detail"]["dtype"] == "float16"
    assert finding["location"]["file"] == "precision_losses.py"
    assert finding["location"]["code"] == line_code
    assert precision_run[f"{name}[dtype=float32]"]["status"] == "pass"
    assert precision_run[f"{name}[dtype=bfloat16]"]["status"] == "pass"  # float32's range


def test_the_fixed_twins_pass_in_every_dtype(precision_run):
    for name in ("stable_softmax_ce", "pixel_mse"):
        for dtype in ("float32", "float16", "bfloat16"):
            result = precision_run[f"{name}[dtype={dtype}]"]
            assert result["status"] == "pass", (name, dtype, result["findings"])
            assert {i["dtype"] for i in result["inputs"] if i["name"] != "targets"} == {dtype}


def test_autocast_entries_run_at_the_cpu_autocast_dtype(precision_run):
    on = precision_run["projection_ce[dtype=float32,autocast=on]"]
    off = precision_run["projection_ce[dtype=float32,autocast=off]"]
    assert on["status"] == off["status"] == "pass"
    # Both audit the same draws; under CPU autocast the matmul runs in bfloat16, so the loss is
    # close to float32's but rounded differently.
    assert on["loss"]["value"] != off["loss"]["value"]
    assert on["loss"]["value"] == pytest.approx(off["loss"]["value"], rel=0.02)


def test_a_gradient_that_breaks_only_in_float16_names_the_dtype_and_the_node(audit_config):
    _, doc = audit_config("""
        cases:
          - name: tiny
            loss: precision_faults:sqrt_of_tiny
            dtypes: [float32, float16]
            inputs: {x: {shape: [6], init: uniform, low: 1.0e-10, high: 2.0e-10}}
          - name: tiny_fixed
            loss: precision_faults:sqrt_of_tiny_fixed
            dtypes: [float32, float16]
            inputs: {x: {shape: [6], init: uniform, low: 1.0e-10, high: 2.0e-10}}
    """)
    results = by_case(doc)
    fp16 = results["tiny[dtype=float16]"]
    assert finding_ids(fp16) == ["nonfinite-grad"]
    message = fp16["findings"][0]["message"]
    assert "(Sqrt at float16, whose largest finite value is 65504)" in message
    assert fp16["findings"][0]["detail"]["dtype"] == "float16"
    assert results["tiny[dtype=float32]"]["status"] == "pass"
    assert results["tiny_fixed[dtype=float16]"]["status"] == "pass"
    assert results["tiny_fixed[dtype=float32]"]["status"] == "pass"


def test_the_matrix_casts_a_module_losss_parameters(audit_config):
    _, doc = audit_config("""
        cases:
          - name: module
            loss: precision_faults:ScaledSquares
            dtypes: [bfloat16]
            inputs: {x: {shape: [2, 3]}}
    """)
    result = by_case(doc)["module[dtype=bfloat16]"]
    assert result["status"] == "pass"
    assert {i["name"]: i["dtype"] for i in result["inputs"]} == {"x": "bfloat16", "param:scale": "bfloat16"}
    assert result["loss"]["dtype"] == "bfloat16"


def test_a_float32_nonfinite_loss_names_the_op_without_a_dtype(audit_config):
    _, doc = audit_config("""
        cases:
          - name: log_zero
            loss: precision_faults:log_of_zero
            inputs: {x: {shape: [3], init: zeros}}
    """)
    finding = by_case(doc)["log_zero"]["findings"][0]
    assert finding["id"] == "loss-nonfinite"
    assert "float" not in finding["message"] and "dtype" not in finding["detail"]
    assert finding["location"]["code"] == "return torch.log(x).sum()"


@pytest.mark.parametrize("dtype, note", [("float16", "it began at torch.exp in `e = torch.exp(logits)`"),
                                         ("float32", None)])
def test_without_the_tracer_a_scan_names_the_op(write_config, dtype, note):
    """A bare AuditContext runs no tracer: the forward scan, a witness of its own, names the op."""
    from gradaudit.caseaudit import AuditContext, audit_case

    path = write_config(f"""\
        version: 1
        sys_path: [{PRECISION.parent}]
        cases:
          - name: naive
            loss: precision_losses:naive_softmax_cross_entropy
            dtypes: [{dtype}]
            inputs:
              logits: {{shape: [32, 10], init: normal, std: 6}}
              targets: {{shape: [32], init: randint, high: 10}}
    """)
    config = load_config(path)
    from gradaudit.loading import add_import_roots

    add_import_roots(config.root, config.sys_path)
    result = audit_case(config.cases[0], "cpu", AuditContext(root=config.root))
    if note is None:
        assert result.status == "pass"
        return
    finding = result.findings[0]
    assert finding.id == "loss-nonfinite"
    assert finding.message.startswith(f"the loss is nan in draw 0; {note}")
    assert finding.message.endswith("(torch.exp at float16, whose largest finite value is 65504)")
    assert finding.location.code == "e = torch.exp(logits)"
