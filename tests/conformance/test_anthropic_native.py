"""Anthropic's Messages API passed through: a `/v1/messages` request whose
deployments all speak Anthropic's protocol goes upstream as the client wrote
it (only the model and the credential change) and its answer comes back as
the upstream sent it, with `usage.cost` — judged by Anthropic's own SDK and
by what the mock upstream received. What chat cannot carry is refused only
where a provider of another protocol would serve it."""
import json
import time
import urllib.request

from conftest import MASTER_KEY, own_gateway, own_mock, records_of

import anthropic
import pytest

CLAUDE = "anthropic/claude-sonnet-4-5"
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgAAAAAgABVKJPXQAAAABJRU5ErkJggg==")


def claude(gateway, key=MASTER_KEY):
    return anthropic.Anthropic(base_url=gateway, api_key=key, max_retries=0)


def received(mock, path, marker):
    """The last request the mock received at a path ending in `path` whose body mentions `marker`."""
    with urllib.request.urlopen(mock + "/__mock/requests", timeout=5) as r:
        seen = json.loads(r.read())
    return next(r for r in reversed(seen) if r["path"].endswith(path) and marker in json.dumps(r["body"]))




def test_the_request_goes_upstream_as_written(gateway, mock):
    c = claude(gateway)
    body = dict(max_tokens=3000, thinking={"type": "enabled", "budget_tokens": 2048},
                system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
                messages=[{"role": "user", "content": "native marker one"}])
    raw = c.messages.with_raw_response.create(
        model=CLAUDE, **body, extra_body={"context_management": {"edits": []}},
        extra_headers={"anthropic-beta": "context-management-2025-06-27"})
    m = raw.parse()
    # The upstream's own message: its id, its thinking block as it sent it.
    assert m.id.startswith("msg_mock") and m.content[0].type == "thinking" and m.content[0].signature
    assert raw.headers["x-polyplex-provider"] == "anthropic" and raw.headers["request-id"] == m._request_id
    sent = received(mock, "/v1/messages", "native marker one")
    assert sent["body"]["model"] == "claude-sonnet-4-5"
    for k, v in body.items():
        assert sent["body"][k] == v, k
    assert sent["body"]["context_management"] == {"edits": []}
    # The provider's credential, never the client's key; the client's beta header.
    assert sent["headers"]["x-api-key"] == "sk-mock-provider"
    assert sent["headers"]["anthropic-beta"] == "context-management-2025-06-27"
    # The API version the client's SDK speaks.
    assert sent["headers"]["anthropic-version"] == raw.http_request.headers["anthropic-version"]
    assert MASTER_KEY not in json.dumps(sent)


def test_a_stop_sequence_is_named(gateway):
    c = claude(gateway)
    m = c.messages.create(model=CLAUDE, max_tokens=50, stop_sequences=["three"],
                          messages=[{"role": "user", "content": "one two three four"}])
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == "three"
    assert m.content[0].text == "one two "
    with c.messages.stream(model=CLAUDE, max_tokens=50, stop_sequences=["four", "two"],
                           messages=[{"role": "user", "content": "one two three four"}]) as s:
        final = s.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == "two"


def test_usage_and_cost_come_back_and_are_recorded(gateway):
    c = claude(gateway)
    raw = c.messages.with_raw_response.create(model=CLAUDE, max_tokens=50,
                                              metadata={"user_id": "native-user"},
                                              messages=[{"role": "user", "content": "count my tokens please"}])
    body = json.loads(raw.http_response.text)
    usage = body["usage"]
    assert usage["cost"] > 0 and usage["output_tokens"] > 0
    [r] = records_of(gateway, raw.headers["x-request-id"])
    assert r["endpoint"] == "messages" and r["provider"] == "anthropic" and r["status"] == 200
    assert r["prompt_tokens"] == usage["input_tokens"] + usage["cache_read_input_tokens"] + usage["cache_creation_input_tokens"]
    assert r["completion_tokens"] == usage["output_tokens"] and r["user"] == "native-user"
    assert abs(r["cost_usd"] - usage["cost"]) < 1e-9

    # A stream's events come as the upstream sent them; its message_delta
    # carries the cost; its record has the tokens the events counted.
    with c.messages.with_streaming_response.create(
            model=CLAUDE, max_tokens=50, stream=True,
            messages=[{"role": "user", "content": "stream and count"}]) as resp:
        text = resp.http_response.read().decode()
        rid = resp.headers["x-request-id"]
    events = [line[len("event: "):] for line in text.splitlines() if line.startswith("event: ")]
    assert events[0] == "message_start" and events[-2:] == ["message_delta", "message_stop"]
    assert "ping" in events  # relayed, not rebuilt
    datas = [json.loads(line[len("data: "):]) for line in text.splitlines() if line.startswith("data: ")]
    start = next(d for d in datas if d["type"] == "message_start")["message"]["usage"]
    delta = next(d for d in datas if d["type"] == "message_delta")["usage"]
    assert delta["cost"] > 0
    [r] = records_of(gateway, rid)
    assert r["stream"] and r["status"] == 200 and r["prompt_tokens"] == start["input_tokens"]
    assert r["completion_tokens"] == delta["output_tokens"] and abs(r["cost_usd"] - delta["cost"]) < 1e-9


def test_what_chat_cannot_carry_is_refused_only_off_anthropic(gateway, mock):
    c = claude(gateway)
    # A tool result with an image, and a server tool the gateway does not run itself.
    turns = [
        {"role": "user", "content": "Look at this, native marker two"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "screenshot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]}]}]
    tools = [{"name": "screenshot", "input_schema": {"type": "object"}},
             {"type": "code_execution_20250825", "name": "code_execution"}]
    m = c.messages.create(model=CLAUDE, max_tokens=50, tools=tools, messages=turns)
    assert m.type == "message"
    sent = received(mock, "/v1/messages", "native marker two")["body"]
    assert sent["messages"][2]["content"][0]["content"][0]["type"] == "image"
    assert sent["tools"][1]["type"] == "code_execution_20250825"
    with pytest.raises(anthropic.BadRequestError) as e:
        c.messages.create(model="openai/gpt-4o", max_tokens=50, tools=tools, messages=turns)
    assert "messages.2.content.0.content.0" in e.value.body["error"]["message"]
    # An unknown field too: passed through to Anthropic, refused elsewhere.
    assert c.messages.create(model=CLAUDE, max_tokens=50, messages=[{"role": "user", "content": "hi"}],
                             extra_body={"inference_geo": "us"}).type == "message"
    with pytest.raises(anthropic.BadRequestError) as e:
        c.messages.create(model="google/gemini-2.5-flash", max_tokens=50,
                          messages=[{"role": "user", "content": "hi"}], extra_body={"inference_geo": "us"})
    assert "inference_geo" in e.value.body["error"]["message"]
    # What chat's own rules refuse (five stop sequences; chat takes four): the same.
    five = ["s1", "s2", "s3", "s4", "s5"]
    assert c.messages.create(model=CLAUDE, max_tokens=50, stop_sequences=five,
                             messages=[{"role": "user", "content": "hi"}]).type == "message"
    with pytest.raises(anthropic.BadRequestError) as e:
        c.messages.create(model="openai/gpt-4o", max_tokens=50, stop_sequences=five,
                          messages=[{"role": "user", "content": "hi"}])
    assert "stop" in e.value.body["error"]["message"]
    # The request's frame is checked either way.
    with pytest.raises(anthropic.BadRequestError) as e:
        c.messages.create(model=CLAUDE, messages=[{"role": "user", "content": "hi"}], max_tokens=0)
    assert "max_tokens" in e.value.body["error"]["message"]


def test_upstream_failures_retry_before_the_first_byte_and_end_streams_with_an_error(gateway, fault):
    c = claude(gateway)
    fault(fault="503", count=1, model="claude-sonnet-4-5")
    raw = c.messages.with_raw_response.create(model=CLAUDE, max_tokens=50,
                                              messages=[{"role": "user", "content": "retried"}])
    assert raw.headers["x-polyplex-attempts"] == "2" and raw.parse().content[0].text == "retried"
    fault(fault="503", count=1, model="claude-sonnet-4-5")
    with c.messages.with_streaming_response.create(model=CLAUDE, max_tokens=50, stream=True,
                                                   messages=[{"role": "user", "content": "retried stream"}]) as resp:
        assert resp.headers["x-polyplex-attempts"] == "2"
        assert "message_stop" in resp.http_response.read().decode()
    # Both tries fail: the client gets Anthropic's error, and its class.
    fault(fault="429", count=2, model="claude-sonnet-4-5")
    with pytest.raises(anthropic.RateLimitError) as e:
        c.messages.create(model=CLAUDE, max_tokens=50, messages=[{"role": "user", "content": "limited"}])
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "rate_limit_error"
    # An upstream that goes away mid-stream: the stream says so with an error event.
    fault(fault="disconnect", count=1, after_chunks=2, model="claude-sonnet-4-5")
    with c.messages.with_streaming_response.create(model=CLAUDE, max_tokens=50, stream=True,
                                                   messages=[{"role": "user", "content": "cut me off early please"}]) as resp:
        text = resp.http_response.read().decode()
        rid = resp.headers["x-request-id"]
    assert "message_stop" not in text and "event: error" in text
    error = json.loads(text.split("event: error\ndata: ")[1].split("\n")[0])
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    [r] = records_of(gateway, rid)
    assert r["status"] == 502 and r["prompt_tokens"] > 0


def test_count_tokens_asks_the_upstream(gateway, mock):
    c = claude(gateway)
    n = c.messages.count_tokens(model=CLAUDE, messages=[{"role": "user", "content": "native marker three"}])
    assert n.input_tokens > 0
    sent = received(mock, "/v1/messages/count_tokens", "native marker three")
    assert sent["body"]["model"] == "claude-sonnet-4-5" and sent["headers"]["x-api-key"] == "sk-mock-provider"
    # Elsewhere the gateway counts; what it cannot read is refused there.
    assert c.messages.count_tokens(model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}]).input_tokens > 0
    with pytest.raises(anthropic.BadRequestError):
        c.messages.count_tokens(model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                tools=[{"type": "code_execution_20250825", "name": "code_execution"}])
    assert c.messages.count_tokens(model=CLAUDE, messages=[{"role": "user", "content": "hi"}],
                                   tools=[{"type": "code_execution_20250825", "name": "code_execution"}]).input_tokens > 0


def test_claude_on_vertex_takes_the_request_as_written(gateway, mock):
    c = claude(gateway)
    model = "vertex/claude-haiku-4-5@20251001"
    tools = [{"type": "code_execution_20250825", "name": "code_execution"}]
    m = c.messages.create(model=model, max_tokens=50, tools=tools, stop_sequences=["marker"],
                          messages=[{"role": "user", "content": "vertex native marker four"}],
                          extra_headers={"anthropic-beta": "code-execution-2025-08-25"})
    assert m.id.startswith("msg_mock") and m.stop_reason == "stop_sequence" and m.stop_sequence == "marker"
    sent = received(mock, "/v1/projects/polyplex-conformance/locations/us-east5/publishers/anthropic/models/"
                          "claude-haiku-4-5@20251001:rawPredict", "vertex native marker four")
    assert sent["body"]["tools"] == tools and sent["body"]["anthropic_version"] == "vertex-2023-10-16"
    assert sent["headers"]["anthropic-beta"] == "code-execution-2025-08-25"
    assert sent["headers"]["authorization"].startswith("Bearer ")
    with c.messages.stream(model=model, max_tokens=50, tools=tools,
                           messages=[{"role": "user", "content": "vertex stream marker five"}]) as s:
        final = s.get_final_message()
    assert final.content[0].text == "vertex stream marker five" and final.stop_reason == "end_turn"
    assert received(mock, "/v1/projects/polyplex-conformance/locations/us-east5/publishers/anthropic/models/"
                          "claude-haiku-4-5@20251001:streamRawPredict", "vertex stream marker five")
    # Counted by Vertex AI's count-tokens endpoint for Claude, the model in the body.
    n = c.messages.count_tokens(model=model, messages=[{"role": "user", "content": "vertex count marker"}])
    assert n.input_tokens > 0
    sent = received(mock, "/publishers/anthropic/models/count-tokens:rawPredict", "vertex count marker")
    assert sent["body"]["model"] == "claude-haiku-4-5@20251001"
    assert sent["body"]["anthropic_version"] == "vertex-2023-10-16"


def test_claude_on_bedrock_takes_the_request_as_written(gateway, mock, fault):
    c = claude(gateway)
    model = "bedrock/us.anthropic.claude-haiku-4-5-20251001-v1:0"
    tools = [{"type": "code_execution_20250825", "name": "code_execution"}]
    raw = c.messages.with_raw_response.create(
        model=model, max_tokens=50, tools=tools, stop_sequences=["marker"],
        messages=[{"role": "user", "content": "bedrock native marker six"}],
        extra_headers={"anthropic-beta": "code-execution-2025-08-25"})
    m = raw.parse()
    assert m.id.startswith("msg_mock") and m.stop_reason == "stop_sequence" and m.stop_sequence == "marker"
    assert json.loads(raw.http_response.text)["usage"]["cost"] > 0
    sent = received(mock, "/invoke", "bedrock native marker six")
    # Signed with SigV4; the beta features in the body, as Bedrock takes them.
    assert sent["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 ")
    assert sent["body"]["anthropic_beta"] == ["code-execution-2025-08-25"] and sent["body"]["tools"] == tools
    with c.messages.with_streaming_response.create(
            model=model, max_tokens=50, stream=True, tools=tools,
            messages=[{"role": "user", "content": "bedrock stream marker seven"}]) as resp:
        text = resp.http_response.read().decode()
        rid = resp.headers["x-request-id"]
    # Bedrock's event-stream chunks come out as Anthropic's SSE events.
    assert text.startswith("event: message_start\ndata: ") and text.rstrip().endswith('data: {"type":"message_stop"}')
    assert received(mock, "/invoke-with-response-stream", "bedrock stream marker seven")
    [r] = records_of(gateway, rid)
    assert r["provider"] == "bedrock" and r["status"] == 200 and r["completion_tokens"] > 0
    # Throttled: Bedrock's error, in Anthropic's shape and class.
    fault(fault="429", count=2, model="us.anthropic.claude-haiku-4-5-20251001-v1:0")
    with pytest.raises(anthropic.RateLimitError):
        c.messages.create(model=model, max_tokens=50, messages=[{"role": "user", "content": "throttled"}])



def test_claude_on_bedrock_is_counted_by_count_tokens(gateway, mock):
    import base64
    c = claude(gateway)
    n = c.messages.count_tokens(model="bedrock/us.anthropic.claude-haiku-4-5-20251001-v1:0",
                                messages=[{"role": "user", "content": "bedrock count marker"}])
    assert n.input_tokens > 0
    with urllib.request.urlopen(mock + "/__mock/requests", timeout=5) as r:
        seen = json.loads(r.read())
    sent = next(r for r in reversed(seen) if r["path"].endswith("/count-tokens"))
    # The foundation model of the inference profile; the invoke body in base64, signed.
    assert sent["path"] == "/model/anthropic.claude-haiku-4-5-20251001-v1%3A0/count-tokens"
    body = json.loads(base64.b64decode(sent["body"]["input"]["invokeModel"]["body"]))
    assert body["messages"][0]["content"] == "bedrock count marker"
    assert body["anthropic_version"] == "bedrock-2023-05-31" and "model" not in body
    assert sent["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 ")

def test_failover_between_providers_of_claude_stays_native(gateway, fault):
    """A bare Claude name is served by Anthropic, Vertex AI and Bedrock: all
    take the request as written, so failing over between them keeps it."""
    c = claude(gateway)
    plan = c.messages.with_raw_response.create(model="claude-haiku-4-5", max_tokens=20,
                                               messages=[{"role": "user", "content": "who serves"}])
    first = plan.headers["x-polyplex-provider"]
    fault(fault="500", count=4, model={"anthropic": "claude-haiku-4-5", "vertex": "claude-haiku-4-5@20251001",
                                       "bedrock": "us.anthropic.claude-haiku-4-5-20251001-v1:0"}[first])
    tools = [{"type": "code_execution_20250825", "name": "code_execution"}]
    raw = c.messages.with_raw_response.create(model="claude-haiku-4-5", max_tokens=20, tools=tools,
                                              messages=[{"role": "user", "content": "failed over"}])
    assert raw.headers["x-polyplex-provider"] != first and first in raw.headers["x-polyplex-fallbacks"]
    m = raw.parse()
    assert m.id.startswith("msg_mock") and m.content[0].text == "failed over"



def test_a_client_gone_mid_stream_is_recorded(tmp_path):
    """A client that leaves a passed-through stream: the upstream request is
    cancelled and the one record says 499, with the prompt counted."""
    with own_mock("--tokens-per-s", "20") as mock:
        provider = f"""[[providers]]
name = "anthropic"
base_url = "{mock}"
api_key = "sk-mock-provider"
models = ["claude-sonnet-4-5"]
"""
        with own_gateway(tmp_path, provider) as (client, proc):
            base = str(client.base_url).rstrip("/").removesuffix("/v1")
            with claude(base).messages.with_streaming_response.create(
                    model=CLAUDE, max_tokens=50, stream=True,
                    messages=[{"role": "user", "content": "word " * 200}]) as r:
                assert next(r.iter_lines()) == "event: message_start"
            deadline = time.time() + 30
            while "status=499" not in proc.output():
                assert time.time() < deadline, proc.output()[-2000:]
                time.sleep(0.02)
            gone = next(l for l in proc.output().splitlines() if "status=499" in l)
            assert " endpoint=messages " in gone and " provider=anthropic " in gone and " stream=true" in gone
            assert 200 <= int(gone.split("prompt_tokens=")[1].split()[0]) < 220, gone
