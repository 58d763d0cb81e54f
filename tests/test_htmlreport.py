"""The HTML report from hand-built results: content, safety, size, pictures, and the installed templates."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter

import pytest

from gradaudit.htmlreport import grad_map, render_html
from gradaudit.model import CaseResult, ErrorInfo, Finding, InputResult, Location, RunResults
from tests import reportdata
from tests.conftest import REPO
from tests.htmltools import external_refs, parse


@pytest.fixture(scope="module")
def sample():
    return reportdata.sample_run()


@pytest.fixture(scope="module")
def page(sample):
    return render_html(sample)


@pytest.fixture(scope="module")
def tree(page):
    return parse(page)


def result_block(tree, case, device="cpu"):
    blocks = [d for d in tree.find_all("details", cls="result")
              if d.find("span", cls="name").text == case and d.find("span", cls="device").text == f"[{device}]"]
    assert len(blocks) == 1, f"{case} [{device}]: {len(blocks)} result blocks"
    return blocks[0]


def test_every_result_has_one_block_and_one_table_cell(sample, tree):
    blocks = tree.find_all("details", cls="result")
    assert len(blocks) == len(sample.results)
    assert Counter(b.attrs["data-status"] for b in blocks) == Counter(r.status for r in sample.results)
    rows = tree.find_all("tr", cls="case-row")
    assert {r.find("th").text for r in rows} == {r.case for r in sample.results}
    # Each badge in the table links to the block of its own result.
    ids = {b.attrs["id"] for b in blocks}
    links = [a.attrs["href"][1:] for r in rows for a in r.find_all("a", cls="badge")]
    assert len(links) == len(sample.results) and set(links) == ids


def test_header_says_verdict_counts_versions_config_and_command(sample, tree):
    header = tree.find("header")
    assert "Failed" in header.find("h1").text
    facts = {div.find("dt").text: div.find("dd") for div in header.find_all("div") if div.find_all("dt")}
    assert facts["torch"].text == sample.environment["torch"]
    assert facts["python"].text == sample.environment["python"]
    assert facts["config"].text == sample.config["path"]
    assert facts["config sha256"].attrs["title"] == sample.config["sha256"]
    assert facts["devices"].text == "cpu, cuda"
    assert header.find("div", cls="copyline").find("code").text == sample.command
    assert header.find("div", cls="copyline").find("button", cls="copy")
    chips = {c.attrs["data-filter-status"]: c.text for c in tree.find_all("button", cls="chip")}
    for status, n in sample.summary.counts.items():
        if n:
            assert f"{n} {status}" in chips[status]
        else:
            assert status not in chips


def test_groups_by_module_with_counts(sample, tree):
    groups = tree.find_all("details", cls="group")
    by_group: dict[str, Counter] = {}
    for r in sample.results:
        by_group.setdefault(r.group, Counter())[r.status] += 1
    assert [g.find("h3").text for g in groups] == sorted(by_group)
    for g in groups:
        counts = by_group[g.find("h3").text]
        shown = g.find("span", cls="counts").text
        assert sorted(shown.split(", ")) == sorted(f"{n} {s}" for s, n in counts.items())
        assert len(g.find_all("details", cls="result")) == sum(counts.values())


def test_findings_most_severe_first_with_the_culprit_line_in_context(tree):
    block = result_block(tree, "ratio_loss")
    findings = block.find_all("li", cls="finding")
    assert [f.find("code", cls="fid").text for f in findings] == ["partial-grad", "graph-break"]
    src = findings[0].find("pre", cls="src")
    lines = src.find_all("span", cls="line")
    assert [int(line.find("span", cls="ln").text) for line in lines] == [5, 6, 7, 8]
    culprits = [line for line in lines if "culprit" in line.classes]
    assert len(culprits) == 1
    assert culprits[0].find("span", cls="ln").text == "7"
    assert culprits[0].find("span", cls="code").text == "    b = predictions[:, 1].detach()"
    assert "▶" in culprits[0].text  # marked by a symbol, not by colour alone
    assert "losses/ratio.py:7 in ratio_loss" in findings[0].find("p", cls="where").text
    chain = findings[0].find("details", cls="chain")
    assert "train.py:30 in step: loss = ratio_loss(p, t)" in chain.text and "open" not in chain.attrs


def test_a_location_without_context_still_shows_its_line(tree):
    block = result_block(tree, "sigmoid_inplace")
    line = block.find("span", cls="culprit")
    assert line.find("span", cls="ln").text == "3" and "torch.sigmoid(x)" in line.text


def test_tracebacks_and_anomaly_traces_are_folded(tree):
    block = result_block(tree, "sigmoid_inplace")
    traces = block.find_all("details", cls="trace")
    assert [t.find("summary").text for t in traces] == ["Traceback", "Forward trace recorded by anomaly mode"]
    assert all("open" not in t.attrs for t in traces)
    assert "RuntimeError: boom" in traces[0].find("pre").text


def test_failing_results_start_open_and_the_others_folded(sample, tree):
    for r in sample.results:
        block = result_block(tree, r.case, r.device)
        assert ("open" in block.attrs) == (r.status in ("fail", "error", "timeout", "crash")), r.key


def test_a_big_run_starts_folded(tree):
    run = reportdata.sample_run([reportdata.ratio_fail(case=f"c{i}") for i in range(11)])
    blocks = parse(render_html(run)).find_all("details", cls="result")
    assert len(blocks) == 11 and not any("open" in b.attrs for b in blocks)


def test_reproduce_command_with_copy_button(sample, tree):
    for r in sample.results:
        if r.reproduce:
            line = result_block(tree, r.case, r.device).find("div", cls="reproduce").find("div", cls="copyline")
            assert line.find("code").text == r.reproduce and line.find("button", cls="copy").text == "Copy"


def test_inputs_table_and_norm_bars(tree):
    block = result_block(tree, "ratio_loss")
    rows = block.find("table", cls="inputs").find("tbody").find_all("tr")
    cells = [[c.text.strip() for c in row.children if not isinstance(c, str)] for row in rows]
    assert cells[0][:5] == ["predictions", "[8, 2]", "float32", "◐ partial", "50.0%"]
    assert cells[1][3] == "– not-required"
    bar = rows[0].find("svg", cls="bar").find("rect")
    assert bar.attrs["width"] == "100.0"  # the largest norm of the case fills its bar
    assert not rows[1].find_all("svg")  # no gradient wanted, no bar


def test_norm_bars_scale_to_the_largest_norm():
    result = reportdata.passing("two")
    result.inputs = [InputResult("a", [2], "float32", True, "ok", 0.0, 0, 4.0),
                     InputResult("b", [2], "float32", True, "ok", 0.0, 0, 1.0),
                     InputResult("c", [2], "float32", True, "zero", 1.0, 0, 0.0)]
    tree = parse(render_html(reportdata.sample_run([result])))
    widths = [float(svg.find("rect").attrs["width"]) for svg in tree.find_all("svg", cls="bar")]
    assert widths == [100.0, 25.0, 0.0]


def test_gradient_map_marks_the_dead_column(tree):
    block = result_block(tree, "ratio_loss")
    svg = block.find("figure", cls="map").find("svg", cls="gmap")
    assert svg.attrs["viewbox"] == "0 0 2 8"
    dead = svg.find("path", cls="dead").attrs["d"]
    # grad_map is 8 rows of [1.0, 0.0]: the dead cells are exactly (row y, column 1).
    assert dead == "".join(f"M1 {y}.5h1" for y in range(8))
    assert "hatched dark cells never" in block.find("figure", cls="map").find("figcaption").text
    # An ok input draws no map.
    assert len(block.find_all("figure", cls="map")) == 1


def test_gradient_map_merges_runs_and_folds_big_tensors():
    cells = [[0.0] * 64 for _ in range(64)]
    cells[3][10:20] = [1.0] * 10
    cells[5][0] = 0.5
    picture = grad_map(cells, "x")
    assert picture.width <= 256 and picture.height <= 256
    # Row 3: dead 0-9, alive 10-19, dead 20-63; row 5: partly alive at 0, then dead.
    assert "M0 3.5h10m10 0h44" in picture.dead and "M1 5.5h63" in picture.dead
    assert picture.partial == "M0 5.5h1"
    assert picture.grid == ""  # no grid lines on a big map
    result = reportdata.ratio_fail()
    result.inputs = [InputResult("feat", [4, 100, 300], "float32", True, "partial", 0.9, 0, 1.0, grad_map=cells)]
    caption = parse(render_html(reportdata.sample_run([result]))).find("figcaption").text
    assert caption.startswith("feat [4, 100, 300], folded to 64×64 cells")


def test_status_is_never_colour_alone(tree):
    for badge in tree.find_all("span", cls="badge") + tree.find_all("a", cls="badge"):
        status = next(c[3:] for c in badge.classes if c.startswith("st-"))
        icon = badge.find("span", cls="icon").text
        assert icon.strip() and (status in badge.text or badge.text.strip().endswith(("ok", "partial", "none",
                                                                                       "zero", "nonfinite",
                                                                                       "not-required",
                                                                                       "measured")))


def test_no_network_references(page, tree):
    assert external_refs(tree) == []
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", page), "CSS must not load anything"
    assert "@import" not in page
    assert len(tree.find_all("script")) == 2 and all("src" not in s.attrs for s in tree.find_all("script"))
    assert not tree.find_all("link", rel="stylesheet")


def test_the_external_reference_check_can_fail():
    tree = parse('<a href="https://cdn.example/x.js">x</a><img src="//cdn.example/i.png"><a href="#ok">y</a>')
    assert len(external_refs(tree)) == 2


def hostile_run() -> RunResults:
    evil = reportdata.HOSTILE
    loc = Location(file=f"{evil}.py", line=2, function=evil, code=evil, context_start=1,
                   context=[f"# {evil}", f"x = '{evil}'  # https://evil.example/a.js"])
    result = CaseResult(
        case=evil, device=evil, status="fail", group=evil, loss_ref=evil, summary_line=evil, reproduce=evil,
        findings=[Finding("loss-error", "fail", evil, evil, loc)],
        inputs=[InputResult(evil, [2], evil, True, "partial", 0.5, 0, 1.0, grad_map=[[1.0, 0.0]])],
        error=ErrorInfo(evil, evil, f"Traceback\n{evil}\n", f"{evil}\n"), warnings=[evil])
    run = RunResults(results=[result], gradaudit_version=evil, started_at=evil, command=evil,
                     environment={"python": evil, "torch": evil, "cuda": {"devices": [evil]}},
                     config={"path": evil, "sha256": evil},
                     baseline={"path": evil, "started_at": evil, "counts": {}, "gone": [evil]})
    return run


def test_hostile_text_is_shown_as_text_never_markup():
    page = render_html(hostile_run())
    assert "<script>alert" not in page
    assert page.count("<script") == 2  # our data block and our code, nothing else
    tree = parse(page)
    scripts = tree.find_all("script")
    assert [s.attrs.get("type") for s in scripts] == ["application/json", None]
    json.loads(scripts[0].text)
    # The text reads back exactly as it was, entities included, wherever it is shown.
    evil = reportdata.HOSTILE
    assert tree.find("span", cls="name").text == evil
    assert tree.find("p", cls="message").text == evil
    assert evil in tree.find("details", cls="trace").find("pre").text
    assert tree.find("span", cls="culprit").find("span", cls="code").text == f"x = '{evil}'  # https://evil.example/a.js"
    assert tree.find("div", cls="copyline").find("code").text == evil
    assert tree.find("title").text.endswith(evil)
    assert external_refs(tree) == []
    # Anchors built from names hold only safe characters.
    for element in tree.iter():
        if element.attrs.get("id"):
            assert re.fullmatch(r"[A-Za-z0-9_.-]+", element.attrs["id"]), element.attrs["id"]


def test_autoescape_holds_for_the_j2_suffix():
    from gradaudit.htmlreport import environment

    env = environment()
    assert env.from_string("{{ x }}").render(x="<b>") == "&lt;b&gt;"
    assert env.get_template("report.html.j2").environment.autoescape is True


def big_run(n_cases: int = 500, devices=("cpu", "cuda"), seed: int = 0) -> RunResults:
    """1,000 results shaped like a real nightly: mostly passes, some failures with traces and maps."""
    rng = random.Random(seed)
    results = []
    for i in range(n_cases):
        for device in devices:
            if i % 10 == 0:
                r = reportdata.ratio_fail(device, case=f"loss_{i:04d}", group=f"pkg.mod{i % 17}")
                r.error = ErrorInfo("RuntimeError", "boom " * 20, reportdata.TRACEBACK * 20, reportdata.TRACEBACK * 10)
                r.inputs[0].grad_map = [[rng.choice([0.0, 1.0, 0.5]) for _ in range(64)] for _ in range(64)]
            else:
                r = reportdata.passing(f"loss_{i:04d}", device, group=f"pkg.mod{i % 17}")
            results.append(r)
    return reportdata.sample_run(results)


@pytest.mark.slow
def test_a_thousand_results_stay_under_5_mb():
    run = big_run()
    assert len(run.results) == 1000
    start = time.perf_counter()
    page = render_html(run)
    elapsed = time.perf_counter() - start
    size = len(page.encode("utf-8"))
    print(f"1000 results: {size / 1e6:.2f} MB in {elapsed:.2f} s")
    assert size < 5_000_000
    tree = parse(page)
    assert len(tree.find_all("details", cls="result")) == 1000
    # Passing results carry no logs: no findings, traces or maps.
    for block in tree.find_all("details", cls="result"):
        if block.attrs["data-status"] == "pass":
            assert not block.find_all("details", cls="trace") and not block.find_all("figure")


@pytest.mark.slow
def test_html_reporter_does_not_import_torch():
    code = ("import sys, io; from gradaudit.htmlreport import write_html; from gradaudit.model import RunResults; "
            "write_html(RunResults(), io.StringIO()); assert 'torch' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_a_non_editable_install_renders_reports(tmp_path):
    """The wheel's templates ship inside the package: install into a folder and render from there."""
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--target", str(target), str(REPO)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (target / "gradaudit" / "templates" / "report.html.j2").is_file()
    results = tmp_path / "results.json"
    from gradaudit.jsonreport import write_json

    with results.open("w", encoding="utf-8") as stream:
        write_json(reportdata.sample_run(), stream)
    code = ("import sys, gradaudit.htmlreport as h; from gradaudit.jsonreport import read_json; "
            "print(h.__file__); print(h.template_dir()); sys.stdout.write(h.render_html(read_json(sys.argv[1])))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    proc = subprocess.run([sys.executable, "-c", code, str(results)], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    module, folder, page = proc.stdout.split("\n", 2)
    assert module.startswith(str(target)) and folder == str(target / "gradaudit" / "templates")
    assert len(parse(page).find_all("details", cls="result")) == len(reportdata.sample_run().results)


def test_backticked_code_in_messages_is_code_and_still_escaped():
    result = reportdata.ratio_fail()
    result.findings[1].message = "`b = x.detach()` at r.py:7 cuts `<script>alert(1)</script>` off; odd ` stays"
    result.findings[0].message = "a `lone backtick"
    result.summary_line = "`x.detach()` at r.py:7 <b>"
    tree = parse(render_html(reportdata.sample_run([result])))
    for where in (tree.find("td", cls="what"), tree.find("span", cls="summary-line")):
        assert [c.text for c in where.find_all("code")] == ["x.detach()"] and where.text == "x.detach() at r.py:7 <b>"
    first, second = tree.find_all("p", cls="message")
    assert [c.text for c in first.find_all("code")] == ["b = x.detach()", "<script>alert(1)</script>"]
    assert first.text == result.findings[1].message.replace("`", "", 4)
    assert second.text == "a `lone backtick" and not second.find_all("code")


def test_a_line_two_findings_share_is_shown_once():
    result = reportdata.ratio_fail()
    result.findings[0].location = result.findings[1].location
    tree = parse(render_html(reportdata.sample_run([result])))
    findings = tree.find_all("li", cls="finding")
    assert len(findings[0].find_all("pre", cls="src")) == 1
    assert not findings[1].find_all("pre") and "(the line shown above)" in findings[1].find("p", cls="where").text


@pytest.mark.parametrize(("results", "word"), [
    ([reportdata.passing("a")], "Passed"),
    ([reportdata.passing("a"), reportdata.warning()], "Passed with warnings"),
    ([reportdata.ratio_fail(expected=True)], "Passed"),
    ([reportdata.passing("a"), reportdata.erroring()], "Failed"),
])
def test_verdict_word(results, word):
    tree = parse(render_html(reportdata.sample_run(results)))
    assert tree.find("h1").text.split(" ", 1)[1] == word


def test_an_interrupted_run_says_so():
    run = reportdata.sample_run([reportdata.passing("a")])
    run.interrupted = True
    assert "Interrupted" in parse(render_html(run)).find("h1").text


@pytest.mark.parametrize(("info", "text"), [
    ({"dims": {"B": 2}, "elements": 8, "budget": 64, "draws": 1, "passed": True},
     "passed on 8 float64 elements (B=2), 1 draw"),
    ({"skipped": "mps has no float64"}, "skipped: mps has no float64"),
])
def test_gradcheck_facts(info, text):
    result = reportdata.passing("a")
    result.gradcheck = info
    facts = parse(render_html(reportdata.sample_run([result]))).find("p", cls="facts-line").find_all("span")
    assert f"gradcheck {text}" in [f.text for f in facts]


def test_a_disconnected_input_gets_an_all_dark_map_from_its_shape():
    result = reportdata.ratio_fail()
    result.inputs = [InputResult("w", [3, 5], "float32", True, "none"),
                     InputResult("v", [200], "float32", True, "none"),
                     InputResult("ok", [3], "float32", True, "ok", 0.0, 0, 1.0)]
    figures = parse(render_html(reportdata.sample_run([result]))).find_all("figure", cls="map")
    assert len(figures) == 2
    w, v = (f.find("svg", cls="gmap") for f in figures)
    assert w.attrs["viewbox"] == "0 0 5 3" and w.find("path", cls="dead").attrs["d"] == "M0 0.5h5M0 1.5h5M0 2.5h5"
    assert v.attrs["viewbox"] == "0 0 64 1"
    assert figures[0].find("figcaption").text.startswith("w [3, 5]: light")
    assert figures[1].find("figcaption").text.startswith("v [200], folded to 1×64 cells")
