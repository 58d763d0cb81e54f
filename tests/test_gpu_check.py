"""scripts/gpu_check.sh, as far as a CPU machine can run it: every step runs, cuda parts skip."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # whole runs: CI runs them, `-m "not slow"` (the fast lane) does not

SCRIPT = REPO / "scripts" / "gpu_check.sh"


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="needs bash and coreutils' timeout")
def test_gpu_check_runs_every_step_and_writes_a_few_flat_files(tmp_path):
    import torch

    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "GPU_CHECK_INSTALL": "0",
           "GPU_CHECK_SAMPLES": "seed_examples not_a_sample"}
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 0, proc.stdout + proc.stderr + summary
    files = sorted(p.name for p in out.iterdir())
    assert files == ["pytest.log", "reports.tar.gz", "runs.log", "seed_examples.json", "summary.txt"]
    assert all(p.is_file() for p in out.iterdir()) and len(files) <= 8
    assert "missing sample_configs/not_a_sample.yaml: skipped" in summary
    assert "run seed_examples            exit 0" in summary
    assert f"torch {torch.__version__}" in summary
    doc = json.loads((out / "seed_examples.json").read_text())
    devices = {r["device"] for r in doc["results"]}
    assert devices == {"cpu", "cuda"}
    if not torch.cuda.is_available():
        assert "torch sees no CUDA device" in summary and "no case ran on cuda" in summary
        assert all(r["status"] == "skip" for r in doc["results"] if r["device"] == "cuda")
        assert "skipped" in (out / "pytest.log").read_text()


def test_gpu_check_reports_a_broken_step(tmp_path):
    """A step that cannot run (here: a python without gradaudit's dependencies) fails the script."""
    out = tmp_path / "out"
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\nexit 3\n")
    fake_python.chmod(0o755)
    env = {**os.environ, "OUT": str(out), "PYTHON": str(fake_python), "GPU_CHECK_INSTALL": "0",
           "GPU_CHECK_SAMPLES": "seed_examples"}
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 1
    assert "run seed_examples            exit 3" in summary and "BROKEN" in summary
    assert "SOME STEP BROKE" in summary


def test_a_failing_install_is_not_fatal(tmp_path):
    """Where pip cannot install the checkout, PYTHONPATH runs it: the script goes on and passes."""
    out = tmp_path / "out"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"
    # A python whose `-m pip` fails and that runs everything else with the real interpreter.
    python.write_text(f'#!/bin/sh\nif [ "$1" = "-m" ] && [ "$2" = "pip" ]; then exit 1; fi\n'
                      f'exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    env = {**os.environ, "OUT": str(out), "PYTHON": str(python), "GPU_CHECK_SAMPLES": "none"}
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 0, summary
    assert "install                      exit 1" in summary and "failed, using PYTHONPATH" in summary
    assert "every step ran" in summary
