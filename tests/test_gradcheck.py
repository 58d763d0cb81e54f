"""gradcheck: true: finite differences in float64 catch a wrong hand-written backward, without flapping."""

from __future__ import annotations

import json

import pytest
import torch

from gradaudit import Spec, audit

from .conftest import REPO, by_case, check_contract, finding_ids

SAMPLES = REPO / "sample_configs"
GRADCHECK_SAMPLE = SAMPLES / "gradcheck_examples.yaml"


def _import_sample_losses():
    import importlib
    import sys

    sys.path.insert(0, str(SAMPLES))
    try:
        return importlib.import_module("gradcheck_losses")
    finally:
        sys.path.remove(str(SAMPLES))


losses = _import_sample_losses()


def _line(text: str) -> int:
    source = (SAMPLES / "gradcheck_losses.py").read_text().splitlines()
    return next(i for i, line in enumerate(source, 1) if text in line)


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """The gradcheck sample through the CLI, on CPU."""
    from typer.testing import CliRunner

    from gradaudit.cli import app

    out = tmp_path_factory.mktemp("gradcheck")
    result = CliRunner().invoke(app, ["run", str(GRADCHECK_SAMPLE), "-o", str(out), "--device", "cpu"])
    check_contract(out / "results.json")
    return result.exit_code, by_case(json.loads((out / "results.json").read_text()))


@pytest.mark.slow
def test_the_wrong_sign_is_caught_only_with_gradcheck(sample_run):
    code, results = sample_run
    assert code == 0, "the sample's known-bad case is declared expect.status: fail"
    caught = results["wrong_sign_mse"]
    assert (caught["status"], caught["expected"]) == ("fail", True)
    assert finding_ids(caught) == ["gradcheck-mismatch"]
    missed = results["wrong_sign_mse_no_gradcheck"]
    assert missed["status"] == "pass" and missed["findings"] == []
    assert "gradcheck" not in missed


@pytest.mark.slow
def test_the_mismatch_names_input_element_values_and_the_backward_line(sample_run):
    _, results = sample_run
    finding = results["wrong_sign_mse"]["findings"][0]
    detail = finding["detail"]
    assert finding["input"] == "predictions"
    # Ground truth: d mean((p - t)^2) / dp = 2 (p - t) / N; the wrong backward gives its negative.
    assert detail["analytic"] == pytest.approx(-detail["numerical"], rel=1e-4)
    assert len(detail["index"]) == 2 and f"predictions{detail['index']}" in finding["message"]
    assert f"analytic {detail['analytic']:.6g} vs numerical {detail['numerical']:.6g}" in finding["message"]
    assert finding["location"]["file"] == "gradcheck_losses.py"
    assert finding["location"]["line"] == _line("return -2 * x * grad_output")
    assert "WrongSignSquare" in finding["message"]


@pytest.mark.slow
def test_the_result_says_how_gradcheck_shrank_the_inputs(sample_run):
    _, results = sample_run
    info = results["wrong_sign_mse"]["gradcheck"]
    assert info["shrunk_from"] == {"B": 32, "C": 4}
    assert info["dims"]["C"] == 4 and info["dims"]["B"] * 4 <= info["budget"] == 64
    assert "shrunk from B=32 to fit gradcheck_elements=64" in results["wrong_sign_mse"]["findings"][0]["message"]
    assert results["custom_mse"]["gradcheck"]["passed"] is True


@pytest.mark.slow
def test_the_correct_twin_passes(sample_run):
    _, results = sample_run
    assert results["custom_mse"]["status"] == "pass"
    assert results["l1_loss"]["status"] == "pass"


@pytest.mark.parametrize("case, loss, init", [
    ("leaky_relu_at_zero", "leaky_relu_loss", torch.zeros),
    ("max_with_ties", "max_of_rows", torch.ones),
])
@pytest.mark.slow
def test_kinks_do_not_flap(sample_run, case, loss, init):
    _, results = sample_run
    # Ground truth: torch's own gradcheck fails on the sample's first draw, which sits on the kink...
    x = init(4, 4, dtype=torch.float64, requires_grad=True)
    assert not torch.autograd.gradcheck(getattr(losses, loss), (x,), raise_exception=False)
    # ...so the audit passes only because it retried on jittered draws.
    assert results[case]["status"] == "pass"
    assert results[case]["gradcheck"]["draws"] >= 2 and results[case]["gradcheck"]["passed"]


@pytest.mark.parametrize("seed", range(4))
def test_kink_verdicts_are_stable_across_seeds(seed):
    for loss, init in ((losses.leaky_relu_loss, "zeros"), (losses.max_of_rows, "ones")):
        result = audit(loss, inputs={"x": Spec(shape=(8, 4), init=init)}, devices=["cpu"], seed=seed,
                       gradcheck=True)
        assert result.ok, repr(result)
    wrong = audit(losses.wrong_sign_mse, inputs={"p": Spec(shape=(8, 4)),
                                                 "t": Spec(shape=(8, 4), requires_grad=False)},
                  devices=["cpu"], seed=seed, gradcheck=True)
    assert [f.id for f in wrong.findings] == ["gradcheck-mismatch"]


def test_a_dim_the_loss_ties_to_its_targets_is_not_shrunk():
    # cross_entropy needs C classes for targets up to 7: halving C makes it raise, so C stays.
    result = audit("torch.nn.functional:cross_entropy", devices=["cpu"], gradcheck=True,
                   gradcheck_elements=16, dims={"B": 16, "C": 8},
                   inputs={"input": Spec(shape=("B", "C")),
                           "target": Spec(shape=("B",), init="randint", high=8)})
    info = result.results[0].gradcheck
    assert result.ok and info["passed"]
    assert info["dims"] == {"B": 2, "C": 8}


def test_literal_sizes_over_the_budget_are_sampled():
    result = audit(losses.wrong_sign_mse, devices=["cpu"], gradcheck=True, gradcheck_elements=8,
                   inputs={"p": Spec(shape=(10, 10)), "t": Spec(shape=(10, 10), requires_grad=False)})
    info = result.results[0].gradcheck
    assert info["sampled"] == 8 and "shrunk_from" not in info
    finding = result.findings[0]
    assert finding.id == "gradcheck-mismatch" and "8 sampled elements" in finding.message
    good = audit(losses.custom_mse, devices=["cpu"], gradcheck=True, gradcheck_elements=8,
                 inputs={"p": Spec(shape=(10, 10)), "t": Spec(shape=(10, 10), requires_grad=False)})
    assert good.ok and good.results[0].gradcheck["passed"]


def test_gradcheck_adds_nothing_to_a_case_that_already_fails():
    def detached(p):
        return (p[:, 0] * p[:, 1].detach()).sum()

    result = audit(detached, inputs={"p": Spec(shape=(4, 2))}, devices=["cpu"], gradcheck=True)
    assert [f.id for f in result.findings] == ["graph-break", "partial-grad"]
    assert result.results[0].gradcheck is None


def test_a_loss_that_stays_in_float32_is_skipped_with_the_reason():
    def float32_inside(p):
        return (p.float() ** 2).sum()

    result = audit(float32_inside, inputs={"p": Spec(shape=(3,))}, devices=["cpu"], gradcheck=True)
    assert result.ok
    assert "computes in float32" in result.results[0].gradcheck["skipped"]


def test_a_module_with_only_parameters_is_skipped_with_the_reason():
    result = audit(torch.nn.Linear, init_kwargs={"in_features": 3, "out_features": 1}, devices=["cpu"],
                   gradcheck=True, inputs={"x": Spec(shape=(2, 3), requires_grad=False)})
    assert result.ok
    assert result.results[0].gradcheck == {"skipped": "no input requires grad (module parameters are "
                                                      "held fixed)"}


def test_the_element_budget_is_checked(write_config):
    from gradaudit.config import load_config
    from gradaudit.errors import ConfigError

    path = write_config("""\
        version: 1
        cases:
          - name: a
            loss: x:y
            gradcheck_elements: 0
            inputs: {x: {shape: [2]}}
        """)
    with pytest.raises(ConfigError, match=r"config.yaml:5:5: cases\[0\].gradcheck_elements: "
                                          "gradcheck_elements must be at least 1"):
        load_config(path)


@pytest.mark.cuda
def test_gradcheck_on_cuda_catches_the_wrong_sign_and_keeps_kinks_quiet(tmp_path):
    from typer.testing import CliRunner

    from gradaudit.cli import app

    out = tmp_path / "out"
    CliRunner().invoke(app, ["run", str(GRADCHECK_SAMPLE), "-o", str(out), "--device", "cuda"])
    results = by_case(json.loads((out / "results.json").read_text()), device="cuda")
    assert finding_ids(results["wrong_sign_mse"]) == ["gradcheck-mismatch"]
    for case in ("wrong_sign_mse_no_gradcheck", "custom_mse", "leaky_relu_at_zero", "max_with_ties", "l1_loss"):
        assert results[case]["status"] == "pass", case
