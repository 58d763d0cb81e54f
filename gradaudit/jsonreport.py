"""results.json: write a RunResults as CONTRACT section 3, and read it back."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import IO

from gradaudit.errors import ResultsError
from gradaudit.model import SCHEMA, CaseResult, RunResults

MAX_PROBLEMS = 15  # problems listed for one file: one screen
SCHEMA_FILE = "results.schema.json"


# The JSON line of each result already written, by id, beside the result (which keeps its id
# its own): a run that rewrites results.json before each job (in-process) encodes each result once.
Lines = dict[int, tuple[CaseResult, str]]


def write_json(results: RunResults, stream: IO[str], lines: Lines | None = None) -> None:
    """Write results as JSON: the run's keys indented, each result on a line of its own.

    One line a result keeps a file of thousands of results readable (and diffable by case) while
    the results go through json's C encoder; `indent` would send every value through its pure
    Python one, about five times slower. With `lines`, a result seen before (the same object, not
    changed since: the checkpoints of one run) is not encoded again.
    """
    if lines is None:
        data = results.to_dict()
        texts = [_encode(row) for row in data.pop("results")]
    else:
        data = results.to_dict(with_results=False)
        texts = [_line(r, lines) for r in results.results]
    head = ",\n".join(f"  {json.dumps(key)}: {_encode(value, indent=2).replace(chr(10), chr(10) + '  ')}"
                       for key, value in data.items())
    stream.write("{\n" + head + ',\n  "results": [')
    if texts:
        stream.write("\n    " + ",\n    ".join(texts) + "\n  ]\n}\n")
    else:
        stream.write("]\n}\n")


def _line(result: CaseResult, lines: Lines) -> str:
    entry = lines.get(id(result))
    if entry is not None and entry[0] is result:
        return entry[1]
    text = _encode(result.to_dict())
    lines[id(result)] = (result, text)
    return text


class JsonCheckpoint:
    """results.json as it would stand if the next job crashed this process, rewritten before each
    job of an in-process run: each result is encoded once (a rewrite then costs a join and a write,
    not an encoding of every result so far), and without an fsync (see files.write_atomic)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.lines: dict = {}

    def __call__(self, results) -> None:
        from gradaudit.files import write_atomic

        for path in self.paths:
            write_atomic(path, lambda s: write_json(results, s, self.lines), durable=False)


def _encode(value, indent: int | None = None) -> str:
    """JSON text of a value, NaN and Inf as strings (finite_json) only where there are any."""
    try:
        return json.dumps(value, indent=indent, allow_nan=False, default=str)
    except ValueError:  # a NaN or Inf somewhere in it
        return json.dumps(finite_json(value), indent=indent, allow_nan=False, default=str)


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


def read_merged(paths: list[str | Path], warn: Callable[[str], None] | None = None) -> RunResults:
    """Read several results files (shards of one run) into one run.

    A case on a device twice, or files from different configs, are errors; files written by
    different gradaudit versions are merged with a warning through `warn`.
    """
    merged: RunResults | None = None
    seen: dict[tuple[str, str], str] = {}
    first: tuple[str | Path, RunResults] | None = None
    for path in paths:
        part = read_json(path)
        if first is None:
            first = (path, part)
        else:
            _same_run(first, (path, part), warn)
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


def _same_run(first: tuple[str | Path, RunResults], other: tuple[str | Path, RunResults],
              warn: Callable[[str], None] | None) -> None:
    """Refuse shards of different configs; warn about shards of different gradaudit versions."""
    (path_a, a), (path_b, b) = first, other
    sha_a, sha_b = (a.config or {}).get("sha256"), (b.config or {}).get("sha256")
    if sha_a and sha_b and sha_a != sha_b:
        raise ResultsError(f"{path_b}: comes from config {(b.config or {}).get('path')!r} (sha256 {sha_b[:12]}), "
                           f"but {path_a} from {(a.config or {}).get('path')!r} (sha256 {sha_a[:12]}): "
                           "merge the shards of one run of one config")
    if warn is not None and a.gradaudit_version and b.gradaudit_version \
            and a.gradaudit_version != b.gradaudit_version:
        warn(f"{path_b} was written by gradaudit {b.gradaudit_version}, {path_a} by {a.gradaudit_version}: "
             "verdicts may differ between versions")
