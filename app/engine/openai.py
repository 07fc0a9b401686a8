"""LLM engines (``openai:<base URL>``): an OpenAI-compatible chat completions server, one run per seed.

A scenario (``RUN_REGISTRY_SCENARIOS``, a JSON file) is a model and its request parameters; a run
streams ``POST <base>/chat/completions`` with the run's seed and turns the chunks into the
service's events as they arrive: ``start`` (scenario, seed, model, the server's
``system_fingerprint``), one ``token`` per non-empty content delta, ``report`` (finish reason and
the server's usage) and ``done``. What varies from call to call by design (completion ids,
``created``, obfuscation padding, where the usage chunk falls) never enters a transcript, so a
server that honours the seed gives byte-identical transcripts, and one that does not shows as a
divergence in the determinism ledger.

The wire is httpx and httpx-sse (app/engine/wire.py), not the ``openai`` package: the service
must see the chunks as the server sent them (its ``system_fingerprint``, its ``error`` objects,
a stream cut short), and must not have a seeded, expensive request sent again behind its back
(the client retries twice by default) or pay for typed objects per chunk.

The engine's identity (engineCodeHash) is the scenarios file's bytes and each scenario's model as
``GET <base>/models`` lists it (its id, and its digest where the server gives one), described
again every ``RUN_REGISTRY_ENGINE_DESCRIBE_S`` like an HTTP engine.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
from httpx_sse import EventSource
from httpx_sse import SSEError
from marshmallow import Schema
from marshmallow import ValidationError
from marshmallow import fields
from marshmallow import validate
from marshmallow import validates_schema

from app.engine.base import EngineError
from app.engine.base import EngineRun
from app.engine.base import EngineUnavailable
from app.engine.base import Identity
from app.engine.base import StderrSink
from app.engine.base import UnknownScenario
from app.engine.events import MalformedEvent
from app.engine.events import encoded_event
from app.engine.python import EngineLoadError
from app.engine.remote import RemoteEngine
from app.engine.remote import RemoteRun
from app.engine.wire import TooLarge
from app.engine.wire import engine_message
from app.engine.wire import wire_problem
from app.models import EncodedEvent
from app.schemas import SCENARIO_ID_PATTERN
from app.text import printable

DESCRIBE_TIMEOUT_S = 5.0
MAX_SCENARIOS_BYTES = 4 * 2**20
# Request fields a scenario's "extra" may not set: they are the service's (the seed is the run's).
_RESERVED = frozenset({"model", "messages", "seed", "stream", "stream_options", "n"})


class _Message(Schema):
    role = fields.String(required=True, validate=validate.OneOf(["system", "user", "assistant", "developer"]))
    content = fields.String(required=True, validate=validate.Length(max=1_000_000))


class ScenarioSchema(Schema):
    """One scenario: the model and the request's parameters, as the OpenAI chat completions API names them."""

    model = fields.String(required=True, validate=validate.Length(min=1, max=256))
    messages = fields.List(fields.Nested(_Message), required=True, validate=validate.Length(min=1, max=1000))
    temperature = fields.Float(validate=validate.Range(0, 2), allow_nan=False)
    top_p = fields.Float(validate=validate.Range(0, 1), allow_nan=False)
    max_tokens = fields.Integer(strict=True, validate=validate.Range(1, 1_000_000))
    stop = fields.Raw()
    presence_penalty = fields.Float(validate=validate.Range(-2, 2), allow_nan=False)
    frequency_penalty = fields.Float(validate=validate.Range(-2, 2), allow_nan=False)
    # Parameters of one server's own (llama.cpp's cache_prompt, top_k...), sent as they are.
    extra = fields.Dict(keys=fields.String())

    @validates_schema
    def _check(self, data: dict[str, Any], **_: Any) -> None:
        stop = data.get("stop")
        if stop is not None and not (isinstance(stop, str) or (
                isinstance(stop, list) and len(stop) <= 4 and all(isinstance(word, str) for word in stop))):
            raise ValidationError("a string or a list of up to 4 strings", "stop")
        taken = _RESERVED & set(data.get("extra", {}))
        if taken:
            raise ValidationError(f"may not set {', '.join(sorted(taken))} (the service's own)", "extra")


def load_scenarios(path: str | None) -> tuple[dict[str, dict[str, Any]], bytes]:
    """The scenarios file, checked: scenarioId -> request fields; and its bytes (part of the identity).

    :raises EngineLoadError: it is missing, unreadable, too large, not JSON or not scenarios.
    """
    if not path:
        raise EngineLoadError("needs RUN_REGISTRY_SCENARIOS, a JSON file of scenarios (docs/engines.md)")
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_SCENARIOS_BYTES + 1)
    except OSError as err:
        raise EngineLoadError(f"RUN_REGISTRY_SCENARIOS {path!r} cannot be read: {err.strerror or err}") from None
    if len(data) > MAX_SCENARIOS_BYTES:
        raise EngineLoadError(f"RUN_REGISTRY_SCENARIOS {path!r} is larger than {MAX_SCENARIOS_BYTES} bytes")
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as err:
        raise EngineLoadError(f"RUN_REGISTRY_SCENARIOS {path!r} is not JSON: {printable(str(err), 100)}") from None
    if not isinstance(document, dict) or not document:
        raise EngineLoadError(f"RUN_REGISTRY_SCENARIOS {path!r} must be an object of scenarios by scenarioId")
    scenarios = {}
    for scenario_id, scenario in document.items():
        if not SCENARIO_ID_PATTERN.match(scenario_id):
            raise EngineLoadError(f"RUN_REGISTRY_SCENARIOS {path!r}: {printable(scenario_id, 60)!r} is not a"
                                  " scenarioId (1-128 of A-Z a-z 0-9 . _ - starting with a letter or digit)")
        try:
            scenarios[scenario_id] = ScenarioSchema().load(scenario if isinstance(scenario, dict) else {})
        except ValidationError as err:
            raise EngineLoadError(f"RUN_REGISTRY_SCENARIOS {path!r}: scenario {scenario_id}: "
                                  f"{_first_problem(err.messages)}") from None
    return scenarios, data


def _first_problem(messages: Any, path: str = "") -> str:
    if isinstance(messages, dict):
        name, inner = next(iter(messages.items()))
        return _first_problem(inner, f"{path}.{name}" if path else str(name))
    if isinstance(messages, list) and messages:
        return _first_problem(messages[0], path)
    return f"{path}: {messages}"


class OpenAIEngine(RemoteEngine):
    """An OpenAI-compatible server; its scenarios from a file, its identity from its model listing."""

    kind = "openai"
    names_scenarios = True

    def __init__(self, spec: str, scenarios_path: str | None, token: str | None, describe_every_s: float,
                 read_timeout_s: float) -> None:
        """:raises EngineLoadError: the scenarios file is not one (the service does not start)."""
        self.scenarios, scenario_bytes = load_scenarios(scenarios_path)  # before the first description
        self._scenarios_digest = hashlib.sha256(scenario_bytes).hexdigest()
        super().__init__(spec, spec.removeprefix("openai:").rstrip("/"), token, describe_every_s, read_timeout_s)

    def check_scenario(self, scenario_id: str) -> None:
        if scenario_id not in self.scenarios:
            known = ", ".join(sorted(self.scenarios)[:5]) + (", ..." if len(self.scenarios) > 5 else "")
            raise UnknownScenario(f"scenarioId {printable(scenario_id, 128)} is not one of the engine's scenarios"
                                  f" (RUN_REGISTRY_SCENARIOS: {known})")

    def example_scenario(self) -> str | None:
        return next(iter(self.scenarios))

    def run(self, scenario_id: str, seed: int, on_stderr: StderrSink | None = None) -> EngineRun:
        return _CompletionRun(self, scenario_id, seed)

    def request(self, scenario_id: str, seed: int) -> dict[str, Any]:
        """The body of a run's ``POST /chat/completions``."""
        scenario = dict(self.scenarios[scenario_id])
        extra = scenario.pop("extra", {})
        return {**extra, **scenario, "seed": seed, "stream": True, "stream_options": {"include_usage": True}}

    def _describe(self) -> Identity:
        try:
            with self.wire.for_description(DESCRIBE_TIMEOUT_S) as describing:
                response = describing.get(f"{self.base}/models", timeout=DESCRIBE_TIMEOUT_S)
                body = response.read()
        except (httpx.HTTPError, OSError, TooLarge) as err:
            raise EngineUnavailable(wire_problem(err)) from None
        if response.status_code != 200:
            raise EngineUnavailable(f"GET /models answered {response.status_code}: {engine_message(body)}")
        try:
            listed = {model["id"]: model for model in json.loads(body)["data"] if isinstance(model.get("id"), str)}
        except (ValueError, RecursionError, KeyError, TypeError, AttributeError):
            raise EngineUnavailable('GET /models did not answer {"data": [{"id": ...}, ...]}') from None
        wanted = sorted({scenario["model"] for scenario in self.scenarios.values()})
        missing = [name for name in wanted if name not in listed]
        if missing:
            raise EngineUnavailable(f"GET /models does not list {', '.join(printable(name, 80) for name in missing)}")
        models = [f"{name}@{_digest(listed[name])}" for name in wanted]
        return Identity("openai-compatible", ", ".join(printable(model, 120) for model in models)[:256],
                        f"openai:{self._scenarios_digest}:{'|'.join(models)}")


def _digest(model: dict[str, Any]) -> str:
    """A model's digest as its server lists it (``digest``, as Ollama and tests give it), or ``-``."""
    digest = model.get("digest")
    return printable(digest, 100) if isinstance(digest, str) and digest else "-"


class _CompletionRun(RemoteRun):
    path = "/chat/completions"
    accept = "text/event-stream"

    def __init__(self, engine: OpenAIEngine, scenario_id: str, seed: int) -> None:
        super().__init__(engine)
        self._completions = engine
        self._scenario_id = scenario_id
        self._seed = seed

    def request(self) -> dict[str, Any]:
        return self._completions.request(self._scenario_id, self._seed)

    def events(self, response: httpx.Response, kind: str) -> Iterator[EncodedEvent]:
        if kind != "text/event-stream":
            raise EngineError(f"POST /chat/completions answered {printable(kind or 'no Content-Type', 80)!r},"
                              " not a stream (text/event-stream)")
        return self._read(response)

    def _read(self, response: httpx.Response) -> Iterator[EncodedEvent]:
        try:
            yield from self._events(response)
        except SSEError as err:
            raise EngineError(printable(str(err), 200)) from None

    def _events(self, response: httpx.Response) -> Iterator[EncodedEvent]:
        """The stream's chunks as events: the start once the first chunk says what answers."""
        started = finished = False
        tokens = 0
        finish_reason: str | None = None
        usage: dict[str, Any] | None = None
        for message in EventSource(response).iter_sse():
            if message.data.strip() == "[DONE]":
                finished = True
                break
            chunk = _chunk(message.event, message.data)
            if not started:
                started = True
                yield _event("start", {"scenarioId": self._scenario_id, "seed": self._seed,
                                       "model": chunk.get("model") if isinstance(chunk.get("model"), str)
                                       else self._completions.scenarios[self._scenario_id]["model"],
                                       "systemFingerprint": _text_or_none(chunk.get("system_fingerprint"))})
            for choice in chunk.get("choices") or ():
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta")
                text = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(text, str) and text:
                    tokens += 1
                    yield _event("token", {"text": text, "tokenIndex": tokens})
                if isinstance(choice.get("finish_reason"), str):
                    finish_reason = choice["finish_reason"]
            if isinstance(chunk.get("usage"), dict):  # wherever the server puts it: the last one counts
                usage = chunk["usage"]
        if not started:
            raise EngineError("its stream ended before any chunk")
        if not finished and finish_reason is None:
            raise EngineError("its stream was cut short (no finish_reason, no [DONE])")
        yield _event("report", {"finishReason": finish_reason,
                                "promptTokens": _count(usage, "prompt_tokens"),
                                "completionTokens": _count(usage, "completion_tokens")})
        yield _event("done", {"totalTokens": tokens})

    def cancel(self) -> None:
        self._stopped = True
        self._connection.cancel()

    def end(self) -> None:
        self._connection.end()


def _chunk(event: str, data: str) -> dict[str, Any]:
    """One streamed chunk; a server's error, as an ``error`` event or an ``{"error": ...}`` chunk, fails the run."""
    try:
        chunk = json.loads(data)
    except (ValueError, RecursionError):
        raise EngineError(f"a chunk of its stream is not JSON: {printable(data, 100)!r}") from None
    if event == "error" or (isinstance(chunk, dict) and chunk.get("error") is not None):
        raise EngineError(f"its stream ended with an error: {engine_message(data.encode())}")
    if not isinstance(chunk, dict):
        raise EngineError(f"a chunk of its stream is not an object: {printable(data, 100)!r}")
    return chunk


def _event(event_type: str, data: dict[str, Any]) -> EncodedEvent:
    try:
        return encoded_event({"type": event_type, "data": data})
    except MalformedEvent as malformed:
        raise EngineError(f"its {event_type} cannot be recorded: {malformed}") from None


def _text_or_none(value: object) -> str | None:
    return printable(value, 200) if isinstance(value, str) else None


def _count(usage: dict[str, Any] | None, name: str) -> int | None:
    value = (usage or {}).get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
