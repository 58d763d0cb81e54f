"""The loss call: inputs as training gives them (non-leaf, unless `leaf: true`), and one seeded way
to call the loss, so re-runs see their draw's random numbers and the caller's state is kept."""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

import numpy
import pytest
import torch

import gradaudit
from gradaudit.api import Spec, prepare
from gradaudit.devices import current
from gradaudit.losscall import load_loss
from tests.conftest import LOSSES, by_case, finding_ids
from tests.losses import training_inputs
from tests.test_corpus import marker_line

INPLACE = """
    cases:
      - name: clamp
        loss: training_inputs:clamp_inplace
        inputs:
          pred: {shape: [8, 4], init: uniform, low: 0.05, high: 1.0}
          target: {shape: [8, 4], requires_grad: false}
      - name: temperature
        loss: training_inputs:temperature_inplace
        inputs:
          logits: {shape: [8, 4]}
          target: {shape: [8], init: randint, high: 4}
      - name: clamp_leaf
        loss: training_inputs:clamp_inplace
        inputs:
          pred: {shape: [8, 4], init: uniform, low: 0.05, high: 1.0, leaf: true}
          target: {shape: [8, 4], requires_grad: false}
      - name: saved
        loss: training_inputs:inplace_on_saved_input
        inputs: {x: {shape: [8, 4]}}
"""


@pytest.fixture(scope="module")
def inplace_results(tmp_path_factory):
    from typer.testing import CliRunner

    from gradaudit.cli import app

    folder = tmp_path_factory.mktemp("inplace")
    config = folder / "c.yaml"
    config.write_text(f"version: 1\nsys_path: [{LOSSES}]\n" + textwrap.dedent(INPLACE))
    CliRunner().invoke(app, ["run", str(config), "-o", str(folder / "out"), "--device", "cpu"])
    import json

    return by_case(json.loads((folder / "out" / "results.json").read_text()))


@pytest.mark.parametrize("case", ["clamp", "temperature"])
def test_in_place_ops_on_an_input_pass_as_behind_a_model(inplace_results, case):
    r = inplace_results[case]
    assert r["status"] == "pass", r["findings"]
    assert {i["name"]: i["grad"] for i in r["inputs"]}[{"clamp": "pred", "temperature": "logits"}[case]] == "ok"


def test_leaf_true_passes_the_leaf_itself(inplace_results):
    """The twin: a loss that really receives a leaf may not change it in place, and says so."""
    r = inplace_results["clamp_leaf"]
    assert finding_ids(r) == ["loss-error"]
    assert "leaf Variable that requires grad" in r["findings"][0]["message"]


def test_a_saved_input_changed_in_place_still_conflicts(inplace_results):
    first = inplace_results["saved"]["findings"][0]
    assert first["id"] == "inplace-version-conflict"
    # the in-place op is the line to change; the op that saved the input is the second line
    assert first["location"]["line"] == marker_line("training_inputs", "CULPRIT", "inplace_on_saved_input")
    assert first["detail"]["modified_by"]["location"]["line"] == first["location"]["line"]
    assert first["second"]["line"] == marker_line("training_inputs", "SAVES", "inplace_on_saved_input")


def _call(loss, **spec):
    case = prepare(loss, {"x": Spec(shape=(3, 2), **spec)}, devices=["cpu"])[0]
    return load_loss(case, "cpu", Path.cwd(), current())


@pytest.mark.parametrize("leaf", [False, True])
def test_the_gradient_is_read_from_the_leaf_the_audit_owns(leaf):
    out = _call(lambda x: (x**2).sum(), leaf=leaf).run(0, grads=True)
    x = out.inputs.leaves["x"]
    assert x.is_leaf and out.inputs.received["x"].is_leaf is leaf
    assert torch.equal(out.grads["x"], 2 * x.detach())


def test_the_tracer_knows_the_input_behind_the_copy():
    result = gradaudit.audit(lambda x: (x.detach() ** 2).sum() + x.sum() * 0, {"x": Spec(shape=(3,))},
                             name="cut", devices=["cpu"])
    brk = next(f for f in result.findings if f.id == "graph-break")
    assert brk.input == "x" and brk.detail["inputs"] == ["x"] and brk.severity == "fail"


def _state() -> tuple:
    return torch.rand(3), random.random(), float(numpy.random.rand())


@pytest.mark.parametrize("loss", [training_inputs.noisy_conflict, training_inputs.noisy_detached,
                                  training_inputs.noisy_passing])
def test_an_audit_leaves_the_callers_random_state(loss):
    for seed in (3, 4):
        torch.manual_seed(seed), random.seed(seed), numpy.random.seed(seed)
        expected = _state()
        torch.manual_seed(seed), random.seed(seed), numpy.random.seed(seed)
        result = gradaudit.audit(loss, {"x": Spec(shape=(4,))}, devices=["cpu"])
        assert result.ok == (loss is training_inputs.noisy_passing)
        got = _state()
        assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_re_runs_see_the_random_numbers_of_their_draw():
    """The backward fails in draw 0; anomaly mode and the version hooks re-run draw 0."""
    training_inputs.CALLS.clear()
    result = gradaudit.audit(training_inputs.noisy_conflict, {"x": Spec(shape=(4,))}, devices=["cpu"])
    first = result.findings[0]
    assert first.id == "inplace-version-conflict" and "modified_by" in first.detail  # the witnesses ran
    assert len(training_inputs.CALLS) == 3  # the draw, anomaly mode, the version hooks
    assert len(set(training_inputs.CALLS)) == 1


def test_each_draw_has_its_own_numbers_and_every_run_the_same():
    def run() -> list:
        training_inputs.CALLS.clear()
        gradaudit.audit(training_inputs.noisy_passing, {"x": Spec(shape=(4,))}, devices=["cpu"], repeats=3)
        return list(training_inputs.CALLS)

    first = run()
    assert len(first) == 3 and len(set(first)) == 3
    random.random(), numpy.random.rand(), torch.rand(1)  # the caller's streams move on
    assert run() == first


def test_in_a_worker_every_case_leaves_one_fixed_random_state(monkeypatch):
    """A worker has no caller to give its state back to: each case leaves every stream at one fixed
    state instead (cheaper than saving numpy's), so an unseeded draw never depends on the cases
    before it. Its twin, the in-process default, gives back the caller's state (test above)."""
    from gradaudit import losscall

    monkeypatch.setattr(losscall, "_reseed_between_cases", False)
    losscall.reseed_between_cases()
    fixed = _state()
    for seed in (3, 4):
        torch.manual_seed(seed), random.seed(seed), numpy.random.seed(seed)
        gradaudit.audit(training_inputs.noisy_passing, {"x": Spec(shape=(4,))}, devices=["cpu"])
        got = _state()
        assert torch.equal(got[0], fixed[0]) and got[1:] == fixed[1:]
    monkeypatch.setattr(losscall, "_reseed_between_cases", False)
    torch.manual_seed(3), random.seed(3), numpy.random.seed(3)
    caller = _state()
    torch.manual_seed(3), random.seed(3), numpy.random.seed(3)
    gradaudit.audit(training_inputs.noisy_passing, {"x": Spec(shape=(4,))}, devices=["cpu"])
    got = _state()
    assert torch.equal(got[0], caller[0]) and got[1:] == caller[1:] and got[1] != fixed[1]


def test_a_forward_mode_wraps_the_forward_alone_and_a_mode_the_backward_too():
    """The draw loop's observers (the tracer's function mode) watch the loss's own calls:
    `forward_mode` ends before backward, where `loss.backward()` and each `.grad` would only go
    through a function mode's Python dispatch. A witness's `mode` (anomaly mode, saved-tensor
    hooks) must still hold during backward, and does."""
    import contextlib

    active: list[str] = []
    during_backward: list[list[str]] = []

    def watched(x):
        x.register_hook(lambda g: during_backward.append(list(active)))
        return (x * x).sum()

    @contextlib.contextmanager
    def context(name):
        active.append(name)
        try:
            yield
        finally:
            active.remove(name)

    call = _call(watched, leaf=True)
    out = call.run(0, grads=True, mode=lambda _: context("mode"), forward_mode=lambda _: context("forward"))
    assert out.backward and out.grads["x"] is not None
    assert during_backward == [["mode"]]


def test_a_forward_mode_sees_the_losss_calls_and_not_the_audits_reading_of_them(monkeypatch):
    """The tracer's function mode is around the loss's forward only: the audit's own reading of a
    non-scalar loss (its `dim()`, the sum backward runs on) is no op of the loss, and under a
    function mode each would cost a Python dispatch. A synchronising device's error after the
    forward is still the forward's."""
    from torch.overrides import TorchFunctionMode

    seen: list[str] = []

    class Names(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    call = _call(lambda x: x * 2, leaf=False)
    out = call.run(0, grads=True, forward_mode=lambda _: Names())
    assert out.backward and out.grads["x"] is not None and out.loss.dim() == 0
    assert seen == ["mul"]

    def failing_sync(device):
        raise RuntimeError("device-side assert")

    monkeypatch.setattr(call.layer, "synchronize", failing_sync)
    out = call.run(0, grads=True, forward_mode=lambda _: Names())
    assert out.stage == "forward" and "device-side assert" in str(out.error) and not out.backward


def test_held_warnings_go_to_the_run_that_raised_them_and_the_filters_come_back():
    """Around a case's draws the warnings are captured once (`holding`): each run still gets the
    warnings raised while it ran, torch's warn-once ones every time, nothing raised between runs
    (the audit's own work), and the caller's filters are as they were afterwards. Its twin: the
    same runs outside `holding` give the same warnings."""
    import warnings

    def warns(x):
        warnings.warn(f"draw of {float(x.detach().sum()):.3f}", UserWarning, stacklevel=1)
        return (x * x).sum()

    def texts(out):
        return [str(w.message) for w in out.warnings]

    call = _call(warns)
    alone = [texts(call.run(d, grads=True)) for d in range(3)]
    filters = list(warnings.filters)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a caller's "error" filter: the loss's warnings are still only recorded
        with call.holding():
            held = []
            for d in range(3):
                held.append(texts(call.run(d, grads=True)))
                warnings.warn("between the runs", UserWarning, stacklevel=1)
        with pytest.raises(UserWarning):
            warnings.warn("the caller's filter is back", UserWarning, stacklevel=1)
    assert held == alone and all(len(t) == 1 for t in held) and len(set(map(tuple, held))) == 3
    assert warnings.filters == filters


@pytest.mark.parametrize("seed", [0, 7, 2**40 + 3, 2**63 - 1])
def test_seeding_python_random_is_random_seed(seed):
    """`seed_all` seeds Python's `random` through its C method: the same state as `random.seed(seed)`,
    and no gauss value cached from before (its twin: a cached one that `random.seed` also drops)."""
    from gradaudit.losscall import seed_all

    random.seed(seed)
    expected_state, expected_gauss = random.getstate(), random.gauss(0.0, 1.0)
    random.seed(seed + 1)
    random.gauss(0.0, 1.0)  # caches the second value of the pair
    seed_all(seed)
    assert random.getstate() == expected_state
    assert random.gauss(0.0, 1.0) == expected_gauss
