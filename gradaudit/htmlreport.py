"""index.html: one self-contained report of a run, rendered with Jinja2 from templates/.

Everything shown is computed here as plain display data; the templates only lay it out. The
page has no network dependency: CSS and JS are inlined, pictures are inline SVG.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import jinja2

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

TEMPLATE = "report.html.j2"
# Symbols beside every status word, so status never rests on colour alone.
STATUS_ICON = {"pass": "✓", "warn": "▲", "fail": "✗", "error": "⚠", "skip": "–", "timeout": "◷",
               "crash": "✶"}
GRAD_ICON = {"ok": "✓", "none": "✗", "zero": "✗", "partial": "◐", "nonfinite": "⚠", "not-required": "–"}
GRAD_CLASS = {"ok": "pass", "none": "fail", "zero": "fail", "partial": "fail", "nonfinite": "fail",
              "not-required": "skip"}
# Open the failing results at load when there are few; a big nightly report starts folded.
OPEN_LIMIT = 10
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


def environment() -> jinja2.Environment:
    """The Jinja2 environment; autoescape is on for every template, whatever its suffix."""
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir())), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True)


# -- display data ------------------------------------------------------------------------------


@dataclass
class Badge:
    """A status word with its icon and CSS class."""

    status: str
    label: str
    icon: str

    @classmethod
    def of(cls, status: str, expected: bool = False) -> Badge:
        return cls(status, status + (" (expected)" if expected else ""), STATUS_ICON.get(status, "?"))


@dataclass
class SourceLine:
    number: int
    text: str
    culprit: bool


@dataclass
class FindingView:
    finding: Finding
    message: list[tuple[str, bool]]  # the message in pieces: (text, whether it is `code`)
    where: str  # "file:line in function"
    source: list[SourceLine]
    chain: list[str]
    same_place: bool = False  # an earlier finding of the result showed this very line
    second: str = ""  # the finding's second line: "saved for backward at file:line: code"


def message_parts(message: str) -> list[tuple[str, bool]]:
    """Split a message at `backticks` into text and code pieces (a last, unpaired backtick stays text)."""
    pieces = message.split("`")
    if len(pieces) % 2 == 0:
        pieces[-2:] = ["`".join(pieces[-2:])]
    return [(piece, i % 2 == 1) for i, piece in enumerate(pieces) if piece]


@dataclass
class InputView:
    input: InputResult
    shape: str
    grad_label: str
    grad_icon: str
    grad_class: str
    zero_pct: str
    norm: str
    has_bar: bool
    bar_pct: float
    bar_label: str
    grad_map: GradMap | None


@dataclass
class ResultView:
    result: CaseResult
    anchor: str
    badge: Badge
    baseline: str
    open: bool
    findings: list[FindingView]
    inputs: list[InputView]
    loss: str
    facts: list[tuple[str, str]]
    search: str
    summary: list[tuple[str, bool]]


@dataclass
class RowView:
    """One case of the cases x devices table."""

    case: str
    cells: list[ResultView | None]
    worst: ResultView
    what: list[tuple[str, bool]]
    statuses: str
    search: str


@dataclass
class GroupView:
    name: str
    anchor: str
    counts: str
    rows: list[RowView] = field(default_factory=list)
    results: list[ResultView] = field(default_factory=list)


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


def _anchor(text: str, taken: set[str]) -> str:
    base = "r-" + (re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x")
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


def finding_view(finding: Finding, shown: set[str] | None = None) -> FindingView:
    """A finding for display; a line already in `shown` (an earlier finding's) is not repeated."""
    loc = finding.location
    parts = message_parts(finding.message)
    if loc is None:
        return FindingView(finding, parts, "", [], [])
    where = loc.where + (f" in {loc.function}" if loc.function else "")
    second = f"{finding.second.label or 'see also'} {_frame_text(finding.second)}" if finding.second else ""
    if shown is not None and loc.where in shown:
        return FindingView(finding, parts, where, [], [], same_place=True, second=second)
    if shown is not None:
        shown.add(loc.where)
    return FindingView(finding, parts, where, source_lines(loc), [_frame_text(f) for f in loc.chain],
                       second=second)


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
    """An inline SVG map of which elements ever got a gradient, as path data the template draws."""

    cols: int
    rows: int
    width: int
    height: int
    dead: str
    partial: str
    grid: str
    caption: str


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


def input_views(result: CaseResult) -> list[InputView]:
    norms = [i.grad_norm for i in result.inputs if isinstance(i.grad_norm, (int, float))
             and math.isfinite(i.grad_norm)]
    top = max(norms, default=0.0)
    views = []
    for item in result.inputs:
        norm = item.grad_norm
        finite = isinstance(norm, (int, float)) and math.isfinite(norm)
        pct = round(100.0 * norm / top, 1) if finite and top > 0 else 0.0
        picture = None
        cells = item.grad_map
        if not cells and item.grad == "none":
            cells = dead_map(item.shape)  # no element got a gradient: the shape alone draws it
        if cells and item.grad not in ("ok", "not-required"):
            rows, cols = len(cells), max(len(r) for r in cells)
            folded = len(item.shape) > 2 or as_2d(item.shape) != (rows, cols)
            caption = (f"{item.name} {_shape(item.shape)}"
                       + (f", folded to {rows}×{cols} cells" if folded else "")
                       + ": light cells get a gradient, hatched dark cells never do"
                       + (", dotted cells partly" if any(_cell_class(v) == "partial" for r in cells
                                                        for v in r) else ""))
            picture = grad_map(cells, caption)
        zero = item.zero_fraction
        grad = item.grad
        if grad in ("ok", "none") and not result.draws:
            grad = "not measured"  # no draw reached backward: a verdict would claim what nobody saw
        views.append(InputView(
            input=item, shape=_shape(item.shape), grad_label=grad, grad_icon=GRAD_ICON.get(grad, "–"),
            grad_class=GRAD_CLASS.get(grad, "skip"),
            zero_pct="–" if zero is None else f"{100 * zero:.0f}%" if zero in (0, 1) else f"{100 * zero:.1f}%",
            norm=_fmt_number(norm) if item.requires_grad else "–", has_bar=finite, bar_pct=pct,
            bar_label=f"gradient norm {_fmt_number(norm)}" + (f", {pct:.0f}% of the largest" if finite else ""),
            grad_map=picture))
    return views


def result_view(result: CaseResult, anchor: str, open_: bool) -> ResultView:
    loss = ""
    if result.loss is not None:
        info = result.loss
        loss = (f"{_fmt_number(info.value)} ({info.dtype}{', shape ' + _shape(info.shape) if info.shape else ''}"
                f", grad_fn {info.grad_fn or 'None'})")
    facts = [("loss", result.loss_ref), ("seed", str(result.seed)), ("draws", str(result.draws or "")),
             ("time", _duration(result.duration_s))]
    findings = sorted(result.findings, key=lambda f: -f.rank)
    shown: set[str] = set()
    if result.gradcheck:
        facts.append(("gradcheck", gradcheck_text(result.gradcheck)))
    return ResultView(
        result=result, anchor=anchor, badge=Badge.of(result.status, result.expected),
        baseline=BASELINE_LABELS.get(result.baseline or "", ""), open=open_,
        findings=[finding_view(f, shown) for f in findings], inputs=input_views(result), loss=loss,
        facts=[(k, v) for k, v in facts if v], search=f"{result.case} {result.loss_ref}".lower(),
        summary=message_parts(result.summary_line))


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
        ("started", results.started_at.replace("T", " "), ""),
        ("run time", _duration(results.duration_s), ""),
        ("devices", device_text, ""),
        ("torch", str(env.get("torch") or ""), ""),
        ("python", str(env.get("python") or ""), ""),
        ("config", str(config.get("path") or ""), ""),
        ("config sha256", sha[:12], sha),
        ("gradaudit", results.gradaudit_version, ""),
    ]
    return [f for f in facts if f[1]]


def build_view(results: RunResults) -> dict[str, Any]:
    """Everything the template shows, as display data."""
    ordered = sorted(results.results, key=lambda r: (r.group, r.case, r.device))
    devices = sorted({r.device for r in ordered}, key=lambda d: (d != "cpu", d))
    problems = [r for r in ordered if r.status in BAD_STATUSES]
    open_failing = len(problems) <= OPEN_LIMIT
    taken: set[str] = set()
    groups: dict[str, GroupView] = {}
    views: dict[tuple[str, str], ResultView] = {}
    for r in ordered:
        name = r.group or "(no module)"
        group = groups.get(name)
        if group is None:
            group = groups[name] = GroupView(name=name, anchor=_anchor("g-" + name, taken), counts="")
        view = result_view(r, _anchor(f"{r.case}-{r.device}", taken),
                           open_failing and r.status in BAD_STATUSES)
        views[r.key] = view
        group.results.append(view)
    for group in groups.values():
        group.counts = counts_text([v.result for v in group.results])
        seen: dict[str, list[ResultView]] = {}
        for v in group.results:
            seen.setdefault(v.result.case, []).append(v)
        for case, case_views in seen.items():
            by_device = {v.result.device: v for v in case_views}
            worst = max(case_views, key=lambda v: STATUS_RANK.get(v.result.status, 0))
            # The table's "what broke" speaks of the worst audited result: a skip says little.
            audited = [v for v in case_views if v.result.status != "skip"] or case_views
            telling = max(audited, key=lambda v: STATUS_RANK.get(v.result.status, 0))
            what = telling.result.summary_line
            if what and len(audited) > 1:
                what = f"[{telling.result.device}] {what}"
            group.rows.append(RowView(
                case=case, cells=[by_device.get(d) for d in devices], worst=worst, what=message_parts(what),
                statuses=" ".join(sorted({v.result.status for v in case_views})), search=worst.search))
    counts = results.summary.counts
    return {
        "title": f"gradaudit: {verdict(results)['word'].lower()}"
                 + (f" – {(results.config or {}).get('path')}" if (results.config or {}).get("path") else ""),
        "verdict": verdict(results),
        "version": results.gradaudit_version,
        "facts": header_facts(results),
        "command": results.command,
        "baseline": describe_baseline(results),
        "gone": (results.baseline or {}).get("gone") or [],
        "chips": [Badge(s, f"{counts.get(s, 0)} {s}", STATUS_ICON[s]) for s in STATUSES if counts.get(s)],
        "total": len(ordered),
        "devices": devices,
        "groups": list(groups.values()),
        "data": {"statuses": [s for s in STATUSES if counts.get(s)], "total": len(ordered),
                 "problems": sorted(BAD_STATUSES | {"warn"})},
    }


def render_html(results: RunResults) -> str:
    """Render the report page of a run."""
    return environment().get_template(TEMPLATE).render(**build_view(results))


def write_html(results: RunResults, stream: IO[str]) -> None:
    """Write the self-contained report page of a run."""
    stream.write(render_html(results))
