"""Nightly baselines: new failure / still failing / fixed / new case, and --fail-on new."""

from __future__ import annotations

import json
import textwrap

import pytest

from gradaudit.baseline import apply_baseline, describe, mark_of, new_failures
from gradaudit.cli import exit_code_of
from gradaudit.jsonreport import read_json
from tests import reportdata
from tests.conftest import LOSSES, by_case, check_contract
from tests.htmltools import page_data, parse


@pytest.mark.parametrize(("old", "new", "mark"), [
    (None, "fail", "new-case"),
    (None, "pass", "new-case"),
    ("pass", "fail", "new-failure"),
    ("warn", "error", "new-failure"),
    ("skip", "crash", "new-failure"),
    ("fail", "fail", "still-failing"),
    ("error", "timeout", "still-failing"),
    ("fail", "pass", "fixed"),
    ("crash", "warn", "fixed"),
    ("pass", "pass", None),
    ("fail", "skip", None),
])
def test_marks(old, new, mark):
    old_result = reportdata.passing("a") if old else None
    if old_result:
        old_result.status = old
    result = reportdata.passing("a")
    result.status = new
    assert mark_of(result, old_result) == mark


def test_apply_records_counts_and_gone_cases():
    old = reportdata.sample_run([reportdata.passing("a"), reportdata.ratio_fail(), reportdata.passing("gone")])
    new = reportdata.sample_run([reportdata.ratio_fail(case="a"), reportdata.passing("ratio_loss"),
                                 reportdata.passing("brand_new")])
    apply_baseline(new, old, "old.json")
    marks = {r.case: r.baseline for r in new.results}
    assert marks == {"a": "new-failure", "ratio_loss": "fixed", "brand_new": "new-case"}
    assert new.baseline["counts"] == {"new-failure": 1, "still-failing": 0, "fixed": 1, "new-case": 1}
    assert new.baseline["gone"] == ["gone [cpu]"]
    assert describe(new) == ("against old.json of 2026-11-26T04:00:00+00:00: 1 new failure, 1 fixed, "
                             "1 new case, 1 gone")


def test_baseline_marks_round_trip_through_results_json(tmp_path):
    from gradaudit.jsonreport import write_json

    old = reportdata.sample_run([reportdata.passing("ratio_loss", group="losses.ratio")])
    new = reportdata.sample_run()
    apply_baseline(new, old, "old.json")
    path = tmp_path / "results.json"
    with path.open("w", encoding="utf-8") as stream:
        write_json(new, stream)
    check_contract(path)
    again = read_json(path)
    assert [r.baseline for r in again.results] == [r.baseline for r in new.results]
    assert again.baseline == new.baseline


def test_fail_on_new_ignores_known_failures():
    old = reportdata.sample_run([reportdata.ratio_fail()])
    still = reportdata.sample_run([reportdata.ratio_fail()])
    apply_baseline(still, old)
    assert exit_code_of(still, "fail") == 1 and exit_code_of(still, "new") == 0
    fresh = reportdata.sample_run([reportdata.ratio_fail(), reportdata.ratio_fail(case="other")])
    apply_baseline(fresh, old)
    assert [r.case for r in new_failures(fresh)] == ["other"]
    assert exit_code_of(fresh, "new") == 1


def test_html_shows_the_marks():
    old = reportdata.sample_run([reportdata.passing("ratio_loss", group="losses.ratio")])
    new = reportdata.sample_run([reportdata.ratio_fail()])
    apply_baseline(new, old, "nightly/results.json")
    page = __import__("gradaudit.htmlreport", fromlist=["render_html"]).render_html(new)
    tree = parse(page)
    assert "against nightly/results.json" in tree.find("p", cls="baseline-line").text
    marks = [m.text for m in tree.find_all("span", cls="bl-new-failure")]
    assert marks == ["1 new"]  # on the cause card; the table's marks are drawn from the data
    (record,) = page_data(page)["results"]
    assert record["bl"] == "new-failure" and record["blkey"] == "new"


CONFIG = """\
    version: 1
    sys_path: [{losses}]
    defaults: {{devices: [cpu], repeats: 2}}
    cases:
    {cases}
    """


def write(tmp_path, name, cases: dict[str, str]):
    body = "\n".join(f"  - name: {case}\n    loss: {loss}\n    inputs: {{x: {{shape: [4, 3]}}}}"
                     for case, loss in cases.items())
    path = tmp_path / name
    path.write_text(textwrap.dedent(CONFIG).format(losses=LOSSES, cases=body), encoding="utf-8")
    return path


@pytest.mark.slow
def test_run_with_baseline_marks_and_gates_on_new(tmp_path, cli_invoke):
    broken, good = "spine:raises", "spine:raises_twin"
    first = write(tmp_path, "first.yaml", {"fixed_one": broken, "breaks_now": good, "old_debt": broken,
                                           "removed": good})
    second = write(tmp_path, "second.yaml", {"fixed_one": good, "breaks_now": broken, "old_debt": broken,
                                             "added": broken})
    cli_invoke(["run", first, "-o", tmp_path / "night1"], exit_code=1)
    baseline = tmp_path / "night1" / "results.json"
    out = tmp_path / "night2"
    result = cli_invoke(["run", second, "-o", out, "--baseline", baseline, "--markdown", out / "summary.md"],
                        exit_code=1)
    check_contract(out / "results.json")
    doc = json.loads((out / "results.json").read_text())
    marks = {case: r.get("baseline") for case, r in by_case(doc).items()}
    assert marks == {"fixed_one": "fixed", "breaks_now": "new-failure", "old_debt": "still-failing",
                     "added": "new-case"}
    assert doc["baseline"]["gone"] == ["removed [cpu]"]
    assert "1 new failure, 1 still failing, 1 fixed, 1 new case, 1 gone" in result.output
    assert "new failure" in result.output  # the table's column
    assert "| `breaks_now` | cpu | FAIL | new failure |" in (out / "summary.md").read_text()
    # --fail-on new: old_debt alone does not fail the run; breaks_now and added do.
    cli_invoke(["run", second, "-o", tmp_path / "n3", "--baseline", baseline, "--fail-on", "new"], exit_code=1)
    only_debt = write(tmp_path, "debt.yaml", {"old_debt": broken, "fixed_one": good})
    cli_invoke(["run", only_debt, "-o", tmp_path / "n4", "--baseline", baseline, "--fail-on", "new"], exit_code=0)
    cli_invoke(["run", only_debt, "-o", tmp_path / "n5", "--baseline", baseline], exit_code=1)


def test_fail_on_new_needs_a_baseline(tmp_path, cli_invoke):
    config = write(tmp_path, "c.yaml", {"a": "spine:raises_twin"})
    result = cli_invoke(["run", config, "-o", tmp_path / "out", "--fail-on", "new"], exit_code=2)
    assert "--fail-on new needs --baseline" in result.output
    assert not (tmp_path / "out").exists()  # nothing ran


def test_a_baseline_that_is_not_a_results_file_is_a_clear_error(tmp_path, cli_invoke):
    config = write(tmp_path, "c.yaml", {"a": "spine:raises_twin"})
    bogus = tmp_path / "old.json"
    bogus.write_text("{\"not\": \"results\"}")
    result = cli_invoke(["run", config, "-o", tmp_path / "out", "--baseline", bogus], exit_code=2)
    assert f"{bogus}: not a gradaudit results file" in result.output
    missing = cli_invoke(["report", bogus, "--baseline", tmp_path / "missing.json", "-o", tmp_path / "r"],
                         exit_code=2)
    assert "error:" in missing.output and "Traceback" not in missing.output


def test_describe_counts_in_plural():
    old = reportdata.sample_run([reportdata.passing("a"), reportdata.passing("b")])
    new = reportdata.sample_run([reportdata.ratio_fail(case="a"), reportdata.ratio_fail(case="b"),
                                 reportdata.passing("c"), reportdata.passing("d")])
    apply_baseline(new, old, "old.json")
    assert describe(new).endswith(": 2 new failures, 2 new cases")
