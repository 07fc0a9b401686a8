"""A page of another site cannot start runs through a visitor's browser: not by opening the home
page in a popup with a comparison's URL (over and over, with the key that tab keeps), not by an
image or a navigation to a lookup. Real Chromium (its Fetch Metadata), real gunicorn; the other
site is another origin on loopback (``localhost`` against the service's ``127.0.0.1``)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer

import pytest

from app.access import new_key
from harness.browser import chromium
from harness.servers import Gunicorn
from harness.servers import free_port
from harness.servers import http
from harness.servers import wait_until

pytestmark = pytest.mark.server
SECRET, ENTRY = new_key("visitor", "read+run+ops")
OPS = {"Authorization": f"Bearer {SECRET}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Gunicorn(tmp_path_factory.mktemp("foreign") / "gunicorn.log", env={"RUN_REGISTRY_API_KEYS": ENTRY}) as running:
        yield running


def foreign_site(page_html: str):
    """Another site: one page, on ``localhost`` (the service is ``127.0.0.1``: another site to a browser)."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = page_html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    site = ThreadingHTTPServer(("127.0.0.1", free_port()), Page)
    threading.Thread(target=site.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return site


def runs_started(server) -> int:
    return http("GET", f"{server.url}/registry/stats", headers=OPS).json()["misses"]


def test_a_popup_of_the_home_page_with_comparison_urls_starts_no_run_with_the_visitors_key(server):
    with chromium() as browser:
        context = browser.new_context()
        page = context.new_page()
        # The visitor has used the service in this browser: the key is in the tab's sessionStorage,
        # which a popup opened by that tab inherits.
        page.goto(f"{server.url}/")
        page.evaluate(f"sessionStorage.setItem('run-registry-key', '{SECRET}')")
        with page.expect_popup() as opened:
            page.evaluate(f"window.open('{server.url}/?left=pricing-v1:1&right=pricing-v2:1')")
        popup = opened.value
        for index in range(2, 12):  # as the foreign page did, every 0.7 s: another pair each time
            popup.goto(f"{server.url}/?left=pricing-v1:{index}&right=pricing-v2:{index}")
            popup.wait_for_selector("body[data-compare='not-started']", timeout=10_000)
        assert runs_started(server) == 0
        assert popup.is_visible("#start-compare")  # a person may start them, with a click
        context.close()


def test_an_image_or_a_navigation_from_another_site_cannot_start_a_run(server):
    lookup = f"{server.url}/runs/lookup?scenarioId=pricing-v1&seed=990"
    site = foreign_site(f'<!doctype html><img src="{lookup}"><iframe src="{lookup}&from=frame"></iframe>')
    try:
        with chromium() as browser:
            page = browser.new_page()
            page.goto(f"http://localhost:{site.server_port}/")
            wait_until(lambda: server.log().count("/runs/lookup?scenarioId=pricing-v1&seed=990") >= 2, timeout=10)
            page.goto(lookup + "&from=navigation")  # a navigation another site's page led to (from its URL)
            page.close()
    finally:
        site.shutdown()
        site.server_close()
    log = server.log()
    assert runs_started(server) == 0
    # The key is not sent by another site's page, so the door answers first; with keys off, the
    # service's own check refuses (the next test).
    assert '"path":"/runs/lookup?scenarioId=pricing-v1&seed=990","status":401' in log


def test_without_keys_a_request_of_another_sites_page_that_would_start_a_run_is_refused(tmp_path):
    with Gunicorn(tmp_path / "gunicorn.log") as open_server:
        lookup = f"{open_server.url}/runs/lookup?scenarioId=pricing-v1&seed=991"
        cached = http("GET", f"{open_server.url}/runs/lookup?scenarioId=pricing-v1&seed=42").json()["runId"]
        site = foreign_site(f'<!doctype html><img src="{lookup}">'
                            f'<img src="{open_server.url}/runs/lookup?scenarioId=pricing-v1&seed=42">')
        try:
            with chromium() as browser:
                page = browser.new_page()
                page.goto(f"http://localhost:{site.server_port}/")
                wait_until(lambda: "seed=991" in open_server.log() and open_server.log().count("seed=42") >= 2,
                           timeout=10)
                page.close()
        finally:
            site.shutdown()
            site.server_close()
        stats = http("GET", f"{open_server.url}/registry/stats").json()
        log = open_server.log()
        # A direct client (no Fetch Metadata) still starts runs.
        assert http("GET", f"{lookup}&direct=1").status == 200
    assert stats["misses"] == 1 and stats["hits"] >= 1  # only the test's own run; the image's hit is served
    assert '"path":"/runs/lookup?scenarioId=pricing-v1&seed=991","status":403' in log
    assert cached
