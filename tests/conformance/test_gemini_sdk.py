"""Google's Gemini API (`/v1beta/models/{model}:generateContent`,
`:streamGenerateContent`, `:countTokens`) through Google's own SDK
(`google-genai`), for clients written for Gemini: served by every protocol,
with function calling (the SDK's automatic loop), JSON schemas, thinking,
streams, errors in Google's shape, keys and usage records."""
import json
import urllib.error
import urllib.request

import pytest
from google import genai
from google.genai import errors, types
from pydantic import BaseModel

from conftest import MASTER_KEY, admin, records_of

MODELS = ["openai/gpt-4o-mini", "anthropic/claude-sonnet-4-5", "google/gemini-2.5-flash",
          "bedrock/us.anthropic.claude-haiku-4-5-20251001-v1:0", "vertex/gemini-2.5-flash", "cohere/command-a-03-2025"]


def client(gateway, key=MASTER_KEY, version=None):
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=gateway, api_version=version))




@pytest.mark.parametrize("model", MODELS)
def test_generate_and_stream_on_every_protocol(gateway, model):
    c = client(gateway, version="v1beta")
    config = types.GenerateContentConfig(system_instruction="Be brief.", temperature=0.2, max_output_tokens=60)
    r = c.models.generate_content(model=model, contents="gemini sdk hello", config=config)
    assert r.text == "gemini sdk hello"
    assert r.candidates[0].finish_reason == types.FinishReason.STOP
    u = r.usage_metadata
    assert u.prompt_token_count > 0 and u.total_token_count == u.prompt_token_count + u.candidates_token_count
    assert r.sdk_http_response.headers["x-polyplex-provider"] == model.split("/")[0]
    chunks = list(c.models.generate_content_stream(model=model, contents="gemini sdk stream"))
    assert "".join(ch.text or "" for ch in chunks) == "gemini sdk stream"
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert chunks[-1].usage_metadata.total_token_count > 0


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "anthropic/claude-sonnet-4-5", "google/gemini-2.5-flash"])
def test_the_sdks_function_calling_loop(gateway, mock, model):
    c = client(gateway)
    chat = c.chats.create(model=model, config=types.GenerateContentConfig(tools=[get_weather]))
    r = chat.send_message("What is the weather in Paris?")
    assert "sunny in Paris" in r.text
    # The call, its response and the answer: three turns the SDK ran through the gateway.
    history = chat.get_history()
    call = next(p.function_call for t in history for p in t.parts if p.function_call)
    assert (call.name, call.args) == ("get_weather", {"city": "Paris"})
    # Asked for, the call comes back (not run) with the id the response must name.
    r = c.models.generate_content(
        model=model, contents="Weather in Oslo?",
        config=types.GenerateContentConfig(
            tools=[types.Tool(function_declarations=[types.FunctionDeclaration(
                name="get_weather", description="d",
                parameters=types.Schema(type="OBJECT", properties={"city": types.Schema(type="STRING")}, required=["city"]))])],
            tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode="ANY"))))
    fc = r.function_calls[0]
    assert (fc.name, fc.args) == ("get_weather", {"city": "Oslo"})
    # Ids for the response to name; Gemini's own API (passed through) gives none.
    assert fc.id or model.startswith("google/")


def test_json_schema_thinking_and_candidates(gateway):
    class Person(BaseModel):
        name: str
        age: int

    c = client(gateway)
    r = c.models.generate_content(model="anthropic/claude-sonnet-4-5", contents="a person",
                                  config=types.GenerateContentConfig(response_mime_type="application/json",
                                                                     response_schema=Person))
    assert isinstance(r.parsed, Person)
    r = c.models.generate_content(model="anthropic/claude-sonnet-4-5", contents="think first",
                                  config=types.GenerateContentConfig(thinking_config=types.ThinkingConfig(
                                      include_thoughts=True, thinking_budget=2048)))
    parts = r.candidates[0].content.parts
    assert parts[0].thought and parts[0].text.startswith("Thinking about")
    assert r.text == "think first" and r.usage_metadata.thoughts_token_count > 0
    r = c.models.generate_content(model="openai/gpt-4o-mini", contents="two", config=types.GenerateContentConfig(candidate_count=2))
    assert len(r.candidates) == 2
    for model in ("openai/gpt-4o-mini", "google/gemini-2.5-flash"):
        r = c.models.generate_content(model=model, contents="log probs",
                                      config=types.GenerateContentConfig(response_logprobs=True, logprobs=2))
        lp = r.candidates[0].logprobs_result
        assert [t.token for t in lp.chosen_candidates] == ["log", " probs"], model
        assert len(lp.top_candidates[0].candidates) == 2 and r.candidates[0].avg_logprobs < 0


def test_errors_in_googles_shape(gateway):
    wrong = client(gateway, key="wrong")  # (kept: a dropped client closes its connection)
    with pytest.raises(errors.ClientError) as e:
        wrong.models.generate_content(model="openai/gpt-4o-mini", contents="x")
    assert (e.value.code, e.value.status) == (401, "UNAUTHENTICATED")
    c = client(gateway)
    with pytest.raises(errors.ClientError) as e:
        c.models.generate_content(model="nope/nothing", contents="x")
    assert (e.value.code, e.value.status) == (404, "NOT_FOUND")
    with pytest.raises(errors.ClientError) as e:
        c.models.generate_content(model="openai/gpt-4o-mini", contents="x", config=types.GenerateContentConfig(
            tools=[types.Tool(code_execution=types.ToolCodeExecution())]))
    assert (e.value.code, e.value.status) == (400, "INVALID_ARGUMENT")
    assert "codeExecution" in e.value.message
    # Left out, and said so.
    r = c.models.generate_content(model="openai/gpt-4o-mini", contents="x", config=types.GenerateContentConfig(
        safety_settings=[types.SafetySetting(category="HARM_CATEGORY_HATE_SPEECH", threshold="BLOCK_NONE")]))
    assert r.sdk_http_response.headers["x-polyplex-dropped-params"] == "safetySettings"


def test_keys_count_tokens_and_records(gateway):
    status, k = admin(gateway, "POST", "/admin/keys", {"name": "gemini-sdk", "models": ["openai/*"]})
    assert status == 200
    mine = client(gateway, key=k["key"])
    r = mine.models.generate_content(model="openai/gpt-4o-mini", contents="recorded")
    [record] = records_of(gateway, r.sdk_http_response.headers["x-request-id"])
    assert (record["endpoint"], record["provider"], record["status"], record["key_id"]) == ("gemini", "openai", 200, k["id"])
    assert r.response_id == r.sdk_http_response.headers["x-request-id"]
    with pytest.raises(errors.ClientError) as e:
        mine.models.generate_content(model="anthropic/claude-sonnet-4-5", contents="x")
    assert (e.value.code, e.value.status) == (403, "PERMISSION_DENIED")
    assert mine.models.count_tokens(model="openai/gpt-4o-mini", contents="hello world").total_tokens > 2
    with pytest.raises(errors.ClientError):
        mine.models.count_tokens(model="anthropic/claude-sonnet-4-5", contents="x")
    # The REST API's own ways: `?key=`, and a stream as one JSON array without `alt=sse`.
    req = urllib.request.Request(
        f"{gateway}/v1beta/models/openai/gpt-4o-mini:streamGenerateContent?key={k['key']}",
        data=json.dumps({"contents": [{"parts": [{"text": "array form"}]}]}).encode(),
        headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        chunks = json.loads(resp.read())
    assert "".join(p["text"] for ch in chunks for cand in ch["candidates"] for p in cand["content"]["parts"]) == "array form"
    assert chunks[-1]["usageMetadata"]["cost"] > 0


def test_embeddings_and_models(gateway):
    c = client(gateway)
    r = c.models.embed_content(model="openai/text-embedding-3-small", contents=["alpha", "beta"],
                               config=types.EmbedContentConfig(output_dimensionality=8, task_type="RETRIEVAL_DOCUMENT"))
    assert [len(e.values) for e in r.embeddings] == [8, 8]
    assert r.sdk_http_response.headers["x-polyplex-dropped-params"] == "taskType"
    assert r.sdk_http_response.headers["x-polyplex-provider"] == "openai"
    r = c.models.embed_content(model="google/gemini-embedding-001", contents="gamma")
    assert len(r.embeddings) == 1 and r.embeddings[0].values
    # The SDK's model list and lookup, in Gemini's shape, on both API versions.
    beta = client(gateway, version="v1beta")
    for cl in (c, beta):
        names = [m.name for m in cl.models.list()]
        assert "models/openai/gpt-4o-mini" in names and "models/anthropic/claude-sonnet-4-5" in names
        m = cl.models.get(model="openai/gpt-4o-mini")
        assert m.input_token_limit == 128000 and "generateContent" in m.supported_actions
        with pytest.raises(errors.ClientError) as e:
            cl.models.get(model="nope/nothing")
        assert e.value.code == 404
    # A key sees its own models only.
    status, k = admin(gateway, "POST", "/admin/keys", {"name": "gemini-models", "models": ["openai/*"]})
    mine = client(gateway, key=k["key"])
    names = [m.name for m in mine.models.list()]
    assert names and all(n.startswith("models/openai/") or n == "models/auto" for n in names)


def last_request(mock, marker):
    with urllib.request.urlopen(mock + "/__mock/requests", timeout=5) as r:
        seen = json.loads(r.read())
    return next(r for r in reversed(seen) if marker in json.dumps(r["body"]))


def test_gemini_upstreams_take_the_request_as_written(gateway, mock, fault):
    c = client(gateway, version="v1beta")
    safety = [types.SafetySetting(category="HARM_CATEGORY_HATE_SPEECH", threshold="BLOCK_NONE")]
    tools = [types.Tool(code_execution=types.ToolCodeExecution())]
    r = c.models.generate_content(model="google/gemini-2.5-flash", contents="native gemini marker",
                                  config=types.GenerateContentConfig(safety_settings=safety, tools=tools))
    assert r.text == "native gemini marker"
    # Nothing dropped: Google's own fields and tools reach it, the model only in the URL.
    assert "x-polyplex-dropped-params" not in r.sdk_http_response.headers
    sent = last_request(mock, "native gemini marker")
    assert sent["path"].startswith("/v1beta/models") and r.sdk_http_response.headers["x-polyplex-model"] == "gemini-2.5-flash"
    assert sent["body"]["safetySettings"][0]["threshold"] == "BLOCK_NONE"
    assert "codeExecution" in sent["body"]["tools"][0] and "model" not in sent["body"]
    [record] = records_of(gateway, r.sdk_http_response.headers["x-request-id"])
    assert (record["endpoint"], record["provider"], record["status"]) == ("gemini", "google", 200)
    assert record["cost_usd"] > 0 and record["prompt_tokens"] > 0
    # On Vertex AI too, streamed: the chunks as the upstream sent them, the cost in the last usage.
    chunks = list(c.models.generate_content_stream(model="vertex/gemini-2.5-flash", contents="native vertex marker",
                                                   config=types.GenerateContentConfig(tools=tools)))
    assert "".join(ch.text or "" for ch in chunks) == "native vertex marker"
    sent = last_request(mock, "native vertex marker")
    assert sent["path"].endswith("/publishers/google/models/gemini-2.5-flash:streamGenerateContent")
    # Google's tool elsewhere cannot be carried: refused by name.
    with pytest.raises(errors.ClientError) as e:
        c.models.generate_content(model="openai/gpt-4o-mini", contents="x", config=types.GenerateContentConfig(tools=tools))
    assert e.value.code == 400 and "codeExecution" in e.value.message
    # Labels are metadata pairs, within their limits on this path too.
    with pytest.raises(errors.ClientError) as e:
        c.models.generate_content(model="google/gemini-2.5-flash", contents="x",
                                  config=types.GenerateContentConfig(labels={"k" * 80: "v"}))
    assert e.value.code == 400 and "labels" in e.value.message
    # A bare Gemini name fails over between Gemini's API and Vertex AI, natively.
    fault(fault="500", count=1, model="gemini-2.5-flash")
    r = c.models.generate_content(model="gemini-2.5-flash", contents="native failover marker",
                                  config=types.GenerateContentConfig(safety_settings=safety))
    assert r.text == "native failover marker" and r.sdk_http_response.headers["x-polyplex-attempts"] == "2"


def test_gemini_counts_its_own_tokens(gateway, mock):
    c = client(gateway, version="v1beta")
    for model in ("google/gemini-2.5-flash", "vertex/gemini-2.5-flash"):
        n = c.models.count_tokens(model=model, contents=f"native count marker {model}")
        assert n.total_tokens > 0
        sent = last_request(mock, f"native count marker {model}")
        assert "model" not in sent["body"] or sent["body"]["model"] == "models/gemini-2.5-flash"
    # A request only Gemini can carry is counted there, and refused elsewhere.
    req = {"contents": [{"parts": [{"text": "count with code"}]}], "tools": [{"codeExecution": {}}]}
    for model, status in (("google/gemini-2.5-flash", 200), ("openai/gpt-4o-mini", 400)):
        r = urllib.request.Request(f"{gateway}/v1beta/models/{model}:countTokens", data=json.dumps(req).encode(),
                                   headers={"content-type": "application/json", "x-goog-api-key": MASTER_KEY})
        try:
            with urllib.request.urlopen(r, timeout=10) as resp:
                got = (resp.status, json.loads(resp.read())["totalTokens"] > 0)
        except urllib.error.HTTPError as e:
            got = (e.code, json.loads(e.read())["error"]["status"] == "INVALID_ARGUMENT")
        assert got == (status, True), model


def test_a_native_stream_carries_the_cost_and_is_recorded(gateway):
    req = urllib.request.Request(
        f"{gateway}/v1beta/models/google/gemini-2.5-flash:streamGenerateContent?alt=sse",
        data=json.dumps({"contents": [{"parts": [{"text": "native sse marker"}]}],
                         "safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}]}).encode(),
        headers={"content-type": "application/json", "x-goog-api-key": MASTER_KEY})
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read().decode()
        rid = resp.headers["x-request-id"]
        assert resp.headers["content-type"] == "text/event-stream"
    events = [json.loads(e.removeprefix("data: ")) for e in text.split("\r\n\r\n") if e.strip()]
    assert "".join(p["text"] for ev in events for p in ev["candidates"][0]["content"]["parts"]) == "native sse marker"
    last = events[-1]["usageMetadata"]
    assert last["cost"] > 0
    [record] = records_of(gateway, rid)
    assert (record["endpoint"], record["stream"], record["status"]) == ("gemini", True, 200)
    assert record["completion_tokens"] == last["candidatesTokenCount"] and record["cost_usd"] == pytest.approx(last["cost"])



def test_a_native_stream_is_recorded_with_its_whole_time(tmp_path):
    """A stream passed through to Gemini is recorded with its whole time and
    its first byte's (a mock pacing its chunks at 20 a second)."""
    from conftest import own_gateway, own_mock

    with own_mock("--tokens-per-s", "20") as slow:
        providers = f"""
[[providers]]
name = "google"
base_url = "{slow}"
api_key = "sk-mock-provider"
"""
        with own_gateway(tmp_path, providers) as (openai_client, _):
            base = str(openai_client.base_url).removesuffix("/v1/")
            c = client(base)
            r = c.models.generate_content_stream(model="google/gemini-2.5-flash",
                                                 contents="one two three four five six")
            chunks = list(r)
            assert len(chunks) >= 4
            rid = chunks[-1].sdk_http_response.headers["x-request-id"]
            [record] = records_of(base, rid)
            assert (record["endpoint"], record["stream"]) == ("gemini", True)
            assert record["latency_ms"] >= 200 > record["ttft_ms"], record


def native_sse(gateway, text):
    """A Gemini SSE stream asked of the mock's Gemini by plain HTTP: its
    events and the request id."""
    req = urllib.request.Request(
        f"{gateway}/v1beta/models/google/gemini-2.5-flash:streamGenerateContent?alt=sse",
        data=json.dumps({"contents": [{"parts": [{"text": text}]}]}).encode(),
        headers={"content-type": "application/json", "x-goog-api-key": MASTER_KEY})
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = resp.read().decode()
        rid = resp.headers["x-request-id"]
    return [json.loads(e.removeprefix("data: ")) for e in body.split("\r\n\r\n") if e.strip()], rid


def test_a_native_stream_broken_mid_way_ends_with_googles_error(gateway, fault):
    fault(fault="disconnect", after_chunks=1, model="gemini-2.5-flash")
    events, rid = native_sse(gateway, "native broken stream marker")
    # What came before the break, then Google's error object: the stream says why it ended.
    assert events[0]["candidates"][0]["content"]["parts"][0]["text"]
    assert events[-1]["error"]["code"] == 502 and events[-1]["error"]["status"] == "UNAVAILABLE"
    [record] = records_of(gateway, rid)
    assert (record["endpoint"], record["status"], record["stream"]) == ("gemini", 502, True)


def test_a_native_stream_without_usage_is_recorded_with_counted_tokens(gateway, fault):
    """An upstream stream that reports no usageMetadata is recorded with its
    prompt and text counted, as a chat stream's would be: never at zero."""
    fault(fault="no_usage", model="gemini-2.5-flash")
    events, rid = native_sse(gateway, "native unmetered stream marker")
    assert all("usageMetadata" not in ev for ev in events)
    assert "".join(p["text"] for ev in events for p in ev["candidates"][0]["content"]["parts"])
    [record] = records_of(gateway, rid)
    assert (record["endpoint"], record["status"]) == ("gemini", 200)
    assert record["prompt_tokens"] > 0 and record["completion_tokens"] > 0 and record["cost_usd"] > 0, record


def vertex_client(gateway, key=MASTER_KEY, project=None):
    """Google's SDK in Vertex AI mode pointed at the gateway: express mode
    (an API key: `x-goog-api-key`), or a project and location with
    credentials whose token is the gateway key (`Authorization: Bearer`)."""
    options = types.HttpOptions(base_url=gateway)
    if project is None:
        return genai.Client(vertexai=True, api_key=key, http_options=options)
    from google.oauth2.credentials import Credentials

    return genai.Client(vertexai=True, project=project, location="us-central1",
                        credentials=Credentials(token=key), http_options=options)


@pytest.mark.parametrize("project", [None, "my-project"])
def test_vertex_ai_mode_of_googles_sdk(gateway, mock, project):
    """Code written for Gemini on Vertex AI (`vertexai=True`) calls
    `/v1beta1/[projects/{p}/locations/{l}/]publishers/{publisher}/models/{m}:...`:
    served as the Gemini API is, Google's models by their bare names, other
    publishers' as `publisher/model`."""
    c = vertex_client(gateway, project=project)
    r = c.models.generate_content(model="gemini-2.5-flash", contents="vertex mode hello")
    assert r.text == "vertex mode hello"
    assert r.sdk_http_response.headers["x-polyplex-model"] == "gemini-2.5-flash"
    rid = r.sdk_http_response.headers["x-request-id"]
    [record] = records_of(gateway, rid)
    assert (record["endpoint"], record["status"], record["requested_model"]) == ("gemini", 200, "gemini-2.5-flash")
    assert r.sdk_http_response.headers["x-polyplex-provider"] in ("google", "vertex")
    assert last_request(mock, "vertex mode hello")["body"]["contents"][0]["parts"][0]["text"] == "vertex mode hello"
    # Another publisher's model, streamed, with the SDK's Vertex path.
    chunks = list(c.models.generate_content_stream(model="openai/gpt-4o-mini", contents="vertex mode stream"))
    assert "".join(ch.text or "" for ch in chunks) == "vertex mode stream"
    assert chunks[-1].sdk_http_response.headers["x-polyplex-provider"] == "openai"
    assert c.models.count_tokens(model="gemini-2.5-flash", contents="count these tokens").total_tokens > 0
    # A wrong key: Google's 401 shape, as Vertex AI answers it.
    wrong = vertex_client(gateway, key="plx-wrong", project=project)
    with pytest.raises(errors.ClientError) as e:
        wrong.models.generate_content(model="gemini-2.5-flash", contents="x")
    assert e.value.code == 401 and e.value.status == "UNAUTHENTICATED"


@pytest.mark.parametrize("project", [None, "my-project"])
def test_vertex_ai_mode_lists_and_gets_the_publishers_models(gateway, project):
    """`models.list()` / `models.get()` with `vertexai=True` ask
    `.../publishers/google/models[/{m}]`: the models this caller may use, in
    Vertex AI's `PublisherModel` shape, named as generate_content takes them."""
    c = vertex_client(gateway, project=project)
    names = [m.name for m in c.models.list()]
    assert "publishers/google/models/gemini-2.5-flash" in names, names
    assert "publishers/openai/models/gpt-4o-mini" in names, names
    m = c.models.get(model="gemini-2.5-flash")
    assert m.name == "publishers/google/models/gemini-2.5-flash" and m.version == "default"
    assert c.models.get(model="publishers/openai/models/gpt-4o-mini").name == "publishers/openai/models/gpt-4o-mini"
    with pytest.raises(errors.ClientError) as e:
        c.models.get(model="no-such-model")
    assert e.value.code == 404
    # Another publisher's list has its models only.
    base = gateway + ("/v1beta1/projects/p/locations/l" if project else "/v1beta1")
    req = urllib.request.Request(base + "/publishers/openai/models", headers={"x-goog-api-key": MASTER_KEY})
    with urllib.request.urlopen(req, timeout=10) as r:
        listed = [m["name"] for m in json.loads(r.read())["publisherModels"]]
    assert listed and all(n.startswith("publishers/openai/models/") for n in listed), listed
    # A key whose list names one model sees that one.
    st, k = admin(gateway, "POST", "/admin/keys", {"name": "vertex-one", "models": ["gemini-2.5-flash"]})
    one = vertex_client(gateway, key=k["key"], project=project)
    mine = [m.name for m in one.models.list()]
    assert "publishers/google/models/gemini-2.5-flash" in mine and not any("gpt" in n for n in mine), mine
    with pytest.raises(errors.ClientError) as e:
        one.models.get(model="publishers/openai/models/gpt-4o-mini")
    assert e.value.code == 404


def test_a_native_stream_carries_the_keys_rate_limit_headers(gateway):
    status, k = admin(gateway, "POST", "/admin/keys", {"name": "gemini-native-limits", "rpm": 100})
    assert status == 200
    req = urllib.request.Request(
        f"{gateway}/v1beta/models/google/gemini-2.5-flash:streamGenerateContent?alt=sse",
        data=json.dumps({"contents": [{"parts": [{"text": "native limits marker"}]}]}).encode(),
        headers={"content-type": "application/json", "x-goog-api-key": k["key"]})
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()
        assert resp.headers["x-polyplex-provider"] == "google"
        assert resp.headers["x-ratelimit-limit-requests"] == "100"
        assert int(resp.headers["x-ratelimit-remaining-requests"]) == 99
