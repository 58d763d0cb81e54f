"""per_sample / batch-mixing: a loss whose samples leak into each other's gradients is caught, at its line.

The losses are in tests/losses/batch_mixing.py, each broken one beside a per-sample twin.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from gradaudit import Spec, audit, batchmix
from gradaudit.api import prepare
from gradaudit.devices import current
from gradaudit.losscall import load_loss
from tests.conftest import LOSSES, by_case, finding_ids
from tests.losses import batch_mixing as losses

SOURCE = LOSSES / "batch_mixing.py"

LOGITS = "logits: {shape: [B, C]}\n      target: {shape: [B], init: randint, high: 5}"
PRED = "pred: {shape: [B, C]}\n      target: {shape: [B, C], requires_grad: false}"
NORM = "x: {shape: [B, 4]}\n      target: {shape: [B, 4], requires_grad: false}"
VIEWS = "z1: {shape: [B, 16]}\n      z2: {shape: [B, 16]}"
TOKENS = "logits: {shape: [B, 7, C]}\n      target: {shape: [B, 7], init: randint, high: 5}"
WEIGHTED = LOGITS + "\n      weight: {shape: [C], init: uniform, low: 0.1, high: 2.0, requires_grad: false}"

CASES = {
    # case: (loss, inputs, per_sample declared)
    "softmax_over_batch": ("softmax_over_batch", LOGITS, True),
    "softmax_over_batch_twin": ("softmax_over_batch_twin", LOGITS, True),
    "batch_centred_mse": ("batch_centred_mse", PRED, True),
    "batch_centred_mse_twin": ("batch_centred_mse_twin", PRED, True),
    "two_lines": ("batch_statistic_in_two_lines", PRED, True),
    "normalize_over_batch": ("l2_normalised_over_batch", PRED, True),
    "batch_norm": ("BatchNormHead", NORM, True),
    "layer_norm": ("LayerNormHead", NORM, True),
    "cross_entropy": ("cross_entropy", LOGITS, True),
    "weighted_cross_entropy": ("weighted_cross_entropy", WEIGHTED, True),
    "mse": ("mse", PRED, True),
    "focal": ("focal", LOGITS, True),
    "label_smoothed_ce": ("label_smoothed_ce", LOGITS, True),
    "token_ce": ("masked_token_ce", TOKENS, True),
    "info_nce": ("info_nce", VIEWS, False),
    "info_nce_declared": ("info_nce", VIEWS, True),
}


def _config() -> str:
    lines = [f"version: 1\nsys_path: [{LOSSES}]\ndefaults: {{devices: [cpu], dims: {{B: 8, C: 5}}}}\ncases:"]
    for name, (loss, inputs, declared) in CASES.items():
        lines += [f"  - name: {name}", f"    loss: batch_mixing:{loss}", "    inputs:", f"      {inputs}"]
        if declared:
            lines.append("    per_sample: B")
    lines += ["  - name: matrix", "    loss: batch_mixing:cross_entropy", "    dims: {B: [1, 8]}",
              "    per_sample: B", "    inputs:", f"      {LOGITS}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory):
    """Every case above through the CLI, once."""
    import json

    from typer.testing import CliRunner

    from gradaudit.cli import app
    from tests.conftest import check_contract

    folder = tmp_path_factory.mktemp("batchmix")
    config = folder / "batch.yaml"
    config.write_text(_config())
    result = CliRunner().invoke(app, ["run", str(config), "-o", str(folder / "out")])
    path = folder / "out" / "results.json"
    assert path.exists(), result.output
    check_contract(path)
    return result.exit_code, by_case(json.loads(path.read_text()))


def _line(text: str) -> int:
    return next(i for i, line in enumerate(SOURCE.read_text().splitlines(), 1) if text in line)


@pytest.mark.parametrize("case, op, code", [
    ("softmax_over_batch", "torch.softmax", "probs = torch.softmax(logits, dim=0)"),
    ("batch_centred_mse", "Tensor.mean", "return ((pred - pred.mean(dim=0) - target) ** 2).mean()"),
    ("two_lines", "Tensor.mean", "centre = pred.mean(dim=0)"),  # the reduction, not the subtraction
    ("normalize_over_batch", "torch.nn.functional.normalize", "x = F.normalize(x, dim=0)"),
    ("batch_norm", "torch.nn.functional.batch_norm", "return F.mse_loss(self.norm(x), target)"),
    ("info_nce_declared", "Tensor.matmul", "logits = z1 @ z2.T / temperature"),
])
@pytest.mark.slow
def test_mixing_is_a_failure_at_the_op_that_mixes(batch_run, case, op, code):
    _, results = batch_run
    result = results[case]
    assert result["status"] == "fail"
    assert finding_ids(result) == ["batch-mixing"], result["findings"]
    finding = result["findings"][0]
    assert finding["severity"] == "fail"
    assert finding["location"]["line"] == _line(code), finding
    assert finding["location"]["file"].endswith("batch_mixing.py")
    assert finding["detail"]["op"] == op
    assert op in finding["message"] and "untouched samples" in finding["message"]
    assert result["batch_independence"]["coupled"] is True


@pytest.mark.parametrize("case", ["softmax_over_batch_twin", "batch_centred_mse_twin", "layer_norm",
                                  "cross_entropy", "weighted_cross_entropy", "mse", "focal",
                                  "label_smoothed_ce", "token_ce"])
def test_per_sample_losses_pass_and_say_they_were_checked(batch_run, case):
    _, results = batch_run
    result = results[case]
    assert result["status"] == "pass", result["findings"]
    record = result["batch_independence"]
    assert record["checked"] is True and record["coupled"] is False
    assert record["dim"] == "B" and record["size"] == 8 and record["splits"] == 2
    assert record["calls"] == 3  # the draw's inputs and one call per split: no repeat was needed


def test_a_loss_that_couples_samples_on_purpose_is_not_checked_unless_declared(batch_run):
    _, results = batch_run
    assert results["info_nce"]["status"] == "pass"
    assert "batch_independence" not in results["info_nce"]
    assert finding_ids(results["info_nce_declared"]) == ["batch-mixing"]


def test_the_message_says_which_samples_and_how_much(batch_run):
    _, results = batch_run
    finding = results["softmax_over_batch"]["findings"][0]
    detail = finding["detail"]
    # The worst of the two splits: the odd samples, with their targets.
    assert detail["perturbed"] == [1, 3, 5, 7]
    assert detail["redrawn"] == ["logits", "target"]
    assert detail["changed"] == [0, 2, 4, 6]
    assert detail["change"] > 1000 * detail["tolerance"]
    assert ("re-drawing the odd samples (1, 3, 5, ...) of B=8 (logits, target) changed the gradient of "
            "logits [8, 5] for all 4 untouched samples") in finding["message"]
    assert f"by up to {detail['change'] * 100:.3g}% (sample {detail['sample']})" in finding["message"]


def test_ignore_index_rescales_and_still_passes(batch_run):
    """Re-drawn targets change how many are ignored, so the mean's denominator: one common factor."""
    _, results = batch_run
    record = results["token_ce"]["batch_independence"]
    assert record["rescaled"] is True
    assert record["max_change"]["half"] == 0.0  # predictions only: bit for bit
    assert record["max_change"]["odd"] <= record["tolerance"]["odd"]


def test_a_batch_of_one_is_not_checked_and_says_why(batch_run):
    _, results = batch_run
    one = results["matrix[B=1]"]
    assert one["status"] == "pass"
    assert one["batch_independence"] == {"checked": False, "dim": "B", "size": 1,
                                         "reason": "B=1: a batch of 1 sample has nothing to mix"}
    assert results["matrix[B=8]"]["batch_independence"]["checked"] is True


def test_exit_code_follows_the_failures(batch_run):
    code, _ = batch_run
    assert code == 1


# -- the config key ----------------------------------------------------------------------------

@pytest.mark.parametrize("line, message", [
    ("per_sample: N", "c.yaml:6:5: cases[0].per_sample: must name a dim of dims (B, C), got 'N'"),
    ("per_sample: BB", "got 'BB' (did you mean 'B'?)"),
    ("per_sample: C", "c.yaml:6:5: cases[0].per_sample: no input's shape uses dim 'C', so there are no "
                      "samples to compare"),
    ("per_sample: [B]", "must name a dim of dims (B, C), got ['B']"),
])
def test_per_sample_must_name_a_dim_the_inputs_use(tmp_path, cli_invoke, line, message):
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        cases:
          - name: mse
            loss: torch.nn.functional:mse_loss
            dims: {{B: 4, C: 3}}
            {line}
            inputs:
              a: {{shape: [B, 3]}}
              b: {{shape: [B, 3]}}
        """))
    result = cli_invoke(["validate", path], exit_code=2)
    assert message in result.output
    assert "Traceback" not in result.output


def test_the_python_api_takes_per_sample():
    inputs = {"logits": Spec(shape=("B", 5)), "target": Spec(shape=("B",), dtype="int64", init="randint", high=5)}
    results = audit(losses.softmax_over_batch, inputs, dims={"B": 6}, per_sample="B", devices=["cpu"])
    assert [f.id for f in results.findings] == ["batch-mixing"]
    assert results.results[0].batch_independence["coupled"] is True
    twin = audit(losses.softmax_over_batch_twin, inputs, dims={"B": 6}, per_sample="B", devices=["cpu"])
    assert twin.ok and twin.results[0].batch_independence["checked"] is True


def test_the_api_reports_a_bad_dim_like_the_config():
    from gradaudit.errors import ConfigError

    with pytest.raises(ConfigError, match="per_sample: must name a dim of dims"):
        audit(losses.mse, {"pred": Spec(shape=(4, 3)), "target": Spec(shape=(4, 3))}, per_sample="B")


def test_the_check_does_not_run_after_a_failure():
    inputs = {"x": Spec(shape=("B", 3))}
    results = audit(lambda x: torch.softmax(x[:, 0], 0).max(), inputs, dims={"B": 4},
                    per_sample="B", devices=["cpu"], name="partial")
    assert "partial-grad" in [f.id for f in results.findings]
    assert "batch-mixing" not in [f.id for f in results.findings]
    assert results.results[0].batch_independence == {
        "checked": False, "dim": "B", "size": 4, "reason": "not run: the audit found a failure first"}


# -- the check itself, over many seeds -----------------------------------------------------------

def _check(fn, inputs: dict, size: int, seed: int, **dims) -> batchmix.BatchCheck:
    """The check on a case loaded as the audit loads it (through its loss call)."""
    spec = prepare(fn, inputs, dims={"B": size, **dims}, per_sample="B", seed=seed, devices=["cpu"])[0]
    return batchmix.check_call(load_loss(spec, "cpu", Path.cwd(), current()))


_LOGITS = {"logits": Spec(shape=("B", 5)), "target": Spec(shape=("B",), dtype="int64", init="randint", high=5)}
_PRED = {"pred": Spec(shape=("B", 5)), "target": Spec(shape=("B", 5), requires_grad=False)}


_PRODUCT = {"x": Spec(shape=("B", 16)), "target": Spec(shape=("B",), requires_grad=False)}


@pytest.mark.slow
@pytest.mark.parametrize("fn, inputs", [
    (losses.cross_entropy, _LOGITS), (losses.mse, _PRED), (losses.focal, _LOGITS),
    (losses.label_smoothed_ce, _LOGITS), (losses.relu_product, _PRODUCT)],
    ids=["cross_entropy", "mse", "focal", "label_smoothed_ce", "relu_product"])
@pytest.mark.parametrize("size", [2, 64])
def test_no_false_alarm_over_100_seeds(fn, inputs, size):
    found = [_check(fn, inputs, size, seed) for seed in range(100)]
    checked = [f for f in found if f.checked]
    assert len(checked) >= 90, {f.reason for f in found if not f.checked}
    assert [f.coupling for f in checked if f.coupling] == []


@pytest.mark.parametrize("fn, inputs", [
    (losses.softmax_over_batch, _LOGITS), (losses.batch_centred_mse, _PRED), (losses.mean_over_std, _PRED)],
    ids=["softmax_over_batch", "batch_centred_mse", "mean_over_std"])
@pytest.mark.parametrize("size", [2, 3, 64])
def test_mixing_is_found_on_every_seed(fn, inputs, size):
    found = [_check(fn, inputs, size, seed) for seed in range(20)]
    assert all(f.checked and f.coupling is not None for f in found), [f.summary() for f in found]


def test_a_batch_wide_switch_of_formula_is_not_mixing():
    """prod's backward takes another formula for every sample once one has a zero factor: the
    untouched samples' gradients move by a few ulps, not bit for bit, and that is no coupling."""
    found = [_check(losses.relu_product, _PRODUCT, 2, seed) for seed in range(40)]
    moved = [f for f in found if f.changes.get("half", 0) > 0]
    assert moved, "no seed switched prod's formula: the test no longer tests it"
    assert all(f.coupling is None for f in found)
    assert max(f.changes["half"] / f.tolerances["half"] for f in moved) < 0.5


def test_dropout_inside_the_loss_is_seeded_like_the_draw():
    """Without the draw's seeding each call would drop other elements: every sample would move."""
    def dropped_mse(pred, target):
        return torch.nn.functional.mse_loss(torch.nn.functional.dropout(pred, 0.5), target)

    found = _check(dropped_mse, _PRED, 8, 0)
    assert found.checked and found.coupling is None, found.summary()


class _Drifting(torch.nn.Module):
    """A loss whose per-sample weights change on every call: it does not repeat itself."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, pred, target):
        self.calls += 1
        weight = 1 + 0.1 * self.calls * torch.arange(pred.shape[0], dtype=pred.dtype)[:, None]
        return (weight * (pred - target) ** 2).mean()


def test_a_loss_that_does_not_repeat_itself_is_inconclusive_not_a_failure():
    found = _check(_Drifting(), _PRED, 8, 0)
    assert not found.checked and found.coupling is None
    assert "two identical calls gave gradients" in found.reason and "stateful" in found.reason


class _Decaying(torch.nn.Module):
    """A loss that scales itself down on every call (a schedule kept in the loss): state, not mixing."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = 1.0

    def forward(self, pred, target):
        out = torch.nn.functional.mse_loss(pred, target) * self.scale
        self.scale *= 0.5
        return out


def test_a_loss_that_rescales_itself_per_call_is_judged_by_the_rescaled_split_only():
    found = _check(_Decaying(), _PRED, 8, 0)
    assert found.checked and found.coupling is None, found.summary()
    assert found.splits == 1 and list(found.tolerances) == ["odd"] and found.noise > batchmix.NOISY


def test_fixed_values_lend_their_other_samples_instead_of_re_drawing():
    """A `value` input has no other draw; rotating the re-drawn samples among themselves would keep
    the batch's sums (a softmax over B would not change): they take the next samples' values."""
    logits = Spec(shape=("B", 3), init="value", value=[[0.1, 0.2, 0.3], [1.0, -1.0, 0.5], [2.0, 0.0, 1.0],
                                                       [-0.5, 0.5, 0.0]])
    target = Spec(shape=("B",), dtype="int64", init="value", value=[0, 2, 1, 1])
    for loss, mixes in [(losses.softmax_over_batch, True), (losses.softmax_over_batch_twin, False)]:
        results = audit(loss, {"logits": logits, "target": target}, dims={"B": 4}, per_sample="B",
                        devices=["cpu"])
        assert results.results[0].batch_independence["checked"] is True
        assert [f.id for f in results.findings] == (["batch-mixing"] if mixes else [])


def test_a_loss_that_raises_on_re_drawn_samples_is_inconclusive():
    calls = []

    def picky(pred, target):
        calls.append(1)
        if len(calls) > 1:
            raise ValueError("only the first batch")
        return torch.nn.functional.mse_loss(pred, target)

    found = _check(picky, _PRED, 4, 0)
    assert not found.checked
    assert found.reason.startswith("the loss raised ValueError with samples 2-3 re-drawn: only the first batch")


def test_the_starter_config_shows_per_sample_and_it_works_uncommented(tmp_path, cli_invoke):
    import json

    path = tmp_path / "starter.yaml"
    cli_invoke(["init", path])
    text = path.read_text()
    assert "    # per_sample: B " in text
    path.write_text(text.replace("    # per_sample: B ", "    per_sample: B   "))
    out = tmp_path / "out"
    cli_invoke(["run", path, "-o", out, "--device", "cpu"])
    result = by_case(json.loads((out / "results.json").read_text()))["cross_entropy"]
    assert result["batch_independence"]["checked"] is True and result["status"] == "pass"


def test_the_dim_need_not_lead():
    """Sequence-first [T, B, C]: B is axis 1 of every input; the samples are compared along it."""
    inputs = {"logits": Spec(shape=(6, "B", 5)), "target": Spec(shape=(6, "B"), dtype="int64", init="randint",
                                                                 high=5)}
    ok = _check(losses.time_major_ce, inputs, 8, 0)
    assert ok.checked and ok.coupling is None
    broken = _check(losses.time_major_softmax_over_batch, inputs, 8, 0)
    assert broken.coupling is not None and broken.coupling.shape == [6, 8, 5]
    assert broken.op == "torch.log_softmax"
    assert broken.location.line == _line("logp = torch.log_softmax(logits, dim=1)")


def test_complex_inputs_are_not_checked():
    spec = prepare(lambda z: z.abs().mean(), {"z": Spec(shape=("B", 3), dtype="complex64")}, dims={"B": 4},
                   per_sample="B", devices=["cpu"])[0]
    assert batchmix.plan(spec) == "complex inputs are not checked"


@pytest.mark.slow
def test_the_readme_section_example_runs(tmp_path):
    """The Python block of the README's "Batch independence" section, as written."""
    import os
    import re
    import subprocess
    import sys

    from tests.conftest import REPO

    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Batch independence: `per_sample`", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```$", section, re.M | re.S)
    assert len(blocks) == 1
    # A fresh process, as a reader runs it (this one has imported gradaudit.audit, the module).
    script = tmp_path / "example.py"
    script.write_text(blocks[0], encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
