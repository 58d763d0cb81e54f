"""Shared fixtures: the CLI through typer's runner, the CLI as a real process, and loss configs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
# ../shared sits beside the checkout (in CI too); from a git worktree, look further up.
SHARED = next((p / "shared" for p in REPO.parents if (p / "shared" / "tools").is_dir()),
              REPO.parent / "shared")
CHECK_RESULTS = SHARED / "tools" / "check_results.py"
LOSSES = Path(__file__).resolve().parent / "losses"


@pytest.fixture
def cli_invoke():
    """Run the CLI in-process; print its output when the exit code is not what the test expects."""
    from gradaudit.cli import app

    def invoke(args: list[str], expect_ok: bool | None = True, exit_code: int | None = None):
        result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
        wanted = exit_code if exit_code is not None else (0 if expect_ok else None)
        if wanted is not None and result.exit_code != wanted:
            print(result.output)
            raise AssertionError(f"gradaudit {' '.join(map(str, args))} exited {result.exit_code}, "
                                 f"expected {wanted}")
        if expect_ok is False and exit_code is None and result.exit_code == 0:
            print(result.output)
            raise AssertionError(f"gradaudit {' '.join(map(str, args))} succeeded, expected failure")
        return result

    return invoke


def run_gradaudit(*args, cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
    """Run `python -m gradaudit` as a real process of this checkout's code."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "gradaudit", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def check_contract(path: Path) -> None:
    """Assert that a results.json passes the contract checker shipped in ../shared."""
    if not CHECK_RESULTS.exists():
        pytest.fail(f"the contract checker {CHECK_RESULTS} is missing")
    from gradaudit.findings import FINDINGS

    proc = subprocess.run([sys.executable, str(CHECK_RESULTS), str(path)], capture_output=True, text=True)
    # The contract allows additions: finding IDs that gradaudit.findings adds are no problem.
    ids = "|".join(map(re.escape, FINDINGS))
    added = re.compile(rf"finding id '({ids})' is not in the contract")
    problems = [line for line in proc.stdout.splitlines() if line.strip() and not added.search(line)
                and not re.fullmatch(r"\d+ problem\(s\)", line.strip())]
    assert proc.returncode == 0 or not problems, f"check_results.py rejected {path}:\n{proc.stdout}{proc.stderr}"


@pytest.fixture
def write_config(tmp_path):
    """Write a config (YAML text, dedented) next to a copy of tests/losses, and return its path."""

    def write(text: str, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


@pytest.fixture
def audit_config(write_config, tmp_path, cli_invoke):
    """Run a config through the CLI on CPU and return (exit code, results.json as a dict)."""

    def run(text: str, *extra: str, exit_code: int | None = None):
        path = write_config(f"version: 1\nsys_path: [{LOSSES}]\n" + textwrap.dedent(text))
        out = tmp_path / "report"
        result = cli_invoke(["run", path, "-o", out, "--device", "cpu", *extra], expect_ok=None,
                            exit_code=exit_code)
        results = out / "results.json"
        assert results.exists(), result.output
        check_contract(results)
        return result.exit_code, json.loads(results.read_text())

    return run


def by_case(doc: dict, device: str = "cpu") -> dict[str, dict]:
    """Index a results.json's results by case name, for one device."""
    return {r["case"]: r for r in doc["results"] if r["device"] == device}


def finding_ids(result: dict) -> list[str]:
    return [f["id"] for f in result["findings"]]


@pytest.fixture(autouse=True)
def _fresh_device_layer():
    """Forget the device layer after each test: a context poisoned in-process must not leak."""
    yield
    devices = sys.modules.get("gradaudit.devices")  # never import torch just for this
    if devices is not None:
        devices._LAYER = None


def pytest_collection_modifyitems(config, items):
    """Skip the tests marked `cuda` where torch sees no CUDA device (say so in the skip reason)."""
    cuda_items = [item for item in items if item.get_closest_marker("cuda")]
    if not cuda_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is false)")
    for item in cuda_items:
        item.add_marker(skip)
