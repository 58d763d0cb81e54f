"""results.json: write a RunResults as CONTRACT section 3, and read it back."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import IO

from gradaudit.errors import ResultsError
from gradaudit.model import SCHEMA, RunResults

MAX_PROBLEMS = 15  # problems listed for one file: one screen
SCHEMA_FILE = "results.schema.json"


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
    """Read a results.json; raise ResultsError naming the file and every problem when it is not one.

    The file is checked against the published schema first (gradaudit.resultschema), so a
    malformed file reads as a short list of problems, never as a traceback from a reporter.
    """
    from gradaudit.resultschema import load_results, validate_results

    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = load_results(raw)
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    except ValueError as exc:
        raise ResultsError(f"{path}: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ResultsError(f"{path}: not a gradaudit results file (schema {SCHEMA!r} expected)")
    problems = validate_results(data)
    if problems:
        shown = "\n".join(f"  {path}: {p}" for p in problems[:MAX_PROBLEMS])
        more = f"\n  ... and {len(problems) - MAX_PROBLEMS} more" if len(problems) > MAX_PROBLEMS else ""
        raise ResultsError(f"{path}: not a valid results file (schema {SCHEMA}, "
                           f"gradaudit/{SCHEMA_FILE}):\n{shown}{more}")
    return RunResults.from_dict(data)


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
