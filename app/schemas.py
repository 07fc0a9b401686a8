"""Marshmallow schemas for every input, and the one place validation becomes BAD_INPUT."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from marshmallow import EXCLUDE
from marshmallow import Schema
from marshmallow import ValidationError
from marshmallow import fields
from marshmallow import post_load
from marshmallow import pre_load
from marshmallow import validate
from werkzeug.datastructures import MultiDict

from app.errors import BadInput

MAX_SAFE_INTEGER = 2**53 - 1  # JavaScript's Number.MAX_SAFE_INTEGER: seeds survive a JS client
# \Z, not $: marshmallow's Regexp uses match(), and $ would accept a trailing newline.
SCENARIO_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_SEED_PATTERN = re.compile(r"[+-]?[0-9]+")
# A runId as the service makes one: run_<scenarioId>_<seed>_<createdAt>.
_SCENARIO_ID = SCENARIO_ID_PATTERN.pattern.removesuffix(r"\Z")
RUN_ID_PATTERN = re.compile(rf"run_{_SCENARIO_ID}_-?[0-9]{{1,16}}_[0-9]{{1,16}}\Z")

MAX_POSITION = 2**31 - 1  # far beyond any transcript; bounds the parse
LIVE_PACE_MS = 50  # the default engine's nominal rhythm: 20 events a second
MAX_PACE_MS = 1000

REQUIRED_MESSAGE = "scenarioId and seed parameters required"
COMPARE_BODY_MESSAGE = 'the body must be a JSON object: {"left": {"scenarioId", "seed"}, "right": {...}}'
SEED_MESSAGE = "seed must be a valid integer"
SEED_RANGE_MESSAGE = (
    f"seed must be a valid integer between -{MAX_SAFE_INTEGER} and {MAX_SAFE_INTEGER}"
)
SCENARIO_ID_MESSAGE = (
    "scenarioId must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' or '-',"
    " starting with a letter or digit"
)


class Seed(fields.Field):
    """A seed: ASCII decimal with an optional sign, within JavaScript's safe integers."""

    def __init__(self, **kwargs: Any) -> None:
        metadata = {"type": "integer", "minimum": -MAX_SAFE_INTEGER, "maximum": MAX_SAFE_INTEGER, "example": 42}
        super().__init__(metadata=metadata, **kwargs)

    default_error_messages = {
        "required": REQUIRED_MESSAGE,
        "null": REQUIRED_MESSAGE,
        "invalid": SEED_MESSAGE,
        "range": SEED_RANGE_MESSAGE,
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        # Numbers are accepted from JSON bodies; bool is an int subclass but never a seed.
        if isinstance(value, int) and not isinstance(value, bool):
            seed = value
        elif isinstance(value, str) and _SEED_PATTERN.fullmatch(value):
            # Bound the digits before int(): a huge string is out of range, not a slow parse.
            if len(value.lstrip("+-").lstrip("0")) > len(str(MAX_SAFE_INTEGER)):
                raise self.make_error("range")
            seed = int(value)
        else:
            raise self.make_error("invalid")
        if not -MAX_SAFE_INTEGER <= seed <= MAX_SAFE_INTEGER:
            raise self.make_error("range")
        return seed


def scenario_id_field(**kwargs: Any) -> fields.String:
    """A scenarioId: the characters a runId and a file name can carry safely."""
    return fields.String(
        required=True,
        validate=validate.Regexp(SCENARIO_ID_PATTERN, error=SCENARIO_ID_MESSAGE),
        # The same pattern for OpenAPI, in the ECMA dialect it uses (no \Z).
        metadata={"pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", "example": "pricing-v1"},
        error_messages={"required": REQUIRED_MESSAGE, "null": REQUIRED_MESSAGE,
                        "invalid": SCENARIO_ID_MESSAGE},
        **kwargs,
    )


class QuerySchema(Schema):
    """A query string: unknown parameters are ignored, a repeated known one is refused."""

    class Meta:
        unknown = EXCLUDE

    @pre_load
    def refuse_repeated(self, data: Mapping[str, Any], **kwargs: Any) -> Mapping[str, Any]:
        """``seed=1&seed=2`` is ambiguous; taking either value would be a guess."""
        getlist = getattr(data, "getlist", None)
        for field in self.load_fields.values():
            name = field.data_key or field.name
            if getlist is not None and len(getlist(name)) > 1:
                raise ValidationError(f"{name} parameter given more than once")
        return data


class LookupQuery(QuerySchema):
    """``GET /runs/lookup?scenarioId=&seed=``."""

    scenario_id = scenario_id_field(data_key="scenarioId")
    seed = Seed(required=True)

    @pre_load
    def refuse_missing(self, data: Mapping[str, Any], **kwargs: Any) -> Mapping[str, Any]:
        """Empty counts as missing, with the one message the contract gives for both."""
        if any(data.get(name) in (None, "") for name in ("scenarioId", "seed")):
            raise ValidationError(REQUIRED_MESSAGE)
        return data


_LOOKUP_QUERY = LookupQuery()


MAX_RUNS_PAGE = 100
RUNS_PAGE = 20
_RUNS_LIMIT_MESSAGE = f"limit must be a whole number from 1 to {MAX_RUNS_PAGE}"


class RunsQuery(QuerySchema):
    """``GET /runs?limit=&cursor=``: a page size, and where the last page ended."""

    limit = fields.Integer(load_default=RUNS_PAGE, strict=True,
                           validate=validate.Range(1, MAX_RUNS_PAGE, error=_RUNS_LIMIT_MESSAGE),
                           error_messages={"invalid": _RUNS_LIMIT_MESSAGE},
                           metadata={"description": f"runs in the page, 1 to {MAX_RUNS_PAGE}"})
    cursor = fields.String(load_default=None, validate=validate.Regexp(
        RUN_ID_PATTERN, error="cursor must be a page's next, as GET /runs gave it"),
        metadata={"description": "the previous page's next",
                  "pattern": "^" + RUN_ID_PATTERN.pattern.removesuffix(r"\Z") + "$"})  # ECMA's dialect

    @pre_load
    def whole_numbers(self, data: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        """A query's limit is text: digits only (``1e2``, ``+5`` or `` 5`` would be a guess)."""
        loaded = dict(data.items())
        limit = loaded.get("limit")
        if limit is not None:
            if not (isinstance(limit, str) and re.fullmatch(r"[0-9]{1,3}", limit)):
                raise ValidationError(_RUNS_LIMIT_MESSAGE, "limit")
            loaded["limit"] = int(limit)
        return loaded


# The id of the message that ends a failed run's stream: no position, so that a client that saw
# it resumes with it, and is told to stop (204), instead of being sent the failure again.
END_ID = "end"
AFTER_THE_END = -1  # Last-Event-ID: end: the client saw the message that ends a failed run


class Position(fields.Field):
    """An event position: a positive decimal integer (whether it is in the run, the service checks),
    or ``end`` (the id of a failed run's last message: ``AFTER_THE_END``)."""

    default_error_messages = {"invalid": "{name} must be the position of an event (a positive integer) or end"}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int | None:
        if value == "":
            return None  # an empty Last-Event-ID is how EventSource says "none" (the SSE specification)
        if value == END_ID:
            return AFTER_THE_END
        if not (isinstance(value, str) and re.fullmatch(r"[0-9]{1,10}", value) and 0 < int(value) <= MAX_POSITION):
            raise self.make_error("invalid", name=self.data_key)
        return int(value)


class Pace(fields.Field):
    """Replay pacing: ``live`` for the engine's nominal rhythm, or milliseconds between events."""

    default_error_messages = {
        "invalid": f"pace must be 'live' or a delay in milliseconds from 0 to {MAX_PACE_MS}",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if value == "live":
            return LIVE_PACE_MS
        if isinstance(value, str) and re.fullmatch(r"[0-9]{1,4}", value) and int(value) <= MAX_PACE_MS:
            return int(value)
        raise self.make_error("invalid")


class ReplayQuery(QuerySchema):
    """SSE replay: ``?lastEventId=&pace=``, plus the ``Last-Event-ID`` header the view adds."""

    last_event_id = Position(data_key="lastEventId", load_default=None)
    last_event_id_header = Position(data_key="Last-Event-ID", load_default=None)
    pace = Pace(load_default=0)

    @post_load
    def one_position(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """The header wins: an EventSource reconnecting to ``...?lastEventId=5`` sends where it got to."""
        header = data.pop("last_event_id_header")
        if header is not None:
            data["last_event_id"] = header
        return data


class RunRef(Schema):
    """One side of a comparison: ``{"scenarioId", "seed"}``; a number or a decimal string seed."""

    class Meta:
        unknown = EXCLUDE

    scenario_id = scenario_id_field(data_key="scenarioId")
    seed = Seed(required=True)

    @pre_load
    def refuse_missing(self, data: Mapping[str, Any], **kwargs: Any) -> Mapping[str, Any]:
        if any(data.get(name) in (None, "") for name in ("scenarioId", "seed")):
            raise ValidationError("scenarioId and seed are required")
        return data


def run_ref_field(side: str) -> fields.Nested:
    return fields.Nested(RunRef, required=True, error_messages={"required": f"{side} is required"})


class JsonBoolean(fields.Boolean):
    """JSON's ``true`` and ``false`` only: ``"no"``, ``0`` or ``1`` (which Python's sets take for
    booleans, ``0 == False``) would be a guess at what the client meant."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class CompareBody(Schema):
    """``POST /compare``: ``{"left": {"scenarioId", "seed"}, "right": {...}}``, and ``"start": false``
    to compare only runs that exist (a page opened from a URL: it starts nothing by itself)."""

    class Meta:
        unknown = EXCLUDE

    left = run_ref_field("left")
    right = run_ref_field("right")
    start = JsonBoolean(load_default=True, error_messages={"invalid": "start must be true or false",
                                                           "null": "start must be true or false"},
                        metadata={"description": "false: a side without a run is not started (404)"})

    @pre_load
    def require_objects(self, data: Any, **kwargs: Any) -> Any:
        if not isinstance(data, Mapping):
            raise ValidationError(COMPARE_BODY_MESSAGE)
        for side in ("left", "right"):
            if side in data and not isinstance(data[side], Mapping):
                raise ValidationError({side: [f"{side} must be an object with scenarioId and seed"]})
        return data


@functools.lru_cache(maxsize=4096)
def lookup_query(query_string: bytes) -> tuple[str, int]:
    """``(scenarioId, seed)`` of a raw lookup query string, validated by LookupQuery.

    Memoised on the raw bytes: the hot path is the same few queries over and over (cache
    hits), and validation is a pure function of them. Refusals are not memoised.

    :raises BadInput: as LookupQuery says.
    """
    pairs = parse_qsl(query_string.decode("utf-8", "replace"), keep_blank_values=True, errors="replace")
    query = load_or_bad_input(_LOOKUP_QUERY, MultiDict(pairs))
    return query["scenario_id"], query["seed"]


def load_or_bad_input(schema: Schema, data: object) -> Any:
    """Validate ``data``; turn marshmallow's messages into one BadInput."""
    try:
        return schema.load(data)  # type: ignore[arg-type]
    except ValidationError as err:
        raise BadInput(first_message(err.messages)) from err


def first_message(messages: object) -> str:
    """The first message of marshmallow's nested errors, prefixed with the part it is in.

    ``{"seed": ["seed must ..."]}`` gives the message as it is (it names its field);
    ``{"left": {"seed": [...]}}`` gives ``"left: seed must ..."``.
    """
    path: list[str] = []
    while not isinstance(messages, str):
        if isinstance(messages, dict) and messages:
            key, messages = next(iter(messages.items()))
            path.append(str(key))
        elif isinstance(messages, list) and messages:
            messages = messages[0]
        else:
            return "invalid input"
    parts = [part for part in path[:-1] if part != "_schema"]
    return ": ".join([*parts, messages]) if parts else messages
