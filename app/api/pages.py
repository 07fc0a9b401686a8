"""The pages: the home page (look up, open, list and compare runs) and a run's replay page.

Each is the same bytes for every run, holding no run data: what they show they fetch from the API
(with the key their user gives them, when the service has keys). Their scripts and styles are
inline, the charts' script (charts.js) and the charting library it draws with (uPlot, vendored in
vendor/uplot) inlined into each at start-up, under a Content-Security-Policy that allows exactly
those scripts and styles by hash, and connections to this origin only. The one thing a page is
told by the service is how long it keeps runs (its setting), so that a page can say why a run is
not there.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from flask import Blueprint
from flask import Response
from flask import current_app
from flask import request

from app.api import keys_configured
from app.api import requires
from app.api import run_service
from app.api.negotiation import accepts_gzip
from app.errors import RunNotFound
from app.errors import error_response

bp = Blueprint("pages", __name__)

_PACKAGE = resources.files("app.api")
# What a page's source names is inlined: <script src="charts.js"></script> becomes <script>...</script>.
_INLINED = re.compile(rb'<script src="([\w./-]+)"></script>|<link rel="stylesheet" href="([\w./-]+)">')
_TTL_MARK = b"RUN_REGISTRY_TTL_MINUTES"  # in a page's <meta name="run-ttl-minutes">: the service's setting
FAVICON = _PACKAGE.joinpath("static", "favicon.svg").read_bytes()
# A week in any cache (it changes with a release, if ever); an SVG opened by itself runs nothing.
_FAVICON_HEADERS = {"Cache-Control": "public, max-age=604800", "Content-Security-Policy": "default-src 'none'"}


@dataclass(frozen=True)
class Page:
    """A page's bytes, its scripts and styles inlined, and the policy that allows exactly those."""

    name: str
    template: bytes  # with _TTL_MARK, which each app fills in once (``_served``)
    policy: str


def _read(path: bytes) -> bytes:
    return _PACKAGE.joinpath(*path.decode().split("/")).read_bytes()


def _page(name: str) -> Page:
    def inlined(match: re.Match[bytes]) -> bytes:
        script, style = match.groups()
        return b"<script>\n" + _read(script) + b"</script>" if script else b"<style>\n" + _read(style) + b"</style>"

    page = _INLINED.sub(inlined, _PACKAGE.joinpath(name).read_bytes())

    def digests(tag: str) -> str:
        blocks = re.findall(rb"<%s>(.*?)</%s>" % (tag.encode(), tag.encode()), page, re.DOTALL)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b).digest()).decode()}'" for b in blocks)

    policy = (
        f"default-src 'none'; script-src {digests('script')}; style-src {digests('style')};"
        " connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return Page(name, page, policy)


HOME_PAGE = _page("home.html")
REPLAY_PAGE = _page("replay.html")


def _served(page: Page, status: int = 200, vary: str = "Accept-Encoding") -> Response:
    """The page as this app serves it (its TTL filled in, once), gzipped for a client that takes gzip:
    with uPlot a page is about 78 KB, 31 KB gzipped."""
    served: dict[str, tuple[bytes, bytes]] = current_app.extensions.setdefault("pages", {})
    if page.name not in served:
        minutes = run_service().ttl_minutes
        body = page.template.replace(_TTL_MARK, f"{minutes:.10g}".encode())
        served[page.name] = (body, gzip.compress(body, compresslevel=9, mtime=0))
    plain, zipped = served[page.name]
    headers = {"Content-Security-Policy": page.policy, "Vary": vary}
    if accepts_gzip(request.environ.get("HTTP_ACCEPT_ENCODING", "")):
        return Response(zipped, status, mimetype="text/html", headers={**headers, "Content-Encoding": "gzip"})
    return Response(plain, status, mimetype="text/html", headers=headers)


@bp.get("/")
@requires()
def home_page() -> Response:
    """The home page: look a run up and watch it live, open, list and compare runs (with keys, asking for one).
    ---
    get:
      responses:
        '200':
          description: The home page (the same bytes for everyone)
          content: {text/html: {schema: {type: string}}}
    """
    return _served(HOME_PAGE)


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
        '404':
          description: >-
            An unknown run, without keys: the JSON error, or for a browser (Accept preferring text/html)
            the replay page itself, which says that the run is not there and why it may not be
          content:
            application/json: {schema: ErrorBody}
            text/html: {schema: {type: string}}
        '503': Unavailable
    """
    if keys_configured():  # the page, open to all, must not say which runIds exist: it asks with the key
        return _served(REPLAY_PAGE)
    try:
        run_service().run(run_id)
    except RunNotFound as err:
        if request.accept_mimetypes.best_match(("application/json", "text/html")) == "text/html":
            return _served(REPLAY_PAGE, 404, vary="Accept, Accept-Encoding")  # a person: the page says so
        response = error_response(err.error_type, err.message, err.status)  # a client of the API: the JSON 404
        response.headers["Vary"] = "Accept"
        return response
    return _served(REPLAY_PAGE, vary="Accept, Accept-Encoding")


@bp.get("/favicon.ico")
@requires()
def favicon() -> Response:
    """The pages' icon (an SVG), which browsers ask for.
    ---
    get:
      responses:
        '200':
          description: The icon, the same bytes for a week at least
          content: {image/svg+xml: {schema: {type: string}}}
    """
    return Response(FAVICON, mimetype="image/svg+xml", headers=_FAVICON_HEADERS)
