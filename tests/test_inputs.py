"""Input generation: every init of the table, seeding, devices, and loss references by file path."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from gradaudit.config import InputSpec
from gradaudit.inputs import InputError, draw_seed, make_input, make_inputs, to_device
from tests.conftest import by_case, check_contract


def _spec(init, shape=(64, 5), dtype="float32", **params):
    from gradaudit.schema import INITS

    full = {p: d for p, (_, d, _) in INITS[init].items()}
    full.update(params)
    return InputSpec(name="x", shape=list(shape), dtype=dtype, requires_grad=False, init=init, params=full)


def _make(init, **kw):
    return make_input(_spec(init, **kw), torch.Generator().manual_seed(0), root=None)


def test_randn_and_normal_use_mean_and_std():
    t = _make("normal", shape=(4000,), mean=3.0, std=0.5)
    assert abs(t.mean() - 3.0) < 0.05 and abs(t.std() - 0.5) < 0.05
    assert abs(_make("randn", shape=(4000,)).std() - 1.0) < 0.05


def test_rand_and_uniform_stay_in_bounds():
    for init in ("rand", "uniform"):
        t = _make(init, low=-2.0, high=-1.0)
        assert t.min() >= -2.0 and t.max() <= -1.0


def test_randint_is_integer_in_range():
    t = _make("randint", dtype="int64", low=2, high=5)
    assert t.dtype == torch.int64 and t.min() >= 2 and t.max() <= 4 and len(t.unique()) == 3
    with pytest.raises(InputError):
        _make("randint", dtype="int64", low=5, high=5)


def test_bernoulli_zeros_ones_full():
    b = _make("bernoulli", dtype="bool", p=0.5)
    assert b.dtype == torch.bool and 0 < b.float().mean() < 1
    assert _make("zeros").abs().sum() == 0 and (_make("ones") == 1).all()
    assert (_make("full", value=2.5) == 2.5).all()


def test_softmax_and_log_softmax_are_distributions():
    p = _make("softmax")
    assert torch.allclose(p.sum(-1), torch.ones(64)) and (p > 0).all()
    assert torch.allclose(_make("log_softmax").exp().sum(-1), torch.ones(64))


def test_one_hot_rows_have_one_one():
    t = _make("one_hot")
    assert (t.sum(-1) == 1).all() and t.shape == (64, 5)
    with pytest.raises(InputError, match="num_classes 3 differs"):
        _make("one_hot", num_classes=3)


def test_value_is_used_as_is_and_checked_against_shape():
    assert _make("value", shape=(2, 2), value=[[1, 2], [3, 4]]).tolist() == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(InputError, match="shape"):
        _make("value", shape=(3,), value=[1, 2])


def test_low_precision_dtypes_are_made_in_float32_then_cast():
    for dtype in ("float16", "bfloat16", "float64"):
        assert _make("randn", dtype=dtype).dtype == getattr(torch, dtype)


def test_draws_are_seeded_by_seed_case_and_draw_only():
    specs = [_spec("randn", shape=(3,)), _spec("randint", shape=(3,), dtype="int64", high=9)]
    specs[1].name = "k"
    a = make_inputs(specs, 0, "case", 1, None)
    assert all(torch.equal(a[k], make_inputs(specs, 0, "case", 1, None)[k]) for k in a)
    assert not torch.equal(a["x"], make_inputs(specs, 0, "case", 2, None)["x"])
    assert not torch.equal(a["x"], make_inputs(specs, 0, "other", 1, None)["x"])
    assert not torch.equal(a["x"], make_inputs(specs, 1, "case", 1, None)["x"])
    assert draw_seed(0, "case", 1) == draw_seed(0, "case", 1) < 2**63


def test_to_device_makes_fresh_leaves_that_require_grad_as_specified():
    spec = _spec("randn", shape=(2,))
    spec.requires_grad = True
    cpu = {"x": torch.zeros(2)}
    moved = to_device(cpu, [spec], torch.device("cpu"))
    assert moved["x"].requires_grad and moved["x"].is_leaf and moved["x"] is not cpu["x"]


def test_file_path_losses_factories_and_failing_factories(tmp_path, cli_invoke):
    (tmp_path / "losses").mkdir()
    (tmp_path / "losses" / "mine.py").write_text(textwrap.dedent("""\
        import torch

        def square(x, t):
            return ((x - t) ** 2).mean()

        def targets(shape, dtype, device, generator):
            return torch.arange(shape[0], dtype=dtype, device=device)

        def broken(shape, dtype, device, generator):
            raise OSError("dataset not found")
    """))
    config = tmp_path / "c.yaml"
    config.write_text(textwrap.dedent("""\
        version: 1
        defaults: {devices: [cpu]}
        cases:
          - name: by_path
            loss: ./losses/mine.py:square
            inputs:
              x: {shape: [4]}
              t: {shape: [4], init: factory, factory: "./losses/mine.py:targets"}
          - name: bad_factory
            loss: ./losses/mine.py:square
            inputs:
              x: {shape: [4]}
              t: {shape: [4], init: factory, factory: "./losses/mine.py:broken"}
          - name: missing_file
            loss: ./losses/nope.py:square
            inputs: {x: {shape: [4]}, t: {shape: [4]}}
    """))
    result = cli_invoke(["run", config, "-o", tmp_path / "out"], exit_code=1)
    check_contract(tmp_path / "out" / "results.json")
    results = by_case(json.loads((tmp_path / "out" / "results.json").read_text()))
    assert results["by_path"]["status"] == "pass", result.output
    assert {i["name"]: i["grad"] for i in results["by_path"]["inputs"]} == {"x": "ok", "t": "ok"}
    assert results["bad_factory"]["status"] == "error"
    assert "dataset not found" in results["bad_factory"]["error"]["message"]
    assert results["missing_file"]["status"] == "error"
    assert "not found" in results["missing_file"]["error"]["message"]
