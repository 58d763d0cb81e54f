"""The report in a real browser: headless Chromium through Playwright, offline, no console errors.

Skips on a developer machine without chromium or Playwright; under CI=true a missing browser fails.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests import reportdata
from tests.conftest import REPO

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SEED = REPO / "sample_configs" / "seed_examples.yaml"


def _line_of(path: Path, text: str) -> int:
    """The number of the first line of `path` that holds `text` (ground truth for the culprit)."""
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing, and CI=true: the browser test must run in CI (see .ci/run)")
    pytest.skip(f"{what} is not installed here")


def _chromium() -> str:
    for candidate in (os.environ.get("GRADAUDIT_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium",
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    _missing("chromium")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package")
    executable = _chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield b
        b.close()


class Page:
    """A report opened in a fresh context that records console errors and every request."""

    def __init__(self, browser, path: Path, **context) -> None:
        self.context = browser.new_context(**context)
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        # Anything but the report itself would be a network dependency: refuse it, and it is recorded.
        self.context.route("**/*", lambda route: route.continue_() if route.request.url == self.url
                           else route.abort())
        self.url = path.resolve().as_uri()
        self.page.goto(self.url)

    def visible(self, selector: str) -> list[str]:
        return [el.get_attribute("id") or el.inner_text() for el in self.page.query_selector_all(selector)
                if el.is_visible()]

    def close(self) -> None:
        assert self.errors == [], f"console errors: {self.errors}"
        assert self.requests == [self.url], f"requests besides the report: {self.requests}"
        self.context.close()


@pytest.fixture(scope="module")
def seed_report(tmp_path_factory):
    """`gradaudit run sample_configs/seed_examples.yaml`, as the README says to run it."""
    from typer.testing import CliRunner

    from gradaudit.cli import app

    out = tmp_path_factory.mktemp("seed") / "report"
    result = CliRunner().invoke(app, ["run", str(SEED), "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def test_seed_report_filters_searches_and_shows_the_culprit(browser, seed_report, tmp_path):
    doc = json.loads((seed_report / "results.json").read_text())
    statuses = {(r["case"], r["device"]): r["status"] for r in doc["results"]}
    view = Page(browser, seed_report / "index.html", viewport={"width": 1280, "height": 900})
    page = view.page
    assert page.title().startswith("gradaudit: passed")
    assert len(page.query_selector_all("details.result")) == len(statuses)

    # Filtering by status hides the passing cases, without reloading.
    page.click("#problems-only")
    shown = {el.get_attribute("data-status") for el in page.query_selector_all("details.result") if el.is_visible()}
    assert shown == {s for s in statuses.values() if s not in ("pass", "skip")}
    rows = {el.query_selector("th").inner_text(): el.is_visible() for el in page.query_selector_all("tr.case-row")}
    failing_cases = {case for (case, _), s in statuses.items() if s == "fail"}
    assert {case for case, visible in rows.items() if visible} == failing_cases
    assert "Showing 3 of 14 results" in page.inner_text("#showing")
    # The chip of one status toggles just that status.
    page.click("#show-all")
    page.click("[data-filter-status=pass]")
    hidden = {el.get_attribute("data-status") for el in page.query_selector_all("details.result")
              if not el.is_visible()}
    assert hidden == {"pass"}
    page.click("#show-all")

    # Search by name, without reloading.
    page.fill("#search", "argmax")
    assert {el.query_selector(".name").inner_text() for el in page.query_selector_all("details.result")
            if el.is_visible()} == {"example_2_argmax_loop"}
    page.fill("#search", "")

    # Fold everything, then open the detached-ratio case from the table: its culprit line shows.
    page.click("#fold-all")
    if page.inner_text("#fold-all") == "Fold all":
        page.click("#fold-all")
    assert not page.is_visible("details.result .culprit")
    row = page.locator("tr.case-row").filter(has=page.get_by_role("link", name="example_1_detached_ratio", exact=True))
    row.locator("a.badge").first.click()  # the cpu cell's badge
    block = page.locator("details.result:has(.name:text-is('example_1_detached_ratio'))").first
    assert block.get_attribute("open") is not None
    page.screenshot(path=str(tmp_path / "seed-report.png"), full_page=True)
    culprit = block.locator(".src .culprit").first
    assert culprit.is_visible()
    assert "component_b_detached = component_b.detach()" in culprit.inner_text()
    assert culprit.locator(".ln").inner_text() == str(_line_of(SEED.parent / "seed_losses.py",
                                                               "component_b.detach()"))
    view.close()


@pytest.mark.parametrize(("width", "scheme"), [(1280, "light"), (390, "dark")])
def test_culprit_line_visible_after_expanding(browser, tmp_path, width, scheme):
    """Laptop and phone widths, light and dark: the culprit line of a folded case shows when opened."""
    from gradaudit.htmlreport import write_html

    run = reportdata.sample_run()
    page_path = tmp_path / "index.html"
    with page_path.open("w", encoding="utf-8") as stream:
        write_html(run, stream)
    view = Page(browser, page_path, viewport={"width": width, "height": 800}, color_scheme=scheme)
    page = view.page
    block = page.locator("details.result:has(.name:text-is('ratio_loss'))").first
    if block.get_attribute("open") is not None:
        block.locator("> summary").click()
    assert not block.locator(".culprit").is_visible()
    block.locator("> summary").click()
    culprit = block.locator(".src .culprit")
    culprit.scroll_into_view_if_needed()
    assert culprit.is_visible() and "b = predictions[:, 1].detach()" in culprit.inner_text()
    # The page fits the phone's width: only code blocks and tables scroll sideways.
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than the window"
    # The copy button copies the reproduce command (clipboard or the selection fallback).
    button = block.locator(".reproduce button.copy")
    button.click()
    page.wait_for_function("b => b.textContent !== 'Copy'", arg=button.element_handle())
    assert button.inner_text() in ("Copied", "Select and copy")
    page.screenshot(path=str(tmp_path / f"report-{width}-{scheme}.png"), full_page=True)
    view.close()


def test_hostile_names_do_not_run_script(browser, tmp_path):
    from gradaudit.htmlreport import write_html
    from tests.test_htmlreport import hostile_run

    page_path = tmp_path / "index.html"
    with page_path.open("w", encoding="utf-8") as stream:
        write_html(hostile_run(), stream)
    view = Page(browser, page_path)
    view.page.on("dialog", lambda d: view.errors.append(f"a dialog opened: {d.message}"))
    view.page.click("#fold-all")
    assert view.page.locator("details.result .name").inner_text() == reportdata.HOSTILE
    view.close()


def test_a_thousand_results_open_and_filter(browser, tmp_path):
    """The 1,000-result report opens and filters in the browser (timings printed, not asserted)."""
    import time

    from gradaudit.htmlreport import write_html
    from tests.test_htmlreport import big_run

    run = big_run()
    page_path = tmp_path / "index.html"
    with page_path.open("w", encoding="utf-8") as stream:
        write_html(run, stream)
    start = time.perf_counter()
    view = Page(browser, page_path, viewport={"width": 1280, "height": 800})
    opened = time.perf_counter() - start
    page = view.page
    start = time.perf_counter()
    page.click("#problems-only")
    shown = page.evaluate("document.querySelectorAll('details.result:not([hidden])').length")
    filtered = time.perf_counter() - start
    start = time.perf_counter()
    page.click("#fold-all")
    folded = time.perf_counter() - start
    print(f"1000 results, {page_path.stat().st_size / 1e6:.1f} MB: opened in {opened:.2f} s, "
          f"filtered in {filtered:.2f} s, unfolded in {folded:.2f} s")
    assert shown == sum(r.is_bad for r in run.results)
    assert page.evaluate("[...document.querySelectorAll('details.result:not([hidden])')].every(d => d.open)")
    view.close()


def test_a_missing_browser_fails_under_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        _missing("chromium")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        _missing("chromium")
