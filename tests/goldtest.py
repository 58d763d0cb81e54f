"""Golden files: compare reporter output, scrubbed of times, versions and paths, with tests/goldens/.

Update them all after an intended change with one command:

    GRADAUDIT_UPDATE_GOLDENS=1 python -m pytest -q tests/test_goldens.py
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

import pytest

GOLDENS = Path(__file__).resolve().parent / "goldens"
UPDATE_COMMAND = "GRADAUDIT_UPDATE_GOLDENS=1 python -m pytest -q tests/test_goldens.py"


def scrub(text: str, scrubs: list[tuple[str, str]]) -> str:
    """Replace each regex of `scrubs` by its replacement, in order."""
    for pattern, replacement in scrubs:
        text = re.sub(pattern, replacement, text)
    return text


def compare(actual: str, name: str, scrubs: list[tuple[str, str]] = ()) -> None:
    """Assert that `actual`, scrubbed, equals the golden file `name`; write it instead when updating."""
    actual = scrub(actual, list(scrubs))
    path = GOLDENS / name
    if os.environ.get("GRADAUDIT_UPDATE_GOLDENS") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    if not path.exists():
        pytest.fail(f"golden file {path} is missing; write it with: {UPDATE_COMMAND}")
    expected = path.read_text(encoding="utf-8")
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                            f"goldens/{name}", "actual", n=2))
        pytest.fail(f"{name} differs from its golden file:\n{diff[:6000]}\n"
                    f"If the change is intended, update the goldens with: {UPDATE_COMMAND}", pytrace=False)
