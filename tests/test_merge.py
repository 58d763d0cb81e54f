"""`gradaudit report A.json B.json -o DIR`: shards of one run merge into one report."""

from __future__ import annotations

import json

import junitparser
import pytest

from tests.conftest import check_contract
from tests.htmltools import page_data
from tests.test_baseline import write


@pytest.mark.slow
def test_shards_merge_into_one_report(tmp_path, cli_invoke):
    one = write(tmp_path, "one.yaml", {"a_broken": "spine:raises", "b_good": "spine:raises_twin",
                                       "c_good": "spine:first_column_twin", "d_partial": "spine:first_column"})
    cli_invoke(["run", one, "-o", tmp_path / "s1", "--shard", "1/2"], expect_ok=None)
    cli_invoke(["run", one, "-o", tmp_path / "s2", "--shard", "2/2"], expect_ok=None)
    parts = [json.loads((tmp_path / s / "results.json").read_text()) for s in ("s1", "s2")]
    assert all(p["results"] for p in parts)  # both shards hold some of the cases
    out = tmp_path / "merged"
    result = cli_invoke(["report", tmp_path / "s2" / "results.json", tmp_path / "s1" / "results.json",
                         "-o", out, "--junit", out / "junit.xml", "--markdown", out / "summary.md"])
    check_contract(out / "results.json")
    merged = json.loads((out / "results.json").read_text())
    expected = sorted((r["case"], r["device"], r["status"]) for p in parts for r in p["results"])
    assert [(r["case"], r["device"], r["status"]) for r in merged["results"]] == expected  # sorted, all there
    for key in ("total", "pass", "fail", "error"):
        assert merged["summary"][key] == sum(p["summary"][key] for p in parts)
    assert merged["started_at"] == min(p["started_at"] for p in parts)
    assert f"{merged['summary']['total']} results" in result.output
    page = page_data((out / "index.html").read_text())
    assert sorted((r["case"], r["device"], r["status"]) for r in page["results"]) == expected
    junit = junitparser.JUnitXml.fromfile(str(out / "junit.xml"))
    assert sorted(c.name for s in junit for c in s) == sorted(f"{c}[{d}]" for c, d, _ in expected)
    summary = (out / "summary.md").read_text()
    assert "`a_broken`" in summary and "`d_partial`" in summary


def test_the_same_result_in_two_files_is_an_error(tmp_path, cli_invoke):
    one = write(tmp_path, "one.yaml", {"a": "spine:raises_twin"})
    cli_invoke(["run", one, "-o", tmp_path / "s1"])
    path = tmp_path / "s1" / "results.json"
    result = cli_invoke(["report", path, path, "-o", tmp_path / "m"], exit_code=2)
    assert f"{path}: a [cpu] is also in {path}" in result.output
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_report_renders_every_format_without_importing_torch(tmp_path):
    """`gradaudit report` works from the plain results: no torch needed to re-render."""
    import subprocess
    import sys

    from gradaudit.jsonreport import write_json
    from tests import reportdata
    from tests.conftest import REPO

    results = tmp_path / "results.json"
    with results.open("w", encoding="utf-8") as stream:
        write_json(reportdata.sample_run(), stream)
    out = tmp_path / "out"
    code = ("import sys; from typer.testing import CliRunner; from gradaudit.cli import app; "
            "r = CliRunner().invoke(app, sys.argv[1:]); print(r.output); "
            "assert r.exit_code == 0, r.exit_code; assert 'torch' not in sys.modules, 'torch was imported'")
    proc = subprocess.run([sys.executable, "-c", code, "report", str(results), "--baseline", str(results),
                           "-o", str(out), "--junit", str(out / "j.xml"), "--markdown", str(out / "s.md")],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "j.xml", "results.json", "s.md"]


def test_shards_of_different_configs_are_refused(tmp_path, cli_invoke):
    one = write(tmp_path, "one.yaml", {"a": "spine:raises_twin"})
    two = write(tmp_path, "two.yaml", {"b": "spine:raises_twin"})
    cli_invoke(["run", one, "-o", tmp_path / "s1"])
    cli_invoke(["run", two, "-o", tmp_path / "s2"])
    result = cli_invoke(["report", tmp_path / "s1" / "results.json", tmp_path / "s2" / "results.json",
                         "-o", tmp_path / "m"], exit_code=2)
    assert "merge the shards of one run of one config" in result.output
    assert "two.yaml" in result.output and "one.yaml" in result.output
    assert not (tmp_path / "m").exists()


def test_shards_of_different_versions_merge_with_a_warning(tmp_path, cli_invoke):
    from gradaudit.jsonreport import write_json
    from tests import reportdata

    paths = []
    for version, case in (("0.1.0", "a"), ("0.2.0", "b")):
        run = reportdata.sample_run()
        run.gradaudit_version = version
        run.config = {"path": "c.yaml", "sha256": "f" * 64}
        run.results = [r for r in run.results if r.case == run.results[0].case]
        for r in run.results:
            r.case = case
        path = tmp_path / f"{version}.json"
        with path.open("w", encoding="utf-8") as stream:
            write_json(run, stream)
        paths.append(path)
    result = cli_invoke(["report", *paths, "-o", tmp_path / "m"])
    assert "warning:" in result.output and "gradaudit 0.2.0" in result.output and "0.1.0" in result.output
