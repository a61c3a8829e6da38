"""Anthropic's Messages API served by polyplex (`/v1/messages`), judged by
Anthropic's own Python SDK: messages, streams (the SDK's accumulator checks
the events' order), tool loops and extended thinking round trip on every
provider; errors come in Anthropic's shape with the status (and so the
exception class) Anthropic would give; `count_tokens`; each request is one
usage record."""
import base64

from conftest import MASTER_KEY, admin
from test_keys_via_openai_sdk import new_key

import anthropic
import pytest

EVERY = ["openai/gpt-4o", "anthropic/claude-sonnet-4-5", "google/gemini-2.5-flash",
         "bedrock/us.anthropic.claude-haiku-4-5-20251001-v1:0", "cohere/command-r-plus"]
WEATHER = [{"name": "get_weather", "description": "Weather of a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")).decode()


def claude(gateway, key=MASTER_KEY):
    return anthropic.Anthropic(base_url=gateway, api_key=key, max_retries=0)


@pytest.mark.parametrize("model", EVERY)
def test_a_message_and_its_stream_on_every_provider(gateway, model):
    c = claude(gateway)
    raw = c.messages.with_raw_response.create(model=model, max_tokens=200, system="Answer briefly.",
                                              messages=[{"role": "user", "content": "Say hello back"}])
    m = raw.parse()
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_")
    assert m.content[0].type == "text" and m.content[0].text == "Say hello back"
    assert m.stop_reason == "end_turn"
    assert m.usage.input_tokens > 0 and m.usage.output_tokens > 0
    assert m._request_id and raw.headers["x-request-id"] == m._request_id
    assert raw.headers["x-polyplex-provider"] == model.split("/")[0]
    with c.messages.stream(model=model, max_tokens=200,
                           messages=[{"role": "user", "content": "stream these words"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "stream these words" and final.content[0].text == text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


@pytest.mark.parametrize("model", EVERY)
def test_a_tool_loop_round_trips(gateway, model):
    c = claude(gateway)
    first = c.messages.create(model=model, max_tokens=200, tools=WEATHER, tool_choice={"type": "any"},
                              messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather" and call.input == {"city": "Paris"}
    second = c.messages.create(model=model, max_tokens=200, tools=WEATHER, messages=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21C"}]}])
    assert second.stop_reason == "end_turn"
    assert "sunny, 21C" in second.content[0].text
    # The tool call streams as input_json deltas the SDK puts together.
    with c.messages.stream(model=model, max_tokens=200, tools=WEATHER, tool_choice={"type": "tool", "name": "get_weather"},
                           messages=[{"role": "user", "content": "Weather in Oslo?"}]) as s:
        final = s.get_final_message()
    streamed = next(b for b in final.content if b.type == "tool_use")
    assert streamed.input == {"city": "Oslo"} and final.stop_reason == "tool_use"


@pytest.mark.parametrize("model", ["anthropic/claude-sonnet-4-5", "bedrock/us.anthropic.claude-haiku-4-5-20251001-v1:0"])
def test_extended_thinking_round_trips_with_its_signature(gateway, model):
    c = claude(gateway)
    with c.messages.stream(model=model, max_tokens=4000, thinking={"type": "enabled", "budget_tokens": 2000},
                           messages=[{"role": "user", "content": "think it over"}]) as s:
        final = s.get_final_message()
    thinking = final.content[0]
    assert thinking.type == "thinking" and thinking.thinking and thinking.signature
    again = c.messages.create(model=model, max_tokens=4000, thinking={"type": "enabled", "budget_tokens": 2000},
                              messages=[{"role": "user", "content": "think it over"},
                                        {"role": "assistant", "content": final.content},
                                        {"role": "user", "content": "once more"}])
    assert again.content[0].type == "thinking" and again.content[-1].text == "once more"


def test_images_and_documents_reach_the_model(gateway):
    c = claude(gateway)
    m = c.messages.create(model="openai/gpt-4o", max_tokens=100, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "Describe the picture"}]}])
    assert m.content[0].text.endswith("Describe the picture")
    m = c.messages.create(model="anthropic/claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "The memo."}},
        {"type": "text", "text": "Summarise", "cache_control": {"type": "ephemeral"}}]}])
    assert "Summarise" in m.content[0].text


def test_errors_come_in_anthropics_shape_and_classes(gateway):
    c = claude(gateway)
    with pytest.raises(anthropic.NotFoundError) as e:
        c.messages.create(model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert e.value.body == {"type": "error", "error": {"type": "not_found_error", "message": e.value.body["error"]["message"]}}
    with pytest.raises(anthropic.BadRequestError) as e:
        c.messages.create(model="openai/gpt-4o", max_tokens=10, messages=[{"role": "user", "content": "x"}],
                          extra_body={"presence_penalty": 1})
    assert e.value.body["error"]["type"] == "invalid_request_error" and "presence_penalty" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as e:
        c.messages.create(model="openai/gpt-4o", max_tokens=10, messages=[{"role": "user", "content": "x"}],
                          tools=[{"type": "bash_20250124", "name": "bash"}])
    assert "tools.0.type" in e.value.body["error"]["message"] or "bash" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.AuthenticationError) as e:
        claude(gateway, "wrong-key").messages.create(model="openai/gpt-4o", max_tokens=10,
                                                     messages=[{"role": "user", "content": "x"}])
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "authentication_error"
    assert "Incorrect API key" in e.value.body["error"]["message"]
    key = new_key(gateway, rpm=1, models=["openai/gpt-4o"])["key"]
    limited = claude(gateway, key)
    limited.messages.create(model="openai/gpt-4o", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.RateLimitError) as e:
        limited.messages.create(model="openai/gpt-4o", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["error"]["type"] == "rate_limit_error" and int(e.value.response.headers["retry-after"]) >= 1
    with pytest.raises(anthropic.PermissionDeniedError):
        limited.messages.create(model="anthropic/claude-sonnet-4-5", max_tokens=10,
                                messages=[{"role": "user", "content": "x"}])


def test_count_tokens(gateway):
    c = claude(gateway)
    short = c.messages.count_tokens(model="anthropic/claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}])
    longer = c.messages.count_tokens(model="anthropic/claude-sonnet-4-5", system="You are a careful assistant.",
                                     messages=[{"role": "user", "content": "hi, how are you doing today?"}], tools=WEATHER)
    assert 0 < short.input_tokens < longer.input_tokens
    with pytest.raises(anthropic.NotFoundError) as e:
        c.messages.count_tokens(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["error"]["type"] == "not_found_error" and "no-such-model" in e.value.body["error"]["message"]


def test_each_message_is_one_usage_record(gateway):
    c = claude(gateway)
    m = c.messages.with_raw_response.create(model="google/gemini-2.5-flash", max_tokens=50,
                                            metadata={"user_id": "claude-user-7"},
                                            messages=[{"role": "user", "content": "count me once"}])
    status, records = admin(gateway, "GET", f"/admin/usage/records/{m.headers['x-request-id']}")
    assert status == 200 and len(records["data"]) == 1
    r = records["data"][0]
    assert r["endpoint"] == "messages" and r["provider"] == "google" and r["user"] == "claude-user-7"
    assert r["prompt_tokens"] == m.parse().usage.input_tokens and r["status"] == 200


def test_anthropic_vertex_client_is_served(gateway):
    """Code written for Claude on Vertex AI (`AnthropicVertex`) pointed at
    the gateway: `.../publishers/anthropic/models/{model}:rawPredict` (and
    `:streamRawPredict`, `count-tokens:rawPredict`) is the Messages API, the
    model from the path routed as a bare name, the gateway key as the
    access token."""
    c = anthropic.AnthropicVertex(region="us-east5", project_id="my-project", access_token=MASTER_KEY,
                                  base_url=gateway + "/v1", max_retries=0)
    raw = c.messages.with_raw_response.create(model="claude-sonnet-4-5@20250929", max_tokens=50,
                                              messages=[{"role": "user", "content": "hello from vertex"}])
    m = raw.parse()
    assert m.type == "message" and m.content[0].text == "hello from vertex"
    assert raw.headers["x-polyplex-model"].startswith("claude-sonnet-4-5")
    [record] = admin(gateway, "GET", f"/admin/usage/records/{raw.headers['x-request-id']}")[1]["data"]
    assert record["endpoint"] == "messages" and record["requested_model"] == "claude-sonnet-4-5@20250929"
    with c.messages.stream(model="claude-sonnet-4-5@20250929", max_tokens=50,
                           messages=[{"role": "user", "content": "vertex stream words"}]) as s:
        assert "".join(s.text_stream) == "vertex stream words"
        assert s.get_final_message().stop_reason == "end_turn"
    n = c.messages.count_tokens(model="claude-sonnet-4-5@20250929", messages=[{"role": "user", "content": "hi"}])
    assert n.input_tokens > 0
    with pytest.raises(anthropic.NotFoundError) as e:
        c.messages.create(model="no-such-claude", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as e:
        c.messages.create(model="claude-sonnet-4-5@20250929", max_tokens=10, messages=[])
    wrong = anthropic.AnthropicVertex(region="us-east5", project_id="p", access_token="plx-wrong",
                                      base_url=gateway + "/v1", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.create(model="claude-sonnet-4-5@20250929", max_tokens=10,
                              messages=[{"role": "user", "content": "x"}])


def test_anthropic_bedrock_client_is_served(gateway):
    """Code written for Claude on Bedrock (`AnthropicBedrock` with an API
    key) pointed at the gateway: `/model/{id}/invoke` and
    `/model/{id}/invoke-with-response-stream` are the Messages API, the
    stream in AWS event-stream frames as Bedrock sends it."""
    c = anthropic.AnthropicBedrock(api_key=MASTER_KEY, aws_region="us-east-1", base_url=gateway, max_retries=0)
    model = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
    raw = c.messages.with_raw_response.create(model=model, max_tokens=50,
                                              messages=[{"role": "user", "content": "hello from bedrock"}])
    m = raw.parse()
    assert m.type == "message" and m.content[0].text == "hello from bedrock"
    assert m.usage.input_tokens > 0
    [record] = admin(gateway, "GET", f"/admin/usage/records/{raw.headers['x-request-id']}")[1]["data"]
    assert record["endpoint"] == "messages" and record["requested_model"] == model and record["status"] == 200
    with c.messages.stream(model=model, max_tokens=50,
                           messages=[{"role": "user", "content": "bedrock stream words"}]) as s:
        assert "".join(s.text_stream) == "bedrock stream words"
        final = s.get_final_message()
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    # Another provider's model through the same path, tools included.
    tools = [{"name": "get_weather", "description": "Weather of a city",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    t = c.messages.create(model="openai/gpt-4o", max_tokens=100, tools=tools,
                          messages=[{"role": "user", "content": "call get_weather for Paris"}])
    assert t.content and t.stop_reason in ("tool_use", "end_turn")
    with pytest.raises(anthropic.NotFoundError):
        c.messages.create(model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError) as e:
        c.messages.create(model=model, max_tokens=10, messages=[])
    assert e.value.body["message"]
    wrong = anthropic.AnthropicBedrock(api_key="plx-wrong", aws_region="us-east-1", base_url=gateway, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.create(model=model, max_tokens=10, messages=[{"role": "user", "content": "x"}])


def test_bedrock_invoke_refuses_what_it_does_not_serve(gateway):
    """`/model/{id}/invoke` takes Anthropic's message bodies only; another
    model's body, an unknown operation and a missing key are refused in
    Bedrock's `{"message"}` shape."""
    import json
    import urllib.error
    import urllib.request

    def post(path, body, key=MASTER_KEY):
        req = urllib.request.Request(gateway + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    st, body = post("/model/meta.llama3-70b-instruct-v1:0/invoke", {"prompt": "hi", "max_gen_len": 10})
    assert st == 400 and "anthropic_version" in body["message"], body
    st, body = post("/model/x/converse", {"messages": []})
    assert st == 404 and "invoke" in body["message"], body
    st, body = post("/model/x/invoke", {"anthropic_version": "bedrock-2023-05-31"}, key="plx-wrong")
    assert st == 401 and body["message"], body
