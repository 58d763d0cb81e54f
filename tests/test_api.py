"""The Python API: gradaudit.audit/Spec, through the config's checks and the CLI's runner."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest
import torch

import gradaudit
from gradaudit import Spec, audit
from gradaudit.config import load_config
from gradaudit.errors import ConfigError
from gradaudit.model import RunResults

from .conftest import REPO, by_case, check_contract, finding_ids


def detached_ratio(predictions, targets):
    b = predictions[:, 1].detach()
    return ((predictions[:, 0] / b - targets) ** 2).mean()


def ratio(predictions, targets):
    return ((predictions[:, 0] / predictions[:, 1] - targets) ** 2).mean()


def sigmoid_inplace(x):
    y = torch.sigmoid(x)
    y.mul_(2)
    return y.sum()


RATIO_INPUTS = {"predictions": Spec(shape=("B", 2), init="uniform", low=0.5, high=2.0),
                "targets": Spec(shape=("B",), requires_grad=False)}


def line_of(fn, text: str) -> int:
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


def test_import_does_not_load_torch():
    code = ("import sys, gradaudit; from gradaudit import audit, Spec, case; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gradaudit.nope  # noqa: B018


def test_detached_column_is_found_and_its_twin_passes():
    bad = audit(detached_ratio, inputs=RATIO_INPUTS, dims={"B": 8}, devices=["cpu"])
    good = audit(ratio, inputs=RATIO_INPUTS, dims={"B": 8}, devices=["cpu"])
    assert isinstance(bad, RunResults)
    # Ground truth from torch: column 1's gradient is exactly zero, column 0's is not.
    x = torch.rand(8, 2) + 0.5
    x.requires_grad_(True)
    detached_ratio(x, torch.randn(8)).backward()
    assert bool((x.grad[:, 1] == 0).all()) and bool((x.grad[:, 0] != 0).any())
    assert not bad.ok
    # The trace names the culprit line first; the verdict follows.
    assert [f.id for f in bad.findings] == ["graph-break", "partial-grad"]
    assert bad.findings[1].input == "predictions" and "column 1" in bad.findings[1].message
    assert ".detach()" in bad.findings[0].location.code
    assert good.ok and good.findings == []
    assert [r.status for r in good.results] == ["pass"]


def test_real_tensors_are_used_as_given():
    preds = torch.tensor([[1.0, 2.0], [3.0, 0.5], [1.5, 1.5]])
    targets = torch.tensor([0.5, 6.0, 1.0])
    result = audit(ratio, inputs={"predictions": preds, "targets": targets}, devices=["cpu"],
                   expect={"no_grad": ["targets"]})
    case = result.results[0]
    assert case.loss.value == pytest.approx(float(ratio(preds, targets)))
    assert [i.shape for i in case.inputs] == [[3, 2], [3]]
    assert preds.grad is None and not preds.requires_grad  # the caller's tensors are untouched


def test_to_json_is_the_results_file(tmp_path):
    result = audit(detached_ratio, inputs=RATIO_INPUTS, dims={"B": 4}, devices=["cpu"])
    path = tmp_path / "results.json"
    path.write_text(result.to_json(), encoding="utf-8")
    check_contract(path)
    doc = json.loads(path.read_text())
    assert finding_ids(by_case(doc)["detached_ratio"]) == ["graph-break", "partial-grad"]
    assert RunResults.from_dict(doc).to_dict() == result.to_dict()


def test_raise_for_findings_reads_like_the_terminal_summary():
    result = audit(sigmoid_inplace, inputs={"x": Spec(shape=(4, 3))}, devices=["cpu"])
    with pytest.raises(AssertionError) as caught:
        result.raise_for_findings()
    text = str(caught.value)
    line = line_of(sigmoid_inplace, "torch.sigmoid(x)")
    assert text.splitlines()[0] == "gradaudit: 1 result: 1 fail"
    assert "FAIL    sigmoid_inplace [cpu]" in text
    assert "inplace-version-conflict: " in text
    assert f"test_api.py:{line}" in text and "y = torch.sigmoid(x)" in text
    assert repr(result) == text  # the repr is the same readable summary


def test_raise_for_findings_is_silent_when_ok_and_fail_on_warn():
    ok = audit(ratio, inputs=RATIO_INPUTS, dims={"B": 4}, devices=["cpu"])
    ok.raise_for_findings()
    not_scalar = audit(lambda x: x * 2, inputs={"x": Spec(shape=(3,))}, devices=["cpu"], name="double")
    assert not_scalar.results[0].status == "warn" and not_scalar.ok
    not_scalar.raise_for_findings()
    with pytest.raises(AssertionError, match="loss-not-scalar"):
        not_scalar.raise_for_findings(fail_on="warn")


def test_repr_html_is_the_report_page_in_a_frame():
    from gradaudit.htmlreport import render_html

    def shouts(x):
        raise ValueError("<script>alert(1)</script>")

    result = audit(shouts, inputs={"x": Spec(shape=(2,))}, devices=["cpu"])
    html = result._repr_html_()
    srcdoc = re.search(r'srcdoc="([^"]*)"', html)
    assert html.startswith("<iframe ") and html.endswith("</iframe>") and srcdoc
    # Everything but the frame itself is inside the attribute, escaped: the page is the report's.
    assert html.count("<") == 2 and "<script" not in html
    assert unescape(srcdoc.group(1)) == render_html(result)
    page = unescape(srcdoc.group(1))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert 'class="result rs-fail"' in page and "loss-error" in page


def test_argument_errors_read_like_config_errors(write_config):
    with pytest.raises(ConfigError) as api_error:
        audit(ratio, inputs={"predictions": Spec(shape=("B", 2), init="randm")}, devics=["cpu"])
    path = write_config("""\
        version: 1
        cases:
          - name: ratio
            loss: x:ratio
            devics: [cpu]
            inputs:
              predictions: {shape: [B, 2], init: randm}
        """)
    with pytest.raises(ConfigError) as config_error:
        load_config(path)

    def reasons(exc):  # the text after "where: "
        return sorted(p.split(": ", 1)[1].replace("cases[0].", "") for p in exc.problems)

    assert reasons(api_error.value) == reasons(config_error.value)
    assert "unknown key 'devics' (did you mean 'devices'?)" in str(api_error.value)
    assert str(api_error.value).startswith("audit(ratio): invalid arguments")


def test_inputs_of_the_wrong_kind_are_a_clear_error():
    with pytest.raises(ConfigError, match=r"inputs\.x: must be a gradaudit.Spec, a tensor"):
        audit(ratio, inputs={"x": 3}, devices=["cpu"])


def test_a_module_instance_has_its_parameters_audited():
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(3))

        def forward(self, x):
            return (x * self.scale.detach()).sum()

    result = audit(Scaled(), inputs={"x": Spec(shape=(2, 3))}, devices=["cpu"])
    assert [(f.id, f.input) for f in result.findings] == [("graph-break", "param:scale"),
                                                          ("input-disconnected", "param:scale")]
    assert result.results[0].loss_ref.endswith("Scaled")


def test_a_loss_named_by_string_is_imported_from_root():
    result = audit("gradcheck_losses:custom_mse", inputs={"predictions": Spec(shape=(4,)),
                                                          "targets": Spec(shape=(4,), requires_grad=False)},
                   devices=["cpu"], root=REPO / "sample_configs")
    assert result.ok and result.results[0].case == "custom_mse"


@pytest.mark.slow
def test_api_and_cli_give_the_same_verdicts(audit_config):
    code, doc = audit_config("""\
        cases:
          - name: detached_ratio
            loss: test_api_losses:detached_ratio
            dims: {B: 8}
            inputs:
              predictions: {shape: [B, 2], init: uniform, low: 0.5, high: 2.0}
              targets: {shape: [B], requires_grad: false}
        """.replace("test_api_losses", "tests.test_api"), "--seed", "3")
    api = audit(detached_ratio, inputs=RATIO_INPUTS, dims={"B": 8}, devices=["cpu"], seed=3)
    cli = by_case(doc)["detached_ratio"]
    mine = api.to_dict()["results"][0]
    assert code == 1
    for key in ("status", "inputs", "draws", "loss"):
        assert mine[key] == cli[key], key
    # Messages name the culprit's path relative to each run's root, so compare what they point at.
    def pointed(findings):
        return [(f["id"], f["location"] and (f["location"]["line"], f["location"]["code"])) for f in findings]

    assert pointed(mine["findings"]) == pointed(cli["findings"])


def test_the_caller_file_is_the_culprit_path(tmp_path):
    result = audit(sigmoid_inplace, inputs={"x": Spec(shape=(2,))}, devices=["cpu"],
                   root=Path(__file__).parent)
    assert result.findings[0].location.file == "test_api.py"


def test_a_run_that_audited_nothing_is_not_ok():
    """Every result a skip (only a device this machine lacks) is not a pass, as the CLI's exit 5;
    its twin, the same loss with one device that runs, is ok."""
    def fine(x):
        return (x ** 2).sum()

    nothing = audit(fine, inputs={"x": Spec(shape=(3,))}, devices=["cuda:99"])
    assert [r.status for r in nothing.results] == ["skip"]
    assert nothing.audited_nothing and not nothing.ok
    with pytest.raises(AssertionError, match="audited nothing: cuda:99"):
        nothing.raise_for_findings()
    some = audit(fine, inputs={"x": Spec(shape=(3,))}, devices=["cpu", "cuda:99"])
    assert [r.status for r in some.results] == ["pass", "skip"]
    assert some.ok and not some.audited_nothing
    some.raise_for_findings()
