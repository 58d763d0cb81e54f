"""A CI gate never passes by accident: unknown device names are usage errors, and a run that
audited nothing (every result skip) exits 5, not 0."""

from __future__ import annotations

import json

import pytest

from gradaudit.cli import EXIT_NOTHING_AUDITED, exit_code_of
from gradaudit.config import device_problem
from tests import reportdata
from tests.conftest import LOSSES

CONFIG = f"""\
version: 1
sys_path: [{LOSSES}]
cases:
  - name: twin
    loss: spine:unused_input
    inputs: {{a: {{shape: [3]}}, b: {{shape: [3]}}}}
    expect: {{no_grad: [b]}}
"""


@pytest.mark.parametrize(("name", "hint"), [
    ("gpu", "did you mean 'cuda'?"), ("GPU", "did you mean 'cuda'?"), ("CPU", "did you mean 'cpu'?"),
    ("cuda1", "did you mean 'cuda:1'?"), ("gpu:0", "did you mean 'cuda:0'?"), ("cuda-2", "did you mean 'cuda:2'?"),
    ("metal", "did you mean 'mps'?"), ("cdua", "did you mean 'cuda'?"), ("tpu", "use cpu, cuda, cuda:N or mps"),
])
def test_unknown_device_names_say_what_was_meant(name, hint):
    problem = device_problem(name)
    assert problem.startswith(f"unknown device '{name}'") and hint in problem
    assert problem.endswith("use cpu, cuda, cuda:N or mps")


@pytest.mark.parametrize("name", ["cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_valid_device_names_pass(name):
    assert device_problem(name) is None


def test_an_unknown_device_on_the_command_line_is_a_usage_error(write_config, cli_invoke, tmp_path):
    path = write_config(CONFIG)
    out = tmp_path / "out"
    result = cli_invoke(["run", path, "-o", out, "--device", "cpu", "--device", "gpu"], exit_code=2)
    assert "error: --device gpu: unknown device 'gpu' (did you mean 'cuda'?): use cpu, cuda, cuda:N or mps" \
        in result.output
    assert not out.exists()  # nothing ran, nothing written


def test_an_unknown_device_in_the_config_is_a_config_error_with_its_line(write_config, cli_invoke):
    path = write_config(CONFIG + "    devices: [cpu, gpu]\n")
    for command in (["run", path, "-o", path.parent / "out"], ["validate", path]):
        result = cli_invoke(command, exit_code=2)
        assert f"{path}:8:20: cases[0].devices[1]: unknown device 'gpu' (did you mean 'cuda'?)" in result.output


def test_a_run_where_every_result_is_skip_exits_5(write_config, cli_invoke, tmp_path):
    """cuda:99 exists on no machine: every result is skip, the gate must not pass."""
    path = write_config(CONFIG)
    out = tmp_path / "out"
    result = cli_invoke(["run", path, "-o", out, "--device", "cuda:99"], exit_code=EXIT_NOTHING_AUDITED)
    assert EXIT_NOTHING_AUDITED == 5
    doc = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in doc["results"]] == ["skip"]
    assert "nothing was audited: every result is skip (exit 5)" in result.output
    # With one device that is there, the same config gates on the audit as usual.
    cli_invoke(["run", path, "-o", out, "--device", "cuda:99", "--device", "cpu"], exit_code=0)


def test_the_exit_code_rule():
    run = reportdata.sample_run
    assert exit_code_of(run([reportdata.skipped(), reportdata.skipped("other")])) == 5
    assert exit_code_of(run([reportdata.skipped(), reportdata.skipped("x")]), "new") == 5
    assert exit_code_of(run([reportdata.skipped(), reportdata.passing("mse")])) == 0
    assert exit_code_of(run([reportdata.skipped(), reportdata.erroring()])) == 1
    assert exit_code_of(run([])) == 0  # a shard that holds no job audits nothing by design
