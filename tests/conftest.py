"""Shared fixtures: the CLI through typer's runner, the CLI as a real process, and loss configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
LOSSES = Path(__file__).resolve().parent / "losses"


def _written_results(args: list[str], cwd: Path | None) -> list[Path]:
    """The results.json files a `run` or `report` command line writes (-o DIR, --json PATH)."""
    args = [str(a) for a in args]
    if not args or args[0] not in ("run", "report"):
        return []
    base = Path(cwd) if cwd is not None else Path.cwd()
    paths = []
    for flag, value in zip(args, args[1:], strict=False):
        if flag in ("-o", "--output"):
            paths.append(base / value / "results.json")
        elif flag == "--json":
            paths.append(base / value)
    return [p for p in paths if p.is_file()]


@pytest.fixture
def cli_invoke():
    """Run the CLI in-process; print its output when the exit code is not what the test expects.

    Every results.json the command wrote is checked against the published schema.
    """
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
        for path in _written_results(args, None):
            check_contract(path)
        return result

    return invoke


def run_gradaudit(*args, cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
    """Run `python -m gradaudit` as a real process of this checkout's code; check the results it wrote."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "gradaudit", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    for path in _written_results(list(args), cwd):
        check_contract(path)
    return proc


def check_contract(path: Path) -> None:
    """Assert that a results.json is valid against the published schema (gradaudit/results.schema.json)."""
    from gradaudit.resultschema import load_results, validate_results

    problems = validate_results(load_results(Path(path).read_bytes()))
    assert not problems, f"{path} does not follow gradaudit/results.schema.json:\n" + "\n".join(problems)


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
