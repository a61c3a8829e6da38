"""The quick-start examples with the model pointed at an Anthropic, a Gemini,
a Bedrock and two Vertex AI deployments: the official `openai` SDK,
unchanged, talking to those protocols through polyplex (the mock speaks
Anthropic's Messages API, Gemini's generateContent, Bedrock's Converse,
checking SigV4 signatures, and Vertex AI, issuing OAuth tokens for a
service-account key)."""
import base64
import json
import urllib.request

import openai
import pytest

from conftest import own_gateway

ANTHROPIC = "anthropic/claude-sonnet-4-5"
GEMINI = "google/gemini-2.5-flash"
BEDROCK = "bedrock/us.anthropic.claude-haiku-4-5-20251001-v1:0"
VERTEX_GEMINI = "vertex/gemini-2.5-flash"
VERTEX_CLAUDE = "vertex/claude-haiku-4-5@20251001"
CLAUDES = (ANTHROPIC, VERTEX_CLAUDE)


@pytest.fixture(params=[ANTHROPIC, GEMINI, BEDROCK, VERTEX_GEMINI, VERTEX_CLAUDE])
def model(request):
    return request.param


def test_first_call_and_usage(client, model):
    r = client.chat.completions.create(model=model, messages=[
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write a haiku about recursion."}])
    assert r.choices[0].message.content == "Write a haiku about recursion."
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens > 0
    assert r.usage.model_extra["cost"] > 0
    assert r.id.startswith("msg_" if model in CLAUDES else "chatcmpl-")


def test_multi_turn(client, model):
    r = client.chat.completions.create(model=model, messages=[
        {"role": "user", "content": "Who won in 2020?"},
        {"role": "assistant", "content": "The Dodgers."},
        {"role": "user", "content": "Where was it played?"}])
    assert r.choices[0].message.content == "Where was it played?"


def test_streaming(client, model):
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say this is a test"}],
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Say this is a test"
    assert chunks[-1].usage.completion_tokens == 5
    assert len({c.id for c in chunks}) == 1


def test_json_mode(client, model):
    r = client.chat.completions.create(model=model, response_format={"type": "json_object"},
                                       messages=[{"role": "user", "content": "Who won the world series in 2020?"}])
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_stop_and_max_tokens(client, model):
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "one two three four"}], stop=["three"])
    assert "three" not in r.choices[0].message.content
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "one two three four"}], max_tokens=2)
    assert r.choices[0].finish_reason == "length"


def test_tools_round_trip(client, model):
    tools = [{"type": "function", "function": {"name": "get_current_weather", "parameters": {
        "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}]
    messages = [{"role": "user", "content": "What's the weather like in Boston today?"}]
    r = client.chat.completions.create(model=model, messages=messages, tools=tools, tool_choice="auto")
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert json.loads(call.function.arguments) == {"location": "Boston"}
    messages += [r.choices[0].message, {"role": "tool", "tool_call_id": call.id, "content": "22C"}]
    r2 = client.chat.completions.create(model=model, messages=messages, tools=tools)
    assert r2.choices[0].message.content == "The tool returned: 22C"


def test_streamed_tool_call(client, model):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    args = ""
    for chunk in client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Look up Tokyo"}], tools=tools, stream=True):
        for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            args += tc.function.arguments or ""
    assert json.loads(args) == {"city": "Tokyo"}


def test_anthropic_refuses_seed_and_n_by_name_or_drops_them(client):
    model = ANTHROPIC
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], seed=42)
    assert e.value.param == "seed"
    # Several choices: asked one request each, up to 16; above, refused.
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], n=17,
                                           stream=stream)
        assert e.value.param == "n" and "at most 16" in e.value.message
    raw = client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "hi"}], seed=42,
                                                          extra_body={"drop_params": True})
    assert raw.headers["x-polyplex-dropped-params"] == "seed"
    assert raw.parse().choices[0].message.content == "hi"


def test_parameters_sent_at_their_defaults_are_honoured(client, model):
    # What frameworks send explicitly (LangChain's older clients: penalties at
    # 0, an empty logit_bias) asks for nothing a provider does not do: served,
    # nothing named as dropped. The same parameters asking for more are refused.
    defaults = {"n": 1, "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "logprobs": False,
                "top_logprobs": 0, "store": False, "metadata": {}, "modalities": ["text"], "service_tier": "auto",
                "verbosity": "medium"}
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], **defaults)
    assert "x-polyplex-dropped-params" not in raw.headers
    assert raw.parse().choices[0].message.content == "hi"
    # Metadata is the gateway's (the usage record's tags), on every protocol.
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], metadata={"team": "a"})
    assert "x-polyplex-dropped-params" not in raw.headers
    for k, v in {"store": True, "service_tier": "flex", "modalities": ["text", "audio"],
                 "verbosity": "low"}.items():
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], **{k: v})
        assert e.value.param == k and e.value.code == "unsupported_parameter"


def test_who_the_user_is_and_the_cache_key_never_fail_a_request(client, mock, model):
    # OpenAI's newer `safety_identifier` (what `user` was) and
    # `prompt_cache_key` change no answer: Claude takes the identifier as
    # metadata.user_id; what a protocol has no place for is named dropped.
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}],
        safety_identifier="hash-of-user-42", prompt_cache_key="conversation-7")
    assert raw.parse().choices[0].message.content == "hi"
    dropped = raw.headers["x-polyplex-dropped-params"].split(", ")
    if model in CLAUDES:
        assert dropped == ["prompt_cache_key"]
        body = last_upstream_body(mock)
        body = json.loads(body) if isinstance(body, str) else body
        assert body["metadata"] == {"user_id": "hash-of-user-42"}
    else:
        assert dropped == ["safety_identifier", "prompt_cache_key"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], safety_identifier=42)
    assert e.value.param == "safety_identifier"


def test_errors(client, fault, model):
    # Both providers have max_retries = 1: two faults exhaust them.
    fault(fault="429", count=2, retry_after=0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    fault(fault="529" if model in CLAUDES else "503", count=2)
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 503
    # A parameter the protocol cannot honour: Anthropic's temperature stops at 1; Gemini has no logit_bias.
    bad = {"temperature": 1.5} if model in CLAUDES else {"logit_bias": {"50256": -100}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], **bad)
    assert e.value.param == next(iter(bad))


def test_bedrock_refuses_what_converse_cannot_do(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=BEDROCK, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    assert e.value.param == "messages[0].content[0].image_url.url"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=BEDROCK, messages=[{"role": "user", "content": "hi"}], seed=42)
    assert e.value.param == "seed"
    # A base64 image is sent as an image block.
    r = client.chat.completions.create(model=BEDROCK, messages=[{"role": "user", "content": [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}])
    assert r.choices[0].message.content == "describe [image]"


def test_a_pdf_reaches_each_protocol_as_its_own_document(client, model):
    """The SDK's documented PDF input (a `file` part with base64 file_data)
    reaches Claude as a document block, Gemini as inline data and Bedrock
    as a named document; an OpenAI file id cannot leave OpenAI and is
    refused naming it."""
    pdf = base64.b64encode(b"%PDF-1.4\n%polyplex\n").decode()
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": [
        {"type": "text", "text": "Summarise"},
        {"type": "file", "file": {"filename": "q3 report.pdf", "file_data": f"data:application/pdf;base64,{pdf}"}}]}])
    kind = "[file]" if model in (GEMINI, VERTEX_GEMINI) else "[document]"
    assert r.choices[0].message.content == f"Summarise {kind}"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": [
            {"type": "text", "text": "Summarise"}, {"type": "file", "file": {"file_id": "file-abc123"}}]}])
    assert e.value.param == "messages[0].content[1].file.file_id"


def test_a_participant_name_is_dropped_and_named(client, model):
    raw = client.chat.completions.with_raw_response.create(model=model, messages=[
        {"role": "user", "name": "ann", "content": "Hello"}])
    assert raw.headers["x-polyplex-dropped-params"] == "messages[].name"
    assert raw.parse().choices[0].message.content == "Hello"


@pytest.mark.parametrize("claude", [ANTHROPIC, BEDROCK, VERTEX_CLAUDE])
def test_prompt_cache_breakpoints_reach_claude_and_price_the_reads(client, claude):
    """`cache_control` on a system part, as LiteLLM and OpenRouter take it:
    the first call writes the prefix to the (mock) provider's cache, the
    next reads it; the SDK's `prompt_tokens_details` carries both counts
    and `usage.cost` prices them at the catalog's cache prices."""
    system = {"role": "system", "content": [{"type": "text", "text": f"{claude} " + "policy text " * 60,
                                             "cache_control": {"type": "ephemeral"}}]}
    first = client.chat.completions.create(model=claude, messages=[system, {"role": "user", "content": "one"}])
    second = client.chat.completions.create(model=claude, messages=[system, {"role": "user", "content": "two"}])
    written = first.usage.prompt_tokens_details.cache_write_tokens
    assert written and written > 60
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == written
    assert second.usage.prompt_tokens == first.usage.prompt_tokens
    if claude == ANTHROPIC:
        assert 0 < second.usage.model_extra["cost"] < first.usage.model_extra["cost"] / 3


def test_bedrock_titan_embeds_a_list_one_text_per_request(client, mock):
    titan = "bedrock/amazon.titan-embed-text-v2:0"
    r = client.embeddings.create(model=titan, input="The food was delicious", dimensions=8)
    assert len(r.data) == 1 and len(r.data[0].embedding) == 8
    assert r.usage.prompt_tokens == 4
    # Titan takes one text per request: a list goes as one request each, and
    # comes back as one answer in input order, token counts added up.
    texts = [f"text number {i} of twelve" for i in range(12)]
    singles = [client.embeddings.create(model=titan, input=t, dimensions=8) for t in texts]
    before = json.loads(urllib.request.urlopen(mock + "/__mock/stats").read())
    batch = client.embeddings.create(model=titan, input=texts, dimensions=8)
    after = json.loads(urllib.request.urlopen(mock + "/__mock/stats").read())
    assert after["requests"] - before["requests"] == len(texts)
    assert [d.index for d in batch.data] == list(range(len(texts)))
    assert [d.embedding for d in batch.data] == [s.data[0].embedding for s in singles]
    assert batch.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)
    assert batch.usage.total_tokens == batch.usage.prompt_tokens
    # Token ids are refused by name, as before.
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=titan, input=[[1, 2], [3]])
    assert e.value.param == "input[0]"


def test_bedrock_titan_list_fails_or_succeeds_whole(client, fault, mock):
    titan = "bedrock/amazon.titan-embed-text-v2:0"
    texts = [f"part {i}" for i in range(10)]
    # One part failing fails the attempt; the retry (max_retries = 1) sends
    # every part again and the answer is whole.
    fault(fault="503", count=1)
    r = client.embeddings.create(model=titan, input=texts)
    assert [d.index for d in r.data] == list(range(len(texts)))
    assert r.usage.prompt_tokens == 2 * len(texts)
    # Failing on both attempts (parts go 8 at a time, so enough faults for
    # every part in flight): an error, never a partial list.
    fault(fault="503", count=2 * len(texts), model="amazon.titan-embed-text-v2:0")
    try:
        with pytest.raises(openai.InternalServerError) as e:
            client.embeddings.create(model=titan, input=texts)
        assert e.value.status_code == 503
    finally:
        urllib.request.urlopen(urllib.request.Request(mock + "/__mock/faults", method="DELETE"), timeout=5).read()


def test_gemini_honours_seed_and_n(client):
    r = client.chat.completions.create(model=GEMINI, messages=[{"role": "user", "content": "Name a color"}], n=2, seed=42)
    assert [c.index for c in r.choices] == [0, 1]
    # Streamed: each candidate's text under its own index, each finished.
    text, finish = {}, {}
    for chunk in client.chat.completions.create(model=GEMINI, messages=[{"role": "user", "content": "Name a color"}],
                                                n=2, stream=True):
        for c in chunk.choices:
            text[c.index] = text.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert sorted(text) == [0, 1] and text[0] == text[1] != ""
    assert finish == {0: "stop", 1: "stop"}


@pytest.mark.parametrize("model", ["google/gemini-embedding-001", "cohere/embed-v4.0", "vertex/gemini-embedding-001",
                                   "bedrock/cohere.embed-v4:0"])
def test_embeddings_through_native_protocols(client, model):
    # The SDK asks for base64 and decodes it: the gateway encodes the provider's floats.
    r = client.embeddings.create(model=model, input=["The food was delicious", "and the waiter"], dimensions=8)
    assert [d.index for d in r.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in r.data)
    assert r.usage.prompt_tokens > 0


def last_upstream_body(mock):
    recent = json.loads(urllib.request.urlopen(mock + "/__mock/requests").read())
    return recent[-1]["body"]


@pytest.mark.parametrize("model,expect", [
    (ANTHROPIC, lambda b: b["thinking"] == {"type": "enabled", "budget_tokens": 1024} and b["max_tokens"] == 2000),
    (VERTEX_CLAUDE, lambda b: b["thinking"] == {"type": "enabled", "budget_tokens": 1024}),
    (BEDROCK, lambda b: b["additionalModelRequestFields"]["thinking"] == {"type": "enabled", "budget_tokens": 1024}
        and b["inferenceConfig"]["maxTokens"] == 2000),
    (GEMINI, lambda b: b["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 1024, "includeThoughts": True}),
    (VERTEX_GEMINI, lambda b: b["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 1024, "includeThoughts": True}),
])
def test_reasoning_effort_is_translated(client, mock, model, expect):
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Think it over"}],
                                       reasoning_effort="low", max_completion_tokens=2000)
    assert r.choices[0].message.content
    body = last_upstream_body(mock)
    body = json.loads(body) if isinstance(body, str) else body
    assert expect(body), body


@pytest.mark.parametrize("claude", [ANTHROPIC, VERTEX_CLAUDE, BEDROCK])
def test_claude_thinking_is_counted_as_reasoning_tokens(client, claude):
    """Claude counts its thinking in its output tokens but not apart: the
    gateway gives the share that was not visible as reasoning_tokens, unary,
    streamed, n apart and through the Responses API alike."""
    ask = dict(model=claude, messages=[{"role": "user", "content": "Think about this one"}],
               reasoning_effort="low", max_completion_tokens=2000)
    r = client.chat.completions.create(**ask)
    assert r.choices[0].message.model_extra["reasoning_content"]
    u = r.usage
    assert 0 < u.completion_tokens_details.reasoning_tokens < u.completion_tokens
    chunks = list(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == u.completion_tokens
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == u.completion_tokens_details.reasoning_tokens
    chunks = list(client.chat.completions.create(**ask, n=2, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 2 * u.completion_tokens_details.reasoning_tokens
    resp = client.responses.create(model=claude, input="Think about this one", reasoning={"effort": "low"},
                                   max_output_tokens=2000, store=False)
    assert resp.usage.output_tokens_details.reasoning_tokens == u.completion_tokens_details.reasoning_tokens
    plain = client.chat.completions.create(model=claude, messages=[{"role": "user", "content": "Think about this one"}])
    assert plain.usage.completion_tokens_details.reasoning_tokens == 0


@pytest.mark.parametrize("gemini", [GEMINI, VERTEX_GEMINI])
def test_gemini_thought_summary_comes_back_as_reasoning(client, gemini):
    r = client.chat.completions.create(model=gemini, messages=[{"role": "user", "content": "Plan a trip"}],
                                       reasoning_effort="medium")
    msg = r.choices[0].message
    assert msg.content == "Plan a trip"
    assert msg.model_extra["reasoning_content"] == "Thinking about: Plan a trip"
    assert r.usage.completion_tokens_details.reasoning_tokens > 0
    reasoning, content = "", ""
    for chunk in client.chat.completions.create(model=gemini, messages=[{"role": "user", "content": "Plan a trip"}],
                                                reasoning_effort="medium", stream=True):
        if chunk.choices:
            reasoning += (chunk.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
            content += chunk.choices[0].delta.content or ""
    assert (reasoning, content) == ("Thinking about: Plan a trip", "Plan a trip")
    # Without reasoning_effort nothing changes.
    plain = client.chat.completions.create(model=gemini, messages=[{"role": "user", "content": "Plan a trip"}])
    assert "reasoning_content" not in (plain.choices[0].message.model_extra or {})


def test_reasoning_effort_refused_where_it_cannot_be_honoured(client):
    # Converse has no portable thinking switch (Claude's is its own, below):
    # refused by name for other Bedrock models, never dropped.
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="bedrock/amazon.nova-pro-v1:0",
                                       messages=[{"role": "user", "content": "hi"}], reasoning_effort="high")
    assert e.value.param == "reasoning_effort"
    # Extended thinking needs more than 1024 tokens of the limit.
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=ANTHROPIC, messages=[{"role": "user", "content": "hi"}],
                                       reasoning_effort="high", max_completion_tokens=500)
    assert e.value.param == "reasoning_effort"


@pytest.mark.parametrize("claude", [*CLAUDES, BEDROCK])
def test_extended_thinking_survives_a_tool_loop(client, claude):
    """With reasoning_effort, Claude thinks before it calls a tool, and
    Anthropic refuses the next turn unless that thinking (signed) comes back
    with it. The answer carries it (`reasoning_content`, `thinking_blocks`),
    and appending the SDK's own message object sends it back: the loop the
    OpenAI docs show works unchanged. A client that keeps only the tool
    calls gets its answer without thinking, and the header says so."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}]
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(model=claude, messages=messages, tools=tools,
                                           reasoning_effort="low", max_completion_tokens=4000)
    msg = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    assert msg.model_extra["reasoning_content"].startswith("Thinking about")
    assert msg.model_extra["thinking_blocks"][0]["signature"]
    messages += [msg, {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "22 C and sunny"}]
    raw = client.chat.completions.with_raw_response.create(model=claude, messages=messages, tools=tools,
                                                          reasoning_effort="low", max_completion_tokens=4000)
    assert "x-polyplex-dropped-params" not in raw.headers
    assert raw.parse().choices[0].message.content == "The tool returned: 22 C and sunny"
    bare = [messages[0], {"role": "assistant", "content": None,
                          "tool_calls": [tc.model_dump() for tc in msg.tool_calls]}, messages[2]]
    raw = client.chat.completions.with_raw_response.create(model=claude, messages=bare, tools=tools,
                                                          reasoning_effort="low", max_completion_tokens=4000)
    assert raw.headers["x-polyplex-dropped-params"] == "reasoning_effort"
    assert raw.parse().choices[0].message.content == "The tool returned: 22 C and sunny"
    # The thinking sent back to a request that does not think: left out.
    r = client.chat.completions.create(model=claude, messages=messages, tools=tools)
    assert r.choices[0].message.content == "The tool returned: 22 C and sunny"
    # Streamed: the thinking as reasoning_content deltas, then its block.
    reasoning, blocks = "", []
    for chunk in client.chat.completions.create(model=claude, messages=[{"role": "user", "content": "Say hi"}],
                                                reasoning_effort="low", max_completion_tokens=4000, stream=True):
        extra = chunk.choices[0].delta.model_extra or {} if chunk.choices else {}
        reasoning += extra.get("reasoning_content") or ""
        blocks += extra.get("thinking_blocks") or []
    assert reasoning == "Thinking about: Say hi"
    assert [b["thinking"] for b in blocks] == [reasoning]


@pytest.mark.parametrize("gemini3", ["google/gemini-3-flash-preview", "vertex/gemini-3-flash-preview"])
def test_gemini_3_tool_loop_keeps_its_thought_signatures(client, gemini3):
    """Gemini 3 refuses a replayed function call without the thought
    signature it gave. The tool call carries it (as Google's own
    OpenAI-compatible API does), the SDK's message object sends it back,
    and a client that rebuilds the call from id, name and arguments still
    gets its answer; a changed signature is Gemini's own 400."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}]
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    msg = client.chat.completions.create(model=gemini3, messages=messages, tools=tools).choices[0].message
    call = msg.tool_calls[0]
    assert call.model_extra["extra_content"]["google"]["thought_signature"]
    result = {"role": "tool", "tool_call_id": call.id, "content": "22 C"}
    r = client.chat.completions.create(model=gemini3, messages=[*messages, msg, result], tools=tools)
    assert r.choices[0].message.content == "The tool returned: 22 C"
    rebuilt = {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}]}
    r = client.chat.completions.create(model=gemini3, messages=[*messages, rebuilt, result], tools=tools)
    assert r.choices[0].message.content == "The tool returned: 22 C"
    forged = dict(rebuilt, tool_calls=[dict(rebuilt["tool_calls"][0], extra_content={"google": {"thought_signature": "forged"}})])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=gemini3, messages=[*messages, forged, result], tools=tools)


WEATHER_AND_TIME = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"location": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]


def test_allowed_tools_choose_among_the_declared(client, model):
    # GPT-5's `allowed_tools`: every protocol gets the tools cut to the
    # allowed ones, and the mode as its own tool choice.
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=WEATHER_AND_TIME,
        tool_choice={"type": "allowed_tools", "allowed_tools": {
            "mode": "required", "tools": [{"type": "function", "function": {"name": "get_time"}}]}})
    assert r.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in r.choices[0].message.tool_calls] == ["get_time"]


@pytest.mark.parametrize("m", ["openai/gpt-4o", ANTHROPIC, GEMINI, BEDROCK, VERTEX_CLAUDE, "cohere/command-a-03-2025"])
def test_custom_tools_go_round_on_every_protocol(client, m):
    """GPT-5's free-form tools: OpenAI's protocol takes them as they are;
    every other gets a function taking the input as one string in their
    stead, and its calls come back as custom tool calls — the input text,
    streamed as it comes — and go back in the history as the SDK gives
    them."""
    custom = [{"type": "custom", "custom": {"name": "run_python", "description": "Runs Python code."}}]
    messages = [{"role": "user", "content": "Compute 2**10"}]
    r = client.chat.completions.create(model=m, messages=messages, tools=custom)
    [call] = r.choices[0].message.tool_calls
    assert call.type == "custom" and call.custom.name == "run_python" and call.custom.input == "Compute 2**10"
    assert r.choices[0].finish_reason == "tool_calls"
    loop = messages + [r.choices[0].message, {"role": "tool", "tool_call_id": call.id, "content": "1024"}]
    again = client.chat.completions.create(model=m, messages=loop, tools=custom)
    assert again.choices[0].message.content == "The tool returned: 1024"
    streamed, kinds = "", set()
    for chunk in client.chat.completions.create(model=m, messages=messages, tools=custom, stream=True,
                                                tool_choice={"type": "custom", "custom": {"name": "run_python"}}):
        for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            # (The SDK's delta type has no `custom` member yet: an extra.)
            streamed += (tc.model_extra.get("custom") or {}).get("input", "")
            kinds.add(tc.type)
            assert tc.function is None
    assert streamed == "Compute 2**10" and kinds <= {"custom", None}


def test_an_earlier_audio_answer_is_openais_own(client, model):
    messages = [{"role": "user", "content": "Say hi out loud"}, {"role": "assistant", "audio": {"id": "audio_abc123"}},
                {"role": "user", "content": "Again, in text"}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=messages)
    assert e.value.param == "messages[1].audio"
    assert client.chat.completions.create(model="openai/gpt-4o", messages=messages).choices[0].message.content


@pytest.mark.parametrize("m", ["openai/gpt-4o", ANTHROPIC, GEMINI, BEDROCK, VERTEX_GEMINI, VERTEX_CLAUDE, "cohere/command-r-plus"])
def test_deprecated_function_calling_works_on_every_protocol(client, m):
    """`functions` / `function_call`, which the SDK still takes: a translating
    protocol gets them as tools, and the answer comes back as OpenAI gives it
    — `message.function_call`, finish reason `function_call`, streamed as
    `function_call` deltas — and the `function` message goes back as the
    call's result."""
    functions = [{"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    messages = [{"role": "user", "content": "Weather in Oslo?"}]
    r = client.chat.completions.create(model=m, messages=messages, functions=functions)
    choice = r.choices[0]
    assert choice.finish_reason == "function_call" and choice.message.tool_calls is None
    call = choice.message.function_call
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Oslo"}
    messages += [{"role": "assistant", "content": None, "function_call": {"name": call.name, "arguments": call.arguments}},
                 {"role": "function", "name": "get_weather", "content": "rain"}]
    assert client.chat.completions.create(model=m, messages=messages, functions=functions) \
        .choices[0].message.content == "The tool returned: rain"
    name, arguments, finish = None, "", None
    for chunk in client.chat.completions.create(model=m, messages=messages[:1], functions=functions,
                                                function_call={"name": "get_weather"}, stream=True):
        for c in chunk.choices:
            assert not c.delta.tool_calls
            if c.delta.function_call:
                name = name or c.delta.function_call.name
                arguments += c.delta.function_call.arguments or ""
            finish = c.finish_reason or finish
    assert (name, json.loads(arguments), finish) == ("get_weather", {"city": "Oslo"}, "function_call")
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=m, messages=messages[:1], functions=functions,
                                       function_call={"name": "get_time"})
    assert e.value.param == "function_call.name"


@pytest.mark.parametrize("m", ["openai/gpt-4o", ANTHROPIC, GEMINI, BEDROCK, VERTEX_GEMINI, VERTEX_CLAUDE, "cohere/command-a-03-2025"])
def test_legacy_completions_on_every_protocol(client, m):
    """`client.completions.create`: OpenAI-protocol upstreams answer it
    themselves; the others through their chat API — the prompt as one user
    turn, the answer (and every stream chunk) a `text_completion`, usage
    and cost metered as any request's."""
    r = client.completions.create(model=m, prompt="Say this is a test", max_tokens=20)
    assert r.object == "text_completion"
    assert r.choices[0].text == "Say this is a test" and r.choices[0].finish_reason == "stop"
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens > 0
    assert r.usage.model_extra["cost"] > 0
    r = client.completions.create(model=m, prompt="one two three four", max_tokens=2)
    assert r.choices[0].finish_reason == "length"
    chunks = list(client.completions.create(model=m, prompt="Say this is a test", max_tokens=20, stream=True,
                                            stream_options={"include_usage": True}))
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Say this is a test"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage.completion_tokens == 5 and chunks[-1].usage.model_extra["cost"] > 0
    assert len({c.id for c in chunks}) == 1


@pytest.mark.parametrize("m", [ANTHROPIC, GEMINI, BEDROCK, "cohere/command-a-03-2025"])
def test_legacy_completions_through_chat_echo_and_refuse_by_name(client, m):
    r = client.completions.create(model=m, prompt="Say this is a test", max_tokens=20, echo=True)
    assert r.choices[0].text == "Say this is a testSay this is a test"
    text = "".join(c.choices[0].text for c in client.completions.create(
        model=m, prompt=["Say this"], max_tokens=20, echo=True, stream=True) if c.choices)
    assert text == "Say thisSay this"
    # Several prompts: answered a prompt at a time, joined as OpenAI joins them.
    r = client.completions.create(model=m, prompt=["one two", "three", "four five six"], max_tokens=20)
    assert [(c.index, c.text) for c in r.choices] == [(0, "one two"), (1, "three"), (2, "four five six")]
    assert r.usage.completion_tokens == 6 and r.usage.model_extra["cost"] > 0
    # Streamed too, with n: each prompt (and each choice, where the chat API
    # gives one a request) its own upstream stream, merged as OpenAI numbers them.
    chunks = list(client.completions.create(model=m, prompt=["one two", "three"], n=2, max_tokens=20, stream=True,
                                            stream_options={"include_usage": True}))
    texts = {}
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + ch.text
    assert texts == {0: "one two", 1: "one two", 2: "three", 3: "three"}
    assert all(c.object == "text_completion" for c in chunks) and len({c.id for c in chunks}) == 1
    assert chunks[-1].usage.completion_tokens == 6 and chunks[-1].usage.model_extra["cost"] > 0
    refusals = [({"prompt": [f"p{i}" for i in range(17)], "stream": True}, "prompt"), ({"prompt": [1, 2, 3]}, "prompt"),
                ({"prompt": "hi", "suffix": "bye"}, "suffix"), ({"prompt": "hi", "best_of": 2}, "best_of")]
    if m != GEMINI:  # Gemini gives log probabilities (test_gemini_log_probabilities)
        refusals.append(({"prompt": "hi", "logprobs": 1}, "logprobs"))
    for kwargs, param in refusals:
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=m, **kwargs)
        assert e.value.param == param and e.value.code == "unsupported_parameter", kwargs
    raw = client.completions.with_raw_response.create(model=m, prompt="hi", suffix="bye", extra_body={"drop_params": True})
    assert raw.headers["x-polyplex-dropped-params"] == "suffix"
    assert raw.parse().choices[0].text == "hi"


def test_an_openai_protocol_provider_set_to_chat_answers_completions_through_chat(mock, tmp_path):
    """`completions = "chat"` (what polyplex chooses by itself for OpenAI's
    chat models and for APIs with chat only, such as Groq's and Mistral's):
    the mock's chat endpoint answers, as a text completion; the provider
    beside it keeps its own completions endpoint."""
    providers = f"""
[[providers]]
name = "chatonly"
kind = "openai"
base_url = "{mock}/v1"
models = ["gpt-4o-mini"]
catalog = "openai"
completions = "chat"
[[providers]]
name = "native"
kind = "openai"
base_url = "{mock}/v1"
models = ["gpt-3.5-turbo-instruct"]
"""
    with own_gateway(tmp_path, providers) as (c, _):
        r = c.completions.create(model="chatonly/gpt-4o-mini", prompt="Say this is a test", max_tokens=20)
        assert r.id.startswith("chatcmpl-mock") and r.object == "text_completion"
        assert r.choices[0].text == "Say this is a test" and r.usage.model_extra["cost"] > 0
        chunks = list(c.completions.create(model="chatonly/gpt-4o-mini", prompt="one two", max_tokens=20, stream=True,
                                           stream_options={"include_usage": True}))
        assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == "one two"
        assert all(ch.object == "text_completion" for ch in chunks) and chunks[-1].usage.completion_tokens == 2
        # Log probabilities, asked of chat, come back in the completion's shape.
        r = c.completions.create(model="chatonly/gpt-4o-mini", prompt="one two three", max_tokens=20, logprobs=2)
        lp = r.choices[0].logprobs
        assert "".join(lp.tokens) == r.choices[0].text == "one two three"
        assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs) and lp.text_offset[0] == 0
        assert lp.text_offset[1] == len(lp.tokens[0])
        text, offsets = "", []
        for ch in c.completions.create(model="chatonly/gpt-4o-mini", prompt="one two three", max_tokens=20,
                                       logprobs=1, stream=True):
            if ch.choices and ch.choices[0].logprobs:
                offsets += ch.choices[0].logprobs.text_offset
            text += ch.choices[0].text if ch.choices else ""
        assert text == "one two three" and offsets == lp.text_offset
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model="chatonly/gpt-4o-mini", prompt="hi", logprobs=1, echo=True)
        assert e.value.param == "logprobs"
        r = c.completions.create(model="native/gpt-3.5-turbo-instruct", prompt=["a b", "c"], max_tokens=20)
        assert r.id.startswith("cmpl-mock") and [ch.text for ch in r.choices] == ["a b", "c"]


def test_completions_go_through_chat_once_the_api_says_it_has_no_such_endpoint(mock, fault, tmp_path):
    """An OpenAI-protocol API polyplex does not know is guessed to have the
    completions endpoint; when it answers that endpoint with 404 (or 405),
    the request is asked again through chat, and if chat answers, that is
    the way there from then on (the log says so). If chat fails too, the
    404 stands and the guess with it."""
    providers = f"""
[[providers]]
name = "guessed"
kind = "openai"
base_url = "{mock}/v1"
models = ["gpt-4o-mini"]
catalog = "openai"
max_retries = 0
"""

    def paths():
        """The paths the mock was asked since the last call (it keeps a
        few; the call resets it, armed faults too)."""
        recent = json.loads(urllib.request.urlopen(mock + "/__mock/requests").read())
        urllib.request.urlopen(urllib.request.Request(mock + "/__mock/reset", method="POST"), timeout=5).read()
        return [r["path"] for r in recent]

    m = "guessed/gpt-4o-mini"
    with own_gateway(tmp_path, providers) as (c, proc):
        # Chat fails too: the 404 stands, and the next request tries the endpoint again.
        paths()
        fault(fault="status", status=404, count=2, model="gpt-4o-mini")
        with pytest.raises(openai.NotFoundError):
            c.completions.create(model=m, prompt="Say this is a test", max_tokens=20)
        paths()
        assert c.completions.create(model=m, prompt="Say this is a test", max_tokens=20).choices[0].text
        assert paths() == ["/v1/completions"]
        # No such endpoint: asked again through chat, and through chat from then on.
        paths()
        fault(fault="status", status=404, count=1, model="gpt-4o-mini")
        r = c.completions.create(model=m, prompt="Say this is a test", max_tokens=20)
        assert r.object == "text_completion" and r.choices[0].text == "Say this is a test"
        assert paths() == ["/v1/completions", "/v1/chat/completions"]
        text = "".join(ch.choices[0].text for ch in c.completions.create(
            model=m, prompt="Say this is a test", max_tokens=20, stream=True) if ch.choices)
        assert text == "Say this is a test"
        assert paths() == ["/v1/chat/completions"]
    assert "no completions endpoint" in proc.output()


def test_legacy_completions_fail_over_between_chat_and_native_and_say_when_a_stream_breaks(client, fault):
    """A plan may mix a provider answering through chat with one that has
    the endpoint: failover goes from one to the other before the first
    byte; a stream through chat cut off upstream raises in the SDK."""
    fault(fault="529", count=2, model="claude-sonnet-4-5")
    raw = client.completions.with_raw_response.create(model=ANTHROPIC, prompt="Say this is a test", max_tokens=20,
                                                      extra_body={"models": ["openai/gpt-4o"]})
    assert raw.headers["x-polyplex-provider"] == "openai" and raw.headers["x-polyplex-attempts"] == "3"
    r = raw.parse()
    assert r.id.startswith("cmpl-mock") and r.choices[0].text == "Say this is a test"
    fault(fault="disconnect", after_chunks=4, model="claude-sonnet-4-5")
    text = ""
    with pytest.raises(openai.APIError):
        for c in client.completions.create(model=ANTHROPIC, prompt="one two three four five six", max_tokens=20,
                                           stream=True):
            text += c.choices[0].text if c.choices else ""
    assert text and "one two three four five six".startswith(text)


@pytest.mark.parametrize("m", [GEMINI, VERTEX_GEMINI])
def test_gemini_log_probabilities(client, m):
    """`logprobs` / `top_logprobs` become Gemini's `responseLogprobs` /
    `logprobs`, and its `logprobsResult` comes back as OpenAI's, unary,
    streamed (each chunk's tokens) and on legacy completions."""
    msgs = [{"role": "user", "content": "one two three"}]
    r = client.chat.completions.create(model=m, messages=msgs, logprobs=True, top_logprobs=2)
    lp = r.choices[0].logprobs.content
    assert "".join(t.token for t in lp) == r.choices[0].message.content == "one two three"
    assert all(t.logprob < 0 and len(t.top_logprobs) == 2 and bytes(t.bytes).decode() == t.token for t in lp)
    r = client.chat.completions.create(model=m, messages=msgs, logprobs=True)
    assert [t.top_logprobs for t in r.choices[0].logprobs.content] == [[], [], []]
    assert client.chat.completions.create(model=m, messages=msgs).choices[0].logprobs is None
    pieces = []
    for ch in client.chat.completions.create(model=m, messages=msgs, logprobs=True, top_logprobs=1, stream=True):
        if ch.choices and ch.choices[0].delta.content:
            pieces.append((ch.choices[0].delta.content, [t.token for t in ch.choices[0].logprobs.content]))
    assert pieces and all([text] == tokens for text, tokens in pieces)
    c = client.completions.create(model=m, prompt="one two three", max_tokens=20, logprobs=2)
    assert c.choices[0].logprobs.tokens == ["one", " two", " three"]
    assert c.choices[0].logprobs.text_offset == [0, 3, 7]
    # Out of OpenAI's range: refused before any upstream, naming the field.
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=m, messages=msgs, logprobs=True, top_logprobs=21)
    assert e.value.param == "top_logprobs"


def test_cohere_log_probabilities(client):
    """`logprobs` becomes Cohere's own flag: each text chunk it scores comes
    back as one entry of OpenAI's `logprobs.content` (its tokens' log
    probabilities summed), unary, streamed and on legacy completions
    (`logprobs: 0`); Cohere gives no alternatives, so `top_logprobs` is
    refused by name (or dropped with `drop_params`)."""
    m = "cohere/command-a-03-2025"
    msgs = [{"role": "user", "content": "one two three"}]
    r = client.chat.completions.create(model=m, messages=msgs, logprobs=True)
    lp = r.choices[0].logprobs.content
    assert "".join(t.token for t in lp) == r.choices[0].message.content == "one two three"
    assert all(t.logprob < 0 and t.top_logprobs == [] and bytes(t.bytes).decode() == t.token for t in lp)
    assert client.chat.completions.create(model=m, messages=msgs).choices[0].logprobs is None
    pieces = [(ch.choices[0].delta.content, [t.token for t in ch.choices[0].logprobs.content])
              for ch in client.chat.completions.create(model=m, messages=msgs, logprobs=True, stream=True)
              if ch.choices and ch.choices[0].delta.content]
    assert len(pieces) == 3 and all([text] == tokens for text, tokens in pieces)
    c = client.completions.create(model=m, prompt="one two three", max_tokens=20, logprobs=0)
    assert c.choices[0].logprobs.tokens == ["one", " two", " three"]
    for param, kwargs in [("top_logprobs", {"messages": msgs, "logprobs": True, "top_logprobs": 2})]:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=m, **kwargs)
        assert (e.value.param, e.value.code) == (param, "unsupported_parameter")
    raw = client.chat.completions.with_raw_response.create(model=m, messages=msgs, logprobs=True, top_logprobs=2,
                                                          extra_body={"drop_params": True})
    assert raw.headers["x-polyplex-dropped-params"] == "top_logprobs"
    assert len(raw.parse().choices[0].logprobs.content) == 3


@pytest.mark.parametrize("m,price", [(ANTHROPIC, 0.01), (VERTEX_CLAUDE, 0.01), (GEMINI, 0.035), (VERTEX_GEMINI, 0.035)])
def test_web_search_options_search_and_cite(client, m, price):
    """`web_search_options` turns on the provider's own web search (Claude's
    web search tool, Gemini's grounding with Google Search): the cited text
    comes back with OpenAI's `url_citation` annotations — unary on the
    message, streamed as an `annotations` delta — and the searches are in
    `usage.server_tool_use` and charged in `usage.cost`."""
    msgs = [{"role": "user", "content": "café prices in Paris"}]
    r = client.chat.completions.create(model=m, messages=msgs, web_search_options={})
    msg = r.choices[0].message
    assert msg.content == "Search results say: café prices in Paris"
    [a] = msg.annotations
    assert a.type == "url_citation" and a.url_citation.url.startswith("https://search.mock/")
    assert msg.content[a.url_citation.start_index:a.url_citation.end_index] == "café prices in Paris"
    assert r.usage.model_extra["server_tool_use"] == {"web_search_requests": 1}
    assert r.usage.model_extra["cost"] >= price
    text, annotations, usage = "", [], None
    for ch in client.chat.completions.create(model=m, messages=msgs, web_search_options={"search_context_size": "low"},
                                             stream=True, stream_options={"include_usage": True}):
        if ch.choices:
            text += ch.choices[0].delta.content or ""
            annotations += (ch.choices[0].delta.model_extra or {}).get("annotations") or []
            assert not ch.choices[0].delta.tool_calls
        elif ch.usage:
            usage = ch.usage
    assert text == msg.content
    [a] = annotations
    assert text[a["url_citation"]["start_index"]:a["url_citation"]["end_index"]] == "café prices in Paris"
    assert usage.model_extra["server_tool_use"] == {"web_search_requests": 1}


def test_web_search_where_there_is_none_and_bad_options(client):
    msgs = [{"role": "user", "content": "news"}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=BEDROCK, messages=msgs, web_search_options={})
    assert (e.value.param, e.value.code) == ("web_search_options", "unsupported_parameter")
    # A provider with its own search serves it instead, where the plan has one.
    raw = client.chat.completions.with_raw_response.create(
        model=BEDROCK, messages=msgs, web_search_options={}, extra_body={"models": [ANTHROPIC]})
    assert raw.headers["x-polyplex-provider"] == "anthropic" and raw.parse().choices[0].message.annotations
    for options, param in [({"search_context_size": "huge"}, "web_search_options.search_context_size"),
                           ({"user_location": {"type": "exact"}}, "web_search_options.user_location.type"),
                           ({"depth": 3}, "web_search_options.depth")]:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=ANTHROPIC, messages=msgs, web_search_options=options)
        assert e.value.param == param


@pytest.mark.parametrize("m", [ANTHROPIC, BEDROCK, "cohere/command-a-03-2025", VERTEX_CLAUDE])
def test_several_choices_of_a_provider_that_gives_one(client, m):
    """`n` > 1 on a protocol with one choice a request (Claude's, Bedrock's,
    Cohere's): a unary request's choices are asked one at a time, in one
    attempt, and joined as OpenAI gives them — numbered, usage added up."""
    msgs = [{"role": "user", "content": "Name a color"}]
    one = client.chat.completions.create(model=m, messages=msgs)
    raw = client.chat.completions.with_raw_response.create(model=m, messages=msgs, n=3)
    r = raw.parse()
    assert raw.headers["x-polyplex-attempts"] == "1"
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.message.content == one.choices[0].message.content for c in r.choices)
    assert r.usage.prompt_tokens == 3 * one.usage.prompt_tokens
    assert r.usage.completion_tokens == 3 * one.usage.completion_tokens
    assert abs(r.usage.model_extra["cost"] - 3 * one.usage.model_extra["cost"]) < 1e-9


@pytest.mark.parametrize("m", [ANTHROPIC, BEDROCK, "cohere/command-a-03-2025", VERTEX_CLAUDE])
def test_several_choices_streamed_of_a_provider_that_gives_one(client, m):
    """A streamed `n` > 1 there: one upstream stream per choice, merged into
    one stream as OpenAI sends it — one id, each choice's chunks under its
    index, each choice's own finish_reason, one usage chunk adding the
    parts up (with its cost), one end."""
    msgs = [{"role": "user", "content": "Name a color"}]
    one = client.chat.completions.create(model=m, messages=msgs)
    raw = client.chat.completions.with_raw_response.create(model=m, messages=msgs, n=3, stream=True,
                                                          stream_options={"include_usage": True})
    assert raw.headers["x-polyplex-attempts"] == "1"
    chunks = list(raw.parse())
    texts, finish, usage = {}, {}, None
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
        if c.usage:
            assert usage is None and not c.choices, "one usage chunk, after the choices"
            usage = c.usage
    assert len({c.id for c in chunks}) == 1 and len({c.model for c in chunks}) == 1
    assert texts == {i: one.choices[0].message.content for i in range(3)}
    assert finish == {0: "stop", 1: "stop", 2: "stop"}
    assert chunks[-1].usage is usage
    assert usage.prompt_tokens == 3 * one.usage.prompt_tokens
    assert usage.completion_tokens == 3 * one.usage.completion_tokens
    assert abs(usage.model_extra["cost"] - 3 * one.usage.model_extra["cost"]) < 1e-9


def test_several_choices_streamed_apart_fail_over_whole_and_say_why_they_end(client, fault):
    """One choice's stream failing before its first chunk retries the
    attempt whole; one cut off midway ends the stream with an error event,
    never a `[DONE]` with a choice missing."""
    msgs = [{"role": "user", "content": "Name a color"}]
    fault(fault="500", count=1, model="claude-sonnet-4-5")
    raw = client.chat.completions.with_raw_response.create(model=ANTHROPIC, messages=msgs, n=2, stream=True)
    assert raw.headers["x-polyplex-attempts"] == "2"
    assert {ch.index for c in raw.parse() for ch in c.choices} == {0, 1}
    fault(fault="disconnect", count=1, after_chunks=3, model="claude-sonnet-4-5")
    with pytest.raises(openai.APIError) as e:
        for _ in client.chat.completions.create(model=ANTHROPIC, messages=msgs, n=2, stream=True):
            pass
    assert "anthropic" in str(e.value)


def test_several_choices_apart_retry_whole_when_one_part_fails(client, fault):
    """One of the choices' upstream requests failing fails the attempt: it is
    retried whole (no answer with a choice missing), and the usage is the
    answer's."""
    msgs = [{"role": "user", "content": "Name a color"}]
    fault(fault="500", count=1, model="claude-sonnet-4-5")
    raw = client.chat.completions.with_raw_response.create(model=ANTHROPIC, messages=msgs, n=3)
    r = raw.parse()
    assert raw.headers["x-polyplex-attempts"] == "2"
    assert [c.index for c in r.choices] == [0, 1, 2]
    # Failing on every try: a 5xx, not a partial answer.
    fault(fault="500", count=10, model="claude-sonnet-4-5")
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=ANTHROPIC, messages=msgs, n=3)


@pytest.mark.parametrize("model", ["openai/gpt-4o", ANTHROPIC, GEMINI, BEDROCK, VERTEX_GEMINI, VERTEX_CLAUDE,
                                   "cohere/command-a-03-2025"])
def test_the_sdks_structured_output_helpers(client, model):
    """The SDK's own helpers on every protocol: `chat.completions.parse`
    with a pydantic `response_format` and with `pydantic_function_tool`
    (strict function tools), and the `chat.completions.stream` helper's
    events and final completion."""
    import openai
    from pydantic import BaseModel

    class Answer(BaseModel):
        reply: str

    class Weather(BaseModel):
        city: str

    hi = [{"role": "user", "content": "hi"}]
    r = client.chat.completions.parse(model=model, messages=hi, response_format=Answer)
    assert r.choices[0].message.parsed == Answer(reply="hi")
    ask = [{"role": "user", "content": "weather in Paris"}]
    tools = [openai.pydantic_function_tool(Weather)]
    r = client.chat.completions.parse(model=model, messages=ask, tools=tools, tool_choice="required")
    assert r.choices[0].message.tool_calls[0].function.parsed_arguments == Weather(city="Paris")
    with client.chat.completions.stream(model=model, messages=hi, response_format=Answer,
                                        stream_options={"include_usage": True}) as s:
        kinds = {ev.type for ev in s}
        final = s.get_final_completion()
    assert {"content.delta", "content.done"} <= kinds
    assert final.choices[0].message.parsed == Answer(reply="hi")
    assert final.usage.total_tokens > 0
    with client.chat.completions.stream(model=model, messages=ask, tools=tools, tool_choice="required") as s:
        kinds = {ev.type for ev in s}
        final = s.get_final_completion()
    assert "tool_calls.function.arguments.done" in kinds
    assert final.choices[0].message.tool_calls[0].function.parsed_arguments == Weather(city="Paris")
