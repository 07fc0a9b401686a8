"""A real Chromium (Debian's) driven by Playwright, for the pages' tests: real time, real clicks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from harness.servers import ROOT
from harness.servers import require_binary

# As the machine's notes say Chromium must start here: no sandbox as root, and nothing that
# reaches for the network (its background services would be refused, many at a time).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
PHONE = {"width": 375, "height": 740}  # an iPhone's viewport, in CSS pixels


@contextmanager
def chromium() -> Iterator[Any]:
    """A browser, for as many pages as a test opens; closed after it."""
    executable = require_binary("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def shot(page: Any, name: str) -> None:
    """Keep what the page shows, whole, as artifacts/screenshots/<name>.png (its name says what it shows)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def console_errors(page: Any) -> list[str]:
    """The page's errors from now on, as they come: the console's (a resource that failed to load, a
    Content-Security-Policy violation) and uncaught exceptions."""
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors
