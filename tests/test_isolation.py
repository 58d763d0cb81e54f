"""Worker processes: a crash, a hang or a runaway allocation costs one case; interrupts keep the rest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from tests.conftest import LOSSES, REPO, by_case, check_contract, finding_ids

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
def test_an_interrupt_writes_the_finished_cases_and_exits_130(tmp_path, signum):
    lines = ["version: 1", f"sys_path: [{LOSSES}]", "defaults: {devices: [cpu]}", "cases:"]
    lines += [f"  - {{name: slow{i:02}, loss: 'faults:slow_good', inputs: {{x: {{shape: [4]}}}}}}"
              for i in range(40)]
    config = tmp_path / "slow.yaml"
    config.write_text("\n".join(lines) + "\n")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
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
