"""The root-cause corpus: buggy losses modelled on real reports, each beside a correct-but-tricky twin.

Every buggy loss must get its exact finding ID, located at the line its source marks with
`# CULPRIT: <loss>` (found in the file, never a hard-coded number); every twin must produce no
failure (and no warning). The whole corpus runs as one config through the CLI, once.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import LOSSES, check_contract

pytestmark = pytest.mark.slow  # whole runs: CI runs them, `-m "not slow"` (the fast lane) does not

XY = "x: {shape: [B, C]}\n      y: {shape: [B, C]}"
XT = "x: {shape: [B, C]}\n      t: {shape: [B, C], requires_grad: false}"
X = "x: {shape: [B, C]}"
XT2 = "x: {shape: [B, 2]}\n      t: {shape: [B, 2], requires_grad: false}"
RATIO = "x: {shape: [B, 2], init: uniform, low: 0.5, high: 2.0}\n      t: {shape: [B], requires_grad: false}"
ONEHOT = "x: {shape: [B, C]}\n      t: {shape: [B, C], init: one_hot, requires_grad: false}"
MASKS = ("y_pred: {shape: [B, 3, 4, 4]}\n      y_true: {shape: [B, 3, 4, 4], init: randint, high: 2, dtype: int64, "
         "requires_grad: false}")
X2 = "x: {shape: [B, 2]}"
SIZES = "x: {shape: [B, 2]}\n      t: {shape: [B, 2], init: uniform, low: 0.5, high: 2.0, requires_grad: false}"
IMAGES = ("y_pred: {shape: [B, C, 8, 8]}\n      y_true: {shape: [B, C, 8, 8], init: randint, high: 2, "
          "dtype: float32, requires_grad: false}")
WIDE = "x: {shape: [B, 16]}\n      t: {shape: [B, 16], requires_grad: false}"
LABELS = "x: {shape: [B, C]}\n      t: {shape: [B], init: randint, high: 4, dtype: int64, requires_grad: false}"

# case: (module:loss, inputs, headline finding, the verdict it explains or None, extra case yaml)
BUGS = {
    # graph-break
    "ratio_detached": ("cause_graph_break:ratio_detached", RATIO, "graph-break", "partial-grad", ""),
    "data_attribute": ("cause_graph_break:data_attribute", XY, "graph-break", "input-disconnected", ""),
    "self_target": ("cause_graph_break:self_target", X, "graph-break", "zero-grad", ""),
    "detach_beside_mask": ("cause_graph_break:detach_beside_mask", XT2, "graph-break", "partial-grad", ""),
    "item_scale": ("cause_graph_break:item_scale", XY, "graph-break", "input-disconnected", ""),
    "tolist_roundtrip": ("cause_graph_break:tolist_roundtrip", XY, "graph-break", "input-disconnected", ""),
    "float_mean": ("cause_graph_break:float_mean", XY, "graph-break", "input-disconnected", ""),
    "numpy_roundtrip": ("cause_graph_break:numpy_roundtrip", XY, "graph-break", "input-disconnected", ""),
    "item_loop": ("cause_graph_break:item_loop", XY, "graph-break", "input-disconnected", ""),
    "rewrap_requires_grad": ("cause_graph_break:rewrap_requires_grad", XT, "graph-break",
                             "input-disconnected", ""),
    "rebuild_rows": ("cause_graph_break:rebuild_rows", XT, "graph-break", "loss-no-grad", ""),
    "new_tensor_copy": ("cause_graph_break:new_tensor_copy", XY, "graph-break", "input-disconnected", ""),
    "no_grad_normalise": ("cause_graph_break:no_grad_normalise", XY, "graph-break", "input-disconnected", ""),
    "inference_mode_weights": ("cause_graph_break:inference_mode_weights", XY, "graph-break",
                               "input-disconnected", ""),
    "int_cast": ("cause_graph_break:int_cast", XT, "graph-break", "loss-no-grad", ""),
    "dtype_cast": ("cause_graph_break:dtype_cast", XY, "graph-break", "input-disconnected", ""),
    "argmax_onehot": ("cause_graph_break:argmax_onehot", ONEHOT, "graph-break", "loss-no-grad", ""),
    "argsort_ranks": ("cause_graph_break:argsort_ranks", XT, "graph-break", "loss-no-grad", ""),
    "topk_indices": ("cause_graph_break:topk_indices", XT, "graph-break", "loss-no-grad", ""),
    "accuracy_as_loss": ("cause_graph_break:accuracy_as_loss", XT, "graph-break", "loss-no-grad", ""),
    "round_quantize": ("cause_graph_break:round_quantize", XT, "graph-break", "zero-grad", ""),
    "floor_bins": ("cause_graph_break:floor_bins", XT, "graph-break", "zero-grad", ""),
    "sign_margin": ("cause_graph_break:sign_margin", XT, "graph-break", "zero-grad", ""),
    "helper_chain": ("cause_graph_break:helper_chain", XY, "graph-break", "input-disconnected", ""),
    "byol_target": ("cause_graph_break:byol_target", XY, "graph-break", "input-disconnected", ""),
    # the line that selected the live part, a custom Function's backward, a replaced loss
    "TaskWeights": ("cause_where:TaskWeights", XT, "partial-grad", None, ""),
    "DiceClasses": ("cause_where:DiceClasses", MASKS, "partial-grad", None, ""),
    "EntmaxLearnedAlpha": ("cause_where:EntmaxLearnedAlpha", LABELS, "graph-break", "input-disconnected", ""),
    "forecast_replace": ("cause_where:forecast_replace", XT, "graph-break", "loss-no-grad", ""),
    # silent bugs: a dead term, a saturating range
    "argmax_penalty": ("cause_dead:argmax_penalty", LABELS, "dead-term", None, ""),
    "detached_regulariser": ("cause_dead:detached_regulariser", XT, "dead-term", None, ""),
    "clamp_logits": ("cause_dead:clamp_logits", IMAGES, "saturated-grad", None, ""),
    "hardtanh_wide": ("cause_dead:hardtanh_wide", WIDE, "saturated-grad", None, ""),
    # nn.Module losses
    "FrozenScale": ("cause_modules:FrozenScale", XT, "graph-break", "input-disconnected", ""),
    "DataWeight": ("cause_modules:DataWeight", XT, "graph-break", "input-disconnected", ""),
    "UnusedBias": ("cause_modules:UnusedBias", XT, "input-disconnected", None, ""),
    # inplace-version-conflict
    "exp_then_add_": ("cause_inplace:exp_then_add_", X, "inplace-version-conflict", None, ""),
    "tanh_then_relu_": ("cause_inplace:tanh_then_relu_", X, "inplace-version-conflict", None, ""),
    "setitem_on_saved": ("cause_inplace:setitem_on_saved", XT, "inplace-version-conflict", None, ""),
    "view_of_saved": ("cause_inplace:view_of_saved", X, "inplace-version-conflict", None, ""),
    "saved_operand": ("cause_inplace:saved_operand", XT, "inplace-version-conflict", None, ""),
    "iadd_on_pow_input": ("cause_inplace:iadd_on_pow_input", X, "inplace-version-conflict", None, ""),
    # nonfinite-grad / loss-nonfinite
    "pairwise_distance": ("cause_nonfinite:pairwise_distance", X, "nonfinite-grad", None, ""),
    "where_sqrt": ("cause_nonfinite:where_sqrt", X, "nonfinite-grad", None, ""),
    "log_of_masked": ("cause_nonfinite:log_of_masked", X, "nonfinite-grad", None, ""),
    "angle_to_self": ("cause_nonfinite:angle_to_self", X, "nonfinite-grad", None, ""),
    "root_of_masked": ("cause_nonfinite:root_of_masked", X, "nonfinite-grad", None, ""),
    "log_prob_underflow": ("cause_nonfinite:log_prob_underflow", ONEHOT, "loss-nonfinite", None, ""),
    "pairwise_upper": ("cause_nonfinite:pairwise_upper", X, "nonfinite-grad", None, ""),
    "flat_box_ciou": ("cause_nonfinite:flat_box_ciou", SIZES, "nonfinite-grad", None, ""),
    "ratio_of_masked": ("cause_nonfinite:ratio_of_masked", X2, "nonfinite-grad", None, ""),
    # device-portability
    "weights_without_device": ("cause_portability:weights_without_device", XT, "device-portability", None, ""),
    "positions_without_device": ("cause_portability:positions_without_device", XT, "device-portability",
                                 None, ""),
    "moved_to_cpu": ("cause_portability:moved_to_cpu", XT, "device-portability", None, ""),
    "explicit_cpu": ("cause_portability:explicit_cpu", XT, "device-portability", None, ""),
    "UnregisteredWeights": ("cause_portability:UnregisteredWeights", XT, "device-portability", None, ""),
    "RunningCovariance": ("cause_portability:RunningCovariance", XY, "device-portability", None, ""),
}


def _twin(loss: str) -> str:
    module, name = loss.split(":")
    return f"{module}:{name}Twin" if name[0].isupper() else f"{module}:{name.rstrip('_')}_twin"


TWINS = {f"{name.rstrip('_')}_twin": (_twin(loss), inputs, extra)
         for name, (loss, inputs, _, _, extra) in BUGS.items()}
TWINS["no_grad_normalise_twin"] = ("cause_graph_break:no_grad_target_twin", XY, "expect: {no_grad: [y]}")
TWINS["custom_function_twin"] = ("cause_graph_break:custom_function_twin", XY, "")
TWINS["byol_target_twin"] = ("cause_graph_break:byol_target_twin", XY, "expect: {no_grad: [y]}")
# Not in BUGS: on a CPU-only machine it fails in forward (see its own test); its twin must pass anywhere.
EXTRA_BUGS = {"hardcoded_cuda": ("cause_portability:hardcoded_cuda", XT, "")}
TWINS["hardcoded_cuda_twin"] = ("cause_portability:hardcoded_cuda_twin", XT, "")
# Correct device handling seen in libraries (auraloss, pytorch-msssim, smp, geomloss, torchmetrics,
# timm): no device-portability finding at all.
PORTABLE = {
    "WindowMovedInForward": XT, "GaussWindowTwin": XT, "ClassWeightsTypeAsTwin": XT, "ones_type_as_twin": XT,
    "IndexAttributeTwin": XT, "MetricStateTwin": XT, "RebuiltEachCallTwin": ONEHOT, "bincount_weights_twin": ONEHOT,
}
# What stays quiet beside dead-term and saturated-grad: a relu, a hinge, top-k, a detached weight, a mask.
QUIET = {"relu_twin": WIDE, "hinge_twin": WIDE, "topk_twin": WIDE, "clamp_wide_twin": WIDE, "mask_twin": XT,
         "where_twin": XT, "zero_weighted_metric_twin": XT, "straight_through_twin": XT,
         "gradient_injection_twin": XT}
TWINS.update({f"quiet_{name}": (f"cause_dead:{name}", inputs, "") for name, inputs in QUIET.items()})
TWINS.update({f"portable_{name}": (f"cause_portability:{name}", inputs, "") for name, inputs in PORTABLE.items()})


def _config() -> str:
    lines = ["version: 1", f"sys_path: [{LOSSES}]", "defaults: {devices: [cpu], dims: {B: 8, C: 4}}",
             "cases:"]
    cases = {**{n: (b[0], b[1], b[4]) for n, b in BUGS.items()}, **EXTRA_BUGS, **TWINS}
    for name, (loss, inputs, extra) in cases.items():
        lines += [f"  - name: {name}", f"    loss: {loss}", "    inputs:", f"      {inputs}"]
        if extra:
            lines.append(f"    {extra}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from gradaudit.cli import app

    folder = tmp_path_factory.mktemp("corpus")
    config = folder / "corpus.yaml"
    config.write_text(_config())
    result = CliRunner().invoke(app, ["run", str(config), "-o", str(folder / "out")])
    path = folder / "out" / "results.json"
    assert path.exists(), result.output
    check_contract(path)
    return {r["case"]: r for r in json.loads(path.read_text())["results"]}


def marker_line(module: str, tag: str, loss: str) -> int:
    """The line of `# TAG: loss` in tests/losses/MODULE.py."""
    lines = (Path(LOSSES) / f"{module}.py").read_text(encoding="utf-8").splitlines()
    hits = [i + 1 for i, text in enumerate(lines) if re.search(rf"#\s*{tag}:\s*{re.escape(loss)}\s*$", text)]
    assert len(hits) == 1, f"{module}.py must mark one line `# {tag}: {loss}`, found {hits}"
    return hits[0]


def test_the_corpus_is_big_enough():
    assert len(BUGS) >= 30 and len(TWINS) >= 30


@pytest.mark.parametrize("case", BUGS)
def test_bug_is_found_at_its_culprit_line(corpus, case):
    loss, _, headline, verdict, _ = BUGS[case]
    module, name = loss.split(":")
    r = corpus[case]
    assert r["status"] in ("fail", "warn"), r["findings"]
    first = r["findings"][0]
    assert first["id"] == headline, textwrap.indent(json.dumps(r["findings"], indent=1), "  ")
    assert first["location"], first
    assert Path(first["location"]["file"]).name == f"{module}.py"
    assert first["location"]["line"] == marker_line(module, "CULPRIT", name), first
    if verdict:
        assert verdict in [f["id"] for f in r["findings"]]
    if headline == "graph-break":
        assert first["severity"] == "fail"
        # the one-line summary names the culprit line
        assert f"{module}.py:{first['location']['line']}" in r["summary_line"]
    if headline == "inplace-version-conflict":
        # the location is the in-place op (the line to change); the saver is the second line
        saver = marker_line(module, "SAVES", name)
        assert first["detail"]["modified_by"]["location"]["line"] == first["location"]["line"]
        assert first["second"]["line"] == saver and first["second"]["label"] == "saved for backward at"
        assert first["detail"]["saved_by"]["location"]["line"] == saver
        assert f":{saver}" in first["message"] and f":{first['location']['line']}" in first["message"]
        assert f"{module}.py:{first['location']['line']}" in r["summary_line"]
    if headline in ("device-portability", "dead-term", "saturated-grad"):
        assert r["status"] == "warn"


@pytest.mark.parametrize("case", TWINS)
def test_twin_has_no_failure(corpus, case):
    r = corpus[case]
    assert r["status"] == "pass", r["findings"]
    assert all(f["severity"] == "info" for f in r["findings"])


@pytest.mark.parametrize("case", [f"portable_{name}" for name in PORTABLE] + ["RunningCovariance_twin"])
def test_device_following_code_gets_no_portability_finding(corpus, case):
    assert "device-portability" not in [f["id"] for f in corpus[case]["findings"]], corpus[case]["findings"]


def test_helper_chain_is_in_the_location(corpus):
    first = corpus["helper_chain"]["findings"][0]
    functions = [f["function"] for f in first["location"]["chain"]]
    assert functions == ["helper_chain", "_normalise"]
    assert first["location"]["function"] == "_stop"


def test_nonfinite_origin_says_why(corpus):
    sqrt = corpus["pairwise_distance"]["findings"][0]
    assert "infinite derivative at 0" in sqrt["message"]
    assert re.search(r"8 of 64 elements of its input are 0", sqrt["message"]), sqrt["message"]
    assert sqrt["detail"]["node"] == "SqrtBackward0"
    masked = corpus["where_sqrt"]["findings"][0]
    assert "incoming gradient there is 0" in masked["message"]


@pytest.mark.parametrize("case, says, never", [
    # an infinite derivative with a finite incoming gradient: no hint about a hidden branch
    ("pairwise_distance", [], ["hides the branch", "incoming gradient there is 0"]),
    # the zero incoming gradient is named by what passed it
    ("pairwise_upper", ["incoming gradient there is 0 (triu keeps only the upper triangle"], ["torch.where", "mask"]),
    ("flat_box_ciou", ["divides by 0", "of the divisor are 0", "atan's derivative is 0 at ±infinity"],
     ["torch.where", "mask", "its input of"]),
    ("where_sqrt", ["a torch.where hides the branch in the forward pass"], []),
    ("ratio_of_masked", ["of the divisor", "the clamp after it passes no gradient where it clips"],
     ["its input of the divisor", "torch.where"]),
    ("log_prob_underflow", ["it began at torch.log in `"], []),
])
def test_nonfinite_words_fit_the_case(corpus, case, says, never):
    message = corpus[case]["findings"][0]["message"]
    for text in says:
        assert text in message, message
    for text in never:
        assert text not in message, message


def test_partial_grad_words_agree_in_number(corpus):
    partial = next(f for f in corpus["DiceClasses"]["findings"] if f["id"] == "partial-grad")
    assert partial["message"].startswith("index 0 along dim 1 of y_pred [8, 3, 4, 4] never receives a gradient")
    assert "keeps only part of a tensor computed from `y_pred`" in partial["message"]
    task = next(f for f in corpus["TaskWeights"]["findings"] if f["id"] == "partial-grad")
    assert task["message"].startswith("element 1 of param:log_vars [2] never receives a gradient")
    assert "keeps only part of `param:log_vars`" in task["message"]


def test_custom_function_break_is_its_backward(corpus):
    first = corpus["EntmaxLearnedAlpha"]["findings"][0]
    assert first["detail"]["kind"] == "custom-backward" and first["location"]["function"] == "backward"
    assert "returns None for its input that `param:raw_alpha` reaches it through" in first["message"]
    assert "declared here and never used" not in json.dumps(corpus["EntmaxLearnedAlpha"]["findings"])


def test_an_undeclared_stop_gradient_target_suggests_expect_no_grad(corpus):
    first = corpus["byol_target"]["findings"][0]
    assert "declare it: expect: {no_grad: [y]}" in first["message"], first["message"]
    # not where the cut input is the prediction's own value, or the cut is no stop-gradient
    for case in ("self_target", "argmax_onehot", "data_attribute", "FrozenScale"):
        assert "expect: {no_grad" not in json.dumps(corpus[case]["findings"]), case


def test_dead_term_replaces_the_info_break(corpus):
    findings = corpus["argmax_penalty"]["findings"]
    assert [f["id"] for f in findings] == ["dead-term"], findings
    assert "changes the loss value and never training" in findings[0]["message"]
    assert findings[0]["detail"]["kind"] == "index"
    for case in ("detached_regulariser_twin", "quiet_where_twin", "quiet_straight_through_twin"):
        assert [f["severity"] for f in corpus[case]["findings"] if f["id"] == "graph-break"] == ["info"], case


def test_saturation_names_the_range_and_the_fraction(corpus):
    first = corpus["clamp_logits"]["findings"][0]
    assert first["input"] == "y_pred" and first["detail"]["range"] == [1e-7, 1 - 1e-7]
    assert "clips its input to [1e-07, 0.9999999]" in first["message"]
    assert re.search(r"(6[4-9])% of the drawn values lie outside that range", first["message"]), first["message"]
    assert 0.6 < first["detail"]["outside_fraction"] < 0.72
    assert not [f for f in corpus["clamp_logits"]["findings"] if f["id"] == "partial-grad"]


def test_unused_parameter_points_at_its_declaration(corpus):
    first = corpus["UnusedBias"]["findings"][0]
    assert first["input"] == "param:bias" and "never used" in first["message"]


def test_declared_stop_gradient_is_an_info_break(corpus):
    r = corpus["no_grad_normalise_twin"]
    info = [f for f in r["findings"] if f["id"] == "graph-break"]
    assert info and all(f["severity"] == "info" for f in info)


@pytest.mark.parametrize("case", ["ratio_detached_twin", "helper_chain_twin", "custom_function_twin",
                                  "item_scale_twin", "numpy_roundtrip_twin"])
def test_twin_has_no_graph_break_at_all(corpus, case):
    assert "graph-break" not in [f["id"] for f in corpus[case]["findings"]]


def test_harmless_inplace_is_an_info_at_its_line(corpus):
    info = [f for f in corpus["view_of_saved_twin"]["findings"] if f["id"] == "inplace-on-graph-tensor"]
    lines = (Path(LOSSES) / "cause_inplace.py").read_text(encoding="utf-8").splitlines()
    start = lines.index("def view_of_saved_twin(x):")
    mul = next(i + 1 for i in range(start, len(lines)) if "column.mul_(0.5)" in lines[i])
    assert [f["location"]["line"] for f in info] == [mul]
    assert "inplace-on-graph-tensor" not in [f["id"] for f in corpus["exp_then_add_twin"]["findings"]]


def test_a_conflict_is_not_also_an_info(corpus):
    ids = [f["id"] for f in corpus["exp_then_add_"]["findings"]]
    assert ids.count("inplace-version-conflict") == 1 and "inplace-on-graph-tensor" not in ids


def test_the_mask_beside_the_detach_is_not_blamed(corpus):
    breaks = [f for f in corpus["detach_beside_mask"]["findings"] if f["id"] == "graph-break"]
    assert [(f["severity"], f["detail"]["kind"]) for f in breaks] == [("fail", "detach"), ("info", "compare")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU-only machine")
def test_cuda_call_on_a_cpu_machine_is_an_error_and_a_portability_warning(corpus):
    r = corpus["hardcoded_cuda"]
    assert [f["id"] for f in r["findings"]] == ["loss-error", "device-portability"]
    line = marker_line("cause_portability", "CULPRIT", "hardcoded_cuda")
    assert [f["location"]["line"] for f in r["findings"]] == [line, line]
    assert r["findings"][1]["detail"] == {"op": "Tensor.cuda", "device": "cuda"}
