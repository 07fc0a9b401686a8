"""The example engines in examples/engines: the Node.js port of the pricing engine writes the
Python engine's events, byte for byte in canonical JSON, over a pipe and over HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection

import pytest

from app.engine.pricing import PricingEngine
from app.models import canonical_json
from harness.servers import ROOT
from harness.servers import free_port
from harness.servers import http
from harness.servers import require_binary

pytestmark = pytest.mark.server
ENGINES = ROOT / "examples" / "engines"
GOLDEN = ROOT / "tests" / "engine" / "golden" / "pricing-v1_seed42.json"
PROTOCOL = "run-registry-engine/1"
MAX_SEED = 2**53 - 1
TOKEN = "example-engine-token"

# Reports with floats that are whole numbers: Python writes 48.0 where JSON.stringify writes 48,
# which Python reads back as an int and writes as 48. Each with the text its report line carries.
WHOLE_DOLLARS = {
    ("whole-dollar-6", -7): '"referencePrice":48.0,',
    ("whole-dollar-39", MAX_SEED): '"unitCost":17.0,',
    ("whole-dollar-1227", -MAX_SEED): '"referencePrice":76.0,"unitCost":19.0,',
    ("pricing-v1", 460): '"revenue":51093.0,"profit":36330.0,',
    ("pricing-v1", 1): '"profit":36894.0,',
    ("pricing-v1", 42): "[96.99,13662.0]",  # a point of the profit series
}
PAIRS = [
    *WHOLE_DOLLARS,
    ("pricing-v1", 0), ("pricing-v1", -1), ("pricing-v1", -42), ("pricing-v1", MAX_SEED), ("pricing-v1", -MAX_SEED),
    ("a", 0), ("a", 1), ("a", -1), ("a", 2**32), ("a", -(2**63) // 2**11),
    ("Z.9_-x", 7), ("Z.9_-x", -7), ("Z.9_-x", -MAX_SEED), ("Z.9_-x", MAX_SEED - 1),
    ("0", 0), (".", 3), ("-", -3), ("_", 2**31 - 1), ("x" * 128, MAX_SEED), ("A-Z.a-z_0-9", -(2**31)),
    # Beyond the service's scenarioIds, which the Python engine runs all the same: Python's \s
    # is not JavaScript's (\x1c and \x85 are spaces to it, \ufeff is not), and UTF-8 for sha256.
    ("prix d'été 日本 😀", 5), ("tab\there\nnewline", -6), ("sep\u2028line\x85nel", 7), ("\x1cfs\ufeffbom\xa0", -8),
    *[(f"scenario-{n}", (n * 7_919_000_003_137) % (2 * MAX_SEED + 1) - MAX_SEED) for n in range(20)],
]


def python_transcript(scenario_id: str, seed: int) -> bytes:
    return canonical_json(list(PricingEngine().run(scenario_id, seed)))


def read_back(lines: bytes) -> bytes:
    """What the service records of JSON Lines: each line read by Python, then its canonical JSON."""
    text = lines.decode("utf-8")
    assert text.endswith("\n")
    return canonical_json([json.loads(line) for line in text[:-1].split("\n")])


def process_engine(request: str | bytes, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """One run of process-engine.mjs; subprocess.run kills it if the deadline passes."""
    data = request.encode() if isinstance(request, str) else request
    return subprocess.run([require_binary("node"), str(ENGINES / "process-engine.mjs")], input=data,
                          capture_output=True, timeout=30, env={"PATH": os.environ["PATH"], **(env or {})})


def run_request(scenario_id: str, seed: int) -> str:
    return json.dumps({"protocol": PROTOCOL, "op": "run", "scenarioId": scenario_id, "seed": seed}) + "\n"


@pytest.fixture(scope="module")
def transcripts() -> dict[tuple[str, int], subprocess.CompletedProcess[bytes]]:
    """Every pair's process-engine run, several at once: each node start costs ~40 ms."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(PAIRS, pool.map(lambda pair: process_engine(run_request(*pair)), PAIRS), strict=True))


@pytest.mark.parametrize(("scenario_id", "seed"), PAIRS, ids=[f"{s[:20]!r}/{seed}" for s, seed in PAIRS])
def test_process_engine_writes_the_python_engines_events(transcripts, scenario_id, seed):
    done = transcripts[scenario_id, seed]
    assert done.returncode == 0 and done.stderr == b"", done.stderr
    assert read_back(done.stdout) == python_transcript(scenario_id, seed)


def test_process_engine_reproduces_the_golden_transcript(transcripts):
    assert read_back(transcripts["pricing-v1", 42].stdout) + b"\n" == GOLDEN.read_bytes()


@pytest.mark.parametrize(("pair", "written"), WHOLE_DOLLARS.items(), ids=[f"{s}/{n}" for s, n in WHOLE_DOLLARS])
def test_whole_dollar_floats_are_written_as_python_writes_them(transcripts, pair, written):
    report = transcripts[pair].stdout.decode().splitlines()[-2]
    assert report.startswith('{"type":"report"') and written in report


def test_process_engine_describes_itself():
    done = process_engine(json.dumps({"protocol": PROTOCOL, "op": "describe"}))
    assert (done.returncode, done.stderr) == (0, b"")
    assert done.stdout == b'{"name":"pricing-simulator-node","version":"1.2.0"}\n'


@pytest.mark.parametrize(
    ("request_line", "reason"),
    [("not json\n", "the request is not JSON"),
     ('["run"]', "the request must be a JSON object"),
     ('{"protocol": "run-registry-engine/2", "op": "run", "scenarioId": "a", "seed": 1}', 'protocol must be "'),
     (f'{{"protocol": "{PROTOCOL}", "op": "walk"}}', 'op must be "run" or "describe"'),
     (f'{{"protocol": "{PROTOCOL}", "op": "run", "seed": 1}}', "scenarioId must be a non-empty string"),
     (f'{{"protocol": "{PROTOCOL}", "op": "run", "scenarioId": "", "seed": 1}}', "scenarioId must be a non-empty"),
     (f'{{"protocol": "{PROTOCOL}", "op": "run", "scenarioId": "\\ud800", "seed": 1}}', "well-formed Unicode"),
     (f'{{"protocol": "{PROTOCOL}", "op": "run", "scenarioId": "a", "seed": 1.5}}', "seed must be an integer"),
     (f'{{"protocol": "{PROTOCOL}", "op": "run", "scenarioId": "a", "seed": "1"}}', "seed must be an integer"),
     (f'{{"protocol": "{PROTOCOL}", "op": "run", "scenarioId": "a", "seed": {MAX_SEED + 1}}}', "seed must be"),
     (run_request("a", 1) * 2, "the request must be one line of JSON")],
    ids=["not-json", "not-an-object", "other-protocol", "wrong-op", "missing-scenarioId", "empty-scenarioId",
         "lone-surrogate", "fractional-seed", "string-seed", "unsafe-seed", "two-lines"],
)
def test_process_engine_refuses_a_bad_request_with_a_reason_and_no_events(request_line, reason):
    done = process_engine(request_line)
    assert done.returncode != 0 and done.stdout == b""
    stderr = done.stderr.decode()
    assert stderr.startswith("process-engine: ") and reason in stderr and stderr.count("\n") == 1, stderr


def test_process_engine_writes_each_event_as_it_is_made_and_leaves_quietly_when_the_reader_does():
    engine = subprocess.Popen([require_binary("node"), str(ENGINES / "process-engine.mjs")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={"PATH": os.environ["PATH"], "PRICING_EVENT_DELAY_MS": "20"})
    try:
        engine.stdin.write(run_request("pricing-v1", 42).encode())
        engine.stdin.close()
        assert json.loads(engine.stdout.readline())["type"] == "start"
        assert engine.poll() is None  # 143 events to go, 20 ms apart
        engine.stdout.close()  # the service stopped reading: the next write meets a broken pipe
        assert engine.wait(timeout=10) == 141
        assert engine.stderr.read() == b""
    finally:
        engine.kill()
        engine.wait()
        engine.stderr.close()


class HttpEngine:
    """http-engine.mjs on a free port, with an environment built from an allow-list."""

    def __init__(self, *args: str, token: str | None = None) -> None:
        self.port = free_port()
        env = {"PATH": os.environ["PATH"], **({"ENGINE_TOKEN": token} if token else {})}
        self.process = subprocess.Popen([require_binary("node"), str(ENGINES / "http-engine.mjs"),
                                         "--port", str(self.port), *args], stdout=subprocess.PIPE, env=env)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> HttpEngine:
        readable, _, _ = select.select([self.process.stdout], [], [], 10)
        line = self.process.stdout.readline().decode() if readable else ""
        if line != f"listening on {self.url}\n":
            self.stop()
            pytest.fail(f"http-engine.mjs did not start: {line!r}")
        return self

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it lingers; its exit status."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            self.process.stdout.close()

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.stop()


@pytest.fixture(scope="module")
def engine():
    with HttpEngine(token=TOKEN) as running:
        yield running


def post_run(engine: HttpEngine, body: object, accept: str | None = None, token: str = TOKEN):
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if accept:
        headers["Accept"] = accept
    return http("POST", f"{engine.url}/run", json.dumps(body).encode(), headers)


def sse_events(body: bytes) -> list[dict[str, object]]:
    events = []
    for message in body.decode("utf-8").split("\n\n")[:-1]:
        fields = dict(line.split(": ", 1) for line in message.split("\n"))
        events.append({"type": fields["event"], "data": json.loads(fields["data"])})
    return events


def test_http_engine_describes_itself_with_the_digest_of_its_code(engine):
    code = (ENGINES / "pricing.mjs").read_bytes() + (ENGINES / "http-engine.mjs").read_bytes()
    described = http("GET", f"{engine.url}/describe", headers={"Authorization": f"Bearer {TOKEN}"})
    assert described.status == 200
    assert described.json() == {"name": "pricing-simulator-node", "version": "1.2.0",
                                "codeDigest": "sha256:" + hashlib.sha256(code).hexdigest()}


HTTP_PAIRS = [*WHOLE_DOLLARS, ("a", 0), ("Z.9_-x", -MAX_SEED), ("prix d'été 日本 😀", 5), ("sep\u2028line\x85nel", 7)]


@pytest.mark.parametrize(("scenario_id", "seed"), HTTP_PAIRS, ids=[f"{s[:20]!r}/{seed}" for s, seed in HTTP_PAIRS])
def test_http_engine_streams_the_process_engines_events_as_sse_and_ndjson(engine, transcripts, scenario_id, seed):
    expected = read_back(transcripts[scenario_id, seed].stdout)
    sse = post_run(engine, {"scenarioId": scenario_id, "seed": seed})
    assert (sse.status, sse.headers["Content-Type"]) == (200, "text/event-stream")
    assert canonical_json(sse_events(sse.body)) == expected
    ndjson = post_run(engine, {"scenarioId": scenario_id, "seed": seed}, accept="application/x-ndjson")
    assert (ndjson.status, ndjson.headers["Content-Type"]) == (200, "application/x-ndjson")
    assert read_back(ndjson.body) == expected


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [("application/x-ndjson, text/event-stream", "text/event-stream"),
     ("application/x-ndjson;q=0.9, */*;q=0.1", "application/x-ndjson"),
     ("*/*", "text/event-stream")],
    ids=["both-named", "ndjson-only", "anything"],
)
def test_http_engine_answers_ndjson_only_to_a_client_that_names_it_alone(engine, accept, content_type):
    assert post_run(engine, {"scenarioId": "a", "seed": 1}, accept=accept).headers["Content-Type"] == content_type


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}"], ids=["none", "wrong", "basic"])
@pytest.mark.parametrize(("method", "path"), [("GET", "/describe"), ("POST", "/run"), ("GET", "/nope")])
def test_http_engine_refuses_a_request_without_its_token(engine, authorization, method, path):
    headers = {"Authorization": authorization} if authorization else {}
    body = json.dumps({"scenarioId": "a", "seed": 1}).encode() if method == "POST" else None
    refused = http(method, f"{engine.url}{path}", body, headers)
    assert (refused.status, refused.json()) == (401, {"message": "a valid bearer token is required"})


@pytest.mark.parametrize(
    ("body", "message"),
    [(b"not json", 'the body must be JSON: {"scenarioId": string, "seed": integer}'),
     (b'[{"scenarioId": "a", "seed": 1}]', 'the body must be a JSON object: {"scenarioId": string, "seed": integer}'),
     (b'{"seed": 1}', "scenarioId must be a non-empty string"),
     (b'{"scenarioId": "", "seed": 1}', "scenarioId must be a non-empty string"),
     (b'{"scenarioId": "a", "seed": 1.5}', "seed must be an integer from -9007199254740991 to 9007199254740991"),
     (b'{"scenarioId": "a", "seed": 9007199254740992}', "seed must be an integer from -9007199254740991 to "
                                                          "9007199254740991"),
     (b'{"scenarioId": "a"}', "seed must be an integer from -9007199254740991 to 9007199254740991")],
    ids=["not-json", "not-an-object", "missing-scenarioId", "empty-scenarioId", "fractional-seed", "unsafe-seed",
         "missing-seed"],
)
def test_http_engine_refuses_a_bad_body(engine, body, message):
    refused = http("POST", f"{engine.url}/run", body, {"Authorization": f"Bearer {TOKEN}"})
    assert (refused.status, refused.json()) == (400, {"message": message})


def test_http_engine_answers_404_to_an_unknown_path(engine):
    missing = http("GET", f"{engine.url}/runs", headers={"Authorization": f"Bearer {TOKEN}"})
    assert (missing.status, missing.json()) == (404, {"message": "no such path: /runs"})


def test_http_engine_sends_each_event_as_it_is_made_and_exits_0_on_sigterm():
    with HttpEngine("--delay-ms", "50") as paced:  # no ENGINE_TOKEN: open to all
        assert http("GET", f"{paced.url}/describe").status == 200
        connection = HTTPConnection("127.0.0.1", paced.port, timeout=10)
        try:
            started = time.monotonic()
            connection.request("POST", "/run", json.dumps({"scenarioId": "pricing-v1", "seed": 42}))
            response = connection.getresponse()
            assert response.readline() == b"event: start\n"
            assert time.monotonic() - started < 2  # the whole run takes 148 x 50 ms
        finally:
            connection.close()
        assert paced.stop() == 0
