"""SSE replay of /runs/<runId>/events: framing, resume, pacing, bad input, negotiation."""

from __future__ import annotations

import json
import threading

import pytest

from app import create_app
from harness.fakes import transcript
from tests.conftest import test_settings

SSE = {"Accept": "text/event-stream"}


def new_run(client):
    return client.get("/runs/lookup?scenarioId=a&seed=1").get_json()["runId"]


def parse_sse(body: bytes) -> tuple[list[str], list[dict]]:
    """The preamble fields, and each message's fields, of an SSE body."""
    blocks = body.decode().split("\n\n")
    assert blocks[-1] == "", "a stream ends with a blank line"
    parsed = [dict(line.split(": ", 1) for line in block.split("\n")) for block in blocks[:-1]]
    return parsed[0], parsed[1:]


def test_event_stream_replays_every_event_with_its_position(fake_client):
    run_id = new_run(fake_client)
    response = fake_client.get(f"/runs/{run_id}/events", headers=SSE)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    preamble, messages = parse_sse(response.get_data())
    assert preamble == {"retry": "3000"}
    expected = transcript("a", 1)
    assert [m["id"] for m in messages] == [str(n) for n in range(1, len(expected) + 1)]
    assert [m["event"] for m in messages] == [e["type"] for e in expected]
    assert [json.loads(m["data"]) for m in messages] == [e["data"] for e in expected]
    assert messages[1]["data"] == '{"text":"Évaluation","tokenIndex":1}'  # compact, UTF-8


@pytest.mark.parametrize("how", ["header", "query", "both"])
def test_last_event_id_resumes_without_gap_or_duplicate(fake_client, how):
    run_id = new_run(fake_client)
    headers = {**SSE, "Last-Event-ID": "2"} if how in ("header", "both") else SSE
    query = "?lastEventId=2" if how in ("query", "both") else ""
    _, messages = parse_sse(fake_client.get(f"/runs/{run_id}/events{query}", headers=headers).get_data())
    assert [m["id"] for m in messages] == ["3", "4", "5"]


def test_the_header_wins_over_the_query_parameter(fake_client):
    """An EventSource opened on ...?lastEventId=1 reconnects with the header of where it got to."""
    run_id = new_run(fake_client)
    headers = {**SSE, "Last-Event-ID": "4"}
    _, messages = parse_sse(fake_client.get(f"/runs/{run_id}/events?lastEventId=1", headers=headers).get_data())
    assert [m["id"] for m in messages] == ["5"]


def test_resuming_a_done_run_from_its_last_position_is_204_which_stops_an_event_source(fake_client):
    run_id = new_run(fake_client)
    for resumed in ({"Last-Event-ID": "5"}, {"Last-Event-ID": "end"}):
        response = fake_client.get(f"/runs/{run_id}/events", headers={**SSE, **resumed})
        assert (response.status_code, response.get_data()) == (204, b"")
        assert "Content-Type" not in response.headers
    assert fake_client.get(f"/runs/{run_id}/events?lastEventId=5", headers=SSE).status_code == 204
    assert fake_client.get(f"/runs/{run_id}/events", headers={**SSE, "Last-Event-ID": "4"}).status_code == 200


def test_a_failed_runs_stream_ends_with_a_message_whose_id_is_no_position_and_resuming_with_it_is_204(settings):
    from harness.fakes import FailingMidRunEngine

    client = create_app(settings, engine=FailingMidRunEngine()).test_client()
    run_id = client.get("/runs/lookup?scenarioId=a&seed=1", headers={"Prefer": "respond-async"}).get_json()["runId"]
    body = client.get(f"/runs/{run_id}/events", headers=SSE).get_data()
    assert body.endswith(b'id: end\nevent: error\ndata: {"type":"ENGINE_ERROR","message":"The engine failed to run'
                         b' scenario a seed 1: RuntimeError: engine exploded mid-run"}\n\n')
    resumed = client.get(f"/runs/{run_id}/events", headers={**SSE, "Last-Event-ID": "end"})
    assert (resumed.status_code, resumed.get_data()) == (204, b"")
    # A client that saw the last event but not the failure is told of it (then stops).
    again = client.get(f"/runs/{run_id}/events", headers={**SSE, "Last-Event-ID": "2"}).get_data()
    assert again == b"retry: 3000\n\n" + body[body.index(b"id: end"):]


def test_last_event_id_end_of_a_running_run_is_bad_input():
    from harness.fakes import SteppedEngine

    client = create_app(test_settings(), engine=SteppedEngine()).test_client()
    run_id = client.get("/runs/lookup?scenarioId=a&seed=1", headers={"Prefer": "respond-async"}).get_json()["runId"]
    refused = client.get(f"/runs/{run_id}/events", headers={**SSE, "Last-Event-ID": "end"})
    assert refused.status_code == 400 and "has not ended" in refused.get_json()["message"]


def test_empty_last_event_id_header_means_from_the_start(fake_client):
    run_id = new_run(fake_client)
    _, messages = parse_sse(fake_client.get(f"/runs/{run_id}/events", headers={**SSE, "Last-Event-ID": ""}).get_data())
    assert len(messages) == 5


@pytest.mark.parametrize(
    ("headers", "query", "message"),
    [
        ({"Last-Event-ID": "6"}, "", "Last-Event-ID 6 is not a position in this run (1 to 5)"),
        ({"Last-Event-ID": "0"}, "", "Last-Event-ID must be the position of an event (a positive integer) or end"),
        ({"Last-Event-ID": "-1"}, "", "Last-Event-ID must be the position of an event (a positive integer) or end"),
        ({"Last-Event-ID": "abc"}, "", "Last-Event-ID must be the position of an event (a positive integer) or end"),
        ({}, "?lastEventId=1.5", "lastEventId must be the position of an event (a positive integer) or end"),
        ({}, "?lastEventId=99999999999", "lastEventId must be the position of an event (a positive integer) or end"),
        ({}, "?lastEventId=1&lastEventId=2", "lastEventId parameter given more than once"),
        ({}, "?pace=slow", "pace must be 'live' or a delay in milliseconds from 0 to 1000"),
        ({}, "?pace=1001", "pace must be 'live' or a delay in milliseconds from 0 to 1000"),
        ({}, "?pace=-5", "pace must be 'live' or a delay in milliseconds from 0 to 1000"),
    ],
    ids=["past-the-end", "zero", "negative", "letters", "fraction", "huge", "repeated", "pace-word",
         "pace-over-cap", "pace-negative"],
)
def test_bad_replay_input_is_bad_input(fake_client, headers, query, message):
    run_id = new_run(fake_client)
    response = fake_client.get(f"/runs/{run_id}/events{query}", headers={**SSE, **headers})
    assert response.status_code == 400
    assert response.get_json() == {"type": "BAD_INPUT", "message": message}


@pytest.mark.parametrize(
    "accept",
    [None, "application/json", "*/*", "text/html", "application/json, text/event-stream;q=0.5"],
)
def test_any_other_accept_answers_json(fake_client, accept):
    run_id = new_run(fake_client)
    headers = {"Accept": accept} if accept else {}
    response = fake_client.get(f"/runs/{run_id}/events?lastEventId=3&pace=live", headers=headers)
    assert response.status_code == 200 and response.get_json()["count"] == 5  # replay parameters unused


@pytest.mark.parametrize("query", ["lastEventId=junk", "pace=fast", "lastEventId=1&lastEventId=2"])
def test_malformed_replay_parameters_are_refused_for_json_too(fake_client, query):
    run_id = new_run(fake_client)
    response = fake_client.get(f"/runs/{run_id}/events?{query}")
    assert response.status_code == 400 and response.get_json()["type"] == "BAD_INPUT"


def test_unknown_run_stream_is_the_json_404(fake_client):
    response = fake_client.get("/runs/nope/events", headers=SSE)
    assert response.status_code == 404
    assert response.get_json() == {"type": "BAD_INPUT", "message": "Run nope not found"}


def test_paced_replay_delivers_the_same_messages(fake_client):
    run_id = new_run(fake_client)
    fast = fake_client.get(f"/runs/{run_id}/events", headers=SSE).get_data()
    paced = fake_client.get(f"/runs/{run_id}/events?pace=1", headers=SSE).get_data()
    assert paced == fast


def test_streams_past_the_waiting_capacity_are_503_and_give_their_slot_back(fake_engine):
    client = create_app(test_settings(max_waiting=1), engine=fake_engine).test_client()
    run_id = new_run(client)
    first = client.get(f"/runs/{run_id}/events?pace=1", headers=SSE, buffered=False)
    busy = client.get(f"/runs/{run_id}/events?pace=1", headers=SSE)
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
    assert busy.get_json()["type"] == "UNAVAILABLE"
    assert client.get(f"/runs/{run_id}/events").status_code == 200  # the JSON transcript does not wait
    at_once = client.get(f"/runs/{run_id}/events", headers=SSE)  # nor does a done run's replay, sent at once
    assert at_once.status_code == 200 and at_once.headers["Content-Length"] == str(len(at_once.get_data()))
    assert client.get("/runs/lookup?scenarioId=a&seed=1").get_json()["source"] == "cache"  # nor do hits
    first.close()  # the client went away: its slot is free again
    assert client.get(f"/runs/{run_id}/events?pace=1", headers=SSE).status_code == 200


def test_one_client_has_only_its_share_of_the_waiting_room(fake_engine):
    client = create_app(test_settings(max_waiting=10, max_waiting_per_client=3), engine=fake_engine).test_client()
    run_id = new_run(client)

    def stream(address: str):
        return client.get(f"/runs/{run_id}/events?pace=1", headers=SSE, buffered=False,
                          environ_base={"REMOTE_ADDR": address})

    hogs = [stream("2001:db8::1"), stream("2001:db8::2"), stream("2001:db8::3")]  # one /64: one client
    refused = stream("2001:db8::4")
    assert refused.status_code == 503 and refused.get_json()["type"] == "UNAVAILABLE"
    others = [stream("192.0.2.7"), stream("192.0.2.8")]
    assert [answer.status_code for answer in others] == [200, 200]  # everyone else still streams
    hogs[0].close()
    assert stream("2001:db8::5").status_code == 200
    for answer in [*hogs, *others]:
        answer.close()


def test_a_replay_does_not_renew_the_run(fake_client):
    run_id = new_run(fake_client)
    before = fake_client.get(f"/runs/{run_id}").get_json()
    fake_client.get(f"/runs/{run_id}/events", headers=SSE)
    assert fake_client.get(f"/runs/{run_id}").get_json() == before


def test_streams_of_many_clients_at_once_are_whole(fake_client):
    run_id = new_run(fake_client)
    expected = fake_client.get(f"/runs/{run_id}/events", headers=SSE).get_data()
    bodies = []
    threads = [threading.Thread(target=lambda: bodies.append(
        fake_client.get(f"/runs/{run_id}/events", headers=SSE).get_data())) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert bodies == [expected] * 16


@pytest.mark.parametrize("sent", ["{tag}", 'W/"x", {tag}', "*"], ids=["its tag", "a list with it", "star"])
def test_a_client_that_has_the_transcript_gets_a_304_without_a_body_or_a_type(fake_client, sent):
    run_id = new_run(fake_client)
    tag = fake_client.get(f"/runs/{run_id}/events").headers["ETag"]
    again = fake_client.get(f"/runs/{run_id}/events", headers={"If-None-Match": sent.format(tag=tag)})
    assert (again.status_code, again.get_data(), again.headers["ETag"]) == (304, b"", tag)
    assert "Content-Type" not in again.headers
