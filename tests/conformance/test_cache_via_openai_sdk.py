"""The response cache (`[cache]`) through the official SDK: a repeated call,
streamed or not, is answered from the cache — the same content, parsed by the
SDK as any answer, at no cost and without an upstream call."""
import contextlib
import json
import urllib.request

import pytest
from openai import OpenAI

from conftest import BIN, MASTER_KEY, Proc, free_port, mock_openai_provider, wait_http


@pytest.fixture(scope="module")
def cached_gateway(mock, tmp_path_factory):
    d = tmp_path_factory.mktemp("cache-gw")
    port = free_port()
    (d / "polyplex.toml").write_text(f"""
listen = "127.0.0.1:{port}"
[auth]
master_key = "{MASTER_KEY}"
[cache]
ttl_s = 60
{mock_openai_provider(mock)}""")
    proc = Proc([BIN, "serve"], cwd=d)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/healthz")
    yield base
    proc.stop()


@contextlib.contextmanager
def cached_gateway_of(tmp_path, mock, provider):
    """A gateway of a test's own with the cache on and one provider of the
    catalog's (its protocol) on the mock: yields its URL."""
    from conftest import own_gateway

    providers = f"""[cache]
ttl_s = 60

[[providers]]
name = "{provider}"
base_url = "{mock}"
api_key = "sk-mock-provider"
max_retries = 0
"""
    with own_gateway(tmp_path, providers) as (client, _):
        yield str(client.base_url).removesuffix("/v1/")


def upstream_requests(mock):
    return json.loads(urllib.request.urlopen(mock + "/__mock/stats").read())["requests"]


def test_unary_and_streamed_answers_come_from_the_cache(cached_gateway, mock):
    client = OpenAI(base_url=cached_gateway + "/v1", api_key=MASTER_KEY, max_retries=0)
    messages = [{"role": "user", "content": "Say it twice, from the cache"}]

    first = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    n = upstream_requests(mock)
    again = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    assert first.headers["x-polyplex-cache"] == "miss" and again.headers["x-polyplex-cache"] == "hit"
    a, b = first.parse(), again.parse()
    assert b.choices[0].message.content == a.choices[0].message.content
    assert a.usage.model_extra["cost"] > 0 and b.usage.model_extra["cost"] == 0
    assert upstream_requests(mock) == n

    def stream():
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True})
        chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = next(c.usage for c in chunks if c.usage)
        return raw.headers["x-polyplex-cache"], text, usage

    state, text, usage = stream()
    assert state == "miss" and text == a.choices[0].message.content and usage.model_extra["cost"] > 0
    n = upstream_requests(mock)
    state, replay, usage_again = stream()
    assert state == "hit" and replay == text
    assert usage_again.total_tokens == usage.total_tokens and usage_again.model_extra["cost"] == 0
    assert upstream_requests(mock) == n


def test_the_same_request_written_differently_is_the_same_entry(cached_gateway, mock):
    """Two clients' JSON for one request (another key order, whitespace) share
    the answer; a request that says something else does not."""
    def post(text):
        req = urllib.request.Request(cached_gateway + "/v1/chat/completions", data=text.encode(), method="POST",
                                     headers={"authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.headers["x-polyplex-cache"], json.loads(r.read())

    compact = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"written two ways"}],"temperature":0}'
    spaced = '{\n  "temperature": 0,\n  "messages": [ { "content": "written two ways", "role": "user" } ],\n  "model": "gpt-4o-mini"\n}'
    state, first = post(compact)
    assert state == "miss"
    n = upstream_requests(mock)
    state, again = post(spaced)
    assert state == "hit" and again["choices"] == first["choices"] and upstream_requests(mock) == n
    state, _ = post(compact.replace("temperature\":0", "temperature\":1"))
    assert state == "miss"


def test_messages_passed_through_to_anthropic_come_from_the_cache(mock, tmp_path):
    """Anthropic's Messages API served as written by Anthropic: its answers,
    unary and streamed, are cached in Anthropic's own shape (thinking and
    all), kept apart from the same request's chat-form answers."""
    import anthropic

    from conftest import records_of

    with cached_gateway_of(tmp_path, mock, "anthropic") as base:
        openai_client = OpenAI(base_url=base + "/v1", api_key=MASTER_KEY, max_retries=0)
        client = anthropic.Anthropic(base_url=base, api_key=MASTER_KEY, max_retries=0)
        ask = dict(model="anthropic/claude-sonnet-4-5", max_tokens=2000,
                   thinking={"type": "enabled", "budget_tokens": 1024},
                   messages=[{"role": "user", "content": "cache the native answer"}])
        first = client.messages.with_raw_response.create(**ask)
        n = upstream_requests(mock)
        again = client.messages.with_raw_response.create(**ask)
        assert (first.headers["x-polyplex-cache"], again.headers["x-polyplex-cache"]) == ("miss", "hit")
        assert upstream_requests(mock) == n
        a, b = first.parse(), again.parse()
        assert [blk.type for blk in b.content] == [blk.type for blk in a.content]
        assert b.content[-1].text == a.content[-1].text == "cache the native answer"
        # The signed thinking block comes back as Anthropic sent it.
        assert a.content[0].type == "thinking" and a.content[0].signature
        assert b.content[0].signature == a.content[0].signature
        assert a.usage.model_extra["cost"] > 0 and b.usage.model_extra["cost"] == 0
        [record] = records_of(base, again.headers["x-request-id"])
        assert (record["provider"], record["cost_usd"], record["endpoint"]) == ("cache", 0, "messages")

        def stream():
            raw = client.messages.with_raw_response.create(**ask, stream=True)
            events = list(raw.parse())
            return raw.headers["x-polyplex-cache"], events

        state, events = stream()
        assert state == "miss"
        n = upstream_requests(mock)
        state_again, replay = stream()
        assert state_again == "hit" and upstream_requests(mock) == n
        assert [e.type for e in replay] == [e.type for e in events]
        assert replay[-1].type == "message_stop"
        delta = next(e for e in replay if e.type == "message_delta")
        assert delta.usage.output_tokens > 0 and delta.usage.model_extra["cost"] == 0
        text = "".join(e.delta.text for e in replay if e.type == "content_block_delta" and e.delta.type == "text_delta")
        assert text == "cache the native answer"
        # The OpenAI SDK's chat form of the same request is another entry.
        chat = openai_client.chat.completions.with_raw_response.create(
            model="anthropic/claude-sonnet-4-5", max_tokens=2000,
            messages=[{"role": "user", "content": "cache the native answer"}])
        assert chat.headers["x-polyplex-cache"] == "miss"


def test_gemini_requests_passed_through_come_from_the_cache(mock, tmp_path):
    """Google's Gemini API served as written by Gemini: its answers, unary,
    SSE and JSON-array streams, are cached as Google sent them, under the
    request as written."""
    from google import genai
    from google.genai import types

    from conftest import records_of

    with cached_gateway_of(tmp_path, mock, "google") as base:
        c = genai.Client(api_key=MASTER_KEY, http_options=types.HttpOptions(base_url=base))
        safety = [types.SafetySetting(category="HARM_CATEGORY_HATE_SPEECH", threshold="BLOCK_NONE")]
        config = types.GenerateContentConfig(safety_settings=safety)

        def ask(text="gemini cache marker", config=config):
            return c.models.generate_content(model="google/gemini-2.5-flash", contents=text, config=config)

        first = ask()
        n = upstream_requests(mock)
        again = ask()
        h = again.sdk_http_response.headers
        assert (first.sdk_http_response.headers["x-polyplex-cache"], h["x-polyplex-cache"]) == ("miss", "hit")
        assert upstream_requests(mock) == n
        assert again.text == first.text == "gemini cache marker"
        assert again.usage_metadata.total_token_count == first.usage_metadata.total_token_count
        assert (h["x-polyplex-provider"], h["x-polyplex-attempts"]) == ("google", "0")
        [paid] = records_of(base, first.sdk_http_response.headers["x-request-id"])
        [record] = records_of(base, h["x-request-id"])
        assert paid["cost_usd"] > 0 and paid["provider"] == "google"
        assert (record["provider"], record["cost_usd"], record["endpoint"]) == ("cache", 0, "gemini")
        assert record["total_tokens"] == paid["total_tokens"]
        # Written otherwise (no safety settings): another entry.
        assert ask(config=None).sdk_http_response.headers["x-polyplex-cache"] == "miss"

        def stream():
            chunks = list(c.models.generate_content_stream(
                model="google/gemini-2.5-flash", contents="gemini cached stream", config=config))
            return chunks[-1].sdk_http_response.headers["x-polyplex-cache"], chunks

        state, chunks = stream()
        n = upstream_requests(mock)
        state_again, replay = stream()
        assert (state, state_again) == ("miss", "hit") and upstream_requests(mock) == n
        assert "".join(ch.text or "" for ch in replay) == "".join(ch.text or "" for ch in chunks)
        assert replay[-1].usage_metadata.total_token_count == chunks[-1].usage_metadata.total_token_count

        # The JSON-array stream (no `alt=sse`), and `Cache-Control: no-store`.
        def array(headers=None):
            req = urllib.request.Request(
                f"{base}/v1beta/models/google/gemini-2.5-flash:streamGenerateContent",
                data=json.dumps({"contents": [{"parts": [{"text": "gemini cached array"}]}]}).encode(),
                headers={"content-type": "application/json", "x-goog-api-key": MASTER_KEY, **(headers or {})})
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.headers["content-type"] == "application/json"
                return resp.headers["x-polyplex-cache"], json.loads(resp.read())

        state, body = array()
        state_again, replay = array()
        assert (state, state_again) == ("miss", "hit")
        assert [ch["candidates"] for ch in replay] == [ch["candidates"] for ch in body]
        assert body[-1]["usageMetadata"]["cost"] > 0 and replay[-1]["usageMetadata"]["cost"] == 0
        n = upstream_requests(mock)
        assert array({"cache-control": "no-store"})[0] is None
        assert upstream_requests(mock) == n + 1
