"""Take docs/report.png: the report of a generated 2,000-result nightly, in headless Chromium.

    python scripts/report_screenshot.py [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "report.png")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from playwright.sync_api import sync_playwright

    from gradaudit.htmlreport import render_html
    from tests.reportdata import nightly_run

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        page_path = Path(tmp) / "index.html"
        page_path.write_text(render_html(nightly_run(2000)), encoding="utf-8")
        browser = p.chromium.launch(executable_path=args.chromium, args=["--headless", "--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 1400}, device_scale_factor=1)
        page.goto(page_path.as_uri())
        page.screenshot(path=str(args.out))
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
