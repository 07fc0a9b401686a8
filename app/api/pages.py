"""The pages: the home page (look up, open and compare runs) and a run's replay page.

Each is the same bytes for everyone, holding no run data: what they show they fetch from the API
(with the key their user gives them, when the service has keys). Their scripts are inline, the
charts' script (charts.js) inlined into each at start-up, under a Content-Security-Policy that
allows exactly those scripts and styles by hash, and connections to this origin only.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

from flask import Blueprint
from flask import Response

from app.api import keys_configured
from app.api import requires
from app.api import run_service

bp = Blueprint("pages", __name__)


def _page(name: str) -> tuple[bytes, str]:
    """The page's bytes, charts.js inlined, and the policy that allows exactly its scripts and styles."""
    files = resources.files("app.api")
    charts = files.joinpath("charts.js").read_bytes()
    page = files.joinpath(name).read_bytes().replace(b'<script src="charts.js"></script>',
                                                     b"<script>\n" + charts + b"</script>")

    def digests(tag: str) -> str:
        blocks = re.findall(rb"<%s>(.*?)</%s>" % (tag.encode(), tag.encode()), page, re.DOTALL)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b).digest()).decode()}'" for b in blocks)

    policy = (
        f"default-src 'none'; script-src {digests('script')}; style-src {digests('style')};"
        " connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return page, policy


HOME_PAGE, HOME_PAGE_POLICY = _page("home.html")
REPLAY_PAGE, REPLAY_PAGE_POLICY = _page("replay.html")


@bp.get("/")
@requires()
def home_page() -> Response:
    """The home page: look a run up and watch it live, open one by its runId, compare two (with keys, asking for one).
    ---
    get:
      responses:
        '200':
          description: The home page (the same bytes for everyone)
          content: {text/html: {schema: {type: string}}}
    """
    return Response(HOME_PAGE, mimetype="text/html", headers={"Content-Security-Policy": HOME_PAGE_POLICY})


@bp.get("/runs/<run_id>/replay")
@requires()
def replay_page(run_id: str) -> Response:
    """A self-contained page that replays the run in the browser, live while it runs (with keys, asking for one).
    ---
    get:
      parameters: [run_id]
      responses:
        '200':
          description: The replay page (the same bytes for every run)
          content: {text/html: {schema: {type: string}}}
        '404': NotFound
        '503': Unavailable
    """
    if not keys_configured():  # else the page, open to all, would say which runIds exist
        run_service().run(run_id)  # an unknown run is the JSON 404, not a page that fails later
    return Response(REPLAY_PAGE, mimetype="text/html", headers={"Content-Security-Policy": REPLAY_PAGE_POLICY})
