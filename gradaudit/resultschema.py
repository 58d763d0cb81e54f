"""The published JSON Schema of results.json (`gradaudit/results.schema.json`) and checks against it.

Consumers (CI tools, dashboards) validate with any JSON Schema library; gradaudit validates every
results file it reads back (`gradaudit report`, `--baseline`) so bad input reads as one short list
of problems, not a traceback. The finding-ID enum is generated from gradaudit.findings:
`python -m gradaudit.resultschema` rewrites it. No torch here.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from gradaudit.findings import FINDINGS

SCHEMA_ID = "gradaudit.results/1"
SCHEMA_FILE = "results.schema.json"
STATUSES = ("pass", "warn", "fail", "error", "skip", "timeout", "crash")
# The finding_id enum's line in the schema file, rewritten from FINDINGS.
_ENUM_LINE = re.compile(r'(?P<head>"finding_id": \{\n(?:.*\n)*?\s*"enum": )\[[^\]]*\]')


def schema_text() -> str:
    return resources.files("gradaudit").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The JSON Schema of results.json, as a dict."""
    return json.loads(schema_text())


@lru_cache(maxsize=1)
def _validator():
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema())


def _where(path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _short(value: Any) -> str:
    """A value as a problem line shows it: never a 400-digit number or a whole object."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        digits = len(str(abs(value)))
        return str(value) if digits <= 20 else f"an integer of {digits} digits"
    if isinstance(value, float):
        return repr(value) if value == value and abs(value) != float("inf") else f"{value} (not finite)"
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 40 else value[:37] + "...")
    return _json_type(value)


_TYPE_WORDS = {"null": "null", "boolean": "a boolean", "integer": "an integer", "number": "a number",
               "string": "a string", "array": "an array", "object": "an object"}


def _expected_types(types) -> str:
    types = [types] if isinstance(types, str) else list(types)
    return " or ".join(_TYPE_WORDS.get(t, t) for t in types)


def _suggest(word: Any, choices) -> str:
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _alternative(error) -> str:
    """What one failed branch of a oneOf/anyOf wanted, in words."""
    if error.validator == "type":
        return _expected_types(error.validator_value)
    if error.validator == "enum":
        return "one of " + ", ".join(json.dumps(c) for c in error.validator_value)
    if error.validator == "const":
        return json.dumps(error.validator_value)
    return "something else"


def _messages(error) -> list[str]:
    """Plain lines for one jsonschema error (several where it stands for a branch's errors)."""
    if error.validator in ("oneOf", "anyOf") and error.context:
        # Report the branch the value was meant to take, not "is not valid under any of the schemas".
        depth = len(error.absolute_path)
        inner = [e for e in error.context if len(e.absolute_path) > depth or e.validator == "required"]
        if inner:
            branch = max(inner, key=lambda e: len(e.absolute_path)).relative_schema_path[0]
            return [m for e in error.context if e.relative_schema_path[0] == branch for m in _messages(e)]
        # The value had a branch's type but broke its bounds (a float past the largest one, say).
        bounded = [e for e in error.context if e.validator not in ("type", "enum", "const")]
        if bounded:
            return _messages(bounded[0])
        where = _where(error.absolute_path)
        wanted = " or ".join(dict.fromkeys(_alternative(e) for e in error.context))
        shown = "is null" if error.instance is None else f"{_short(error.instance)} is {_json_type(error.instance)}"
        return [f"{where}: {shown}, expected {wanted}"]
    return [_message(error)]


def _message(error) -> str:
    """One plain line for a jsonschema error."""
    where, value, kind = _where(error.absolute_path), error.instance, error.validator
    if kind == "required":
        missing = [k for k in error.validator_value if isinstance(value, dict) and k not in value]
        return f"{where}: missing key{'s' if len(missing) > 1 else ''} " + ", ".join(f"'{k}'" for k in missing)
    if kind == "type":
        shown = "is null" if value is None else f"{_short(value)} is {_json_type(value)}"
        return f"{where}: {shown}, expected {_expected_types(error.validator_value)}"
    if kind == "const":
        return f"{where}: {_short(value)}, expected {json.dumps(error.validator_value)}"
    if kind == "enum":
        choices = [c for c in error.validator_value if c is not None]
        if len(choices) > 8:
            return f"{where}: {_short(value)} is not one of the {len(choices)} known values{_suggest(value, choices)}"
        return (f"{where}: {_short(value)} is not one of {', '.join(map(str, choices))}"
                f"{_suggest(value, choices)}")
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        bound = error.validator_value
        bound_text = f"{bound:g}" if isinstance(bound, float) else _short(bound)
        return f"{where}: {_short(value)} is {'below' if 'inimum' in kind else 'above'} the {kind} {bound_text}"
    if kind == "pattern" and where.endswith("device"):
        return f"{where}: {_short(value)} is not a device name (cpu, cuda, cuda:N or mps)"
    if kind == "minLength":
        return f"{where}: is empty"
    text = error.message
    return f"{where}: {text if len(text) <= 120 else text[:117] + '...'}"


def validate_results(data: Any) -> list[str]:
    """Every problem of a results.json document (parsed JSON), one line each; [] when it is valid.

    The schema, then what a schema cannot say: the summary counts match the results.
    """
    errors = sorted(_validator().iter_errors(data), key=lambda e: [f"{p:012d}" if isinstance(p, int) else p
                                                                   for p in e.absolute_path])
    problems = list(dict.fromkeys(m for e in errors for m in _messages(e)))
    if problems or not isinstance(data, dict):
        return problems
    results = data["results"]
    summary = data["summary"]
    if summary["total"] != len(results):
        problems.append(f"summary.total: {summary['total']}, but there are {len(results)} results")
    for status in STATUSES:
        n = sum(1 for r in results if r["status"] == status)
        if summary[status] != n:
            problems.append(f"summary.{status}: {summary[status]}, but {n} results have status {status}")
    return problems


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (write NaN and Inf as the strings \"nan\" and \"inf\")")


def load_results(text: bytes | str) -> Any:
    """Parse results.json text strictly: UTF-8, standard JSON (no NaN/Infinity literals).

    Raise ValueError with a one-line reason (json.JSONDecodeError, with its line and column, for
    malformed JSON)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8 text: byte 0x{text[exc.start]:02x} at offset {exc.start} "
                             "(a results.json is UTF-8 JSON)") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # NaN literals, and integers past Python's digit limit
        digits = re.search(r"value has (\d+) digits", str(exc))
        reason = f"an integer of {digits[1]} digits" if digits else str(exc).splitlines()[0]
        raise ValueError(f"not valid JSON: {reason}") from None
    except RecursionError:
        raise ValueError("not valid JSON: nested too deeply") from None


def finding_ids_in_file() -> list[str]:
    return list(schema()["$defs"]["finding_id"]["enum"])


def updated_schema_text(text: str) -> str:
    """The schema file's text with its finding-ID enum generated from gradaudit.findings."""
    ids = json.dumps(list(FINDINGS))
    new, n = _ENUM_LINE.subn(lambda m: m["head"] + ids, text, count=1)
    if n != 1:
        raise ValueError("the finding_id enum is missing from results.schema.json")
    return new


def main() -> None:
    path = Path(__file__).resolve().parent / SCHEMA_FILE
    text = path.read_text(encoding="utf-8")
    path.write_text(updated_schema_text(text), encoding="utf-8")
    print(f"updated {path}")


if __name__ == "__main__":
    main()
