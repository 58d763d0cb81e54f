"""index.html: one self-contained report of a run, rendered with Jinja2 from templates/.

Everything shown is computed here as plain display data; the templates only lay it out. The
page has no network dependency: CSS and JS are inlined, pictures are inline SVG.

The page stays light at any size: the header and the problems (grouped by cause) are HTML; the
table of every result and each result's details are data embedded in the page (one JSON block)
that report.js lays out as they are scrolled to or opened. A nightly of 10,000 results holds a
few thousand DOM nodes at load, not a few hundred thousand.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import jinja2
from markupsafe import Markup, escape

from gradaudit import causes as causes_mod
from gradaudit.baseline import FIXED
from gradaudit.baseline import LABELS as BASELINE_LABELS
from gradaudit.baseline import describe as describe_baseline
from gradaudit.model import (
    BAD_STATUSES,
    STATUS_RANK,
    STATUSES,
    CaseResult,
    Finding,
    InputResult,
    Location,
    RunResults,
)
from gradaudit.safetext import safe_text
from gradaudit.tracebacks import segments

TEMPLATE = "report.html.j2"
# Symbols beside every status word, so status never rests on colour alone.
STATUS_ICON = {"pass": "✓", "warn": "▲", "fail": "✗", "error": "⚠", "skip": "–", "timeout": "◷",
               "crash": "✶", "expected": "✗"}
GRAD_ICON = {"ok": "✓", "none": "✗", "zero": "✗", "partial": "◐", "nonfinite": "⚠", "not-required": "–",
             "not measured": "–"}
GRAD_CLASS = {"ok": "pass", "none": "fail", "zero": "fail", "partial": "fail", "nonfinite": "fail",
              "not-required": "skip", "not measured": "skip"}
# The filter keys of the status chips: a known-bad fixture that fails as expected has its own.
FILTERS = (*STATUSES, "expected")
PROBLEMS = sorted(BAD_STATUSES | {"warn"})
# The baseline chips: new failures (as `--fail-on new` counts them), then the marks as they are.
BASELINE_FILTERS = {"new": ("new failure", "new failures"), "still-failing": ("still failing", "still failing"),
                    "fixed": ("fixed", "fixed"), "new-case": ("new case", "new cases")}
# How many cases of a cause its card names before "and N more" (a button shows them all).
CAUSE_CASES = 8
MAP_PIXELS = 240
MAP_CELLS = 64  # the audit folds maps to at most this many cells a side


def template_dir() -> Path:
    """Where the templates are: inside the installed package (a wheel), or the checkout's templates/."""
    here = Path(__file__).resolve().parent
    for folder in (here / "templates", here.parent / "templates"):
        if (folder / TEMPLATE).is_file():
            return folder
    raise FileNotFoundError(f"gradaudit's report templates are missing (looked in {here / 'templates'} "
                            f"and {here.parent / 'templates'}); reinstall gradaudit")


def wrap_at_underscores(text: str) -> Markup:
    """Escaped text with a line-break opportunity after each `_`, so long names wrap on phones."""
    return Markup("_<wbr>").join(escape(part) for part in safe_text(text).split("_"))


def environment() -> jinja2.Environment:
    """The Jinja2 environment; autoescape is on for every template, whatever its suffix."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir())), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True, finalize=_printable)
    # `tojson` escapes <, >, & and ' as \u003c..., so no string can close the data's <script>.
    env.policies["json.dumps_kwargs"] = {"sort_keys": False, "separators": (",", ":"), "ensure_ascii": False}
    env.filters["wbr"] = wrap_at_underscores
    return env


@functools.lru_cache(maxsize=1)
def report_template() -> jinja2.Template:
    """The report's template, compiled once a process (a fifth of writing a 1,000-result page)."""
    return environment().get_template(TEMPLATE)


def prepare() -> None:
    """Compile the template now, while this process waits anyway (for its workers' `import torch`),
    rather than after the run, when the report is all that is left to do."""
    report_template()


def _printable(value: object) -> object:
    """Every value a template prints, with control characters shown as escapes (our own markup,
    such as inlined assets and `|tojson` data, is left as it is: the data is made safe where it
    is built, in `build_view`)."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return safe_text(value)
    return value


# -- display data ------------------------------------------------------------------------------


@dataclass
class Badge:
    """A status word with its icon and CSS class."""

    status: str
    label: str
    icon: str

    @classmethod
    def of(cls, status: str, expected: bool = False) -> Badge:
        if expected:
            return cls("expected", f"{status} (expected)", STATUS_ICON["expected"])
        return cls(status, status, STATUS_ICON.get(status, "?"))


@dataclass
class SourceLine:
    number: int
    text: str
    culprit: bool


def message_parts(message: str) -> list[tuple[str, bool]]:
    """Split a message at `backticks` into text and code pieces (a last, unpaired backtick stays text)."""
    pieces = message.split("`")
    if len(pieces) % 2 == 0:
        pieces[-2:] = ["`".join(pieces[-2:])]
    return [(piece, i % 2 == 1) for i, piece in enumerate(pieces) if piece]


def rich(message: str) -> list[str]:
    """A message as the page's data holds it: pieces alternating text, code, text, ..."""
    out: list[str] = []
    for piece, is_code in message_parts(message):
        if is_code != (len(out) % 2 == 1):
            out.append("")
        out.append(piece)
    return out


def _fmt_number(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):  # "nan" / "inf" as results.json stores them
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.3g}"
    return f"{value:.4g}"


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"


def readable_time(stamp: str) -> str:
    """`2026-11-25T03:00:12+00:00` as `25 Nov 2026, 03:00 UTC`; what does not parse stays as it is."""
    try:
        when = datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        return stamp
    text = f"{when.day} {when:%b %Y, %H:%M}"
    offset = when.utcoffset()
    if offset is None:
        return text
    if not offset:
        return text + " UTC"
    zone = when.strftime("%z")  # +0200
    return f"{text} (UTC{zone[:3]}:{zone[3:5]})"


def _anchor(text: str, taken: set[str], prefix: str = "r-") -> str:
    base = prefix + (re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x")
    anchor, n = base, 1
    while anchor in taken:
        n += 1
        anchor = f"{base}-{n}"
    taken.add(anchor)
    return anchor


def source_lines(loc: Location) -> list[SourceLine]:
    """The lines around a location, the culprit marked; just the culprit where no context was kept."""
    if loc.context and loc.context_start:
        return [SourceLine(loc.context_start + i, text.rstrip(), loc.context_start + i == loc.line)
                for i, text in enumerate(loc.context)]
    if loc.code:
        return [SourceLine(loc.line, loc.code, True)]
    return []


def _frame_text(frame) -> str:
    text = frame.where + (f" in {frame.function}" if frame.function else "")
    return text + (f": {frame.code}" if frame.code else "")


def finding_data(finding: Finding, shown: set[str]) -> dict[str, Any]:
    """A finding for display; a line an earlier finding of the result showed is not repeated."""
    data: dict[str, Any] = {"id": finding.id, "sev": finding.severity, "msg": rich(finding.message)}
    if finding.input:
        data["input"] = finding.input
    loc = finding.location
    if loc is None:
        return data
    data["where"] = loc.where + (f" in {loc.function}" if loc.function else "")
    if finding.second is not None:  # shown under the location: "saved for backward at file:line: code"
        data["second"] = f"{finding.second.label or 'see also'} {_frame_text(finding.second)}"
    if loc.where in shown:
        data["same"] = 1
        return data
    shown.add(loc.where)
    data["src"] = [[line.number, line.text, int(line.culprit)] for line in source_lines(loc)]
    if loc.chain:
        data["chain"] = [_frame_text(f) for f in loc.chain]
    return data


def _cell_class(value: Any) -> str | None:
    if value is None:
        return "partial"
    if value <= 0:
        return "dead"
    if value >= 1:
        return None
    return "partial"


@dataclass
class GradMap:
    """An inline SVG map of which elements ever got a gradient, as path data report.js draws."""

    cols: int
    rows: int
    width: int
    height: int
    dead: str
    partial: str
    grid: str
    caption: str

    def to_data(self) -> dict[str, Any]:
        return {"cols": self.cols, "rows": self.rows, "w": self.width, "h": self.height, "dead": self.dead,
                "partial": self.partial, "grid": self.grid, "caption": self.caption}


def grad_map(cells: list[list[Any]], caption: str) -> GradMap | None:
    """Lay out a folded map: light = got a gradient, hatched dark = never, dotted = part of the cell.

    Each run of equal cells in a row is one stroke of width 1 through the row's middle, in relative
    moves, which keeps even a scattered 64x64 map to a few kilobytes.
    """
    rows = len(cells)
    cols = max((len(r) for r in cells), default=0)
    if not rows or not cols:
        return None
    cell = max(3, min(24, MAP_PIXELS // max(rows, cols)))
    paths: dict[str, list[str]] = {"dead": [], "partial": []}
    for y, row in enumerate(cells):
        pen: dict[str, int | None] = {"dead": None, "partial": None}
        x = 0
        while x < len(row):
            kind = _cell_class(row[x])
            end = x + 1
            while end < len(row) and _cell_class(row[end]) == kind:
                end += 1
            if kind is not None:
                at = pen[kind]
                paths[kind].append(f"M{x} {y}.5h{end - x}" if at is None else f"m{x - at} 0h{end - x}")
                pen[kind] = end
            x = end
    grid = ""
    if max(rows, cols) <= 16:
        grid = "".join(f"M0 {y}H{cols}" for y in range(1, rows)) + "".join(f"M{x} 0V{rows}" for x in range(1, cols))
    return GradMap(cols, rows, cols * cell, rows * cell, "".join(paths["dead"]), "".join(paths["partial"]),
                   grid, caption)


def as_2d(shape: list[int]) -> tuple[int, int]:
    """A shape as the audit folds it to 2-D: (all leading dims, the last dim); 1-D is one row."""
    if not shape:
        return 1, 1
    return (math.prod(shape[:-1]) if len(shape) > 1 else 1), shape[-1]


def dead_map(shape: list[int]) -> list[list[float]]:
    """An all-dead map of a tensor's shape, folded like the audit's maps (<= 64 cells a side)."""
    rows, cols = as_2d(shape)
    if rows <= 0 or cols <= 0:
        return []
    return [[0.0] * min(cols, MAP_CELLS) for _ in range(min(rows, MAP_CELLS))]


def _shape(shape: list[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _map_of(item: InputResult, grad: str) -> GradMap | None:
    """The gradient map of an input, where one says something: a measured, not-ok gradient."""
    if grad in ("ok", "not-required", "not measured", "nonfinite"):
        return None
    cells = item.grad_map
    if not cells and grad == "none":
        cells = dead_map(item.shape)  # no element got a gradient: the shape alone draws it
    if not cells:
        return None
    rows, cols = len(cells), max(len(r) for r in cells)
    folded = len(item.shape) > 2 or as_2d(item.shape) != (rows, cols)
    caption = (f"{item.name} {_shape(item.shape)}"
               + (f", folded to {rows}×{cols} cells" if folded else "")
               + ": light cells get a gradient, hatched dark cells never do"
               + (", dotted cells partly" if any(_cell_class(v) == "partial" for r in cells for v in r) else ""))
    return grad_map(cells, caption)


def input_data(result: CaseResult) -> list[dict[str, Any]]:
    """The inputs table of a result: verdict, share never reached, norm (or NaN/Inf count), map."""
    norms = [i.grad_norm for i in result.inputs if isinstance(i.grad_norm, (int, float))
             and math.isfinite(i.grad_norm) and i.grad != "nonfinite"]
    top = max(norms, default=0.0)
    out = []
    for item in result.inputs:
        grad = item.grad
        if grad in ("ok", "none") and not result.draws:
            grad = "not measured"  # no draw reached backward: a verdict would claim what nobody saw
        norm = item.grad_norm
        finite = (isinstance(norm, (int, float)) and not isinstance(norm, bool) and math.isfinite(norm)
                  and grad not in ("nonfinite", "not measured"))
        zero = item.zero_fraction
        data: dict[str, Any] = {"name": item.name, "shape": _shape(item.shape), "dtype": item.dtype, "grad": grad,
                                "zero": "–" if zero is None or grad == "not measured"
                                else f"{100 * zero:.0f}%" if zero in (0, 1) else f"{100 * zero:.1f}%"}
        if grad == "nonfinite" and item.nonfinite_count:
            numel = math.prod(item.shape) if item.shape else 1
            data["norm"] = f"{item.nonfinite_count} of {numel} element{'s' if numel != 1 else ''} NaN/Inf"
        elif item.requires_grad and grad != "not measured":
            data["norm"] = _fmt_number(norm)
        else:
            data["norm"] = "–"
        if finite and item.requires_grad:
            data["bar"] = round(100.0 * norm / top, 1) if top > 0 else 0.0
        picture = _map_of(item, grad)
        if picture is not None:
            data["map"] = picture.to_data()
        out.append(data)
    return out


def trace_data(text: str) -> list[list[str]]:
    """A traceback as [label, text] runs: label "" is shown, others fold frames that are not the user's."""
    return [[seg.label, seg.text] for seg in segments(text)]


def gradcheck_text(info: dict[str, Any]) -> str:
    """What the numerical gradient check did, in a few words."""
    if info.get("skipped"):
        return f"skipped: {info['skipped']}"
    text = {True: "passed", False: "failed"}.get(info.get("passed"), "ran")
    if info.get("elements"):
        text += f" on {info['elements']} float64 elements"
    dims = info.get("dims") or {}
    if dims:
        text += " (" + ", ".join(f"{k}={v}" for k, v in dims.items()) + ")"
    if info.get("draws"):
        text += f", {info['draws']} draw{'s' if info['draws'] != 1 else ''}"
    return text


def filter_key(result: CaseResult) -> str:
    """The status chip a result answers to: its status, or `expected` for a known-bad fixture."""
    return "expected" if result.expected and result.status in BAD_STATUSES else result.status


def baseline_key(result: CaseResult) -> str:
    """The baseline chip a result answers to: `new` for a failure the baseline did not have."""
    if causes_mod.is_new_failure(result):
        return "new"
    return result.baseline or ""


def result_data(result: CaseResult, anchor: str, cause: int) -> dict[str, Any]:
    """One result as the page's data: what its row shows, and its body for when it is opened."""
    data: dict[str, Any] = {"case": result.case, "device": result.device, "status": result.status,
                            "key": filter_key(result), "anchor": anchor}
    if result.baseline:
        data["bl"] = result.baseline
        data["blkey"] = baseline_key(result)
    if cause >= 0:
        data["cause"] = cause
    if result.summary_line:
        data["what"] = rich(result.summary_line)
    shown: set[str] = set()
    if result.findings:
        data["findings"] = [finding_data(f, shown) for f in sorted(result.findings, key=lambda f: -f.rank)]
    if result.skip_reason:
        data["skip"] = result.skip_reason
    if result.error is not None:
        error = {"type": result.error.type, "msg": result.error.message}
        if result.error.traceback:
            error["tb"] = trace_data(result.error.traceback)
        if result.error.anomaly_trace:
            error["anomaly"] = trace_data(result.error.anomaly_trace)
        # With no located finding, the traceback is what says where: it starts open.
        error["open"] = int(not any(f.location for f in result.findings))
        data["error"] = error
    if result.warnings:
        data["warnings"] = list(result.warnings)
    if result.inputs:
        data["inputs"] = input_data(result)
    if result.loss is not None:
        info = result.loss
        shape = f", shape {_shape(info.shape)}" if info.shape else ""
        data["loss"] = f"{_fmt_number(info.value)} ({info.dtype}{shape}, grad_fn {info.grad_fn or 'None'})"
    if result.reproduce:
        data["reproduce"] = result.reproduce
    # The module, where the loss reference does not already say it (`losses.ratio:ratio_loss`).
    module = "" if result.loss_ref.startswith(f"{result.group}:") else result.group
    facts = [("loss", result.loss_ref), ("module", module), ("seed", str(result.seed)),
             ("draws", str(result.draws or "")), ("time", _duration(result.duration_s))]
    if result.gradcheck:
        facts.append(("gradcheck", gradcheck_text(result.gradcheck)))
    data["facts"] = [[k, v] for k, v in facts if v]
    return data


def counts_text(results: list[CaseResult]) -> str:
    """`2 fail, 3 pass`, worst first."""
    counts = Counter(r.status for r in results)
    return ", ".join(f"{counts[s]} {s}" for s in sorted(counts, key=lambda s: -STATUS_RANK.get(s, 0)))


def verdict(results: RunResults) -> dict[str, str]:
    """The headline: passed or failed, in words, with an icon and a class."""
    bad = results.bad
    total = len(results.results)
    expected = [r for r in results.results if r.expected]
    if results.interrupted:
        word, cls = "Interrupted", "warn"
    elif bad:
        word, cls = "Failed", "fail"
    elif any(r.status == "warn" for r in results.results):
        word, cls = "Passed with warnings", "warn"
    else:
        word, cls = "Passed", "pass"
    if bad:
        names = sorted({r.case for r in bad})
        line = (f"{len(bad)} of {total} results fail: " + ", ".join(names[:5])
                + (f" and {len(names) - 5} more" if len(names) > 5 else ""))
    else:
        line = f"no unexpected failure in {total} result{'s' if total != 1 else ''}"
    if expected:
        names = sorted({r.case for r in expected})
        line += (f"; {len(expected)} known-bad fixture{'s' if len(expected) != 1 else ''} "
                 f"still fail{'s' if len(expected) == 1 else ''} as expected: " + ", ".join(names[:5])
                 + (f" and {len(names) - 5} more" if len(names) > 5 else ""))
    return {"word": word, "cls": cls, "icon": STATUS_ICON.get(cls, ""), "line": line}


def header_facts(results: RunResults) -> list[tuple[str, str, str]]:
    """(label, text, title) rows of the header's facts."""
    env = results.environment or {}
    devices = sorted({r.device for r in results.results})
    cuda = env.get("cuda") or {}
    names = cuda.get("devices") if isinstance(cuda, dict) else None
    device_text = ", ".join(devices) + (f" ({', '.join(map(str, names))})" if names else "")
    config = results.config or {}
    sha = str(config.get("sha256") or "")
    facts = [
        ("started", readable_time(results.started_at), results.started_at if results.started_at else ""),
        ("run time", _duration(results.duration_s), ""),
        ("devices", device_text, ""),
        ("torch", str(env.get("torch") or ""), ""),
        ("python", str(env.get("python") or ""), ""),
        ("config", str(config.get("path") or ""), ""),
        ("config sha256", sha[:12], sha),
        ("gradaudit", results.gradaudit_version, ""),
    ]
    return [(label, text, full if full != text else "") for label, text, full in facts if text]


@dataclass
class CauseView:
    """One cause as its card shows it."""

    cause: causes_mod.Cause
    index: int
    anchor: str
    badge: Badge
    message: list[tuple[str, bool]]
    source: list[SourceLine]
    cases: list[tuple[str, str, str, list[str]]]  # (case, anchor of its first result, status, devices)
    more: int  # cases not named on the card


def cause_view(cause: causes_mod.Cause, index: int, anchors: dict[tuple[str, str], str]) -> CauseView:
    worst = max(cause.results, key=lambda r: STATUS_RANK.get(r.status, 0))
    cases = []
    for case in cause.cases[:CAUSE_CASES]:
        first = next(r for r in cause.results if r.case == case)
        cases.append((case, anchors[first.key], filter_key(first), cause.devices_of(case)))
    return CauseView(cause=cause, index=index, anchor=f"c-{index + 1}",
                     badge=Badge.of(worst.status, cause.kind == "expected"),
                     message=message_parts(cause.message),
                     source=source_lines(cause.location) if cause.location else [],
                     cases=cases, more=max(0, len(cause.cases) - CAUSE_CASES))


def _row_what(results: list[CaseResult]) -> list[str]:
    """The table's "what broke" of a case: the worst audited result's summary (a skip says little)."""
    audited = [r for r in results if r.status != "skip"] or results
    telling = max(audited, key=lambda r: STATUS_RANK.get(r.status, 0))
    what = telling.summary_line
    if what and len({(r.status, r.summary_line) for r in audited}) > 1 and telling.status != "pass":
        what = f"[{telling.device}] {what}"  # the devices disagree: say which one this is
    return rich(what) if telling.status != "pass" or telling.baseline == FIXED else []


def build_view(results: RunResults) -> dict[str, Any]:
    """Everything the template shows, as display data."""
    devices = sorted({r.device for r in results.results}, key=lambda d: (d != "cpu", d))
    causes = causes_mod.group_by_cause(results.results)
    cause_of = causes_mod.cause_index(causes)
    # Rows: one per case, in the order of their first cause (problems first), then by module and name.
    by_case: dict[str, list[CaseResult]] = {}
    for r in sorted(results.results, key=lambda r: (r.group, r.case, devices.index(r.device))):
        by_case.setdefault(r.case, []).append(r)
    far = len(causes)
    order = sorted(by_case, key=lambda c: (min(cause_of.get(r.key, far) for r in by_case[c]),
                                          by_case[c][0].group, c))
    taken: set[str] = set()
    anchors: dict[tuple[str, str], str] = {}
    rows, items = [], []
    for case in order:
        cells = [-1] * len(devices)
        for r in by_case[case]:
            anchors[r.key] = _anchor(f"{r.case}-{r.device}", taken)
            cells[devices.index(r.device)] = len(items)
            items.append(result_data(r, anchors[r.key], cause_of.get(r.key, -1)))
        rows.append({"cells": cells, "what": _row_what(by_case[case])})
    views = [cause_view(c, i, anchors) for i, c in enumerate(causes)]
    counts = Counter(filter_key(r) for r in results.results)
    chips = [Badge("expected" if s == "expected" else s, f"{counts[s]} {s}", STATUS_ICON[s])
             for s in FILTERS if counts.get(s)]
    marks = Counter(baseline_key(r) for r in results.results if r.baseline)
    baseline_chips = [(key, f"{marks[key]} {words[marks[key] != 1]}")
                      for key, words in BASELINE_FILTERS.items() if marks.get(key)]
    bad = [c for c in views if c.cause.kind == "fail"]
    n_bad = sum(len(c.cause.results) for c in bad)
    new = sum(c.cause.new for c in bad)
    problems_line = ""
    if bad:
        problems_line = (f"{n_bad} failing result{'s' if n_bad != 1 else ''} from {len(bad)} "
                         f"cause{'s' if len(bad) != 1 else ''}" + (f", {new} of them new" if new else ""))
    return {
        "title": f"gradaudit: {verdict(results)['word'].lower()}"
                 + (f" – {(results.config or {}).get('path')}" if (results.config or {}).get("path") else ""),
        "verdict": verdict(results),
        "version": results.gradaudit_version,
        "facts": header_facts(results),
        "command": results.command,
        "baseline": describe_baseline(results, when=readable_time),
        "gone": (results.baseline or {}).get("gone") or [],
        "chips": chips,
        "baseline_chips": baseline_chips,
        "total": len(results.results),
        "devices": devices,
        "kinds": [(kind, causes_mod.KIND_TITLES[kind], [v for v in views if v.cause.kind == kind])
                  for kind in causes_mod.KINDS if any(v.cause.kind == kind for v in views)],
        "problems_line": problems_line,
        "data": _safe_data({
            "total": len(results.results), "devices": devices, "problems": PROBLEMS,
            "causes": [v.cause.title for v in views], "rows": rows, "results": items,
            "statusIcon": STATUS_ICON, "gradIcon": GRAD_ICON, "gradClass": GRAD_CLASS,
            "baselineLabels": {**BASELINE_LABELS},
        }),
    }


# What, in the JSON text of the data, may be (or be the escape of) a character safe_text changes:
# json writes C0 controls as \r, \b, \f or \u00XX and leaves DEL, C1 and the bidi controls as they
# are. A hit (or an escaped backslash before r, b, f) only sends the data through the exact walk.
_MAYBE_CONTROL = re.compile(r"\\[rbf]|\\u00[01]|[\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def _safe_data(value: Any) -> Any:
    """The embedded data with control characters in its strings shown as escapes, as in the page.

    One pass of json's C encoder first: the common data has none, and is then kept as it is."""
    try:
        if not _MAYBE_CONTROL.search(json.dumps(value, ensure_ascii=False, default=str)):
            return value
    except (TypeError, ValueError):  # not JSON as it stands: the walk decides
        pass
    return _safe_walk(value)


def _safe_walk(value: Any) -> Any:
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, dict):
        return {k: _safe_walk(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_safe_walk(v) for v in value]
    return value


def render_html(results: RunResults) -> str:
    """Render the report page of a run."""
    return report_template().render(**build_view(results))


def write_html(results: RunResults, stream: IO[str]) -> None:
    """Write the self-contained report page of a run."""
    stream.write(render_html(results))
