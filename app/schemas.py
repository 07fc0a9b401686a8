"""Marshmallow schemas for every input, and the one place validation becomes BAD_INPUT."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from marshmallow import EXCLUDE
from marshmallow import Schema
from marshmallow import ValidationError
from marshmallow import fields
from marshmallow import pre_load
from marshmallow import validate

from app.errors import BadInput

MAX_SAFE_INTEGER = 2**53 - 1  # JavaScript's Number.MAX_SAFE_INTEGER: seeds survive a JS client
# \Z, not $: marshmallow's Regexp uses match(), and $ would accept a trailing newline.
SCENARIO_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_SEED_PATTERN = re.compile(r"[+-]?[0-9]+")

REQUIRED_MESSAGE = "scenarioId and seed parameters required"
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
        error_messages={"required": REQUIRED_MESSAGE, "null": REQUIRED_MESSAGE,
                        "invalid": SCENARIO_ID_MESSAGE},
        **kwargs,
    )


class LookupQuery(Schema):
    """``GET /runs/lookup?scenarioId=&seed=``; unknown parameters are ignored."""

    class Meta:
        unknown = EXCLUDE

    scenario_id = scenario_id_field(data_key="scenarioId")
    seed = Seed(required=True)

    @pre_load
    def refuse_missing_or_repeated(self, data: Mapping[str, Any], **kwargs: Any) -> Mapping[str, Any]:
        """Empty counts as missing; a repeated parameter is ambiguous, so it is refused."""
        names = ("scenarioId", "seed")
        if any(data.get(name) in (None, "") for name in names):
            raise ValidationError(REQUIRED_MESSAGE)
        getlist = getattr(data, "getlist", None)
        for name in names:
            if getlist is not None and len(getlist(name)) > 1:
                raise ValidationError(f"{name} parameter given more than once")
        return data


def load_or_bad_input(schema: Schema, data: object) -> Any:
    """Validate ``data``; turn marshmallow's messages into one BadInput."""
    try:
        return schema.load(data)  # type: ignore[arg-type]
    except ValidationError as err:
        raise BadInput(first_message(err.messages)) from err


def first_message(messages: object) -> str:
    """The first message of marshmallow's nested error structure, in field order."""
    while not isinstance(messages, str):
        if isinstance(messages, dict) and messages:
            messages = next(iter(messages.values()))
        elif isinstance(messages, list) and messages:
            messages = messages[0]
        else:
            return "invalid input"
    return messages
