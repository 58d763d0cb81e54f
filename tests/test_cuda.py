"""The CUDA path on a real GPU: parity, out of memory, a device-side assert, mixed devices, float16.

Every test here is marked `cuda` and skipped where torch sees no GPU (tests/conftest.py); the same
logic is tested on CPU through a fake device in tests/test_devices.py and tests/test_parity.py.
scripts/gpu_check.sh runs these on a lent GPU; the results' schema is checked by the CPU tests.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import LOSSES, REPO, by_case, finding_ids, run_gradaudit

pytestmark = pytest.mark.cuda


def _run(cli_invoke, write_config, tmp_path, text: str, *devices: str, exit_code: int | None = None):
    path = write_config(f"version: 1\nsys_path: [{LOSSES}]\n{text}")
    out = tmp_path / "report"
    args = ["run", path, "-o", out, "--no-isolate"]
    for device in devices:
        args += ["--device", device]
    cli_invoke(args, expect_ok=None, exit_code=exit_code)
    return json.loads((out / "results.json").read_text())


def test_seed_sample_gives_the_same_verdicts_on_cuda(cli_invoke, tmp_path):
    out = tmp_path / "report"
    cli_invoke(["run", REPO / "sample_configs" / "seed_examples.yaml", "-o", out, "--no-isolate",
                "--device", "cpu", "--device", "cuda"])
    doc = json.loads((out / "results.json").read_text())
    cpu, cuda = by_case(doc, "cpu"), by_case(doc, "cuda")
    assert cpu.keys() == cuda.keys()
    for name in cpu:
        assert cuda[name]["status"] == cpu[name]["status"], name
        assert "device-mismatch" not in finding_ids(cuda[name]), cuda[name]["findings"]
        assert [i["grad"] for i in cuda[name]["inputs"]] == [i["grad"] for i in cpu[name]["inputs"]]


def test_parity_passes_a_good_loss_and_catches_one_that_differs(cli_invoke, write_config, tmp_path):
    doc = _run(cli_invoke, write_config, tmp_path, """
defaults: {dims: {B: 64, C: 10}}
cases:
  - name: ce
    loss: cuda_faults:cross_entropy
    inputs:
      logits: {shape: [B, C]}
      target: {shape: [B], init: randint, high: 10}
  - name: differs
    loss: cuda_faults:differs_by_device
    inputs: {x: {shape: [B, C]}}
  - name: matmul_fp16
    loss: cuda_faults:matmul_loss
    dtypes: [float32, float16, bfloat16]
    inputs: {a: {shape: [B, 32]}, b: {shape: [32, C]}}
""", "cpu", "cuda", exit_code=1)
    cuda = by_case(doc, "cuda")
    assert cuda["ce"]["status"] == "pass"
    for dtype in ("float32", "float16", "bfloat16"):
        assert cuda[f"matmul_fp16[dtype={dtype}]"]["status"] == "pass", cuda[f"matmul_fp16[dtype={dtype}]"]
    differs = cuda["differs"]
    assert differs["status"] == "fail"
    loss = next(f for f in differs["findings"] if f["id"] == "device-mismatch" and f["input"] is None)
    assert loss["detail"]["value"] == pytest.approx(loss["detail"]["reference"] * 1.01, rel=1e-4)


def test_oom_is_an_error_with_sizes_and_the_next_case_runs(cli_invoke, write_config, tmp_path):
    doc = _run(cli_invoke, write_config, tmp_path, """
cases:
  - name: a_hungry
    loss: cuda_faults:huge_allocation
    inputs: {x: {shape: [8, 4]}}
  - name: b_after
    loss: cuda_faults:matmul_loss
    inputs: {a: {shape: [8, 4]}, b: {shape: [4, 2]}}
""", "cuda", exit_code=1)
    cuda = by_case(doc, "cuda")
    hungry = cuda["a_hungry"]
    assert hungry["status"] == "error" and hungry["error"]["type"] == "OutOfMemoryError"
    assert "out of memory on cuda in the forward pass" in hungry["error"]["message"]
    assert "x [8, 4] float32 (128 B)" in hungry["error"]["message"]
    assert " free of " in hungry["error"]["message"]
    assert cuda["b_after"]["status"] == "pass"


def test_stray_cpu_tensor_points_at_its_factory(cli_invoke, write_config, tmp_path):
    doc = _run(cli_invoke, write_config, tmp_path, """
cases:
  - name: stray
    loss: device_faults:stray_factory
    inputs: {x: {shape: [4, 3]}}
  - name: fixed
    loss: device_faults:stray_factory_fixed
    inputs: {x: {shape: [4, 3]}}
""", "cuda", exit_code=1)
    cuda = by_case(doc, "cuda")
    stray = cuda["stray"]
    assert stray["status"] == "fail" and "loss-error" in finding_ids(stray)
    error = next(f for f in stray["findings"] if f["id"] == "loss-error")
    assert "torch.ones makes a tensor on cpu" in error["message"]
    assert error["location"]["code"] == "weights = torch.ones(x.shape[-1])"
    assert cuda["fixed"]["status"] == "pass"


def test_precision_sample_overflows_in_float16_on_cuda(cli_invoke, tmp_path):
    out = tmp_path / "report"
    cli_invoke(["run", REPO / "sample_configs" / "precision.yaml", "-o", out, "--no-isolate",
                "--device", "cuda", "--case", "naive_softmax_ce*"], exit_code=1)
    cuda = by_case(json.loads((out / "results.json").read_text()), "cuda")
    assert cuda["naive_softmax_ce[dtype=float32]"]["status"] == "pass"
    assert finding_ids(cuda["naive_softmax_ce[dtype=float16]"]) == ["loss-nonfinite"]


def test_device_side_assert_is_reported_and_poisons_only_its_process(write_config, tmp_path):
    """A target out of range: CUDA's assert fires asynchronously; the case that caused it gets it."""
    path = write_config(f"""\
version: 1
sys_path: [{LOSSES}]
defaults: {{dims: {{B: 8, C: 4}}}}
cases:
  - name: a_bad_target
    loss: cuda_faults:cross_entropy
    inputs:
      logits: {{shape: [B, C]}}
      target: {{shape: [B], init: randint, low: 10, high: 20}}
  - name: b_after
    loss: cuda_faults:matmul_loss
    inputs: {{a: {{shape: [B, C]}}, b: {{shape: [C, 2]}}}}
""")
    out = tmp_path / "report"
    proc = run_gradaudit("run", path, "-o", out, "--device", "cuda", "--no-isolate", timeout=240)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    cuda = by_case(json.loads((out / "results.json").read_text()), "cuda")
    bad = cuda["a_bad_target"]
    assert bad["status"] == "fail" and finding_ids(bad)[0] == "loss-error", bad
    assert "device-side assert" in bad["findings"][0]["message"]
    assert bad["findings"][0]["detail"]["context_poisoned"] is True
    # In one process the context is gone: the next case says so instead of failing mysteriously.
    assert cuda["b_after"]["status"] == "error"
    assert cuda["b_after"]["error"]["type"] == "DeviceContextPoisoned"


def test_with_workers_a_fresh_worker_audits_the_case_after_a_device_assert(write_config, tmp_path):
    path = write_config(f"""\
version: 1
sys_path: [{LOSSES}]
defaults: {{dims: {{B: 8, C: 4}}}}
cases:
  - name: a_bad_target
    loss: cuda_faults:cross_entropy
    inputs:
      logits: {{shape: [B, C]}}
      target: {{shape: [B], init: randint, low: 10, high: 20}}
  - name: b_after
    loss: cuda_faults:matmul_loss
    inputs: {{a: {{shape: [B, C]}}, b: {{shape: [C, 2]}}}}
""", name="workers.yaml")
    out = tmp_path / "workers"
    proc = run_gradaudit("run", path, "-o", out, "--device", "cuda", "--jobs", "1", timeout=240)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    cuda = by_case(json.loads((out / "results.json").read_text()), "cuda")
    assert "device-side assert" in cuda["a_bad_target"]["findings"][0]["message"]
    assert cuda["b_after"]["status"] == "pass", cuda["b_after"]
