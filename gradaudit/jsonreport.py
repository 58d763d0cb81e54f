"""results.json: write a RunResults as CONTRACT section 3, and read it back."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import IO

from gradaudit.errors import ResultsError
from gradaudit.model import SCHEMA, RunResults


def write_json(results: RunResults, stream: IO[str]) -> None:
    """Write results as indented JSON."""
    json.dump(finite_json(results.to_dict()), stream, indent=2, allow_nan=False, default=str)
    stream.write("\n")


def finite_json(value):
    """Replace NaN and Inf, which JSON cannot hold, by the strings "nan", "inf" and "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


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


def read_merged(paths: list[str | Path]) -> RunResults:
    """Read several results files (shards of one run) into one run; a case on a device twice is an error."""
    merged: RunResults | None = None
    seen: dict[tuple[str, str], str] = {}
    for path in paths:
        part = read_json(path)
        for result in part.results:
            if result.key in seen:
                raise ResultsError(f"{path}: {result.case} [{result.device}] is also in {seen[result.key]}; "
                                   "merge shards of one run, not runs of the same cases")
            seen[result.key] = str(path)
        merged = part if merged is None else merged + part
    if merged is None:
        raise ResultsError("no results files given")
    merged.sort()
    return merged
