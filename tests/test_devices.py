"""Devices: skip reasons, and CUDA's failure modes as clean results, through a fake CUDA on the CPU.

The real-GPU versions of these checks are in tests/test_cuda.py (marked `cuda`).
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from gradaudit import devices
from gradaudit.config import load_config
from gradaudit.devices import CONTEXT, MIXED, OOM, DeviceLayer, classify, installed, skip_reason
from gradaudit.runner import RunOptions, run
from tests.conftest import LOSSES, check_contract, finding_ids
from tests.fake_devices import FakeCuda, cuda_oom, device_assert


def run_with(layer: DeviceLayer, write_config, cases: str, devices_: tuple[str, ...] = ("cpu", "cuda")):
    """Run a config (its `cases:` text) on `devices_` with `layer` installed; index by (case, device)."""
    path = write_config(f"version: 1\nsys_path: [{LOSSES}]\ndefaults: {{dims: {{B: 4, C: 3}}}}\n"
                        + textwrap.dedent(cases))
    with installed(layer):
        results = run(load_config(path), RunOptions(devices=list(devices_), isolate=False))
    return {(r.case, r.device): r for r in results.results}


# -- which devices exist ---------------------------------------------------------------------------
def test_cpu_is_always_available():
    assert skip_reason("cpu") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the reason given without CUDA")
def test_cuda_without_cuda_is_a_skip_with_the_reason():
    assert "torch.cuda.is_available() is false" in skip_reason("cuda")
    assert "torch.cuda.is_available() is false" in skip_reason("cuda:1")


def test_cuda_index_past_the_device_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert skip_reason("cuda:1") is None
    assert "cuda:2 does not exist: this machine has 2 cuda device(s)" == skip_reason("cuda:2")


def test_mps_and_unknown_devices(monkeypatch):
    mps = getattr(torch.backends, "mps", None)
    if mps is not None:
        monkeypatch.setattr(mps, "is_available", lambda: False)
        assert "mps is not available here" in skip_reason("mps")
        monkeypatch.setattr(mps, "is_available", lambda: True)
        assert skip_reason("mps") is None
    assert "unknown device" in skip_reason("tpu")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip without CUDA")
def test_run_on_cpu_and_cuda_audits_cpu_and_skips_cuda(cli_invoke, tmp_path):
    """The issue's "done when": the torch sample on a CPU machine, with --device cpu --device cuda."""
    from tests.conftest import REPO

    out = tmp_path / "report"
    cli_invoke(["run", REPO / "sample_configs" / "torch_losses.yaml", "-o", out,
                "--device", "cpu", "--device", "cuda"])
    check_contract(out / "results.json")
    doc = json.loads((out / "results.json").read_text())
    cpu = [r for r in doc["results"] if r["device"] == "cpu"]
    cuda = [r for r in doc["results"] if r["device"] == "cuda"]
    assert cpu and len(cpu) == len(cuda)
    assert all(r["status"] != "skip" and r["inputs"] for r in cpu)
    assert all(r["status"] == "skip" and "torch.cuda.is_available() is false" in r["skip_reason"]
               for r in cuda)


# -- how a failure reads ---------------------------------------------------------------------------
@pytest.mark.parametrize("exc, kind", [
    (cuda_oom(), OOM),
    (RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"), OOM),
    (device_assert(), CONTEXT),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), CONTEXT),
    (RuntimeError("Expected all tensors to be on the same device, but found at least two devices, "
                  "cuda:0 and cpu!"), MIXED),
    (RuntimeError("Tensor on device cpu is not on the expected device meta!"), MIXED),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 4x3)"), None),
    (ValueError("Target size must be the same as input size"), None),
])
def test_classify(exc, kind):
    assert classify(exc) == kind


def test_the_real_layer_on_cpu_is_a_no_op_that_autocasts():
    layer = DeviceLayer()
    cpu = layer.torch_device("cpu")
    layer.synchronize(cpu)
    layer.free_memory(cpu)
    assert layer.memory_note(cpu) == ""
    with layer.forward_context("cpu", "bfloat16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with layer.forward_context("cpu", None):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_installed_layer_is_current_only_inside():
    fake = FakeCuda()
    before = devices.current()
    with installed(fake):
        assert devices.current() is fake
    assert devices.current() is before


# -- out of memory ---------------------------------------------------------------------------------
def test_oom_in_forward_is_an_error_with_the_sizes_and_memory_is_freed(write_config):
    fake = FakeCuda()
    results = run_with(fake, write_config, """
        cases:
          - name: hungry
            loss: device_faults:oom_in_forward
            inputs: {x: {shape: [B, C]}}
          - name: after
            loss: device_faults:plain
            inputs: {x: {shape: [B, C]}}
    """)
    hungry = results[("hungry", "cuda")]
    assert hungry.status == "error"
    assert hungry.error.type == "OutOfMemoryError"
    message = hungry.error.message
    assert "out of memory on cuda in the forward pass" in message
    assert "x [4, 3] float32 (48 B)" in message
    assert "1.2 GiB free of 79.1 GiB" in message
    assert fake.freed == 1
    # The same process goes on: the next case on the device is audited normally.
    assert results[("after", "cuda")].status == "pass"
    assert results[("hungry", "cpu")].status == "pass"
    assert not fake.poisoned


def test_oom_in_backward_is_an_error_too(write_config):
    fake = FakeCuda()
    results = run_with(fake, write_config, """
        cases:
          - name: hungry_backward
            loss: device_faults:oom_in_backward
            inputs: {x: {shape: [B, C]}}
    """)
    result = results[("hungry_backward", "cuda")]
    assert result.status == "error" and "in the backward pass" in result.error.message
    assert fake.freed == 1
    assert results[("hungry_backward", "cpu")].status == "pass"


# -- device-side asserts -----------------------------------------------------------------------------
ASSERT_CASES = """
    cases:
      - name: a_bad_target
        loss: device_faults:assert_in_forward
        inputs:
          logits: {shape: [B, C]}
          target: {shape: [B], init: randint, high: 3}
      - name: b_next
        loss: device_faults:plain
        inputs: {x: {shape: [B, C]}}
"""


def test_device_assert_is_a_loss_error_and_poisons_the_context(write_config):
    fake = FakeCuda()
    results = run_with(fake, write_config, ASSERT_CASES)
    bad = results[("a_bad_target", "cuda")]
    assert bad.status == "fail" and finding_ids(bad.to_dict()) == ["loss-error"]
    finding = bad.findings[0]
    assert "device-side assert triggered" in finding.message
    assert "this worker is replaced" in finding.message and "in the forward pass" in finding.message
    assert finding.detail["context_poisoned"] is True
    assert finding.location is not None and finding.location.file.endswith("device_faults.py")
    assert fake.poisoned_reason("cuda") and "a_bad_target" in fake.poisoned_reason("cuda")
    # In one process, a later case on that device is not blamed: it is an error that says why.
    after = results[("b_next", "cuda")]
    assert after.status == "error" and after.error.type == "DeviceContextPoisoned"
    assert "a_bad_target" in after.error.message
    # The CPU is not affected.
    assert results[("b_next", "cpu")].status == "pass"
    assert results[("a_bad_target", "cpu")].status == "pass"


def test_needs_fresh_process_after_a_poisoning(write_config):
    fake = FakeCuda()
    with installed(fake):
        assert not devices.needs_fresh_process()
    run_with(fake, write_config, ASSERT_CASES)
    with installed(fake):
        assert devices.needs_fresh_process()


def test_asynchronous_error_is_attributed_to_the_case_that_caused_it(write_config):
    """The error surfaces at the synchronize after the forward, so it lands on its own case."""
    fake = FakeCuda()
    results = run_with(fake, write_config, """
        cases:
          - name: a_async
            loss: device_faults:async_assert
            inputs: {x: {shape: [B, C]}}
          - name: b_next
            loss: device_faults:plain
            inputs: {x: {shape: [B, C]}}
    """, devices_=("cuda",))
    culprit = results[("a_async", "cuda")]
    assert culprit.status == "fail" and culprit.findings[0].id == "loss-error"
    assert "in the forward pass" in culprit.findings[0].message
    assert results[("b_next", "cuda")].error.type == "DeviceContextPoisoned"


def test_a_pending_error_from_before_a_case_is_not_blamed_on_it(write_config):
    fake = FakeCuda()
    fake.pending.append(device_assert())  # left over from work before this run
    results = run_with(fake, write_config, """
        cases:
          - name: innocent
            loss: device_faults:plain
            inputs: {x: {shape: [B, C]}}
    """, devices_=("cuda",))
    innocent = results[("innocent", "cuda")]
    assert innocent.status == "error"
    assert "from before this case" in innocent.error.message
    assert not innocent.findings


def test_healthy_cases_synchronize_and_pass(write_config):
    fake = FakeCuda()
    results = run_with(fake, write_config, """
        cases:
          - name: fine
            loss: device_faults:plain
            inputs: {x: {shape: [B, C]}}
    """, devices_=("cuda",))
    assert results[("fine", "cuda")].status == "pass"
    assert fake.synchronized >= 3  # before the case, after each forward and backward
    assert not fake.poisoned and fake.freed == 0


# -- tensors on two devices -----------------------------------------------------------------------------
@pytest.mark.slow
def test_mixed_devices_point_at_the_factory_that_made_the_stray_tensor(write_config):
    """On the meta device a CPU-made tensor really clashes, as it does on CUDA."""
    results = run_with(FakeCuda(meta=True), write_config, """
        cases:
          - name: stray
            loss: device_faults:stray_factory
            inputs: {x: {shape: [B, C]}}
    """, devices_=("cuda",))
    stray = results[("stray", "cuda")]
    assert stray.status == "fail" and finding_ids(stray.to_dict()) == ["loss-error"]
    finding = stray.findings[0]
    assert "torch.ones makes a tensor on cpu while the inputs are on cuda" in finding.message
    assert finding.location.code == "weights = torch.ones(x.shape[-1])"
    assert finding.detail["stray_device"] == "cpu"


@pytest.mark.slow
def test_stray_scan_finds_the_factory_and_not_its_fixed_twin():
    from gradaudit.opscan import stray_tensors
    from tests.losses import device_faults

    x = torch.randn(4, 3, device="meta", requires_grad=True)
    meta = torch.device("meta")
    hits = stray_tensors(lambda: device_faults.stray_factory(x), meta, None)
    assert [h.op for h in hits] == ["torch.ones"]
    assert hits[0].location.code == "weights = torch.ones(x.shape[-1])"
    assert stray_tensors(lambda: device_faults.stray_factory_fixed(x), meta, None) == []


def test_fixed_twins_pass_on_the_fake_device(write_config):
    results = run_with(FakeCuda(), write_config, """
        cases:
          - name: fixed
            loss: device_faults:stray_factory_fixed
            inputs: {x: {shape: [B, C]}}
          - name: target_ok
            loss: device_faults:plain
            inputs: {x: {shape: [B, C]}}
    """)
    assert {k: r.status for k, r in results.items()} == {
        ("fixed", "cpu"): "pass", ("fixed", "cuda"): "pass",
        ("target_ok", "cpu"): "pass", ("target_ok", "cuda"): "pass"}


def test_fake_device_results_pass_the_contract_checker(cli_invoke, write_config, tmp_path):
    path = write_config(f"version: 1\nsys_path: [{LOSSES}]\n" + textwrap.dedent("""
        cases:
          - name: hungry
            loss: device_faults:oom_in_forward
            dims: {B: 4}
            inputs: {x: {shape: [B]}}
    """))
    out = tmp_path / "out"
    with installed(FakeCuda()):
        cli_invoke(["run", path, "-o", out, "--device", "cpu", "--device", "cuda", "--no-isolate"],
                   exit_code=1)
    check_contract(out / "results.json")
    doc = json.loads((out / "results.json").read_text())
    assert {(r["device"], r["status"]) for r in doc["results"]} == {("cpu", "pass"), ("cuda", "error")}


def test_oom_while_copying_inputs_is_an_error_that_says_so(write_config, monkeypatch):
    import gradaudit.losscall as losscall_module

    real = losscall_module.to_device
    fake = FakeCuda()

    def to_device(tensors, specs, device):
        if fake.active is None and device.type == "cpu" and len(tensors) == 2:
            raise cuda_oom()  # the copy of this case's two inputs does not fit
        return real(tensors, specs, device)

    monkeypatch.setattr(losscall_module, "to_device", to_device)
    results = run_with(fake, write_config, """
        cases:
          - name: big
            loss: device_faults:plain
            inputs: {x: {shape: [B, C]}, y: {shape: [B], requires_grad: false}}
          - name: small
            loss: device_faults:plain
            inputs: {x: {shape: [B, C]}}
    """, devices_=("cuda",))
    big = results[("big", "cuda")]
    assert big.status == "error"
    assert big.error.message.startswith("out of memory on cuda while copying the inputs to it (draw 0); "
                                        "inputs: x [4, 3] float32 (48 B), y [4] float32 (16 B)")
    assert fake.freed == 1
    assert results[("small", "cuda")].status == "pass"
