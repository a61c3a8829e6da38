"""OpenAI's Responses API (`client.responses`) through polyplex, on every
protocol: the official SDK's own helpers (`output_text`, `responses.stream`
and its final response, `responses.parse`) check the shapes and the order of
the stream's events; a tool loop and Claude's reasoning go round trip with
the output items sent back as input, or kept and continued with
`previous_response_id` or in a conversation (`client.conversations`); what
needs OpenAI's own service (built-in tools, background mode, stored
prompts) is refused by name."""
import json
import urllib.request

from conftest import mock_openai_provider, own_gateway
from test_keys_via_openai_sdk import admin

import openai
import pytest
from pydantic import BaseModel

OPENAI = "openai/gpt-4o"
ANTHROPIC = "anthropic/claude-sonnet-4-5"
GEMINI = "google/gemini-2.5-flash"
BEDROCK = "bedrock/us.anthropic.claude-haiku-4-5-20251001-v1:0"
COHERE = "cohere/command-r-plus"
VERTEX_CLAUDE = "vertex/claude-haiku-4-5@20251001"
GEMINI3 = "google/gemini-3-flash-preview"
EVERY = [OPENAI, ANTHROPIC, GEMINI, BEDROCK, COHERE, VERTEX_CLAUDE]

WEATHER = [{"type": "function", "name": "get_weather", "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


@pytest.mark.parametrize("model", EVERY)
def test_a_response_with_instructions_and_usage(client, model):
    raw = client.responses.with_raw_response.create(model=model, instructions="Answer briefly.",
                                                    input="Write a haiku about recursion.")
    r = raw.parse()
    assert r.object == "response" and r.status == "completed"
    assert r.output_text == "Write a haiku about recursion."
    assert r.id.startswith("resp_") and len(r.id) == 37
    assert r.instructions == "Answer briefly."
    [msg] = r.output
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens > 0
    assert r.usage.model_extra["cost"] > 0 or model == COHERE  # the catalog has no price for it
    assert raw.headers["x-polyplex-provider"] == model.split("/")[0]


@pytest.mark.parametrize("model", [OPENAI, ANTHROPIC, GEMINI, BEDROCK, GEMINI3])
def test_a_tool_loop_sends_the_output_items_back(client, model):
    convo = [{"role": "user", "content": "What is the weather in Oslo?"}]
    r = client.responses.create(model=model, input=convo, tools=WEATHER)
    [call] = [o for o in r.output if o.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Oslo"}
    assert call.id.startswith("fc_") and call.call_id
    convo += r.output  # as OpenAI's docs do: the SDK's own objects
    convo.append({"type": "function_call_output", "call_id": call.call_id, "output": "rain, 12C"})
    raw = client.responses.with_raw_response.create(model=model, input=convo, tools=WEATHER)
    # Gemini 3 wants its signature back on the call: it travels on the item.
    assert "x-polyplex-dropped-params" not in raw.headers
    assert raw.parse().output_text == "The tool returned: rain, 12C"


@pytest.mark.parametrize("model", [OPENAI, ANTHROPIC, GEMINI, COHERE])
def test_the_stream_helper_builds_the_final_response(client, model):
    with client.responses.stream(model=model, input="Count one two three") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "Count one two three" and len(deltas) == 4
    assert final.output_text == "Count one two three" and final.status == "completed"
    assert final.usage.output_tokens == 4


def test_raw_stream_events_in_openai_order(client):
    events = list(client.responses.create(model=OPENAI, input="Weather?", tools=WEATHER, stream=True))
    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1].response
    assert done.output[0].arguments == events[6].arguments == '{"city":"Weather?"}'
    assert done.usage.input_tokens > 0


@pytest.mark.parametrize("claude", [ANTHROPIC, BEDROCK])
def test_claude_reasons_and_gets_its_thinking_back_in_a_tool_loop(client, claude):
    convo = [{"role": "user", "content": "Weather in Oslo?"}]
    r = client.responses.create(model=claude, input=convo, tools=WEATHER, reasoning={"effort": "low"},
                                max_output_tokens=4000)
    reasoning, call = r.output
    assert reasoning.type == "reasoning" and reasoning.summary[0].text == "Thinking about: Weather in Oslo?"
    assert reasoning.encrypted_content  # the signed thinking, for the next turn
    convo += r.output
    convo.append({"type": "function_call_output", "call_id": call.call_id, "output": "rain"})
    raw = client.responses.with_raw_response.create(model=claude, input=convo, tools=WEATHER,
                                                    reasoning={"effort": "low"}, max_output_tokens=4000)
    # Without the thinking sent back, Claude would answer without thinking and say so.
    assert "x-polyplex-dropped-params" not in raw.headers
    assert raw.parse().output_text == "The tool returned: rain"


def test_claude_reasoning_streams_as_summary_deltas(client):
    with client.responses.stream(model=ANTHROPIC, input="Why?", reasoning={"effort": "low"},
                                 max_output_tokens=3000) as stream:
        summary = "".join(e.delta for e in stream if e.type == "response.reasoning_summary_text.delta")
        final = stream.get_final_response()
    assert summary == "Thinking about: Why?"
    assert [o.type for o in final.output] == ["reasoning", "message"]
    assert final.output[0].summary[0].text == summary and final.output[0].encrypted_content


class Weather(BaseModel):
    city: str
    temperature: int


@pytest.mark.parametrize("model", [OPENAI, ANTHROPIC, GEMINI])
def test_structured_output_parses(client, model):
    r = client.responses.parse(model=model, input="Oslo", text_format=Weather)
    assert isinstance(r.output_parsed, Weather)


def test_a_cut_answer_is_incomplete(client):
    r = client.responses.create(model=ANTHROPIC, input="one two three four five", max_output_tokens=2)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output_text == "one two"


def test_logprobs_come_on_the_text(client):
    r = client.responses.create(model=OPENAI, input="hi there", top_logprobs=2,
                                include=["message.output_text.logprobs"])
    lp = r.output[0].content[0].logprobs
    assert lp[0].token == "hi" and len(lp[0].top_logprobs) == 2


@pytest.mark.parametrize("kwargs, param", [
    (dict(previous_response_id=7), "previous_response_id"),
    (dict(background=True), "background"),
    (dict(tools=[{"type": "file_search", "vector_store_ids": ["vs_1"]}]), "tools[0].type"),
    (dict(max_output_tokens=0), "max_output_tokens"),
    (dict(temperature=3), "temperature"),
    (dict(input=[{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]),
     "input[0].content[0].file_id"),
    (dict(input=[{"type": "item_reference", "id": "msg_1"}]), "input[0].type"),
    (dict(extra_body={"frequency": 1}), "frequency"),
])
def test_what_polyplex_cannot_do_is_refused_by_name(client, kwargs, param):
    args = {"model": OPENAI, "input": "hi", **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(**args)
    assert e.value.param == param
    assert "max_completion_tokens" not in e.value.message


CODE_TOOL = [{"type": "custom", "name": "run_python", "description": "Runs Python code.",
              "format": {"type": "grammar", "syntax": "regex", "definition": "print\\(.*\\)"}}]


@pytest.mark.parametrize("stream", [False, True])
def test_custom_tools_go_round(client, mock, stream):
    """GPT-5's free-form tools: called with text (a `custom_tool_call`
    item, streamed as `response.custom_tool_call_input.*` events), the
    output sent back as a `custom_tool_call_output`; chat's shape upstream
    (a grammar under `format.grammar`)."""
    ask = dict(model=OPENAI, input="print(2**10)", tools=CODE_TOOL,
               tool_choice={"type": "custom", "name": "run_python"})
    if stream:
        events = list(client.responses.create(stream=True, **ask))
        kinds = [e.type for e in events]
        assert "response.custom_tool_call_input.delta" in kinds
        done = next(e for e in events if e.type == "response.custom_tool_call_input.done")
        assert done.input == "print(2**10)"
        r = events[-1].response
    else:
        r = client.responses.create(**ask)
    [call] = r.output
    assert call.type == "custom_tool_call" and call.name == "run_python" and call.input == "print(2**10)"
    assert call.id.startswith("ctc_") and call.call_id
    sent = json.loads(urllib.request.urlopen(mock + "/__mock/requests").read())[-1]["body"]
    assert sent["tools"][0]["custom"]["format"] == {
        "type": "grammar", "grammar": {"syntax": "regex", "definition": "print\\(.*\\)"}}
    assert sent["tool_choice"] == {"type": "custom", "custom": {"name": "run_python"}}
    after = client.responses.create(model=OPENAI, tools=CODE_TOOL, previous_response_id=r.id,
                                    input=[{"type": "custom_tool_call_output", "call_id": call.call_id, "output": "1024"}])
    assert after.output_text == "The tool returned: 1024"
    items = client.responses.input_items.list(after.id, order="asc").data
    assert [i.type for i in items] == ["message", "custom_tool_call", "custom_tool_call_output"]
    # Claude gets a function standing in for the tool, and calls it so.
    r = client.responses.create(model=ANTHROPIC, input="print(1)", tools=CODE_TOOL)
    assert [(o.type, o.input) for o in r.output] == [("custom_tool_call", "print(1)")]


def test_claude_thinking_limits_are_named_as_the_responses_api_names_them(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=ANTHROPIC, input="hi", reasoning={"effort": "high"}, max_output_tokens=100)
    assert e.value.param == "reasoning.effort"
    assert "max_output_tokens" in e.value.message and "max_completion_tokens" not in e.value.message


def test_keys_and_models_answer_as_on_chat(client, gateway):
    bad = openai.OpenAI(base_url=gateway + "/v1", api_key="plx-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.responses.create(model=OPENAI, input="hi")
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="nobody/nothing", input="hi")
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.retrieve("resp_123")
    assert e.value.code == "response_not_found"
    # Recorded and counted as what they are.
    metrics = urllib.request.urlopen(gateway + "/metrics").read().decode()
    assert 'endpoint="responses"' in metrics


def test_a_stream_that_breaks_ends_with_response_failed(client, fault):
    fault(fault="disconnect", count=1, after_chunks=2)
    events = list(client.responses.create(model=OPENAI, input="one two three four five", stream=True))
    assert events[-2].type == "error"
    failed = events[-1]
    assert failed.type == "response.failed" and failed.response.status == "failed"
    assert failed.response.error.code == "upstream_unreachable"
    assert failed.response.output[0].content[0].text.startswith("one")


def test_routing_options_and_failover_work_as_on_chat(client, fault):
    fault(fault="503", count=2, model="gpt-4o")
    raw = client.responses.with_raw_response.create(
        model=OPENAI, input="hello", extra_body={"models": [ANTHROPIC]})
    assert raw.headers["x-polyplex-provider"] == "anthropic"
    assert raw.parse().output_text == "hello"


def upstream_messages(mock):
    recent = json.loads(urllib.request.urlopen(mock + "/__mock/requests").read())
    return recent[-1]["body"]["messages"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_kept_response_is_continued_retrieved_listed_and_deleted(client, mock, stream):
    """`store` is OpenAI's default: the response is kept, and the next turn
    names it instead of sending the conversation again; the earlier
    instructions are not carried over, as on OpenAI."""
    def ask(**kw):
        if not stream:
            return client.responses.create(model=OPENAI, **kw)
        with client.responses.stream(model=OPENAI, **kw) as s:
            for _ in s:
                pass
            return s.get_final_response()

    first = ask(instructions="Talk like a pirate.", input="My name is Ann.")
    assert first.store is True
    second = ask(input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    assert [(m["role"], m["content"]) for m in upstream_messages(mock)] == [
        ("user", "My name is Ann."), ("assistant", "My name is Ann."), ("user", "What is my name?")]
    third = ask(input="Thanks.", previous_response_id=second.id, instructions="Be brief.")
    assert len(upstream_messages(mock)) == 6 and upstream_messages(mock)[0]["role"] == "system"
    got = client.responses.retrieve(third.id)
    assert got.id == third.id and got.output_text == "Thanks." and got.usage.total_tokens > 0
    items = client.responses.input_items.list(second.id, order="asc")
    assert [i.role for i in items.data] == ["user", "assistant", "user"]
    newest_first = client.responses.input_items.list(second.id)
    assert [i.content for i in newest_first.data] == [i.content for i in reversed(items.data)]
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(second.id)  # only background responses can be
    client.responses.delete(third.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(third.id)
    with pytest.raises(openai.NotFoundError) as e:
        ask(input="again", previous_response_id=third.id)
    assert e.value.param == "previous_response_id" and e.value.code == "previous_response_not_found"


@pytest.mark.parametrize("stream", [False, True])
def test_a_conversation_keeps_every_turn_on_any_provider(client, mock, stream):
    """OpenAI's Conversations API (`client.conversations`): a conversation
    made with items and metadata, answered turn after turn by different
    providers (each sent the whole conversation), its items listed, paged,
    added, retrieved and deleted, its metadata changed, and deleted."""
    conv = client.conversations.create(metadata={"topic": "names"},
                                       items=[{"type": "message", "role": "user", "content": "My name is Ann."}])
    assert conv.object == "conversation" and conv.id.startswith("conv_") and conv.metadata == {"topic": "names"}

    def ask(model, text, **kw):
        if not stream:
            return client.responses.create(model=model, input=text, conversation=conv.id, **kw)
        with client.responses.stream(model=model, input=text, conversation={"id": conv.id}, **kw) as s:
            for _ in s:
                pass
            return s.get_final_response()

    def text(content):
        return content if isinstance(content, str) else "".join(p["text"] for p in content)

    first = ask(OPENAI, "What is my name?")
    assert first.conversation.id == conv.id
    assert [(m["role"], text(m["content"])) for m in upstream_messages(mock)] == [
        ("user", "My name is Ann."), ("user", "What is my name?")]
    # Not kept as a response (store: false), yet the conversation gains it.
    ask(ANTHROPIC, "And again?", store=False)
    sent = json.loads(urllib.request.urlopen(mock + "/__mock/requests").read())[-1]["body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    items = client.conversations.items.list(conv.id, order="asc")
    assert [(i.type, i.role) for i in items.data] == [
        ("message", "user"), ("message", "user"), ("message", "assistant"), ("message", "user"), ("message", "assistant")]
    assert items.data[2].content[0].text == "What is my name?" and items.data[2].id == first.output[0].id
    assert len({i.id for i in items.data}) == 5
    newest = client.conversations.items.list(conv.id, limit=2)
    assert [i.id for i in newest.data] == [items.data[4].id, items.data[3].id] and newest.has_more
    assert [i.id for i in client.conversations.items.list(conv.id, limit=2)] == [i.id for i in reversed(items.data)]
    added = client.conversations.items.create(
        conv.id, items=[{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "P.S."}]}])
    assert added.object == "list" and added.first_id == added.data[0].id
    got = client.conversations.items.retrieve(added.data[0].id, conversation_id=conv.id)
    assert got.content[0].text == "P.S."
    after = client.conversations.items.delete(added.data[0].id, conversation_id=conv.id)
    assert after.id == conv.id
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(added.data[0].id, conversation_id=conv.id)
    assert client.conversations.update(conv.id, metadata={"topic": "done"}).metadata == {"topic": "done"}
    assert client.conversations.retrieve(conv.id).metadata == {"topic": "done"}
    # Refusals name what is wrong.
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=OPENAI, input="x", conversation=conv.id, previous_response_id=first.id)
    assert e.value.param == "conversation"
    with pytest.raises(openai.BadRequestError) as e:
        client.conversations.items.create(conv.id, items=[{"type": "message", "role": "user", "content": 3}])
    assert e.value.param == "items[0].content"
    with pytest.raises(openai.BadRequestError) as e:
        client.conversations.create(metadata={"topic": 1})
    assert e.value.param == "metadata.topic"
    assert client.conversations.delete(conv.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(conv.id)
    with pytest.raises(openai.NotFoundError) as e:
        ask(OPENAI, "anyone?")
    assert e.value.param == "conversation"


def test_a_failed_turn_leaves_its_conversation_as_it_was(client, fault):
    conv = client.conversations.create(items=[{"role": "user", "content": "Remember 7."}])
    fault(fault="disconnect", count=1, after_chunks=1)
    events = list(client.responses.create(model=OPENAI, input="one two three", conversation=conv.id, stream=True))
    assert events[-1].type == "response.failed"
    fault(fault="500", count=4)
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model=OPENAI, input="and now?", conversation=conv.id,
                                extra_body={"provider": {"allow_fallbacks": False}})
    assert [i.content[0].text for i in client.conversations.items.list(conv.id)] == ["Remember 7."]


def test_conversations_are_their_callers_own(client, gateway):
    conv = client.conversations.create()
    status, k = admin(gateway, "POST", "/admin/keys", {"name": "stranger"})
    other = openai.OpenAI(base_url=gateway + "/v1", api_key=k["key"], max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.conversations.retrieve(conv.id)
    with pytest.raises(openai.NotFoundError):
        other.conversations.items.list(conv.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model=OPENAI, input="hi", conversation=conv.id)
    with pytest.raises(openai.NotFoundError):
        other.conversations.delete(conv.id)
    mine = other.conversations.create(items=[{"role": "user", "content": "mine"}])
    assert [i.content[0].text for i in other.conversations.items.list(mine.id)] == ["mine"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway + "/v1", api_key="plx-wrong", max_retries=0).conversations.create()


def test_a_tool_loop_continues_from_the_kept_response_with_claudes_thinking(client):
    r = client.responses.create(model=ANTHROPIC, input="Weather in Oslo?", tools=WEATHER,
                                reasoning={"effort": "low"}, max_output_tokens=4000)
    call = next(o for o in r.output if o.type == "function_call")
    raw = client.responses.with_raw_response.create(
        model=ANTHROPIC, previous_response_id=r.id, tools=WEATHER, reasoning={"effort": "low"}, max_output_tokens=4000,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "rain"}])
    # The kept thinking went back with the call: Claude thought again.
    assert "x-polyplex-dropped-params" not in raw.headers
    assert raw.parse().output_text == "The tool returned: rain"


def test_responses_are_kept_per_caller_and_not_when_store_is_false(client, gateway):
    r = client.responses.create(model=OPENAI, input="secret plans")
    status, k = admin(gateway, "POST", "/admin/keys", {"name": "other"})
    other = openai.OpenAI(base_url=gateway + "/v1", api_key=k["key"], max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model=OPENAI, input="go on", previous_response_id=r.id)
    unkept = client.responses.create(model=OPENAI, input="forget me", store=False)
    assert unkept.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unkept.id)


def test_a_store_that_fails_is_a_503_and_never_loses_the_answer(mock, tmp_path):
    """The store failing under a running gateway (here: its table dropped
    behind its back): reading a kept response, or continuing one, is a 503
    the SDK retries (InternalServerError), never a 404 that would say the
    response is gone; a new response is still answered, and not kept."""
    import sqlite3

    with own_gateway(tmp_path, mock_openai_provider(mock)) as (client, proc):
        kept = client.responses.create(model="gpt-4o-mini", input="remember this")
        assert client.responses.retrieve(kept.id).output_text == "remember this"
        with sqlite3.connect(tmp_path / "polyplex.db") as db:
            db.execute("DROP TABLE polyplex_responses")
        for call in (lambda: client.responses.retrieve(kept.id),
                     lambda: client.responses.input_items.list(kept.id),
                     lambda: client.responses.delete(kept.id),
                     lambda: client.responses.create(model="gpt-4o-mini", input="go on", previous_response_id=kept.id)):
            with pytest.raises(openai.InternalServerError) as e:
                call()
            assert e.value.status_code == 503 and "store" in e.value.message
        fresh = client.responses.create(model="gpt-4o-mini", input="answered all the same")
        assert fresh.output_text == "answered all the same"
        streamed = list(client.responses.create(model="gpt-4o-mini", input="streamed all the same", stream=True))
        assert streamed[-1].type == "response.completed"
        assert streamed[-1].response.output_text == "streamed all the same"
    log = proc.output()
    assert "could not keep a response" in log and "the store failed" in log


def test_a_long_kept_conversation_is_not_held_to_the_body_limit(mock, tmp_path):
    """The body limit is on what the client sends: a conversation kept over
    many turns may grow past it, and `previous_response_id` still continues
    it; a body over the limit is still a 413."""
    with own_gateway(tmp_path, mock_openai_provider(mock), "[server]\nmax_body_bytes = 4096") as (client, _):
        turn = " ".join(["word"] * 300)  # 1,499 bytes
        r = client.responses.create(model="gpt-4o-mini", input=turn)
        for _ in range(3):
            r = client.responses.create(model="gpt-4o-mini", input=turn, previous_response_id=r.id)
            assert r.output_text == turn
        items = client.responses.input_items.list(r.id, order="asc", limit=100).data
        assert len(items) == 7 and sum(len(i.content[0].text) for i in items) > 4096 * 2
        # The SDK's pagination walks the pages with `after`.
        page = client.responses.input_items.list(r.id, order="asc", limit=3)
        assert len(page.data) == 3 and page.has_more
        assert [i.id for i in page] == [i.id for i in items]
        assert all(i.id and i.type == "message" and i.content[0].type in ("input_text", "output_text")
                   for i in items)
        with pytest.raises(openai.APIStatusError) as e:
            client.responses.create(model="gpt-4o-mini", input=turn * 3)
        assert e.value.status_code == 413
        # Kept once: each turn's row holds what it added (its input and its
        # output) and names the turn it continued, not the whole conversation.
        import sqlite3
        db = sqlite3.connect(tmp_path / "polyplex.db")
        rows = db.execute("SELECT id, previous, items FROM polyplex_responses").fetchall()
        db.close()
        assert len(rows) == 4 and all(len(json.loads(items)) == 2 for _, _, items in rows)
        chain, at = [], r.id
        while at:
            chain.append(at)
            at = next(p for i, p, _ in rows if i == at)
        assert len(chain) == 4
        # A turn deleted from the middle: the later ones cannot be continued,
        # and say which turn is gone.
        client.responses.delete(chain[2])
        with pytest.raises(openai.NotFoundError) as e:
            client.responses.create(model="gpt-4o-mini", input="more", previous_response_id=r.id)
        assert e.value.code == "previous_response_not_found" and chain[2] in e.value.message
        assert client.responses.retrieve(r.id).id == r.id


@pytest.mark.parametrize("m", [ANTHROPIC, GEMINI, VERTEX_CLAUDE])
def test_the_web_search_tool_searches_on_claude_and_gemini(client, m):
    """The Responses web search tool (the Agents SDK's WebSearchTool) runs as
    the provider's own search: the answer's `output_text` carries OpenAI's
    `url_citation` annotations, streamed as `response.output_text.annotation.added`."""
    tools = [{"type": "web_search", "search_context_size": "low"}]
    r = client.responses.create(model=m, input="rust release notes", tools=tools)
    assert r.output_text == "Search results say: rust release notes"
    [part] = r.output[-1].content
    [a] = part.annotations
    assert a.type == "url_citation" and a.url.startswith("https://search.mock/")
    assert r.output_text[a.start_index:a.end_index] == "rust release notes"
    added, final = [], None
    with client.responses.stream(model=m, input="rust release notes", tools=tools) as stream:
        for e in stream:
            if e.type == "response.output_text.annotation.added":
                added.append(e.annotation)
        final = stream.get_final_response()
    assert len(added) == 1 and added[0].url == a.url
    assert final.output[-1].content[0].annotations[0].url == a.url
    # Where the provider has no search: refused by name, as chat refuses it.
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=BEDROCK, input="x", tools=tools)
    assert e.value.param == "tools[0]"
