"""The LLM test rig: a real llama.cpp (node-llama-cpp's CPU build) behind an OpenAI-compatible
server, over a tiny random-weight model made on this machine."""

from __future__ import annotations

import hashlib
import json

import pytest

from harness.llm_rig import LlamaServer
from harness.servers import Reply
from harness.servers import http

pytestmark = pytest.mark.server

KEY = "sk-test-rig"
REQUEST = {
    "messages": [
        {"role": "system", "content": "You answer in one line."},
        {"role": "user", "content": "What does the seed do?"},
    ],
    "seed": 7,
    "temperature": 0.8,
    "max_tokens": 40,
    "stream": True,
    "stream_options": {"include_usage": True},
}


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    """One server for the module, with an API key as real ones have."""
    with LlamaServer(tmp_path_factory.mktemp("llm") / "llm.log", api_key=KEY) as server:
        yield server


def chat(server: LlamaServer, key: str | None = KEY, **fields: object) -> Reply:
    """POST REQUEST, with ``fields`` changed, to the server's chat completions."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    body = json.dumps({"model": server.model_id, **REQUEST, **fields}).encode()
    return http("POST", f"{server.url}/chat/completions", body, headers)


def events(reply: Reply) -> list[dict]:
    """The chunks of a streamed reply, checked to be ``data:`` events closed by ``[DONE]``."""
    assert reply.status == 200, reply.body
    assert reply.headers["Content-Type"] == "text/event-stream"
    frames = reply.body.decode().split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""]
    assert all(frame.startswith("data: ") for frame in frames[:-1])
    return [json.loads(frame.removeprefix("data: ")) for frame in frames[:-2]]


def content(chunks: list[dict]) -> str:
    return "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks if chunk["choices"])


def test_models_lists_the_files_digest(llm):
    reply = http("GET", f"{llm.url}/models", headers={"Authorization": f"Bearer {KEY}"})
    assert reply.status == 200
    assert reply.json() == {"object": "list", "data": [{
        "id": llm.model_id, "object": "model", "owned_by": "run-registry-tests",
        "digest": f"sha256:{hashlib.sha256(llm.model.read_bytes()).hexdigest()}",
    }]}


def test_same_seed_streams_the_same_content(llm):
    first, second = events(chat(llm)), events(chat(llm))
    assert content(first).encode() == content(second).encode()
    # What a real server varies between replies, and what it keeps.
    assert first[0]["id"] != second[0]["id"]
    for chunks in (first, second):
        assert {chunk["id"] for chunk in chunks} == {chunks[0]["id"]}
        assert chunks[0]["id"].startswith("chatcmpl-")
        assert {(chunk["object"], chunk["model"], chunk["system_fingerprint"]) for chunk in chunks} == {
            ("chat.completion.chunk", llm.model_id, first[0]["system_fingerprint"])}
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert chunks[-2]["choices"][0] == {
            "index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}


def test_another_seed_streams_other_content(llm):
    assert content(events(chat(llm, seed=8))) != content(events(chat(llm)))


def test_content_is_text(llm):
    text = content(events(chat(llm)))
    # Byte tokens and </s> are banned in the model's output weights: no partial UTF-8 reaches
    # the decoder (it would show as U+FFFD), and the reply runs to max_tokens.
    assert text.strip()
    assert "\ufffd" not in text
    assert text.isprintable()


def test_usage_comes_last_and_counts_the_content_chunks(llm):
    chunks = events(chat(llm))
    usage = chunks[-1]
    assert usage["choices"] == []
    content_chunks = [chunk for chunk in chunks[1:-2] if chunk["choices"][0]["delta"].get("content")]
    assert len(content_chunks) == len(chunks) - 3  # after the role chunk, before the finish and usage
    assert usage["usage"]["completion_tokens"] == len(content_chunks) == REQUEST["max_tokens"]
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + len(content_chunks)
    assert usage["usage"]["prompt_tokens"] > len("What does the seed do?")
    assert all(chunk["usage"] is None for chunk in chunks[:-1])


def test_a_reply_in_one_piece_matches_the_stream(llm):
    reply = chat(llm, stream=False, stream_options=None)
    assert reply.status == 200
    body = reply.json()
    assert body["object"] == "chat.completion"
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": content(events(chat(llm)))},
                                "logprobs": None, "finish_reason": "length"}]
    assert body["usage"]["completion_tokens"] == REQUEST["max_tokens"]


def test_a_stop_string_ends_the_reply_before_it(llm):
    text = content(events(chat(llm)))
    stop = text[12:15]
    chunks = events(chat(llm, stop=[stop, "never-seen"]))
    assert content(chunks) == text[:text.index(stop)]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


def test_a_server_that_ignores_the_seed_does_not_repeat(tmp_path):
    with LlamaServer(tmp_path / "llm.log", ignore_seed=True) as server:
        first = content(events(chat(server, key=None)))
        # Two random 32-bit seeds could sample the same 40 tokens; a few tries rule that out.
        assert any(content(events(chat(server, key=None))) != first for _ in range(3))
        assert server.stop() == 0  # SIGTERM: a clean exit


@pytest.mark.parametrize("key", [None, "sk-wrong"], ids=["missing-key", "wrong-key"])
def test_a_wrong_key_is_401(llm, key):
    reply = chat(llm, key=key)
    assert reply.status == 401
    assert reply.json()["error"]["type"] == "invalid_request_error"


def test_an_unknown_model_is_404(llm):
    reply = chat(llm, model="gpt-nothing")
    assert reply.status == 404
    assert reply.json() == {"error": {"message": "The model 'gpt-nothing' does not exist.",
                                      "type": "invalid_request_error", "param": None, "code": "model_not_found"}}


@pytest.mark.parametrize(
    ("fields", "message"),
    [(None, "The body is not valid JSON."),
     ({"messages": "hello"}, "'messages' must be a non-empty array."),
     ({"messages": [{"role": "user", "content": "hi"}], "seed": 1.5}, "'seed' must be an integer of at least "
      f"{-(2**53 - 1)}.")],
    ids=["not-json", "messages-not-a-list", "fractional-seed"],
)
def test_a_malformed_body_is_400(llm, fields, message):
    body = b"{not json" if fields is None else json.dumps({"model": llm.model_id, **fields}).encode()
    reply = http("POST", f"{llm.url}/chat/completions", body, {"Authorization": f"Bearer {KEY}"})
    assert reply.status == 400
    assert reply.json()["error"] == {"message": message, "type": "invalid_request_error", "param": None, "code": None}
