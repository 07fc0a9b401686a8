"""HTTP blueprints: the only code that touches ``request``."""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Callable
from typing import Any
from typing import TypeVar
from typing import cast

from flask import Flask
from flask import Response
from flask import current_app
from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from app.access import Access
from app.access import Caller
from app.access import foreign_request
from app.access import open_caller
from app.api.negotiation import Wait
from app.api.negotiation import etag_matches
from app.api.negotiation import requested_wait
from app.config import MAX_BODY_BYTES
from app.config import MAX_LOOKUP_WAIT_S
from app.errors import BadInput
from app.errors import CrossSiteRequest
from app.errors import UnsupportedMediaType
from app.evidence.service import EvidenceService
from app.logs import log_request_fields
from app.models import LedgerEntry
from app.models import RunRecord
from app.runs.limits import client_network
from app.runs.operations import OperationsService
from app.runs.service import RunService
from app.runs.verification import VerificationService

JSON_TYPE = ("Content-Type", "application/json")  # the header, for answers built with their headers at once
_CALLER = "run_registry.caller"
F = TypeVar("F", bound=Callable[..., Any])


def run_service() -> RunService:
    """The app's service of runs: lookups, waits, streams (each service wired in ``create_app``)."""
    service: RunService = current_app.extensions["run_service"]
    return service


def evidence_service() -> EvidenceService:
    """The app's service of evidence: bodies, CSV, packs, attestations, signing keys."""
    return cast(EvidenceService, current_app.extensions["evidence_service"])


def verification_service() -> VerificationService:
    """The app's service of verifications and comparisons."""
    return cast(VerificationService, current_app.extensions["verification_service"])


def operations_service() -> OperationsService:
    """The app's operations view: readiness, statistics, metrics, the ledger in all."""
    return cast(OperationsService, current_app.extensions["operations_service"])


def preferred_wait(service: RunService) -> Wait:
    """How long to wait for a run that is not done: the run service's lookup wait, or what
    ``Prefer`` asks.

    Answers say so with ``answered_with(wait, response)``.
    """
    prefer = request.environ.get("HTTP_PREFER")
    if prefer is None:  # the common case, without parsing anything
        return Wait(service.lookup_wait_s, ())
    return requested_wait(prefer, service.lookup_wait_s, MAX_LOOKUP_WAIT_S)


def answered_with(wait: Wait, response: Response) -> Response:
    """The headers of an answer that may have waited: ``Vary: Prefer``, and ``Preference-Applied``
    with the preferences that decided the wait."""
    response.headers.add("Vary", "Prefer")
    if wait.applied:
        response.headers["Preference-Applied"] = ", ".join(wait.applied)
    return response


def conditional(
    record: RunRecord, representation: str, body: Callable[[], bytes], headers: tuple[tuple[str, str], ...]
) -> Response:
    """A done run's representation with a strong ETag, or ``304`` when the client has it.

    A done run's transcript never changes, so its digest and the representation's name make
    a validator for the bytes at this URL; ``body`` runs only when they are needed, and the
    answer carries ``headers`` (its type first) besides the ETag.
    """
    quoted = f'"{record.events_sha256[:40]}-{representation}"'
    validators = (("ETag", quoted), ("Cache-Control", _DONE_CACHE_CONTROL[keys_configured()]))
    if_none_match = request.environ.get("HTTP_IF_NONE_MATCH")
    # A client revalidating sends back the one ETag it was given: compared as a string first,
    # and parsed (lists, weak tags, *) only when it is something else.
    if if_none_match is not None and (if_none_match == quoted or etag_matches(if_none_match, quoted)):
        # RFC 9110 15.4.5: a 304 carries the Vary and Cache-Control its 200 would.
        return Response(status=304, headers=(*(item for item in headers if item[0] == "Vary"), *validators))
    return Response(body(), headers=(*headers, *validators))


# What caches may do with a done run's representation (docs/api.md, "Caching"): keep it an hour,
# then revalidate (a 304, nothing sent again). Its bytes never change but for a new signing key,
# which the hour bounds. With keys, only the client's own cache: a shared one would hand it to
# whoever asks next, key or not.
_DONE_CACHE_CONTROL = {False: "public, max-age=3600", True: "private, max-age=3600"}


def determinism_body(entry: LedgerEntry | None) -> dict[str, Any]:
    """A key's determinism as the contract shows it (section 14); a key the ledger forgot has
    no reference and no checks, until its next done run."""
    if entry is None:
        return {"status": "unchecked", "checks": 0, "divergences": 0, "reference": None}
    return {
        "status": entry.status, "checks": entry.checks, "divergences": entry.divergences,
        "reference": {"runId": entry.reference_run_id, "eventsSha256": entry.reference_sha256,
                      "createdAt": entry.reference_created_at},
    }


def client_address() -> str:
    """Who is asking, for the limits: the network of the peer's address, or of the one trusted
    proxies forwarded (ProxyFix); see ``client_network``."""
    return client_network(request.remote_addr or "unknown")


def requires(*scopes: str) -> Callable[[F], F]:
    """The scopes a route needs at the door when keys are configured (none: it is open).

    What a lookup or a compare needs beyond ``read`` (``run``, when it would start a run) only
    the service knows: it checks the caller it is given.
    """

    def mark(view: F) -> F:
        view.required_scopes = scopes  # type: ignore[attr-defined]
        return view

    return mark


def guard_views(app: Flask, access: Access) -> None:
    """With keys configured, every view of ``app`` first asks who the caller is (once) and whether
    the route lets it in. A view that declares no scopes lets no one in: a new route is closed
    until it says otherwise. A route that matches no view (404, 405) is answered as without keys.

    Each view is wrapped where it is registered, rather than checked by a ``before_request``:
    Flask's round of before-request hooks, the endpoint's lookup and the ``current_app`` proxy
    cost more than the check itself (bench/overhead.py).
    """
    for endpoint, view in list(app.view_functions.items()):
        scopes: tuple[str, ...] = getattr(view, "required_scopes", ("ops", "read", "run"))
        if scopes:
            app.view_functions[endpoint] = _guarded(view, scopes, access)


def _guarded(view: F, scopes: tuple[str, ...], access: Access) -> F:
    needed = frozenset(scopes)

    @functools.wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        current = request._get_current_object()  # type: ignore[attr-defined]
        environ = current.environ
        found = access.caller(environ.get("HTTP_AUTHORIZATION"), client_network(current.remote_addr or "unknown"))
        environ[_CALLER] = found
        if found.key_id is not None:
            log_request_fields(environ, keyId=found.key_id)
        if not needed <= found.scopes:
            found.require(*scopes)  # raises, saying what is missing
        return view(*args, **kwargs)

    return guarded  # type: ignore[return-value]


def keys_configured() -> bool:
    """Whether the service has keys: with them, what is open to all must say nothing of any run."""
    access: Access = current_app.extensions["access"]
    return access.enabled


def caller() -> Caller:
    """This request's caller: as the door found it, or (without keys) its client, with every scope."""
    environ = request.environ
    foreign = "HTTP_SEC_FETCH_SITE" in environ and foreign_request(
        environ["HTTP_SEC_FETCH_SITE"], environ.get("HTTP_SEC_FETCH_MODE"), environ.get("HTTP_SEC_FETCH_USER"))
    found: Caller | None = environ.get(_CALLER)
    if found is None:
        return open_caller(client_address(), foreign)
    return found._replace(foreign=True) if foreign else found


def bound_request_body() -> None:
    """Refuse a body over 64 KiB however it is sent, before any view reads it.

    werkzeug refuses a Content-Length over the limit, but a chunked body it cuts at the limit
    and reads as whole, so a chunked body is read here, one byte past the limit, and kept.
    """
    environ = request.environ
    if request.content_length is not None:
        if request.content_length > MAX_BODY_BYTES:
            raise RequestEntityTooLarge()
        return
    if "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return
    body = environ["wsgi.input"].read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise RequestEntityTooLarge()
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("HTTP_TRANSFER_ENCODING")


def refuse_cross_site_posts() -> None:
    """A POST starts engine work: a page of another site must not make a visitor's browser send one.

    Browsers send forms and no-cors fetches without asking first, always with a form
    content type or none; they also say where a request comes from (Fetch Metadata).
    """
    if request.method != "POST":
        return
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        raise CrossSiteRequest("Requests from other sites' pages are refused; call the API directly")
    if request.content_type is not None and not request.is_json:
        raise UnsupportedMediaType("The body must be JSON, sent with Content-Type: application/json, or absent")


def json_body() -> Any:
    """The request body parsed as JSON.

    :raises BadInput: it is absent, not JSON, not UTF-8, or nested too deeply to parse.
    """
    if not request.is_json:
        raise BadInput("the body must be JSON, sent with Content-Type: application/json")
    try:
        # The body is already bounded (bound_request_body).
        return json.loads(request.get_data(cache=False))
    except (ValueError, RecursionError) as err:  # RecursionError: "[[[[..." thousands deep
        raise BadInput("the body is not valid JSON") from err


def optional_json_body() -> Any:
    """The JSON body, or ``None`` when there is none (a POST that needs no input may carry either)."""
    if not request.content_length:
        return None
    return json_body()
