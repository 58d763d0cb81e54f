"""Worker processes: a crash, a hang or a runaway allocation costs one case; interrupts keep the rest."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import deque
from pathlib import Path

import pytest

from tests.conftest import LOSSES, REPO, by_case, check_contract, finding_ids, run_gradaudit


@pytest.fixture
def short_tmp():
    """A temporary folder with a short path, for TMPDIR: multiprocessing puts its forkserver's
    socket there, and a socket path has at most 107 bytes (pytest-xdist's tmp_path can be longer)."""
    folder = Path(tempfile.mkdtemp(prefix="ga-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


FAULTS = """
defaults: {devices: [cpu], timeout: 2}
cases:
  - {name: segfault, loss: "faults:segfault", inputs: {x: {shape: [4]}}}
  - {name: aborts, loss: "faults:aborts", inputs: {x: {shape: [4]}}}
  - {name: spins, loss: "faults:spins_in_python", inputs: {x: {shape: [4]}}}
  - {name: hog, loss: "faults:hogs_memory", max_memory_mb: 512, inputs: {x: {shape: [4]}}}
  - {name: raises, loss: "faults:raises", inputs: {x: {shape: [4]}}}
  - {name: good, loss: "faults:good", inputs: {x: {shape: [4]}}}
  - {name: exits, loss: "faults:exits", inputs: {x: {shape: [4]}}}
  - {name: sys_exit, loss: "faults:calls_sys_exit", inputs: {x: {shape: [4]}}}
  - {name: oom_killed, loss: "faults:killed", inputs: {x: {shape: [4]}}}
"""


def _line_of(code: str) -> int:
    """The line of tests/losses/faults.py that holds `code`."""
    lines = (LOSSES / "faults.py").read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if code in text)


@pytest.mark.slow
def test_each_fault_costs_its_own_case_alone(audit_config):
    start = time.monotonic()
    code, doc = audit_config(FAULTS, "--jobs", "2", exit_code=1)
    wall = time.monotonic() - start
    results = by_case(doc)
    statuses = {name: r["status"] for name, r in results.items()}
    assert statuses.pop("hog") in ("error", "crash")
    assert statuses == {"segfault": "crash", "aborts": "crash", "spins": "timeout", "raises": "fail",
                        "good": "pass", "exits": "crash", "sys_exit": "crash", "oom_killed": "crash"}
    assert finding_ids(results["raises"]) == ["loss-error"]
    # The crash names the signal, and the stack that faulthandler left names the user's line.
    segv = results["segfault"]
    assert segv["error"]["type"] == "SIGSEGV" and "signal 11" in segv["error"]["message"]
    line = _line_of("ctypes.string_at(0)")
    assert "faults.py" in segv["error"]["traceback"] and f"line {line} in segfault" in segv["error"]["traceback"]
    assert f"faults.py:{line}" in segv["summary_line"]
    assert results["aborts"]["error"]["type"] == "SIGABRT"
    assert "exited with code 3" in results["exits"]["error"]["message"]
    assert "sys.exit(4)" in results["sys_exit"]["error"]["message"]
    assert "SIGKILL" in results["oom_killed"]["error"]["message"]
    assert "out-of-memory killer" in results["oom_killed"]["error"]["message"]
    # The hang was stopped at its own timeout, with the line it was stuck on.
    spins = results["spins"]
    assert 2.0 <= spins["duration_s"] < 10, spins["duration_s"]
    assert "spins_in_python" in spins["error"]["traceback"]
    assert "timed out after 2s" in spins["summary_line"]
    # Not a timing target: a run that waited for a default timeout (120 s) or hung would blow this.
    assert wall < 60, wall


@pytest.mark.slow
def test_a_fresh_worker_takes_over_after_each_death(audit_config):
    code, doc = audit_config("""
        defaults: {devices: [cpu], timeout: 1}
        cases:
          - {name: a_segfault, loss: "faults:segfault", inputs: {x: {shape: [4]}}}
          - {name: b_good, loss: "faults:good", inputs: {x: {shape: [4]}}}
          - {name: c_spins, loss: "faults:spins", inputs: {x: {shape: [4]}}}
          - {name: d_good, loss: "faults:good", inputs: {x: {shape: [4]}}}
        """, "--jobs", "1", exit_code=1)
    assert {n: r["status"] for n, r in by_case(doc).items()} == {
        "a_segfault": "crash", "b_good": "pass", "c_spins": "timeout", "d_good": "pass"}


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is enforced on Linux")
@pytest.mark.parametrize("isolate", [True, False], ids=["worker", "in-process"])
def test_memory_guard_makes_a_runaway_allocation_an_error(audit_config, isolate):
    code, doc = audit_config("""
        defaults: {devices: [cpu], max_memory_mb: 256}
        cases:
          - {name: hog, loss: "faults:hogs_memory", inputs: {x: {shape: [4]}}}
          - {name: modest, loss: "faults:allocates_64mb", inputs: {x: {shape: [4]}}}
        """, *([] if isolate else ["--no-isolate"]), exit_code=1)
    results = by_case(doc)
    assert results["hog"]["status"] == "error"
    assert "exceeded max_memory_mb=256" in results["hog"]["error"]["message"]
    line = _line_of("big = torch.ones(")
    assert results["hog"]["summary_line"].startswith("exceeded max_memory_mb=256: tried to allocate 8,192 MiB")
    assert f"faults.py:{line}" in results["hog"]["summary_line"]
    assert results["modest"]["status"] == "pass"


@pytest.mark.parametrize("value, message", [(0, "must be at least 1"), ("lots", "must be an integer")])
def test_max_memory_mb_is_checked(write_config, cli_invoke, value, message):
    path = write_config(f"""
        version: 1
        defaults: {{max_memory_mb: {value}}}
        cases:
          - {{name: a, loss: "faults:good", inputs: {{x: {{shape: [4]}}}}}}
        """)
    result = cli_invoke(["validate", path], exit_code=2)
    assert "max_memory_mb" in result.output and message in result.output


def _scrubbed(doc: dict) -> list[dict]:
    results = []
    for r in doc["results"]:
        r = dict(r)
        r.pop("duration_s")
        results.append(r)
    return results


@pytest.mark.slow
def test_results_are_the_same_whatever_the_jobs(write_config, cli_invoke, tmp_path):
    from tests.test_findings import _config

    path = write_config(_config(), "spine.yaml")
    docs = {}
    for name, extra in {"one": ["--jobs", "1"], "two": ["--jobs", "2"], "inproc": ["--no-isolate"]}.items():
        cli_invoke(["run", path, "-o", tmp_path / name, *extra], expect_ok=None)
        docs[name] = json.loads((tmp_path / name / "results.json").read_text())
    assert len(docs["one"]["results"]) >= 30
    assert _scrubbed(docs["one"]) == _scrubbed(docs["two"])
    # In-process, stacks also hold the frames of the gradaudit command itself; the verdicts match.
    assert _verdicts(docs["one"]) == _verdicts(docs["inproc"])
    assert docs["one"]["summary"] == docs["two"]["summary"] == docs["inproc"]["summary"]


def _verdicts(doc: dict) -> list:
    return [(r["case"], r["status"], r["summary_line"], r["inputs"], r["loss"],
             [(f["id"], f["message"], (f["location"] or {}).get("line")) for f in r["findings"]])
            for r in doc["results"]]


@pytest.mark.slow
def test_no_isolate_still_writes_what_finished_when_a_crash_ends_the_run(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(textwrap.dedent(f"""
        version: 1
        sys_path: [{LOSSES}]
        defaults: {{devices: [cpu]}}
        cases:
          - {{name: good, loss: "faults:good", inputs: {{x: {{shape: [4]}}}}}}
          - {{name: segfault, loss: "faults:segfault", inputs: {{x: {{shape: [4]}}}}}}
          - {{name: later, loss: "faults:good", inputs: {{x: {{shape: [4]}}}}}}
        """))
    proc = _gradaudit("run", config, "-o", tmp_path / "out", "--no-isolate")
    assert proc.returncode == -signal.SIGSEGV, proc.stderr
    assert f"line {_line_of('ctypes.string_at(0)')} in segfault" in proc.stderr  # faulthandler's stack
    path = tmp_path / "out" / "results.json"
    check_contract(path)
    doc = json.loads(path.read_text())
    assert doc["interrupted"] is True
    assert {n: r["status"] for n, r in by_case(doc).items()} == {
        "good": "pass", "segfault": "crash", "later": "skip"}


def _gradaudit(*args, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "gradaudit", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_writes_the_finished_cases_and_exits_130(tmp_path, short_tmp, signum):
    lines = ["version: 1", f"sys_path: [{LOSSES}]", "defaults: {devices: [cpu]}", "cases:"]
    lines += [f"  - {{name: slow{i:02}, loss: 'faults:slow_good', inputs: {{x: {{shape: [4]}}}}}}"
              for i in range(40)]
    config = tmp_path / "slow.yaml"
    config.write_text("\n".join(lines) + "\n")
    scratch = short_tmp
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(scratch)}
    proc = subprocess.Popen([sys.executable, "-m", "gradaudit", "run", str(config), "-o",
                             str(tmp_path / "out"), "--jobs", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(120, proc.kill)  # a hung gradaudit fails the test, not the suite
    watchdog.start()
    try:
        # Wait for the first finished case (one plain line per case: stdout is not a terminal).
        first = proc.stdout.readline()
        assert first.startswith("PASS"), first + proc.stderr.read()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        watchdog.cancel()
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    path = tmp_path / "out" / "results.json"
    check_contract(path)
    assert (tmp_path / "out" / "index.html").read_text().strip()
    doc = json.loads(path.read_text())
    assert doc["interrupted"] is True
    statuses = [r["status"] for r in doc["results"]]
    assert len(statuses) == 40 and set(statuses) == {"pass", "skip"}
    assert 1 <= statuses.count("pass") < 40
    skipped = [r for r in doc["results"] if r["status"] == "skip"]
    assert all("interrupted" in r["skip_reason"] for r in skipped)
    # Workers were stopped and their logs removed; no temporary file of an atomic write is left.
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("gradaudit-workers-")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["index.html", "results.json"]


@pytest.mark.slow
def test_help_does_not_import_torch():
    code = textwrap.dedent("""
        import sys
        from typer.testing import CliRunner
        from gradaudit.cli import app
        for args in (["--help"], ["run", "--help"], ["report", "--help"]):
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 0, result.output
        print("torch" in sys.modules, "gradaudit.workers" in sys.modules)
        """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False"]


@pytest.mark.slow
def test_a_worker_whose_device_context_is_poisoned_is_replaced(audit_config):
    config = """
        defaults: {devices: [cpu]}
        cases:
          - {name: a_poisons, loss: "faults:poisons_device", inputs: {x: {shape: [4]}}}
          - {name: b_good, loss: "faults:good", inputs: {x: {shape: [4]}}}
        """
    _, doc = audit_config(config, "--jobs", "1", exit_code=0)
    assert {n: r["status"] for n, r in by_case(doc).items()} == {"a_poisons": "pass", "b_good": "pass"}
    # The twin: in one process the poisoned context is still there for the next case (a layer of
    # its own, so that the poisoning ends with this test).
    from gradaudit.devices import DeviceLayer, installed

    with installed(DeviceLayer()):
        _, doc = audit_config(config, "--no-isolate", exit_code=1)
    assert by_case(doc)["b_good"]["status"] == "error"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["file", "stdin"])
def test_workers_do_not_rerun_the_callers_main_script(tmp_path, how):
    # A script without an `if __name__ == "__main__":` guard, run as a file or read from stdin.
    config = tmp_path / "c.yaml"
    config.write_text(textwrap.dedent(f"""
        version: 1
        sys_path: [{LOSSES}]
        defaults: {{devices: [cpu]}}
        cases:
          - {{name: a, loss: "faults:good", inputs: {{x: {{shape: [4]}}}}}}
          - {{name: b, loss: "faults:good", inputs: {{x: {{shape: [4]}}}}}}
        """))
    marks = tmp_path / "marks.txt"
    script = textwrap.dedent(f"""
        from gradaudit.config import load_config
        from gradaudit.runner import RunOptions, run
        with open({str(marks)!r}, "a") as f:
            f.write("ran\\n")
        results = run(load_config({str(config)!r}), RunOptions(isolate=True, jobs=2))
        print(results.summary.line())
        """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if how == "file":
        path = tmp_path / "script.py"
        path.write_text(script)
        proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=120)
    else:
        proc = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, env=env,
                              timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "2 results: 2 pass" in proc.stdout
    assert marks.read_text() == "ran\n"


def test_workers_openmp_threads_sleep_while_they_wait(audit_config):
    # Spinning OpenMP threads made a lone worker two to three times slower on a busy machine.
    _, doc = audit_config("""
        defaults: {devices: [cpu]}
        cases:
          - {name: omp, loss: "faults:needs_passive_openmp", inputs: {x: {shape: [4]}}}
        """, "--jobs", "1", exit_code=0)
    assert by_case(doc)["omp"]["status"] == "pass"


@pytest.mark.slow
def test_each_worker_gets_its_share_of_the_cores(audit_config):
    from gradaudit.runner import usable_cpus

    config = """
        defaults: {devices: [cpu]}
        cases:
          - {name: a, loss: "faults:threads_as_value", inputs: {x: {shape: [4]}}}
          - {name: b, loss: "faults:threads_as_value", inputs: {x: {shape: [4]}}}
        """
    cpus = usable_cpus()
    for jobs in (1, 2):
        _, doc = audit_config(config, "--jobs", str(jobs))
        threads = {r["loss"]["value"] for r in doc["results"]}
        assert threads == {max(1, cpus // jobs)}, (jobs, cpus, threads)


# -- one case cannot change another's verdict (issue 14) ---------------------------------------------

def _run_config(tmp_path, body: str, *args, name: str = "c", timeout: float = 240, env: dict | None = None):
    """Write a config over tests/losses, run `gradaudit run` as a real process under a watchdog,
    and return (the process, results.json as a dict or None)."""
    config = tmp_path / f"{name}.yaml"
    config.write_text(f"version: 1\nsys_path: [{LOSSES}]\n" + textwrap.dedent(body))
    out = tmp_path / f"{name}-out"
    proc = run_gradaudit("run", config, "-o", out, *args, timeout=timeout, env=env)
    path = out / "results.json"
    return proc, (json.loads(path.read_text()) if path.exists() else None)


def _case_lines(pairs: list[tuple[str, str]]) -> str:
    lines = ["defaults: {devices: [cpu], timeout: 60}", "cases:"]
    lines += [f"  - {{name: {name}, loss: 'hostile:{loss}', inputs: {{x: {{shape: [4]}}}}}}" for name, loss in pairs]
    return "\n".join(lines) + "\n"


# (the hostile loss, the innocent loss after it whose verdict it used to change)
POISONS = [
    ("patches_detach", "detached"),  # the buggy detached loss passed
    ("leaves_grad_off", "needs_grad_mode"),  # the correct loss failed, blamed on its own line
    ("patches_mse_loss", "mse"),
    ("patches_backward", "needs_grad_mode"),
    ("swaps_a_module", "uses_import_module"),
    ("leaves_default_dtype", "makes_a_tensor"),
    ("leaves_anomaly_mode", "good"),
]


def _without_times(result: dict) -> dict:
    result = dict(result)
    result.pop("duration_s")
    result.pop("reproduce")  # names the config file
    return result


@pytest.mark.slow
@pytest.mark.parametrize("isolate", [True, False], ids=["workers", "no-isolate"])
def test_a_case_cannot_change_the_verdict_of_a_later_one(tmp_path, isolate):
    pairs = []
    for i, (poison, victim) in enumerate(POISONS):
        pairs += [(f"p{i}_{poison}", poison), (f"p{i}_{poison}_victim", victim)]
    extra = ["--jobs", "1"] if isolate else ["--no-isolate"]
    proc, doc = _run_config(tmp_path, _case_lines(pairs), *extra, name="together")
    assert doc is not None, proc.stderr
    alone_proc, alone = _run_config(tmp_path, _case_lines([p for p in pairs if p[0].endswith("_victim")]),
                                    *extra, name="alone")
    assert alone is not None, alone_proc.stderr
    together, by_itself = by_case(doc), by_case(alone)
    for name, result in by_itself.items():
        assert _without_times(together[name]) == _without_times(result), name
    # Each poison is reported on the case that left it, as a warning that names what it changed.
    for i, (poison, _) in enumerate(POISONS):
        result = together[f"p{i}_{poison}"]
        assert "leaked-state" in finding_ids(result), (poison, result["findings"])
    detach = next(f for f in together["p0_patches_detach"]["findings"] if f["id"] == "leaked-state")
    assert detach["severity"] == "warn" and "torch.Tensor.detach" in detach["message"]
    assert together["p0_patches_detach"]["status"] == "warn"
    # The line to change is the assignment of the patch.
    assert detach["location"]["line"] == _line_of_in("hostile.py", "torch.Tensor.detach = lambda")
    grad = next(f for f in together["p1_leaves_grad_off"]["findings"] if f["id"] == "leaked-state")
    assert "grad mode off" in grad["message"]
    word = "fresh worker" if isolate else "restored it in this process"
    assert word in grad["message"]


def _line_of_in(filename: str, code: str) -> int:
    lines = (LOSSES / filename).read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if code in text)


@pytest.mark.slow
def test_leaked_state_quiet_twins(tmp_path):
    """Importing modules (new sys.modules keys, new submodule attributes) is not a leak."""
    proc, doc = _run_config(tmp_path, _case_lines([("a", "imports_something"), ("b", "good"), ("c", "mse")]),
                            "--jobs", "1")
    assert doc is not None, proc.stderr
    for name, result in by_case(doc).items():
        assert result["status"] == "pass" and result["findings"] == [], (name, result["findings"])


@pytest.mark.slow
def test_expect_ignore_drops_leaked_state(tmp_path):
    proc, doc = _run_config(tmp_path, """
        defaults: {devices: [cpu]}
        cases:
          - {name: a, loss: "hostile:leaves_anomaly_mode", inputs: {x: {shape: [4]}}, expect: {ignore: [leaked-state]}}
          - {name: b, loss: "hostile:good", inputs: {x: {shape: [4]}}}
        """, "--jobs", "1")
    assert {n: r["status"] for n, r in by_case(doc).items()} == {"a": "pass", "b": "pass"}, proc.stderr


def test_audit_restores_the_callers_state():
    import torch

    from gradaudit import Spec
    from gradaudit.api import audit
    from tests.losses import hostile

    before = (torch.is_grad_enabled(), torch.get_default_dtype(), torch.Tensor.detach, torch.is_anomaly_enabled())
    for loss in (hostile.leaves_grad_off, hostile.patches_detach, hostile.leaves_default_dtype,
                 hostile.leaves_anomaly_mode):
        results = audit(loss, inputs={"x": Spec(shape=(4,))}, devices=["cpu"])
        leaks = [f for f in results.findings if f.id == "leaked-state"]
        assert len(leaks) == 1 and "restored it in this process" in leaks[0].message, (loss, results.findings)
        now = (torch.is_grad_enabled(), torch.get_default_dtype(), torch.Tensor.detach, torch.is_anomaly_enabled())
        assert now == before, loss


@pytest.mark.slow
def test_what_cannot_be_restored_in_process_is_said(tmp_path):
    proc, doc = _run_config(tmp_path, _case_lines([("a", "leaves_inference_mode")]), "--no-isolate")
    finding = next(f for f in by_case(doc)["a"]["findings"] if f["id"] == "leaked-state")
    assert "could not undo: left inference mode on" in finding["message"], finding
    assert finding["detail"]["unrestored"] == ["left inference mode on"]


@pytest.mark.slow
def test_children_of_a_case_die_with_it(tmp_path):
    # `gradaudit run | cat` waited for a loss's child (it held the run's pipes): here stdout is a pipe.
    start = time.monotonic()
    proc, doc = _run_config(tmp_path, _case_lines([("a", "forks_a_sleeper"), ("b", "good")]), "--jobs", "1",
                            timeout=80)
    assert time.monotonic() - start < 60  # the child sleeps 90 s
    results = by_case(doc)
    assert results["b"]["status"] == "pass"
    finding = next(f for f in results["a"]["findings"] if f["id"] == "leaked-state")
    assert "child process" in finding["message"]


@pytest.mark.slow
def test_a_loss_that_closes_stdout_costs_nobody_else(tmp_path):
    proc, doc = _run_config(tmp_path, _case_lines([("a", "closes_stdout"), ("b", "good"), ("c", "good")]),
                            "--jobs", "1")
    results = by_case(doc)
    assert results["b"]["status"] == results["c"]["status"] == "pass", (results["b"], proc.stderr)
    assert "closed sys.stdout" in results["a"]["summary_line"]


@pytest.mark.slow
@pytest.mark.parametrize("isolate", [True, False], ids=["workers", "no-isolate"])
def test_odd_return_values_are_a_verdict_not_a_crash(tmp_path, isolate):
    proc, doc = _run_config(tmp_path, _case_lines([("a", "returns_int_subclass"), ("b", "returns_numpy_vector")]),
                            *(["--jobs", "1"] if isolate else ["--no-isolate"]))
    assert doc is not None, proc.stderr
    for result in by_case(doc).values():
        assert result["status"] == "fail" and finding_ids(result) == ["loss-no-grad"], result


def _slow_config(tmp_path, n: int = 40) -> Path:
    lines = ["version: 1", f"sys_path: [{LOSSES}]", "defaults: {devices: [cpu]}", "cases:"]
    lines += [f"  - {{name: slow{i:02}, loss: 'faults:slow_good', inputs: {{x: {{shape: [4]}}}}}}"
              for i in range(n)]
    config = tmp_path / "slow.yaml"
    config.write_text("\n".join(lines) + "\n")
    return config


def _start(tmp_path, *args, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gradaudit", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


@pytest.mark.slow
@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_more_signals_while_stopping_still_leave_the_reports(tmp_path, short_tmp, second):
    scratch = short_tmp
    out = tmp_path / "out"
    proc = _start(tmp_path, "run", _slow_config(tmp_path), "-o", out, "--jobs", "2", env={"TMPDIR": str(scratch)})
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    try:
        first = proc.stdout.readline()
        assert first.startswith("PASS"), first + proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        # Keep signalling while it stops its workers and writes the reports.
        give_up = time.monotonic() + 5
        while proc.poll() is None and time.monotonic() < give_up:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(second)
            time.sleep(0.005)
        out_text, err = proc.communicate(timeout=60)
    finally:
        watchdog.cancel()
        proc.kill()
    assert proc.returncode == 130, err
    check_contract(out / "results.json")
    doc = json.loads((out / "results.json").read_text())
    assert doc["interrupted"] is True and "pass" in {r["status"] for r in doc["results"]}
    assert "</html>" in (out / "index.html").read_text()
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("gradaudit-workers-")]
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "results.json"]


# -- outputs: checked before the run, never lost after it ------------------------------------------

GOOD = _case_lines([("a", "good"), ("b", "good")])


@pytest.mark.slow
@pytest.mark.parametrize("where", ["o-is-a-file", "o-under-a-file", "junit-is-a-folder"])
def test_an_output_that_cannot_be_written_is_refused_before_the_run(tmp_path, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    args = {"o-is-a-file": ["-o", blocker], "o-under-a-file": ["-o", blocker / "report"],
            "junit-is-a-folder": ["-o", tmp_path / "out", "--junit", tmp_path]}[where]
    config = tmp_path / "c.yaml"
    config.write_text(f"version: 1\nsys_path: [{LOSSES}]\n" + GOOD)
    proc = run_gradaudit("run", config, *args, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "PASS" not in proc.stdout  # nothing ran
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to fill a disk")
def test_a_report_that_cannot_be_written_keeps_the_results(tmp_path, short_tmp):
    config = tmp_path / "c.yaml"
    config.write_text(f"version: 1\nsys_path: [{LOSSES}]\n" + GOOD)
    # The markdown summary hits a full disk: results.json is already in place. (Through a link,
    # so that a gradaudit that renames onto its outputs replaces the link, never the device.)
    full_disk = tmp_path / "full-disk.md"
    full_disk.symlink_to("/dev/full")
    out = tmp_path / "out"
    proc = run_gradaudit("run", config, "-o", out, "--markdown", full_disk, timeout=120)
    assert proc.returncode == 3, proc.stderr
    line = [t for t in proc.stderr.splitlines() if t.startswith("error:")]
    assert len(line) == 1 and "No space left on device" in line[0] and str(out / "results.json") in line[0]
    check_contract(out / "results.json")
    # results.json itself hits it: it is kept in the temporary folder, and the line says where.
    scratch = short_tmp
    full = tmp_path / "full"
    full.mkdir()
    (full / "results.json").symlink_to("/dev/full")
    proc = run_gradaudit("run", config, "-o", full, timeout=120, env={"TMPDIR": str(scratch)})
    assert proc.returncode == 3, proc.stderr
    kept = list(scratch.glob("gradaudit-results-*.json"))
    assert len(kept) == 1 and str(kept[0]) in proc.stderr and "Traceback" not in proc.stderr
    check_contract(kept[0])
    assert {r["status"] for r in json.loads(kept[0].read_text())["results"]} == {"pass"}


@pytest.mark.slow
def test_a_worker_that_stops_starting_keeps_the_finished_results(tmp_path, short_tmp):
    scratch = short_tmp
    proc, doc = _run_config(tmp_path, _case_lines([("a", "good"), ("b", "breaks_worker_start"), ("c", "good"),
                                                   ("d", "good")]), "--jobs", "1", env={"TMPDIR": str(scratch)})
    assert proc.returncode == 1, proc.stderr
    assert "worker processes cannot start" in proc.stderr and "Traceback" not in proc.stderr
    assert doc is not None, proc.stderr
    results = by_case(doc)
    assert results["a"]["status"] == "pass" and results["b"]["status"] == "crash"
    assert {results[n]["status"] for n in "cd"} == {"skip"}
    assert "stopped starting" in results["c"]["skip_reason"]


@pytest.mark.slow
def test_a_signal_while_reports_are_written_waits_for_them(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"version: 1\nsys_path: [{LOSSES}]\n" + GOOD)
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.html").write_text("stale")
    script = textwrap.dedent(f"""
        import os, signal, sys
        import gradaudit.htmlreport as html
        real = html.write_html
        def write_html(results, stream):
            os.kill(os.getpid(), signal.SIGTERM)  # a cancelled CI job, mid-write
            real(results, stream)
        html.write_html = write_html
        from gradaudit.cli import app
        sys.argv = ["gradaudit", "run", {str(config)!r}, "-o", {str(out)!r}]
        app()
        """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 130, proc.stderr
    assert (out / "index.html").read_text() != "stale"
    check_contract(out / "results.json")


@pytest.mark.slow
def test_a_loss_that_changes_directory_moves_nothing(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = tmp_path / "c.yaml"
    config.write_text(f"version: 1\nsys_path: [{LOSSES}]\n"
                      + _case_lines([("a", "good"), ("b", "changes_directory"), ("c", "good")]))
    proc = run_gradaudit("run", "c.yaml", "-o", "out", "--no-isolate", cwd=tmp_path, timeout=120,
                         env={"GRADAUDIT_TEST_ELSEWHERE": str(elsewhere)})
    assert list(elsewhere.iterdir()) == [], proc.stderr
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    results = by_case(doc)
    assert results["a"]["status"] == results["c"]["status"] == "pass"
    assert results["b"]["status"] == "warn" and "changed the working folder" in results["b"]["summary_line"]
    assert doc["interrupted"] is False


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="folder locks use flock")
def test_a_second_run_into_the_same_folder_is_refused(tmp_path):
    import fcntl

    config = tmp_path / "c.yaml"
    config.write_text(f"version: 1\nsys_path: [{LOSSES}]\n" + GOOD)
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running gradaudit holds
        proc = run_gradaudit("run", config, "-o", out, timeout=120)
    finally:
        os.close(fd)
    assert proc.returncode == 2 and "another gradaudit run is writing into this folder" in proc.stderr
    assert list(out.iterdir()) == []


# -- timeouts ---------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("value", [".inf", "1.0e+300"])
def test_an_infinite_timeout_means_no_limit(tmp_path, value):
    proc, doc = _run_config(tmp_path, f"""
        defaults: {{devices: [cpu], timeout: {value}}}
        cases:
          - {{name: a, loss: "hostile:good", inputs: {{x: {{shape: [4]}}}}}}
        """, "--jobs", "1")
    assert proc.returncode == 0, proc.stderr
    assert by_case(doc)["a"]["status"] == "pass"


@pytest.mark.slow
def test_timeout_inf_on_the_command_line_means_no_limit(tmp_path):
    proc, doc = _run_config(tmp_path, GOOD, "--jobs", "1", "--timeout", "inf")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("value, message", [(".nan", "timeout must be a number, not NaN"),
                                            ("-1", "timeout must not be negative"),
                                            ("0", "timeout must be positive")])
def test_a_timeout_that_is_no_limit_is_a_config_error(write_config, cli_invoke, value, message):
    path = write_config(f"""
        version: 1
        defaults: {{timeout: {value}}}
        cases:
          - {{name: a, loss: "faults:good", inputs: {{x: {{shape: [4]}}}}}}
        """)
    result = cli_invoke(["validate", path], exit_code=2)
    assert "config.yaml:3:" in result.output and message in result.output, result.output


@pytest.mark.parametrize("value", ["nan", "-1", "0"])
def test_a_bad_timeout_option_is_a_usage_error(write_config, cli_invoke, value):
    path = write_config(f"version: 1\nsys_path: [{LOSSES}]\n" + GOOD)
    result = cli_invoke(["run", path, "--timeout", value, "-o", path.parent / "out"], exit_code=2)
    assert "--timeout" in result.output and "positive number of seconds" in result.output


# -- hostile configs: bounded, with a clear error naming file and line --------------------------------

def _bomb() -> str:
    lines = ["version: 1", 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    previous = "a"
    for name in "bcdefghi":  # 9**9 strings after expansion
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
        previous = name
    lines.append("cases: [{name: x, loss: 'faults:good', inputs: {x: {shape: [1]}}, kwargs: {k: *i}}]")
    return "\n".join(lines) + "\n"


def _deep(levels: int) -> str:
    return ("version: 1\ncases:\n  - name: a\n    loss: faults:good\n    inputs: {x: {shape: [4]}}\n"
            f"    kwargs: {{k: {'[' * levels}{']' * levels}}}\n")


def _matrix() -> str:
    sizes = "[" + ", ".join(str(i) for i in range(1, 14)) + "]"
    return ("version: 1\ncases:\n  - name: a\n    loss: faults:good\n"
            f"    dims: {{A: {sizes}, B: {sizes}, C: {sizes}, D: {sizes}, E: {sizes}}}\n"
            "    inputs: {x: {shape: [A, B, C, D, E]}}\n")


@pytest.mark.parametrize("text, where, message", [
    (_bomb(), ":2:", "expands to more than 200,000 values"),
    ("version: 1\ncases: &a\n  - *a\n", ":2:", "recursive alias"),
    (_deep(500), ":6:", "nested more than 64 levels deep"),
    (_matrix(), ":5:", "expands to 371,293 cases (13 x 13 x 13 x 13 x 13); at most 10,000"),
], ids=["alias-bomb", "recursive-alias", "deep-nesting", "matrix-explosion"])
def test_a_hostile_config_is_a_config_error_not_a_hang(tmp_path, text, where, message):
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    proc = run_gradaudit("validate", path, timeout=90)  # before the bounds: 1.7 GB after 60 s, or a traceback
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert f"hostile.yaml{where}" in proc.stderr and message in proc.stderr, proc.stderr


# -- control characters never act in any output -----------------------------------------------------

HOSTILE = "bad\x1b[2K\rPASS    fake [cpu]\x00\x07\x9b\u202e done"
RAW_CONTROLS = ["\x1b", "\r", "\x00", "\x07", "\x9b", "\u202e"]


def _hostile_run():
    from gradaudit.model import ErrorInfo
    from tests import reportdata

    bad = reportdata.ratio_fail()
    bad.summary_line = HOSTILE
    bad.findings[-1].message = HOSTILE
    bad.findings[-1].location.code = HOSTILE
    bad.error = ErrorInfo("ValueError", HOSTILE, traceback=f"Traceback:\n  {HOSTILE}\n")
    bad.warnings = [HOSTILE]
    return reportdata.sample_run([bad, reportdata.passing("good")])


def test_safe_text_shows_controls_as_escapes():
    from gradaudit.safetext import safe_text

    assert safe_text(HOSTILE) == "bad\\x1b[2K\\rPASS    fake [cpu]\\x00\\x07\\x9b\\u202e done"
    assert safe_text("two\nlines\tand a tab") == "two\nlines\tand a tab"
    assert safe_text("two\nlines", lines=False) == "two\\nlines"


def test_no_control_character_reaches_any_report(tmp_path, cli_invoke):
    from gradaudit.jsonreport import write_json

    path = tmp_path / "results.json"
    with path.open("w", encoding="utf-8") as stream:
        write_json(_hostile_run(), stream)
    out = tmp_path / "out"
    result = cli_invoke(["report", path, "-o", out, "--junit", out / "j.xml", "--markdown", out / "s.md"])
    for name in ("index.html", "j.xml", "s.md"):
        text = (out / name).read_text(encoding="utf-8")
        found = [c for c in RAW_CONTROLS if c in text]
        assert not found, (name, found)
        assert "\\x1b[2K" in text.replace("\\\\", "\\").replace("\\[", "["), name  # shown, not dropped
    assert not [c for c in RAW_CONTROLS if c in result.output]


def test_no_control_character_reaches_the_terminal():
    import io

    from rich.console import Console

    from gradaudit.terminal import RunProgress, print_summary, result_line, result_text, rich_line

    run = _hostile_run()
    bad = run.results[0]
    for text in (result_line(bad), rich_line(bad), result_text(bad), repr(run)):
        assert not [c for c in RAW_CONTROLS if c in text], text
    for terminal in (True, False):
        stream = io.StringIO()
        console = Console(file=stream, force_terminal=terminal, width=200)
        progress = RunProgress(console)
        progress.start(2)
        for r in run.results:
            progress.result(r)
        progress.stop()
        print_summary(run, console)
        # Rich's own colours are ESC sequences on a terminal: strip those, then look for the loss's.
        shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stream.getvalue()).replace("\r", "")
        assert "\\x1b[2K" in shown and not [c for c in RAW_CONTROLS if c in shown], shown
        if terminal:
            assert "\x1b[2K\rPASS" not in stream.getvalue()


@pytest.mark.slow
def test_a_loss_cannot_draw_over_the_terminal(tmp_path):
    proc, doc = _run_config(tmp_path, _case_lines([("a", "prints_escapes")]), "--jobs", "1")
    assert by_case(doc)["a"]["status"] == "fail"
    assert "bad\\x1b[2K" in proc.stdout
    assert not [c for c in RAW_CONTROLS if c in proc.stdout + proc.stderr], proc.stdout


def test_a_hostile_status_in_results_json_does_not_inject_html():
    from gradaudit.markdownreport import write_markdown
    from tests import reportdata

    hostile = reportdata.ratio_fail()
    hostile.status = "<img src=x onerror=alert(1)>"
    expected = reportdata.ratio_fail(device="cuda")
    expected.expected = True
    expected.status = "fail<img src=x onerror=alert(2)>"
    stream = io.StringIO()
    write_markdown(reportdata.sample_run([hostile, expected, reportdata.ratio_fail(device="mps")]), stream)
    assert "<img" not in stream.getvalue().lower(), stream.getvalue()


@pytest.mark.slow
def test_no_isolate_survives_a_loss_that_closes_stdout(tmp_path):
    proc, doc = _run_config(tmp_path, _case_lines([("a", "closes_stdout"), ("b", "good")]), "--no-isolate")
    assert proc.returncode == 0, proc.stderr
    results = by_case(doc)
    assert results["b"]["status"] == "pass"
    assert "closed sys.stdout" in results["a"]["summary_line"] and "restored it" in results["a"]["summary_line"]
    assert "PASS    b [cpu]" in proc.stdout  # the terminal still works after the case


@pytest.mark.slow
def test_a_long_tmpdir_starts_workers_by_spawn_not_a_traceback(tmp_path, short_tmp):
    """A TMPDIR too long for the forkserver's Unix socket (107 bytes) once ended every run in
    "AF_UNIX path too long"; workers then start by `spawn`, and the run audits as usual. The twin,
    a short TMPDIR, keeps the forkserver."""
    from gradaudit.workers import forkserver_fits

    long_tmp = tmp_path / ("t" * 40) / ("m" * 40)
    long_tmp.mkdir(parents=True)
    assert len(str(long_tmp)) > 107 - 40 and not forkserver_fits(str(long_tmp))
    assert forkserver_fits(str(short_tmp))
    config = tmp_path / "c.yaml"
    config.write_text(f"version: 1\nsys_path: [{LOSSES}]\ndefaults: {{devices: [cpu]}}\ncases:\n"
                      "  - {name: good, loss: \"faults:good\", inputs: {x: {shape: [4]}}}\n"
                      "  - {name: raises, loss: \"faults:raises\", inputs: {x: {shape: [4]}}}\n")
    out = tmp_path / "out"
    proc = run_gradaudit("run", config, "-o", out, "--jobs", "2",
                         env={"TMPDIR": str(long_tmp)})
    assert "Traceback" not in proc.stderr and "AF_UNIX" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stderr
    statuses = {r["case"]: r["status"] for r in json.loads((out / "results.json").read_text())["results"]}
    assert statuses == {"good": "pass", "raises": "fail"}  # a loss-error fails its case


@pytest.mark.slow
def test_a_job_sent_ahead_is_never_blamed_for_the_one_before_it(audit_config, monkeypatch):
    """A worker on short jobs gets its next job sent ahead (it starts it without waiting for this
    process). When the job it is running crashes, hangs or poisons the worker, the job sent ahead
    never ran: it goes to another worker and passes, with its own verdict and no one else's."""
    from gradaudit import workers

    behind: dict[str, str] = {}  # the job running -> the job sent ahead behind it
    real_send = workers.WorkerPool._send

    def send(self, w, item, ahead=False):
        if ahead:
            behind[w.job[1].spec.name] = item[1].spec.name
        return real_send(self, w, item, ahead)

    monkeypatch.setattr(workers.WorkerPool, "_send", send)
    goods = "".join(f"  - {{name: good{i}, loss: \"faults:good\", inputs: {{x: {{shape: [4]}}}}}}\n"
                    for i in range(3))
    faults = ["segfault", "spins_in_python", "exits"]
    cases = "".join(f"  - {{name: {name}, loss: \"faults:{name}\", inputs: {{x: {{shape: [4]}}}}}}\n" + goods.replace(
        "name: good", f"name: after_{name}_") for name in faults)
    code, doc = audit_config("defaults: {devices: [cpu], timeout: 2}\ncases:\n" + goods + cases,
                             "--jobs", "1", exit_code=1)
    statuses = {name: r["status"] for name, r in by_case(doc).items()}
    assert {k: v for k, v in statuses.items() if v != "pass"} == {
        "segfault": "crash", "spins_in_python": "timeout", "exits": "crash"}
    assert len(statuses) == 3 + 3 * 4
    # A job was sent ahead behind each fault (its worker's last job had been short), and passed.
    assert {name: behind.get(name) for name in faults} == {name: f"after_{name}_0" for name in faults}
    assert all(statuses[f"after_{name}_0"] == "pass" for name in faults)


@pytest.fixture(params=["version-tag", "full-comparison"])
def dict_versions(request, monkeypatch):
    """Each namespace test twice: with CPython's dict version tag read, and without (as on an
    interpreter that has none)."""
    from gradaudit import processstate

    if request.param == "full-comparison":
        monkeypatch.setattr(processstate, "_read_version", None)
    elif processstate._dict_version({}) is None:  # depends on the interpreter, not on this machine
        pytest.skip("this Python has no readable dict version tag (not CPython, or another layout)")
    return request.param


def test_namespace_check_after_imports_still_sees_a_replacement(dict_versions):
    """The leaked-state check compares with the dict as it was at its last clean check once entries
    were added (an import): a replacement after that is still caught, an addition still is not."""
    import types

    from gradaudit.processstate import _Namespace

    ns = types.SimpleNamespace(a=object(), b=object())
    snapshot = _Namespace(vars(ns))
    assert snapshot.unchanged(vars(ns))
    ns.c = object()  # an addition (an import): not a change
    assert snapshot.unchanged(vars(ns))
    assert snapshot.unchanged(vars(ns))  # the fast check, now against the grown dict
    ns.c = object()  # replacing what was added after the snapshot: not one of its entries
    assert snapshot.unchanged(vars(ns))
    original = ns.a
    ns.a = object()  # replacing an entry of the snapshot, after the additions
    assert not snapshot.unchanged(vars(ns))
    ns.a = original
    assert snapshot.unchanged(vars(ns))
    del ns.b
    assert not snapshot.unchanged(vars(ns))


def test_namespace_check_sees_a_value_swapped_between_keys(dict_versions):
    import types

    from gradaudit.processstate import _Namespace

    one, two = object(), object()
    ns = types.SimpleNamespace(a=one, b=two)
    snapshot = _Namespace(vars(ns))
    ns.a, ns.b = two, one  # same keys, same values, in other places
    assert not snapshot.unchanged(vars(ns))


def test_namespace_check_sees_writes_to_a_class_and_to_a_dict_directly(dict_versions):
    from gradaudit.processstate import _Namespace

    class Patched:
        def method(self):
            return 1

    snapshot = _Namespace(vars(Patched))
    assert snapshot.unchanged(vars(Patched)) and snapshot.unchanged(vars(Patched))
    original = Patched.method
    Patched.method = lambda self: 2  # through the class's mappingproxy-guarded dict
    assert not snapshot.unchanged(vars(Patched))
    Patched.method = original
    assert snapshot.unchanged(vars(Patched))
    table = {"a": 1, "b": 2}
    watched = _Namespace(table)
    assert watched.unchanged(table)
    table["a"] = 3  # a write straight into the dict, no attribute machinery
    assert not watched.unchanged(table)
    assert watched.unchanged({"a": 1, "b": 2, "c": 0})  # another dict holding every entry: the full check


def test_cpython_reads_a_dict_version_that_changes_on_every_write():
    """Where the fast path is on, the version it reads moves with each kind of write."""
    from gradaudit.processstate import _dict_version

    table: dict = {"a": 1}
    if _dict_version(table) is None:
        pytest.skip("this Python has no readable dict version tag (not CPython, or another layout)")
    seen = [_dict_version(table)]
    for write in (lambda: table.update(b=2), lambda: table.__setitem__("a", 5), lambda: table.pop("b"),
                  lambda: table.setdefault("c", 1), lambda: table.clear()):
        write()
        seen.append(_dict_version(table))
    assert len(set(seen)) == len(seen)


def test_a_run_starts_the_forkserver_before_the_command_line_is_imported():
    """The console script starts the workers' forkserver (and its torch import) first for a plain
    `run`, and starts nothing for --help, --no-isolate or another command."""
    code = textwrap.dedent("""
        import sys, json
        import gradaudit.forkstart as forkstart
        calls = []
        forkstart.prestart = lambda: calls.append("gradaudit.cli" in sys.modules)
        import gradaudit.launch as launch
        sys.argv = ["gradaudit", *json.loads(sys.argv[1])]
        try:
            launch.main()
        except SystemExit:
            pass
        print(json.dumps(calls))
        """)

    def prestarts(*args: str) -> list[bool]:
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(list(args))], capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    # A run: first before the CLI is imported (then once more, from the CLI, a no-op when running).
    assert prestarts("run", "no-such-config.yaml")[:1] == [False]
    assert prestarts("run", "--help") == []
    assert prestarts("run", "no-such-config.yaml", "--no-isolate") == []
    assert prestarts("validate", "no-such-config.yaml") == []


def test_only_a_run_with_workers_starts_them_early():
    from gradaudit.launch import starts_workers

    assert starts_workers(["run", "c.yaml", "-o", "out"])
    assert not starts_workers(["run"])
    assert not starts_workers(["run", "c.yaml", "-h"])
    assert not starts_workers(["report", "results.json"])
    assert not starts_workers([])


@pytest.mark.parametrize("char", [*RAW_CONTROLS, "\x7f", "\x0b", "\x08", "\x0c", "\u2029", "\u2066"])
def test_each_control_alone_is_escaped_in_the_pages_data(char):
    """The page's data skips the walk over every string only where its JSON text shows none of
    the characters safe_text changes: each one alone still sends it through."""
    from gradaudit.htmlreport import _safe_data, _safe_walk
    from gradaudit.safetext import safe_text

    data = {"results": [{"summary_line": "plain"}, {"detail": {"code": f"x = y{char}z"}}]}
    safe = _safe_data(data)
    assert safe == _safe_walk(data) and safe["results"][1]["detail"]["code"] == safe_text(f"x = y{char}z")
    assert char not in json.dumps(safe, ensure_ascii=False)


def test_plain_page_data_is_kept_as_it_is():
    from gradaudit.htmlreport import _safe_data

    data = {"results": [{"summary_line": "two\nlines\tand a tab", "path": "C:\\work"}], "n": 1.5}
    assert _safe_data(data) is data


@pytest.mark.slow
@pytest.mark.parametrize("selector", ["shared selector", "multiprocessing wait"])
def test_the_pool_sees_results_and_deaths_with_either_way_of_waiting(audit_config, monkeypatch, selector):
    """POSIX waits on one selector registered once; Windows (no selector for pipes) on
    multiprocessing's wait(). Both read every result and account for a worker that dies."""
    from gradaudit import workers

    if selector == "multiprocessing wait":
        monkeypatch.setattr(workers, "_pipe_selector", lambda: None)
    config = """
        defaults: {devices: [cpu], timeout: 60}
        cases:
          - {name: a_good, loss: "faults:good", inputs: {x: {shape: [4]}}}
          - {name: b_crash, loss: "faults:segfault", inputs: {x: {shape: [4]}}}
          - {name: c_good, loss: "faults:good", inputs: {x: {shape: [4]}}}
          - {name: d_good, loss: "faults:good", inputs: {x: {shape: [4]}}}
        """
    _, doc = audit_config(config, "--jobs", "2", exit_code=1)
    assert {n: r["status"] for n, r in by_case(doc).items()} == {
        "a_good": "pass", "b_crash": "crash", "c_good": "pass", "d_good": "pass"}


@pytest.mark.slow
def test_jobs_queued_deep_behind_a_fault_all_run_elsewhere(audit_config, monkeypatch):
    """On short jobs a worker gets several jobs ahead (and this process reads their results in
    batches). When the job it runs crashes, hangs or exits, every job waiting behind it in its
    pipe goes to a fresh worker and passes with its own verdict; none is blamed or lost."""
    from gradaudit import workers

    monkeypatch.setattr(workers, "MAX_AHEAD", 4)  # the tail (one ahead) starts at 4 jobs left
    waiting: dict[str, list[str]] = {}  # the job running when it was lost -> the jobs behind it
    real_requeue = workers.WorkerPool._requeue

    def requeue(self, w):
        if w.job is not None and w.queued:
            waiting[w.job[1].spec.name] = [item[1].spec.name for item, _, _ in w.queued]
        return real_requeue(self, w)

    monkeypatch.setattr(workers.WorkerPool, "_requeue", requeue)
    goods = "".join(f"  - {{name: good{i:02d}, loss: \"faults:good\", inputs: {{x: {{shape: [4]}}}}}}\n"
                    for i in range(8))
    faults = ["segfault", "spins_in_python", "exits"]
    cases = goods + "".join(
        f"  - {{name: {name}, loss: \"faults:{name}\", inputs: {{x: {{shape: [4]}}}}}}\n"
        + goods.replace("name: good", f"name: {name}_then_") for name in faults)
    code, doc = audit_config("defaults: {devices: [cpu], timeout: 2}\ncases:\n" + cases, "--jobs", "1",
                             exit_code=1)
    statuses = {name: r["status"] for name, r in by_case(doc).items()}
    assert len(statuses) == 8 + 3 * 9
    assert {k: v for k, v in statuses.items() if v != "pass"} == {
        "segfault": "crash", "spins_in_python": "timeout", "exits": "crash"}
    # Jobs were waiting behind the first fault (more than one: the queue was deep there), and each
    # one that waited behind any fault passed.
    assert len(waiting.get("segfault", [])) >= 2, waiting
    assert all(statuses[name] == "pass" for behind in waiting.values() for name in behind)


def _worker(queued: int, job_s: float, busy: bool = True):
    from gradaudit import workers

    w = workers._Worker(process=None, conn=None, log_path="", ready=True, starts=[0, 0], lock=threading.Lock())
    w.job = (0, None) if busy else None
    w.started = time.monotonic()
    w.queued.extend(((i, None), 100, i + 1) for i in range(queued))
    w.sent = queued
    w.job_s = job_s
    return w


def test_the_pool_waits_for_results_in_batches_only_while_every_busy_worker_has_jobs_waiting():
    from gradaudit import workers

    fed = [_worker(8, 0.001), _worker(4, 0.001)]
    wait_s = workers.WorkerPool._coalescing(fed)
    # Woken before the shortest queue runs dry (4 jobs of 1 ms: at half of it), never later than COALESCE_S.
    assert wait_s == pytest.approx(0.002)
    assert workers.WorkerPool._coalescing([_worker(16, 0.05)]) == workers.COALESCE_S
    # A busy worker with fewer than two jobs waiting: wait for the first message, as without batches.
    assert workers.WorkerPool._coalescing(fed + [_worker(1, 0.001)]) is None
    assert workers.WorkerPool._coalescing([]) is None


def test_how_many_jobs_a_worker_gets_ahead():
    from gradaudit import workers

    pool = workers.WorkerPool.__new__(workers.WorkerPool)
    pool.workers = [_worker(0, 0.001), _worker(0, 0.001)]
    w = pool.workers[0]
    w.last_s = 0.001
    pool._pending = deque(range(1000))
    # Enough for twice COALESCE_S of 1 ms jobs, capped at MAX_AHEAD.
    assert pool._ahead_wanted(w) == min(workers.MAX_AHEAD, 1 + math.ceil(2 * workers.COALESCE_S / 0.001))
    w.job_s = 0.05
    assert pool._ahead_wanted(w) == 2  # a slower job: fewer ahead
    pool._pending = deque(range(2 * workers.MAX_AHEAD))
    assert pool._ahead_wanted(w) == 1  # near the tail: one
    pool._pending = deque(range(2))
    assert pool._ahead_wanted(w) == 0  # at the tail: none
    pool._pending = deque(range(1000))
    w.last_s = workers.AHEAD_BELOW_S
    assert pool._ahead_wanted(w) == 0  # a long job: none


def test_jobs_sent_ahead_stay_within_what_a_pipe_holds():
    """Jobs waiting in a worker's pipe stay under AHEAD_BYTES: this process never blocks sending to
    a worker that is itself blocked sending a result this process is not reading yet."""
    from types import SimpleNamespace

    from gradaudit import workers
    from gradaudit.config import CaseSpec

    sent: list[bytes] = []
    w = _worker(0, 0.001)
    w.conn = SimpleNamespace(send_bytes=sent.append)
    pool = workers.WorkerPool.__new__(workers.WorkerPool)

    def job(name: str, payload: int):
        spec = CaseSpec(name=name, base_name=name, loss="m:f", inputs=[], kwargs={"pad": "x" * payload})
        return SimpleNamespace(spec=spec, device="cpu")

    small = [(i, job(f"small{i}", 100)) for i in range(3)]
    assert all(pool._send(w, item, ahead=True) for item in small)
    big = (9, job("big", workers.AHEAD_BYTES))
    assert not pool._send(w, big, ahead=True)  # would pass the budget: kept for later
    assert [item for item, _, _ in w.queued] == small and len(sent) == 3
    assert w.queued_bytes == sum(len(b) for b in sent) <= workers.AHEAD_BYTES
    alone = _worker(0, 0.001)
    alone.conn = SimpleNamespace(send_bytes=sent.append)
    assert pool._send(alone, big, ahead=True)  # the first job ahead goes whatever its size


def test_the_forkserver_exits_without_the_interpreters_teardown(tmp_path):
    """The forkserver imports `gradaudit._preload`; at its exit it flushes what it printed and
    skips the teardown (a third of a second with torch loaded, during which it would keep the
    caller's output pipe open): the exit handlers registered before it (torch's, multiprocessing's)
    do not run. A plain process shows what is skipped."""
    code = textwrap.dedent("""
        import atexit, sys
        atexit.register(lambda: open(sys.argv[2], "w").write("torn down"))
        if sys.argv[1] == "preload":
            import gradaudit._preload
        print("printed, not flushed", end="")
        """)
    for mode in ("plain", "preload"):
        marker = tmp_path / f"{mode}.txt"
        proc = subprocess.run([sys.executable, "-c", code, mode, str(marker)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "printed, not flushed"
        assert marker.exists() == (mode == "plain")


def test_the_report_template_is_compiled_while_the_workers_start(audit_config, monkeypatch):
    """A run compiles the report's template before it starts its workers (the wait for their
    `import torch` is idle time here), once, and writes the report from that compiled template."""
    from gradaudit import htmlreport, workers

    htmlreport.report_template.cache_clear()
    seen: list[int] = []
    real_start = workers.WorkerPool.start

    def start(self, n_jobs):
        seen.append(htmlreport.report_template.cache_info().currsize)
        return real_start(self, n_jobs)

    monkeypatch.setattr(workers.WorkerPool, "start", start)
    compiled: list[str] = []
    real_environment = htmlreport.environment
    monkeypatch.setattr(htmlreport, "environment", lambda: compiled.append("env") or real_environment())
    _, doc = audit_config("""
        defaults: {devices: [cpu]}
        cases:
          - {name: good, loss: "faults:good", inputs: {x: {shape: [4]}}}
        """)
    assert seen and seen[0] == 1  # compiled before the pool started
    assert compiled == ["env"]  # and only then
    assert by_case(doc)["good"]["status"] == "pass"


@pytest.mark.slow
def test_a_run_with_workers_exits_quickly_and_keeps_its_code_output_and_cleanup(tmp_path, short_tmp):
    """After a run with workers the console script skips the interpreter's teardown: its exit code,
    its last printed line and the exit handlers (multiprocessing removing its socket's folder from
    TMPDIR) are all still there. The exit is taken through `quick_exit` (seen in-process)."""
    config = tmp_path / "c.yaml"
    config.write_text(f"version: 1\nsys_path: [{LOSSES}]\ndefaults: {{devices: [cpu]}}\ncases:\n"
                      "  - {name: good, loss: \"faults:good\", inputs: {x: {shape: [4]}}}\n"
                      "  - {name: raises, loss: \"faults:raises\", inputs: {x: {shape: [4]}}}\n")
    proc = run_gradaudit("run", config, "-o", tmp_path / "out", env={"TMPDIR": str(short_tmp)})
    assert proc.returncode == 1, proc.stderr  # a failing case: exit 1, as without the quick exit
    assert proc.stdout.rstrip().splitlines()[-1].startswith("gradaudit: FAILED"), proc.stdout
    assert not [p.name for p in short_tmp.iterdir() if p.name.startswith("pymp-")]


def test_the_console_script_takes_the_quick_exit_only_after_a_run_with_workers(monkeypatch):
    from gradaudit import launch

    exits: list[int] = []
    monkeypatch.setattr(launch, "quick_exit", exits.append)

    def main_exiting(code):
        def main():
            raise SystemExit(code)
        return main

    for argv, code, quick in ((["run", "c.yaml"], 1, True), (["run", "c.yaml", "--no-isolate"], 1, False),
                              (["validate", "c.yaml"], 0, False), (["run", "--help"], 0, False)):
        monkeypatch.setattr(sys, "argv", ["gradaudit", *argv])
        monkeypatch.setattr(launch, "main", main_exiting(code))
        exits.clear()
        if quick:
            launch.console()
            assert exits == [code]
        else:
            with pytest.raises(SystemExit) as stop:
                launch.console()
            assert stop.value.code == code and exits == []
    # A thread the interpreter would wait for: the usual exit, which waits for it.
    monkeypatch.setattr(sys, "argv", ["gradaudit", "run", "c.yaml"])
    monkeypatch.setattr(launch, "main", main_exiting(0))
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        with pytest.raises(SystemExit):
            launch.console()
    finally:
        release.set()
        worker.join()
    assert exits == []


def test_no_job_goes_ahead_behind_a_long_one_and_those_waiting_are_taken_back():
    """A job sent ahead assumed the one before it would be short. Once that one has run
    AHEAD_BELOW_S, nothing more goes behind it, and the jobs waiting that the worker has not
    started go back to the front of the queue, in order: under the lock shared with the worker,
    which then skips them (`_starting`), so each runs exactly once, here or elsewhere."""
    from gradaudit import workers

    pool = workers.WorkerPool.__new__(workers.WorkerPool)
    w = _worker(5, 0.001)  # serials 1..5 waiting behind the job it runs
    w.last_s = 0.001
    pool.workers = [w, _worker(0, 0.001)]
    pool._pending = deque(range(100, 1000))
    w.started = time.monotonic() - workers.AHEAD_BELOW_S
    assert pool._ahead_wanted(w) == 0
    w.starts[0] = 2  # the worker has started serial 2 (its result not read yet)
    pool._revoke(w)
    assert [serial for _, _, serial in w.queued] == [1, 2]  # started there: its results will come
    assert list(pool._pending)[:3] == [(2, None), (3, None), (4, None)]  # serials 3..5, in order
    assert w.queued_bytes == 200 and w.starts[1] == w.revoked_to == 5
    assert not workers.WorkerPool._revocable(w)
    # The worker's side: a revoked serial is skipped, a later one starts.
    assert not workers._starting(w.starts, w.lock, 4)
    assert workers._starting(w.starts, w.lock, 6) and w.starts[0] == 6
    # Without shared memory, never more than one ahead (nothing could be taken back).
    alone = _worker(0, 0.001)
    alone.starts = alone.lock = None
    alone.last_s = 0.001
    assert pool._ahead_wanted(alone) == 1


def test_a_start_lock_never_released_does_not_stop_the_run(monkeypatch):
    """A worker killed inside `_starting` leaves its lock held for good: taking back its queue
    must give up after REVOKE_LOCK_S (taking nothing back) instead of waiting forever. Its twin:
    the same lock free, the jobs are taken back."""
    from gradaudit import workers

    monkeypatch.setattr(workers, "REVOKE_LOCK_S", 0.05)
    pool = workers.WorkerPool.__new__(workers.WorkerPool)
    held, free = _worker(3, 0.001), _worker(3, 0.001)
    pool.workers = [held, free]
    pool._pending = deque()
    assert held.lock.acquire(timeout=1)  # as a worker that died holding it left it
    start = time.monotonic()
    pool._revoke(held)
    assert time.monotonic() - start < 1.0
    assert len(held.queued) == 3 and not pool._pending
    pool._revoke(free)
    assert len(free.queued) == 0 and len(pool._pending) == 3


@pytest.mark.slow
def test_jobs_waiting_behind_a_long_job_run_once_elsewhere(audit_config, monkeypatch):
    """Short jobs, then long ones, then short ones, on two workers: jobs queued deep behind the
    first long job are taken back and run by the other worker; every job has exactly one result."""
    from gradaudit import workers

    monkeypatch.setattr(workers, "MAX_AHEAD", 4)
    monkeypatch.setattr(workers, "AHEAD_BELOW_S", 0.1)
    taken_back: list[int] = []
    real_revoke = workers.WorkerPool._revoke

    def revoke(self, w):
        before = len(self._pending)
        real_revoke(self, w)
        taken_back.append(len(self._pending) - before)

    yielded: dict[int, int] = {}
    real_results = workers.WorkerPool.results

    def results(self, jobs):
        for index, result in real_results(self, jobs):
            yielded[index] = yielded.get(index, 0) + 1
            yield index, result

    monkeypatch.setattr(workers.WorkerPool, "_revoke", revoke)
    monkeypatch.setattr(workers.WorkerPool, "results", results)

    def cases(prefix: str, loss: str, n: int) -> str:
        return "".join(f"  - {{name: {prefix}{i:02d}, loss: \"faults:{loss}\", inputs: {{x: {{shape: [4]}}}}}}\n"
                       for i in range(n))

    config = ("defaults: {devices: [cpu], timeout: 60}\ncases:\n" + cases("a_fast", "good", 16)
              + cases("b_slow", "slow_good", 6) + cases("c_fast", "good", 16))
    _, doc = audit_config(config, "--jobs", "2")
    statuses = {name: r["status"] for name, r in by_case(doc).items()}
    assert len(statuses) == 38 and set(statuses.values()) == {"pass"}
    assert sorted(yielded) == list(range(38)) and set(yielded.values()) == {1}
    assert sum(taken_back) >= 1, taken_back  # jobs queued behind a slow one were taken back


def test_a_worker_found_dead_after_a_result_is_blamed_on_the_job_it_had_started():
    """A worker reports job A done, starts the job sent ahead behind it, and dies. Read after its
    death, A's result must not send that job back to the queue as never run: its shared serial
    says it started, so it stays the worker's job (its death is reported on it); the jobs behind
    it, never started, go back. Without that serial nothing is known to have started."""
    from types import SimpleNamespace

    from gradaudit import workers

    pool = workers.WorkerPool.__new__(workers.WorkerPool)
    job = SimpleNamespace(spec=SimpleNamespace(timeout=60.0))
    for started, running, pending in ((1, 0, [1, 2]), (0, None, [0, 1, 2])):
        w = _worker(0, 0.001)
        w.queued.extend(((i, job), 100, i + 1) for i in range(3))  # serials 1..3 waiting behind job A
        w.sent = 3
        w.readiness = SimpleNamespace(exited=lambda process: True)
        w.starts[0] = started
        pool._pending = deque()
        pool._next_job(w, time.monotonic())
        pool._requeue(w)  # as reaping the dead worker does next
        assert (w.job[0] if w.job else None) == running and [i for i, _ in pool._pending] == pending
