"""The HTML report from hand-built results: content, safety, size, pictures, and the installed templates."""

from __future__ import annotations

import os
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
from tests.htmltools import external_refs, page_data, parse


@pytest.fixture(scope="module")
def sample():
    return reportdata.sample_run()


@pytest.fixture(scope="module")
def page(sample):
    return render_html(sample)


@pytest.fixture(scope="module")
def tree(page):
    return parse(page)


def record(data, case, device="cpu"):
    """The page data's record of one result."""
    found = [r for r in data["results"] if r["case"] == case and r["device"] == device]
    assert len(found) == 1, f"{case} [{device}]: {len(found)} records"
    return found[0]


@pytest.fixture(scope="module")
def data(page):
    return page_data(page)


def test_every_result_has_one_record_and_one_table_cell(sample, data):
    assert Counter(r["status"] for r in data["results"]) == Counter(r.status for r in sample.results)
    assert {(r["case"], r["device"]) for r in data["results"]} == {r.key for r in sample.results}
    # One row per case; its cells are the results of that case, one per device column, or -1.
    cells = [j for row in data["rows"] for j in row["cells"] if j >= 0]
    assert sorted(cells) == list(range(len(sample.results)))
    for row in data["rows"]:
        cases = {data["results"][j]["case"] for j in row["cells"] if j >= 0}
        assert len(cases) == 1
        for d, j in enumerate(row["cells"]):
            if j >= 0:
                assert data["results"][j]["device"] == data["devices"][d]
    anchors = [r["anchor"] for r in data["results"]]
    assert len(set(anchors)) == len(anchors)


def test_header_says_verdict_counts_versions_config_and_command(sample, tree):
    header = tree.find("header")
    assert "Failed" in header.find("h1").text
    facts = {div.find("dt").text: div.find("dd") for div in header.find_all("div") if div.find_all("dt")}
    assert facts["torch"].text == sample.environment["torch"]
    assert facts["python"].text == sample.environment["python"]
    assert facts["config"].text == sample.config["path"]
    assert facts["config sha256"].attrs["title"] == sample.config["sha256"]
    assert facts["devices"].text == "cpu, cuda"
    assert facts["started"].text == "26 Nov 2026, 04:00 UTC"
    assert facts["started"].attrs["title"] == sample.started_at
    assert header.find("div", cls="copyline").find("code").text == sample.command
    assert header.find("div", cls="copyline").find("button", cls="copy")
    chips = {c.attrs["data-filter-status"]: c.text for c in tree.find_all("button", cls="chip")}
    # A known-bad fixture that fails as expected has its own chip; it is not counted as a failure.
    wanted = Counter("expected" if r.expected else r.status for r in sample.results)
    assert set(chips) == set(wanted)
    for key, n in wanted.items():
        assert f"{n} {key}" in chips[key]
    assert "st-expected" in tree.find("button", cls="chip", **{"data-filter-status": "expected"}).classes


def test_problems_come_first_grouped_by_cause(sample, tree, data):
    from gradaudit.causes import group_by_cause

    causes = group_by_cause(sample.results)
    cards = tree.find_all("article", cls="cause")
    assert len(cards) == len(causes) == len(data["causes"])
    for card, cause in zip(cards, causes, strict=True):
        assert card.find("code", cls="fid").text == cause.id
        if cause.where:
            assert card.find("code", cls="where").text == cause.where
        linked = [a.attrs["href"][1:] for a in card.find("ul", cls="affects").find_all("a")]
        assert linked == [record(data, r.case, r.device)["anchor"] for r in cause.results]
    # Every failing result's record points to its cause; passes and skips to none.
    for r in sample.results:
        rec = record(data, r.case, r.device)
        assert ("cause" in rec) == (r.status not in ("pass", "skip")), r.key
    # The table lists the cases of the causes first, in cause order, and the passing case last.
    first = [data["results"][next(j for j in row["cells"] if j >= 0)]["case"] for row in data["rows"]]
    assert first[-1] == "mse"
    by_cause = [c.results[0].case for c in causes]
    assert [c for c in first if c in by_cause] == list(dict.fromkeys(by_cause))
    # The known-bad fixture's cause is its own kind, after the failures, and muted.
    kinds = [c.classes for c in cards]
    assert "kind-expected" in kinds[-1] and all("kind-expected" not in k for k in kinds[:-1])
    assert "st-expected" in cards[-1].find("span", cls="badge").classes


def test_a_cause_card_shows_its_line_in_context(tree):
    card = next(c for c in tree.find_all("article", cls="cause") if c.find("code", cls="fid").text == "partial-grad")
    lines = card.find("pre", cls="src").find_all("span", cls="line")
    assert [int(line.find("span", cls="ln").text) for line in lines] == [5, 6, 7, 8]
    culprits = [line for line in lines if "culprit" in line.classes]
    assert len(culprits) == 1 and culprits[0].find("span", cls="ln").text == "7"
    assert culprits[0].find("span", cls="code").text == "    b = predictions[:, 1].detach()"
    assert "▶" in culprits[0].text  # marked by a symbol, not by colour alone
    assert card.find("pre", cls="src").attrs["tabindex"] == "0"  # keyboard-scrollable
    assert "1 result on cpu" in card.find("p", cls="reach").text


def test_findings_most_severe_first_with_the_culprit_line_in_context(data):
    findings = record(data, "ratio_loss")["findings"]
    assert [f["id"] for f in findings] == ["partial-grad", "graph-break"]
    assert findings[0]["src"] == [[5, "def ratio_loss(predictions, targets):", 0], [6, "    a = predictions[:, 0]", 0],
                                  [7, "    b = predictions[:, 1].detach()", 1],
                                  [8, "    return ((a / b - targets) ** 2).mean()", 0]]
    assert findings[0]["where"] == "losses/ratio.py:7 in ratio_loss"
    assert findings[0]["chain"] == ["train.py:30 in step: loss = ratio_loss(p, t)"]


def test_a_location_without_context_still_shows_its_line(data):
    (finding,) = record(data, "sigmoid_inplace")["findings"]
    assert finding["src"] == [[3, "p = torch.sigmoid(x)", 1]]


def test_tracebacks_fold_what_is_not_the_users(data):
    error = record(data, "sigmoid_inplace")["error"]
    assert error["tb"] == [["", reportdata.TRACEBACK.rstrip("\n")]]  # all user frames: nothing folded
    assert error["anomaly"][0][0] == ""
    assert error["open"] == 0  # a located finding says where; the traceback starts folded
    assert record(data, "segfaults")["error"]["open"] == 1


def test_reproduce_command(sample, data):
    for r in sample.results:
        assert record(data, r.case, r.device).get("reproduce", "") == r.reproduce


def test_inputs_table_and_norm_bars(data):
    first, second = record(data, "ratio_loss")["inputs"]
    assert [first[k] for k in ("name", "shape", "dtype", "grad", "zero")] == ["predictions", "[8, 2]", "float32",
                                                                          "partial", "50.0%"]
    assert first["bar"] == 100.0  # the largest norm of the case fills its bar
    assert second["grad"] == "not-required" and "bar" not in second  # no gradient wanted, no bar


def test_norm_bars_scale_to_the_largest_norm():
    result = reportdata.passing("two")
    result.inputs = [InputResult("a", [2], "float32", True, "ok", 0.0, 0, 4.0),
                     InputResult("b", [2], "float32", True, "ok", 0.0, 0, 1.0),
                     InputResult("c", [2], "float32", True, "zero", 1.0, 0, 0.0)]
    data = page_data(render_html(reportdata.sample_run([result])))
    assert [i["bar"] for i in record(data, "two")["inputs"]] == [100.0, 25.0, 0.0]


def test_gradient_map_marks_the_dead_column(data):
    inputs = record(data, "ratio_loss")["inputs"]
    picture = inputs[0]["map"]
    assert (picture["cols"], picture["rows"]) == (2, 8)
    # grad_map is 8 rows of [1.0, 0.0]: the dead cells are exactly (row y, column 1).
    assert picture["dead"] == "".join(f"M1 {y}.5h1" for y in range(8))
    assert "hatched dark cells never" in picture["caption"]
    assert "map" not in inputs[1]  # an input that wants no gradient draws no map


def test_an_unmeasured_gradient_draws_no_map_and_claims_nothing():
    """Backward raised in the first draw: no input's gradient was seen, so no "never gets one" map."""
    result = reportdata.inplace_fail()
    result.draws = 0
    result.inputs = [InputResult("x", [4, 3], "float32", True, "none"),
                     InputResult("t", [4], "float32", False)]
    (x, t) = record(page_data(render_html(reportdata.sample_run([result]))), "sigmoid_inplace")["inputs"]
    assert x["grad"] == "not measured" and "map" not in x and x["zero"] == "–" and x["norm"] == "–"
    # The same input once measured: no gradient at all draws the all-dark map.
    result.draws = 2
    (x, _) = record(page_data(render_html(reportdata.sample_run([result]))), "sigmoid_inplace")["inputs"]
    assert x["grad"] == "none" and x["map"]["dead"]


def test_a_nonfinite_gradient_shows_its_count_not_a_norm():
    result = reportdata.ratio_fail()
    result.inputs = [InputResult("x", [16, 20], "float32", True, "nonfinite", 0.0, 180, 0.0),
                     InputResult("y", [4], "float32", True, "ok", 0.0, 0, 2.0)]
    x, y = record(page_data(render_html(reportdata.sample_run([result]))), "ratio_loss")["inputs"]
    assert x["norm"] == "180 of 320 elements NaN/Inf" and "bar" not in x and "map" not in x
    assert y["bar"] == 100.0  # the finite norm beside it is not scaled against a NaN's


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
    (feat,) = record(page_data(render_html(reportdata.sample_run([result]))), "ratio_loss")["inputs"]
    caption = feat["map"]["caption"]
    assert caption.startswith("feat [4, 100, 300], folded to 64×64 cells")


def test_status_is_never_colour_alone(tree, data):
    badges = tree.find_all("span", cls="badge") + tree.find_all("button", cls="chip")
    assert badges
    for badge in badges:
        status = next(c[3:] for c in badge.classes if c.startswith("st-"))
        icon = badge.find("span", cls="icon").text
        assert icon.strip() and status in badge.text
    # The script draws the table's badges from the same icons: every status and verdict has one.
    assert set(data["statusIcon"]) >= {r["key"] for r in data["results"]}
    assert all(data["gradIcon"][i["grad"]].strip() for r in data["results"] for i in r.get("inputs", []))


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
    evil = reportdata.HOSTILE + " </script><script>alert(2)</script> <!-- <script>"
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
    run = hostile_run()
    evil = run.results[0].case
    page = render_html(run)
    assert "<script>alert" not in page and "</script><script>" not in page and "<!-- <script>" not in page
    assert page.count("<script") == 2  # our data block and our code, nothing else
    tree = parse(page)
    scripts = tree.find_all("script")
    assert [s.attrs.get("type") for s in scripts] == ["application/json", None]
    # The data block holds the text exactly as it was, and the script puts it in as text only.
    data = page_data(page)
    (rec,) = data["results"]
    assert rec["case"] == evil and rec["findings"][0]["msg"] == [evil] and rec["warnings"] == [evil]
    assert rec["findings"][0]["src"][1][1] == f"x = '{evil}'  # https://evil.example/a.js"
    script = scripts[1].text
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "document.write" not in script
    # The text reads back exactly as it was, entities included, wherever the HTML shows it.
    card = tree.find("article", cls="cause")
    assert card.find("p", cls="message").text == evil
    assert card.find("ul", cls="affects").find("a").text == evil
    assert card.find("span", cls="culprit").find("span", cls="code").text == f"x = '{evil}'  # https://evil.example/a.js"
    assert tree.find("div", cls="copyline").find("code").text == evil
    assert tree.find("title").text.endswith(evil)
    assert external_refs(tree) == []
    # Anchors built from names hold only safe characters.
    for element in tree.iter():
        if element.attrs.get("id"):
            assert re.fullmatch(r"[A-Za-z0-9_.-]+", element.attrs["id"]), element.attrs["id"]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", r["anchor"]) for r in data["results"])


def test_autoescape_holds_for_the_j2_suffix():
    from gradaudit.htmlreport import environment

    env = environment()
    assert env.from_string("{{ x }}").render(x="<b>") == "&lt;b&gt;"
    assert env.get_template("report.html.j2").environment.autoescape is True


@pytest.mark.slow
def test_a_nightly_is_light_at_load():
    """2,000 results, 100 failing from 7 causes: a small page whose HTML holds the problems, not every result."""
    run = reportdata.nightly_run(2000)
    start = time.perf_counter()
    page = render_html(run)
    elapsed = time.perf_counter() - start
    size = len(page.encode("utf-8"))
    tree = parse(page)
    elements = sum(1 for _ in tree.iter())
    print(f"2000 results: {size / 1e6:.2f} MB, {elements} elements in the HTML, rendered in {elapsed:.2f} s")
    assert size < 3_000_000
    assert elements < 3_000  # the table and the details are laid out from the data, as needed
    data = page_data(page)
    assert len(data["results"]) == 2000
    assert len([c for c in tree.find_all("article", cls="cause") if "kind-fail" in c.classes]) == 7
    # Passing results carry no logs: no findings, errors or maps.
    for rec in data["results"]:
        if rec["status"] == "pass":
            assert not {"findings", "error", "warnings"} & set(rec)
            assert not any("map" in i for i in rec.get("inputs", []))


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
    assert len(page_data(page)["results"]) == len(reportdata.sample_run().results)


def test_backticked_code_in_messages_is_code_and_still_escaped():
    result = reportdata.ratio_fail()
    result.findings[1].message = "`b = x.detach()` at r.py:7 cuts `<script>alert(1)</script>` off; odd ` stays"
    result.findings[0].message = "a `lone backtick"
    result.summary_line = "`x.detach()` at r.py:7 <b>"
    page = render_html(reportdata.sample_run([result]))
    data = page_data(page)
    assert data["rows"][0]["what"] == ["", "x.detach()", " at r.py:7 <b>"]  # text, code, text
    first, second = record(data, "ratio_loss")["findings"]
    assert first["msg"] == ["", "b = x.detach()", " at r.py:7 cuts ", "<script>alert(1)</script>", " off; odd ` stays"]
    assert second["msg"] == ["a `lone backtick"]
    message = parse(page).find("article", cls="cause").find("p", cls="message")
    assert [c.text for c in message.find_all("code")] == ["b = x.detach()", "<script>alert(1)</script>"]
    assert message.text == result.findings[1].message.replace("`", "", 4)


def test_a_line_two_findings_share_is_shown_once():
    result = reportdata.ratio_fail()
    result.findings[0].location = result.findings[1].location
    first, second = record(page_data(render_html(reportdata.sample_run([result]))), "ratio_loss")["findings"]
    assert len(first["src"]) == 4 and second.get("same") == 1 and "src" not in second


@pytest.mark.parametrize(("results", "word"), [
    ([reportdata.passing("a")], "Passed"),
    ([reportdata.passing("a"), reportdata.warning()], "Passed with warnings"),
    ([reportdata.ratio_fail(expected=True)], "Passed"),
    ([reportdata.passing("a"), reportdata.erroring()], "Failed"),
])
def test_verdict_word(results, word):
    tree = parse(render_html(reportdata.sample_run(results)))
    assert tree.find("h1").text.split(" ", 1)[1] == word


def test_a_clean_run_says_no_problems():
    tree = parse(render_html(reportdata.sample_run([reportdata.passing("a"), reportdata.passing("b")])))
    assert tree.find("h2", id="problems-h").text == "No problems"
    assert not tree.find_all("article", cls="cause")


def test_an_interrupted_run_says_so():
    run = reportdata.sample_run([reportdata.passing("a")])
    run.interrupted = True
    assert "Interrupted" in parse(render_html(run)).find("h1").text


def test_the_baseline_line_has_a_readable_date():
    from gradaudit.baseline import apply_baseline

    old = reportdata.sample_run([reportdata.passing("ratio_loss", group="losses.ratio")])
    old.started_at = "2026-11-25T03:00:12+00:00"
    new = reportdata.sample_run([reportdata.ratio_fail()])
    apply_baseline(new, old, "last/results.json")
    tree = parse(render_html(new))
    line = tree.find("p", cls="baseline-line").text
    assert line == "Baseline: against last/results.json of 25 Nov 2026, 03:00 UTC: 1 new failure"
    chips = {c.attrs["data-filter-baseline"]: c.text for c in tree.find_all("button", cls="bl-chip")}
    assert chips == {"new": "1 new failure"}
    assert record(page_data(render_html(new)), "ratio_loss")["blkey"] == "new"


@pytest.mark.parametrize(("stamp", "text"), [
    ("2026-11-25T03:00:12+00:00", "25 Nov 2026, 03:00 UTC"),
    ("2026-11-25T03:00:12+02:00", "25 Nov 2026, 03:00 (UTC+02:00)"),
    ("2026-11-25T03:00:12", "25 Nov 2026, 03:00"),
    ("yesterday", "yesterday"),
])
def test_readable_time(stamp, text):
    from gradaudit.htmlreport import readable_time

    assert readable_time(stamp) == text


@pytest.mark.parametrize(("info", "text"), [
    ({"dims": {"B": 2}, "elements": 8, "budget": 64, "draws": 1, "passed": True},
     "passed on 8 float64 elements (B=2), 1 draw"),
    ({"skipped": "mps has no float64"}, "skipped: mps has no float64"),
])
def test_gradcheck_facts(info, text):
    result = reportdata.passing("a")
    result.gradcheck = info
    facts = dict(record(page_data(render_html(reportdata.sample_run([result]))), "a")["facts"])
    assert facts["gradcheck"] == text


def test_a_disconnected_input_gets_an_all_dark_map_from_its_shape():
    result = reportdata.ratio_fail()
    result.inputs = [InputResult("w", [3, 5], "float32", True, "none"),
                     InputResult("v", [200], "float32", True, "none"),
                     InputResult("ok", [3], "float32", True, "ok", 0.0, 0, 1.0)]
    inputs = record(page_data(render_html(reportdata.sample_run([result]))), "ratio_loss")["inputs"]
    w, v, ok = (i.get("map") for i in inputs)
    assert ok is None
    assert (w["cols"], w["rows"]) == (5, 3) and w["dead"] == "M0 0.5h5M0 1.5h5M0 2.5h5"
    assert (v["cols"], v["rows"]) == (64, 1)
    assert w["caption"].startswith("w [3, 5]: light")
    assert v["caption"].startswith("v [200], folded to 1×64 cells")
