"""results.json: write a RunResults as CONTRACT section 3, and read it back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO

from gradaudit.errors import ResultsError
from gradaudit.model import SCHEMA, RunResults


def write_json(results: RunResults, stream: IO[str]) -> None:
    """Write results as indented JSON."""
    json.dump(results.to_dict(), stream, indent=2, allow_nan=False, default=_jsonable)
    stream.write("\n")


def _jsonable(value):
    if isinstance(value, float):
        return None
    return str(value)


def read_json(path: str | Path) -> RunResults:
    """Read a results.json; raise ResultsError naming the file when it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ResultsError(f"{path}: not a gradaudit results file (schema {SCHEMA!r} expected)")
    try:
        return RunResults.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultsError(f"{path}: malformed results: {exc}") from None
