"""Report benchmark: the HTML report of a realistic nightly at 2,000 and 10,000 results, in Chromium.

    python benchmarks/bench_report.py                   # 2,000 and 10,000 results
    python benchmarks/bench_report.py --sizes 2000 --repeats 1
    python benchmarks/bench_report.py --gradaudit /path/to/other/checkout   # the same, rendered by it

The nightly is tests/reportdata.nightly_run: real results of tests/data/nightly_template.yaml
multiplied out, 100 failing results from 7 distinct causes, warnings, known-bad fixtures and a
baseline. For each size it prints the page's size, the time to render it, and in headless
Chromium (Debian's /usr/bin/chromium through Playwright): DOM elements and nodes at load,
DOMContentLoaded and load times, and the time of a search by file:line, of clearing it, of
"Problems only" and of "Show all" (each to the next frame painted). Targets (issue 13): at 2,000
results at most about 15,000 DOM nodes at load; at 10,000 results open in about 2 s. Times are
printed, never asserted: they depend on the machine and on its load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
# One interaction, timed from the event to the frame after it (layout and paint included).
INTERACT = """async ([selector, action, value]) => {
  const el = document.querySelector(selector);
  if (!el) { return null; }
  const start = performance.now();
  if (action === "fill") { el.value = value; el.dispatchEvent(new Event("input", {bubbles: true})); }
  else { el.click(); }
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  return performance.now() - start;
}"""
COUNT = """() => {
  const walker = document.createTreeWalker(document, NodeFilter.SHOW_ALL);
  let nodes = 0;
  while (walker.nextNode()) { nodes += 1; }
  const nav = performance.getEntriesByType("navigation")[0];
  return {elements: document.getElementsByTagName("*").length, nodes: nodes,
          dcl: nav.domContentLoadedEventEnd, load: nav.loadEventEnd};
}"""
SEARCH = "sample_configs/seed_losses.py:17"


def chromium() -> str:
    for candidate in (os.environ.get("GRADAUDIT_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    sys.exit("chromium is not installed (apt-get install chromium), or set GRADAUDIT_CHROMIUM")


def measure(browser, path: Path) -> dict[str, float | None]:
    """Open the page in a fresh context and time load and the four interactions."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    start = time.perf_counter()
    page.goto(path.resolve().as_uri(), wait_until="load", timeout=300_000)
    wall = time.perf_counter() - start
    facts = page.evaluate(COUNT)
    # The search box grew a new id in the report of issue 13; older pages have #search too.
    facts["search"] = page.evaluate(INTERACT, ["#search", "fill", SEARCH])
    facts["clear"] = page.evaluate(INTERACT, ["#search", "fill", ""])
    facts["problems"] = page.evaluate(INTERACT, ["#problems-only", "click", ""])
    facts["all"] = page.evaluate(INTERACT, ["#show-all", "click", ""])
    facts["wall"] = wall
    context.close()
    return facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--repeats", type=int, default=3, help="page loads per size (the median is printed)")
    parser.add_argument("--gradaudit", type=Path, help="render with the gradaudit of this checkout instead")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from playwright.sync_api import sync_playwright

    from tests.reportdata import nightly_run

    nightlies = {size: nightly_run(size).to_dict() for size in args.sizes}
    if args.gradaudit:  # forget this checkout's gradaudit, import the other one's
        for name in [m for m in sys.modules if m == "gradaudit" or m.startswith("gradaudit.")]:
            del sys.modules[name]
        sys.path.insert(0, str(args.gradaudit.resolve()))
    import gradaudit.htmlreport as htmlreport
    from gradaudit.model import RunResults

    print(f"rendering with {Path(htmlreport.__file__).parent}")
    print(f"{'results':>8} {'MB':>6} {'render s':>8} {'elements':>9} {'nodes':>8} {'DCL s':>6} {'load s':>6} "
          f"{'search ms':>9} {'clear ms':>8} {'problems ms':>11} {'all ms':>7}")
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=FLAGS)
        for size in args.sizes:
            run = RunResults.from_dict(nightlies[size])
            start = time.perf_counter()
            text = htmlreport.render_html(run)
            render = time.perf_counter() - start
            path = Path(tmp) / f"report-{size}.html"
            path.write_text(text, encoding="utf-8")
            runs = [measure(browser, path) for _ in range(args.repeats)]

            def med(key: str, scale: float = 1.0, runs=runs) -> str:
                values = [r[key] for r in runs if r.get(key) is not None]
                return f"{statistics.median(values) * scale:.0f}" if values else "–"

            first = runs[0]
            print(f"{size:>8} {len(text.encode()) / 1e6:>6.1f} {render:>8.2f} {first['elements']:>9} "
                  f"{first['nodes']:>8} {float(med('dcl')) / 1000:>6.2f} {float(med('load')) / 1000:>6.2f} "
                  f"{med('search'):>9} {med('clear'):>8} {med('problems'):>11} {med('all'):>7}", flush=True)
        browser.close()


if __name__ == "__main__":
    main()
