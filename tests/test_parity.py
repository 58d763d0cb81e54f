"""CPU-vs-device parity: the comparison itself, its tolerances, and device-mismatch end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gradaudit.parity import compare, compare_draw, tolerances
from tests.fake_devices import FakeCuda
from tests.test_devices import run_with


def test_equal_tensors_match():
    t = torch.randn(4, 3)
    assert compare("x", t, t.clone(), 1e-4, 1e-5) is None


def test_an_injected_difference_is_found_with_its_index_and_both_values():
    ref = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    got = ref.clone()
    got[2, 1] += 0.5
    got[0, 0] += 0.01
    m = compare("x", ref, got, 1e-4, 1e-5)
    assert m.index == [2, 1]
    assert m.reference == pytest.approx(float(ref[2, 1]))
    assert m.value == pytest.approx(float(got[2, 1]))
    assert m.max_abs_diff == pytest.approx(0.5, rel=1e-5)
    assert (m.mismatched, m.numel) == (2, 12)
    text = m.message("cpu", "cuda", 1e-4, 1e-5)
    assert "the gradient of x differs between cpu and cuda" in text
    assert "at [2, 1]" in text and "2 of 12 elements" in text


def test_differences_within_tolerance_pass():
    ref = torch.full((5,), 100.0)
    assert compare("x", ref, ref + 0.005, 1e-4, 1e-5) is None  # 0.005 <= 1e-5 + 1e-4 * 100
    assert compare("x", ref, ref + 0.02, 1e-4, 1e-5) is not None


def test_nan_at_the_same_place_is_equal_but_nan_on_one_side_is_the_largest_difference():
    ref = torch.tensor([1.0, math.nan, 3.0])
    assert compare("x", ref, ref.clone(), 1e-4, 1e-5) is None
    got = torch.tensor([1.0, math.nan, math.inf])
    m = compare("x", ref, got, 1e-4, 1e-5)
    assert m.index == [2] and m.value == math.inf and m.max_abs_diff == math.inf
    json.dumps(m.detail("cpu", "cuda", 1e-4, 1e-5), allow_nan=False)  # plain JSON, no NaN/Infinity


def test_shape_and_presence_differences():
    assert "shape [3] on the reference, [4] on the device" in compare(
        "x", torch.ones(3), torch.ones(4), 1e-4, 1e-5).message("cpu", "cuda", 1e-4, 1e-5)
    assert "got no gradient" in compare("x", torch.ones(3), None, 1e-4, 1e-5).note
    assert compare("x", None, None, 1e-4, 1e-5) is None


def test_scalar_loss_difference():
    m = compare_draw((torch.tensor(1.0), {"x": torch.ones(2)}), (torch.tensor(1.5), {"x": torch.ones(2)}),
                     1e-4, 1e-5)
    assert [(x.tensor, x.index) for x in m] == [("loss", [])]
    assert "the loss differs between cpu and cuda" in m[0].message("cpu", "cuda", 1e-4, 1e-5)


def test_tolerances_keep_the_users_at_float32_and_widen_for_low_precision():
    assert tolerances(1e-4, 1e-5, ["float32"]) == (1e-4, 1e-5)
    rtol16, atol16 = tolerances(1e-4, 1e-5, ["float32", "float16"])
    rtol_bf, atol_bf = tolerances(1e-4, 1e-5, ["bfloat16"])
    assert rtol16 == pytest.approx(10 * 2**-10) and atol16 == pytest.approx(2**-10)
    assert rtol_bf > rtol16 and atol_bf > atol16
    assert tolerances(0.5, 0.1, ["float16"]) == (0.5, 0.1)  # never tighter than the user's


def test_float16_rounding_is_not_a_mismatch_but_a_real_difference_is():
    """fp32 vs fp16 results of the same sum: rounding passes at fp16 tolerances, a bug does not."""
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    ref = x.softmax(-1)
    got = x.half().softmax(-1).float()
    rtol, atol = tolerances(1e-4, 1e-5, ["float16"])
    assert compare("p", ref, got, 1e-4, 1e-5) is not None  # fp16 rounding exceeds fp32 tolerances
    assert compare("p", ref, got, rtol, atol) is None
    broken = got.clone()
    broken[3, 4] *= 1.2
    assert compare("p", ref, broken, rtol, atol).index == [3, 4]


# -- end to end, through the fake CUDA ------------------------------------------------------------------
PARITY_CASES = """
    cases:
      - name: differs
        loss: device_faults:differs_on_cuda
        inputs: {x: {shape: [B, C]}}
      - name: grad_differs
        loss: device_faults:grad_differs_on_cuda
        inputs: {x: {shape: [B, C]}}
      - name: same
        loss: device_faults:plain
        inputs: {x: {shape: [B, C]}}
"""


def test_device_mismatch_end_to_end(write_config):
    results = run_with(FakeCuda(), write_config, PARITY_CASES)
    differs = results[("differs", "cuda")]
    assert differs.status == "fail"
    mismatches = [f for f in differs.findings if f.id == "device-mismatch"]
    assert {f.input for f in mismatches} == {None, "x"}  # the loss and the gradient of x
    loss = next(f for f in mismatches if f.input is None)
    assert loss.detail["reference"] * 1.01 == pytest.approx(loss.detail["value"])
    assert loss.detail["reference_device"] == "cpu" and loss.detail["device"] == "cuda"
    # The CPU's own result carries no comparison; the twin matches.
    assert results[("differs", "cpu")].status == "pass"
    assert results[("same", "cuda")].status == "pass"
    assert not any(f.id == "device-mismatch" for f in results[("same", "cuda")].findings)


def test_a_gradient_only_difference_names_the_input_and_the_element(write_config):
    results = run_with(FakeCuda(), write_config, PARITY_CASES)
    found = [f for f in results[("grad_differs", "cuda")].findings if f.id == "device-mismatch"]
    assert len(found) == 1 and found[0].input == "x"
    detail = found[0].detail
    # Only row 0 gets the extra 0.01 from each of the B=4 rows of the broadcast.
    assert detail["index"][0] == 0 and detail["mismatched"] == 3
    assert detail["value"] - detail["reference"] == pytest.approx(0.04, abs=1e-5)


def test_no_parity_without_the_cpu_in_the_run(write_config):
    results = run_with(FakeCuda(), write_config, PARITY_CASES, devices_=("cuda",))
    assert all(r.status == "pass" for r in results.values())


def test_parity_under_autocast_compares_at_the_devices_precision(write_config):
    """Both sides run under float16 autocast; the rounding that brings is within the widened tolerance."""
    results = run_with(FakeCuda(), write_config, """
        cases:
          - name: matmul
            loss: device_faults:plain
            autocast: true
            inputs: {x: {shape: [B, C]}}
    """)
    assert {k: r.status for k, r in results.items()} == {
        ("matmul[autocast=off]", "cpu"): "pass", ("matmul[autocast=off]", "cuda"): "pass",
        ("matmul[autocast=on]", "cpu"): "pass", ("matmul[autocast=on]", "cuda"): "pass"}
