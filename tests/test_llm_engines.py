"""LLM engines (``openai:``): a real llama.cpp behind the service (harness/llm_rig.py), in this
process and on gunicorn's gevent worker, and a remote party that misbehaves on demand
(harness/openai_party.py): the model runs once per seed, its tokens stream live, a server that
honours the seed reproduces, and one that does not shows as a divergence in the ledger."""

from __future__ import annotations

import http.client as http_client
import json
import logging
import subprocess
import time

import pytest

from app import create_app
from app.config import ConfigError
from app.config import load_settings
from app.engine import load_engine
from harness.llm_rig import LlamaServer
from harness.openai_party import OpenAIParty
from harness.servers import GUNICORN
from harness.servers import Gunicorn
from harness.servers import free_port
from harness.servers import http
from harness.servers import metric

pytestmark = pytest.mark.server
TOKEN = "sk-test-7c1d9e"
MESSAGES = [{"role": "system", "content": "You are a pricing analyst."},
            {"role": "user", "content": "Price a widget for the spring sale."}]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A real llama.cpp that wants an API key, and a scenarios file for its model."""
    directory = tmp_path_factory.mktemp("llama")
    with LlamaServer(directory / "llama.log", api_key=TOKEN) as server:
        scenarios = directory / "scenarios.json"
        scenarios.write_text(json.dumps({
            "pricing-brief": {"model": server.model_id, "messages": MESSAGES, "temperature": 0.8, "max_tokens": 40},
            "short-brief": {"model": server.model_id, "messages": MESSAGES, "temperature": 0.8, "max_tokens": 5,
                            "extra": {"cache_prompt": False}},
        }))
        server.scenarios = scenarios
        yield server


def llm_settings(url: str, scenarios, **extra: str):
    return load_settings({"RUN_REGISTRY_ENGINE": f"openai:{url}", "RUN_REGISTRY_SCENARIOS": str(scenarios),
                          "RUN_REGISTRY_NEW_RUNS_PER_MINUTE": "0", "ENGINE_COMMIT_SHA": "deploy", **extra})


@pytest.fixture
def llm_client(llama):
    return create_app(llm_settings(llama.url, llama.scenarios, RUN_REGISTRY_ENGINE_TOKEN=TOKEN)).test_client()


def events_of(client, run_id: str) -> list[dict]:
    return client.get(f"/runs/{run_id}/events").get_json()["events"]


def test_a_lookup_runs_the_model_once_and_records_its_stream_as_events(llm_client, llama, caplog):
    caplog.set_level(logging.DEBUG)
    looked = llm_client.get("/runs/lookup?scenarioId=pricing-brief&seed=7")
    assert looked.status_code == 200 and looked.get_json()["source"] == "new"
    run_id = looked.get_json()["runId"]
    assert llm_client.get("/runs/lookup?scenarioId=pricing-brief&seed=7").get_json()["source"] == "cache"
    events = events_of(llm_client, run_id)
    start, *tokens, report, done = events
    assert start["type"] == "start" and start["data"]["model"] == llama.model_id
    assert start["data"]["scenarioId"] == "pricing-brief" and start["data"]["seed"] == 7
    assert start["data"]["systemFingerprint"].startswith("b")  # llama.cpp's build, as the server sends it
    assert [event["type"] for event in tokens] == ["token"] * len(tokens) and len(tokens) > 5
    assert [event["data"]["tokenIndex"] for event in tokens] == list(range(1, len(tokens) + 1))
    assert "".join(event["data"]["text"] for event in tokens).strip()
    assert report["type"] == "report" and isinstance(report["data"].pop("promptTokens"), int)
    assert report["data"] == {"finishReason": "length", "completionTokens": 40}
    assert done == {"type": "done", "data": {"totalTokens": len(tokens)}}
    verified = llm_client.post(f"/runs/{run_id}/verify").get_json()
    assert verified["reproducible"] is True and verified["determinism"]["status"] == "reproduced"
    ready = llm_client.get("/readyz").get_json()
    assert ready["engine"]["kind"] == "openai" and llama.model_id in ready["engine"]["version"]
    assert TOKEN not in caplog.text


def test_the_same_seed_is_the_same_transcript_in_another_service_and_another_seed_is_another(llm_client, llama):
    one = llm_client.get("/runs/lookup?scenarioId=pricing-brief&seed=11").get_json()["runId"]
    other_service = create_app(llm_settings(llama.url, llama.scenarios, RUN_REGISTRY_ENGINE_TOKEN=TOKEN)).test_client()
    again = other_service.get("/runs/lookup?scenarioId=pricing-brief&seed=11").get_json()["runId"]
    assert llm_client.get(f"/runs/{one}").get_json()["eventsSha256"] == \
        other_service.get(f"/runs/{again}").get_json()["eventsSha256"]
    another = llm_client.get("/runs/lookup?scenarioId=pricing-brief&seed=12").get_json()["runId"]
    assert events_of(llm_client, another)[1:-2] != events_of(llm_client, one)[1:-2]


def test_without_its_api_key_the_server_is_unavailable_in_its_own_words(llama):
    client = create_app(llm_settings(llama.url, llama.scenarios)).test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "GET /models answered 401: Incorrect API key provided." in ready.get_json()["message"]


@pytest.fixture
def party():
    server = OpenAIParty(free_port(), api_key=TOKEN).serve_in_background()
    yield server
    server.stop()


@pytest.fixture
def party_scenarios(tmp_path):
    path = tmp_path / "scenarios.json"
    models = ("steady", "quirky-usage", "status429", "status500", "cut", "error-event", "error-chunk", "no-finish",
              "not-a-stream")
    path.write_text(json.dumps({model: {"model": model, "messages": MESSAGES, "temperature": 0.2, "top_p": 0.9,
                                        "max_tokens": 64, "stop": ["\n\n"], "presence_penalty": 0.1,
                                        "frequency_penalty": 0.2, "extra": {"cache_prompt": False}}
                                for model in models}))
    return path


def party_client(party, scenarios):
    url = f"http://127.0.0.1:{party.server_port}/v1"
    return create_app(llm_settings(url, scenarios, RUN_REGISTRY_ENGINE_TOKEN=TOKEN)).test_client()


def test_an_unknown_scenario_is_refused_and_nothing_reaches_the_server(party, party_scenarios):
    client = party_client(party, party_scenarios)
    before = len(party.requests)
    refused = client.get("/runs/lookup?scenarioId=pricing-brief&seed=1")
    assert refused.status_code == 400
    assert refused.get_json() == {"type": "BAD_INPUT", "message": "scenarioId pricing-brief is not one of the"
                                  " engine's scenarios (RUN_REGISTRY_SCENARIOS: cut, error-chunk, error-event,"
                                  " no-finish, not-a-stream, ...)"}
    assert len(party.requests) == before
    assert client.get("/registry/stats").get_json()["misses"] == 0


def test_the_request_is_the_scenarios_with_the_runs_seed_streamed_with_its_usage(party, party_scenarios):
    client = party_client(party, party_scenarios)
    client.get("/runs/lookup?scenarioId=steady&seed=-5")
    sent = next(request for request in party.requests if request["path"] == "/v1/chat/completions")
    assert sent["body"] == {"model": "steady", "messages": MESSAGES, "temperature": 0.2, "top_p": 0.9, "max_tokens": 64,
                            "stop": ["\n\n"], "presence_penalty": 0.1, "frequency_penalty": 0.2, "cache_prompt": False,
                            "seed": -5, "stream": True, "stream_options": {"include_usage": True}}
    assert sent["headers"]["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("model", ["steady", "quirky-usage"])
def test_volatile_fields_never_enter_a_transcript(party, party_scenarios, model):
    """Ids, created, obfuscation padding and where the usage falls change with every call."""
    client = party_client(party, party_scenarios)
    run_id = client.get(f"/runs/lookup?scenarioId={model}&seed=3").get_json()["runId"]
    assert all(client.post(f"/runs/{run_id}/verify").get_json()["reproducible"] for _ in range(6))
    assert events_of(client, run_id) == [
        {"type": "start", "data": {"model": model, "scenarioId": model, "seed": 3, "systemFingerprint": "fp_tests"}},
        *({"type": "token", "data": {"text": text, "tokenIndex": index}} for index, text in
          enumerate(("The", " best", " price", " is", " $42", "."), start=1)),
        {"type": "report", "data": {"completionTokens": 6, "finishReason": "stop", "promptTokens": 12}},
        {"type": "done", "data": {"totalTokens": 6}},
    ]


@pytest.mark.parametrize(
    ("model", "reason"),
    [("status429", "POST /chat/completions answered 429: Rate limit reached for requests ?]0;owned?"),
     ("status500", "POST /chat/completions answered 500: The server had an error while processing your request."),
     ("cut", "its answer was cut short"),
     ("error-event", "its stream ended with an error: Model overloaded"),
     ("error-chunk", "its stream ended with an error: Context length exceeded"),
     ("no-finish", "its stream was cut short (no finish_reason, no [DONE])"),
     ("not-a-stream", "POST /chat/completions answered 'application/json', not a stream (text/event-stream)")],
    ids=["429", "500", "cut-short", "error-event", "error-chunk", "no-finish", "not-a-stream"],
)
def test_the_servers_errors_fail_the_run_with_its_message(party, party_scenarios, model, reason):
    client = party_client(party, party_scenarios)
    failed = client.get(f"/runs/lookup?scenarioId={model}&seed=1")
    assert failed.status_code == 500
    assert failed.get_json()["message"].startswith(f"The engine failed to run scenario {model} seed 1: {reason}"), \
        failed.get_json()["message"]


@pytest.mark.parametrize(
    ("content", "words"),
    [(None, "needs RUN_REGISTRY_SCENARIOS"),
     ("{not json", "is not JSON"),
     ("[]", "must be an object of scenarios by scenarioId"),
     ('{"bad id!": {}}', "'bad id!' is not a scenarioId"),
     ('{"a": {"messages": [{"role": "user", "content": "x"}]}}', "scenario a: model: Missing data for required field."),
     ('{"a": {"model": "m", "messages": []}}', "scenario a: messages: Length must be between 1 and 1000."),
     ('{"a": {"model": "m", "messages": [{"role": "robot", "content": "x"}]}}', "scenario a: messages.0.role:"),
     ('{"a": {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3}}',
      "scenario a: temperature: Must be greater than or equal to 0 and less than or equal to 2."),
     ('{"a": {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5}}',
      "scenario a: max_tokens: Not a valid integer."),
     ('{"a": {"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": ["1","2","3","4","5"]}}',
      "scenario a: stop: a string or a list of up to 4 strings"),
     ('{"a": {"model": "m", "messages": [{"role": "user", "content": "x"}], "sede": 1}}',
      "scenario a: sede: Unknown field."),
     ('{"a": {"model": "m", "messages": [{"role": "user", "content": "x"}], "extra": {"seed": 1}}}',
      "scenario a: extra: may not set seed (the service's own)")],
    ids=["unset", "not-json", "not-an-object", "bad-scenario-id", "no-model", "no-messages", "bad-role",
         "temperature", "max-tokens", "stop", "unknown-field", "extra-seed"],
)
def test_a_malformed_scenarios_file_stops_the_start_with_one_line_naming_it(tmp_path, content, words):
    environ = {"RUN_REGISTRY_ENGINE": "openai:http://127.0.0.1:9/v1"}
    if content is not None:
        (tmp_path / "scenarios.json").write_text(content)
        environ["RUN_REGISTRY_SCENARIOS"] = str(tmp_path / "scenarios.json")
    with pytest.raises(ConfigError) as refused:
        load_engine(load_settings(environ))
    message = str(refused.value)
    assert "RUN_REGISTRY_SCENARIOS" in message and words in message and "\n" not in message, message


def test_check_engine_says_whether_the_server_reproduces(llama, tmp_path):
    run_registry = str(GUNICORN.with_name("run-registry"))
    env = {"PATH": "/usr/bin:/bin", "RUN_REGISTRY_SCENARIOS": str(llama.scenarios), "RUN_REGISTRY_ENGINE_TOKEN": TOKEN}
    checked = subprocess.run([run_registry, "check-engine", f"openai:{llama.url}"], capture_output=True, text=True,
                             timeout=60, env=env)
    assert checked.returncode == 0, checked.stderr
    assert "(openai engine), scenario pricing-brief seed 42" in checked.stdout
    assert "deterministic: both executions' transcripts are byte-identical" in checked.stdout
    with LlamaServer(tmp_path / "careless.log", ignore_seed=True, api_key=TOKEN) as careless:
        drifting = subprocess.run([run_registry, "check-engine", f"openai:{careless.url}"], capture_output=True,
                                  text=True, timeout=60, env=env)
    assert drifting.returncode == 1
    assert "not deterministic: two executions of scenario pricing-brief seed 42 differ" in drifting.stderr
    assert "; first at event " in drifting.stderr and drifting.stderr.endswith("(token)\n")  # the text differs


def test_a_model_streams_live_through_gunicorn_and_a_server_that_ignores_the_seed_diverges(llama, tmp_path):
    """The same model file behind the same URL, redeployed without honouring the seed: the same
    engineCodeHash (the model's id and digest, the scenarios), so the ledger holds its runs to
    the first, and says they diverge."""
    port = free_port()
    env = {"RUN_REGISTRY_ENGINE": f"openai:http://127.0.0.1:{port}/v1", "RUN_REGISTRY_SCENARIOS": str(llama.scenarios),
           "RUN_REGISTRY_ENGINE_TOKEN": TOKEN, "RUN_REGISTRY_LOOKUP_WAIT_S": "10"}
    with LlamaServer(tmp_path / "honest.log", api_key=TOKEN, port=port, token_delay_ms=10) as honest, \
            Gunicorn(tmp_path / "gunicorn.log", env=env) as server:
        run_id = http("GET", f"{server.url}/runs/lookup?scenarioId=pricing-brief&seed=21",
                      headers={"Prefer": "respond-async"}).json()["runId"]
        host, server_port = server.url.removeprefix("http://").split(":")
        connection = http_client.HTTPConnection(host, int(server_port), timeout=30)
        connection.request("GET", f"/runs/{run_id}/events", headers={"Accept": "text/event-stream"})
        arrivals = [time.monotonic() for line in connection.getresponse() if line.startswith(b"event: token")]
        connection.close()
        assert len(arrivals) > 10 and arrivals[-1] - arrivals[0] > 0.1  # the model's text, as it was written
        assert http("GET", f"{server.url}/runs/lookup?scenarioId=pricing-brief&seed=21").json()["source"] == "cache"
        assert http("POST", f"{server.url}/runs/{run_id}/verify", timeout=30).json()["reproducible"] is True
        honest.stop()
        with LlamaServer(tmp_path / "careless.log", ignore_seed=True, api_key=TOKEN, port=port):
            verified = http("POST", f"{server.url}/runs/{run_id}/verify", timeout=30).json()
            assert verified["reproducible"] is False and verified["determinism"]["status"] == "diverged"
            ledger = http("GET", f"{server.url}/registry/determinism").json()
            metrics = http("GET", f"{server.url}/metrics").body.decode()
            run = http("GET", f"{server.url}/runs/{run_id}").json()
        log = server.log()
    assert ledger["diverged"] == 1 and ledger["divergences"][0]["runId"] == run_id
    assert metric(metrics, 'run_registry_determinism_checks_total{result="diverged"}') == 1
    assert run["determinism"]["status"] == "diverged" and run["determinism"]["divergences"] == 1
    assert "diverged" in log and TOKEN not in log


def test_the_replay_page_shows_the_models_text_as_it_streams_and_its_token_counts(llama, tmp_path):
    from harness.browser import chromium
    from harness.servers import ROOT

    port = free_port()
    env = {"RUN_REGISTRY_ENGINE": f"openai:http://127.0.0.1:{port}/v1", "RUN_REGISTRY_SCENARIOS": str(llama.scenarios),
           "RUN_REGISTRY_ENGINE_TOKEN": TOKEN}
    with (LlamaServer(tmp_path / "slow.log", api_key=TOKEN, port=port, token_delay_ms=40),
          Gunicorn(tmp_path / "gunicorn.log", env=env) as server, chromium() as browser):
        run_id = http("GET", f"{server.url}/runs/lookup?scenarioId=pricing-brief&seed=33",
                      headers={"Prefer": "respond-async"}).json()["runId"]
        page = browser.new_page()
        page.goto(f"{server.url}/runs/{run_id}/replay")
        some_text = "() => (document.getElementById('transcript') || {textContent: ''}).textContent.length > 0"
        page.wait_for_function(some_text, timeout=10_000)
        partial = page.text_content("#transcript")
        page.wait_for_selector("body[data-replay=complete]", timeout=20_000)
        events = http("GET", f"{server.url}/runs/{run_id}/events").json()["events"]
        text = "".join(event["data"]["text"] for event in events if event["type"] == "token")
        assert page.text_content("#transcript") == text and text.startswith(partial) and len(partial) < len(text)
        report = page.text_content("#report")
        assert "finishReason" in report and "length" in report and "completionTokens" in report and "40" in report
        screenshots = ROOT / "artifacts" / "screenshots"
        screenshots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshots / "replay-llm-run.png"), full_page=True)
        page.close()
