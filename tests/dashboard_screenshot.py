"""Regenerate docs/dashboard.png: `.venv/bin/python tests/dashboard_screenshot.py [OUT.png]`.

Runs the demo story into a scratch directory, serves the dashboard on 127.0.0.1, signs in through
the login form in headless Chromium (/usr/bin/chromium) and captures the flash-sale campaign page.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dashboard_support import ADMIN_TOKEN, CHROMIUM, CHROMIUM_ARGS, dashboard_world, serve

ROOT = Path(__file__).resolve().parent.parent


def capture(out: Path, campaign: str = "flash-sale") -> None:
    with tempfile.TemporaryDirectory() as scratch, dashboard_world(Path(scratch) / "demo", population=300) as world, \
            serve(world.app()) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000}, device_scale_factor=1)
        page.goto(f"{base}/dashboard/campaigns/{campaign}")
        page.fill("#token", ADMIN_TOKEN)
        page.click("button[type=submit]")
        page.wait_for_selector("svg.timeline-chart")
        page.screenshot(path=str(out), full_page=False)
        browser.close()


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "dashboard.png"
    capture(target)
    print(f"wrote {target}")
