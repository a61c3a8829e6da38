"""The examples every OpenAI quick-start teaches, run with the official `openai`
SDK against polyplex (backed by the mock upstream). The exception classes must be
the ones OpenAI itself would cause."""
import json

import openai
import pytest
from openai import OpenAI
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random_exponential

MODEL = "openai/gpt-4o-mini"


def test_first_call_prints_content_and_usage(client, capsys):
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Write a haiku about recursion in programming."},
        ],
    )
    print(completion.choices[0].message.content)
    print(completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens)
    out = capsys.readouterr().out
    assert "haiku about recursion" in out
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert completion.usage.completion_tokens > 0
    # polyplex adds the cost in USD (catalog price of gpt-4o-mini).
    assert completion.usage.model_extra["cost"] > 0


def test_multi_turn_history(client):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Who won the world series in 2020?"},
        {"role": "assistant", "content": "The Los Angeles Dodgers won the World Series in 2020."},
        {"role": "user", "content": "Where was it played?"},
    ]
    r = client.chat.completions.create(model=MODEL, messages=messages)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "Where was it played?"
    short = client.chat.completions.create(model=MODEL, messages=messages[-1:])
    assert r.usage.prompt_tokens > short.usage.prompt_tokens


def test_streaming_delta_content(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say this is a test"}], stream=True
    )
    parts = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content is not None:
            parts.append(chunk.choices[0].delta.content)
    assert "".join(parts) == "Say this is a test"


def test_streaming_with_include_usage(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "count these words"}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 3
    assert all(c.usage is None for c in chunks[:-1])


def test_json_mode(client):
    r = client.chat.completions.create(
        model=MODEL,
        response_format={"type": "json_object"},
        messages=[
            {"role": "system", "content": "You are a helpful assistant designed to output JSON."},
            {"role": "user", "content": "Who won the world series in 2020?"},
        ],
    )
    data = json.loads(r.choices[0].message.content)
    assert isinstance(data, dict)


def test_structured_output_json_schema(client):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Extract: Alice is 30"}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}},
    )
    data = json.loads(r.choices[0].message.content)
    assert set(data) == {"name", "age"} and isinstance(data["age"], int)


def test_seed_is_reproducible(client):
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me a story"}], seed=42, temperature=0.7)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.system_fingerprint == b.system_fingerprint


def test_n_2(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Name a color"}], n=2)
    assert [c.index for c in r.choices] == [0, 1]


def test_stop(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "one two three four"}], stop=["three"])
    assert "three" not in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"


def test_max_tokens(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "one two three four five"}], max_tokens=2)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 2


def test_tools_with_tool_choice_and_round_trip(client):
    tools = [{
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {"type": "object", "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["location"]},
        },
    }]
    messages = [{"role": "user", "content": "What's the weather like in Boston today?"}]
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=tools,
                                       tool_choice={"type": "function", "function": {"name": "get_current_weather"}})
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    call = msg.tool_calls[0]
    assert call.function.name == "get_current_weather"
    assert json.loads(call.function.arguments) == {"location": "Boston"}
    messages.append(msg)
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 22, "unit": "celsius"})})
    r2 = client.chat.completions.create(model=MODEL, messages=messages, tools=tools)
    assert "22" in r2.choices[0].message.content
    assert r2.choices[0].finish_reason == "stop"


def test_streamed_tool_call_arguments_are_valid_json(client):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Look up Tokyo"}], tools=tools, tool_choice="required", stream=True)
    args = ""
    for chunk in stream:
        for tc in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            args += tc.function.arguments or ""
    assert json.loads(args) == {"city": "Tokyo"}


def test_embeddings_default_base64_decoding(client):
    r = client.embeddings.create(model="openai/text-embedding-3-small", input="The food was delicious")
    assert len(r.data[0].embedding) == 16
    assert r.usage.prompt_tokens > 0
    # Nothing to embed is OpenAI's 400, naming where.
    for empty, param in [("", "input"), (["fine", ""], "input[1]")]:
        with pytest.raises(openai.BadRequestError) as e:
            client.embeddings.create(model="openai/text-embedding-3-small", input=empty)
        assert e.value.param == param


def test_headers_name_provider_model_attempts(client):
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-polyplex-provider"] == "openai"
    assert raw.headers["x-polyplex-model"] == "gpt-4o-mini"
    assert raw.headers["x-polyplex-attempts"] == "1"
    assert raw.headers["x-request-id"]
    assert raw.parse().choices[0].message.content == "hi"


def test_models_list(client):
    ids = [m.id for m in client.models.list()]
    assert "openai/gpt-4o-mini" in ids and "slow/gpt-4o" in ids
    assert client.models.retrieve("openai/gpt-4o").id == "openai/gpt-4o"


def test_authentication_error_on_wrong_key(gateway):
    bad = OpenAI(base_url=gateway + "/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 401
    assert e.value.code == "invalid_api_key"


def test_not_found_error_on_unknown_model(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_a_provider_prefix_nothing_has_is_not_found(client):
    # `provider/model` is that provider only: a name no provider (and no
    # model namespace such as `meta-llama/`) has is a 404, not any provider.
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-provider/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_found"
    assert "no provider is named `no-such-provider`" in e.value.message
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-provider/gpt-4o-mini")
    # The configured provider's name is that provider.
    r = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert r.headers["x-polyplex-provider"] == "openai"


def test_bad_request_error_names_the_field(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[])
    assert e.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=5)
    assert e.value.param == "temperature"
    assert "temperature" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_body={"n": "two"})
    assert e.value.param == "n"


def test_rate_limit_error_when_upstream_429s_beyond_retries(client, fault):
    fault(fault="429", count=10, retry_after=0)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 429
    assert e.value.response.headers.get("retry-after")


def test_upstream_outage_is_an_internal_server_error(client, fault):
    fault(fault="500", count=10)
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 502


def test_upstream_timeout_is_api_error_504(gateway, fault):
    fault(fault="timeout", delay_ms=5000)
    # Provider `slow` has a 1 s timeout and no retries; the client waits longer.
    c = OpenAI(base_url=gateway + "/v1", api_key="conformance-master-key", max_retries=0, timeout=30)
    with pytest.raises(openai.InternalServerError) as e:
        c.chat.completions.create(model="slow/gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 504
    assert "1000 ms" in e.value.message


def test_mid_stream_failure_raises_in_the_sdk(client, fault):
    fault(fault="disconnect", after_chunks=2, count=1)
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a b c d e f g h i j k l"}], stream=True)
    received = []
    with pytest.raises(openai.APIError) as e:
        for chunk in stream:
            received.append(chunk)
    assert received, "the chunks before the failure reached the client"
    assert "openai" in e.value.message


def test_retry_with_tenacity_exponential_backoff(client, fault):
    # Upstream fails 4 times; with the gateway's one retry that is 2 failed calls, then success.
    fault(fault="503", count=4)
    calls = []

    @retry(wait=wait_random_exponential(min=0.05, max=0.5), stop=stop_after_attempt(6),
           retry=retry_if_exception_type((openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError)))
    def completion_with_backoff(**kwargs):
        calls.append(1)
        return client.chat.completions.create(**kwargs)

    r = completion_with_backoff(model=MODEL, messages=[{"role": "user", "content": "Once upon a time,"}])
    assert r.choices[0].message.content == "Once upon a time,"
    assert len(calls) == 3


def test_async_client(gateway):
    import asyncio

    from openai import AsyncOpenAI

    async def main():
        c = AsyncOpenAI(base_url=gateway + "/v1", api_key="conformance-master-key", max_retries=0)
        r = await c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "async hello"}])
        s = await c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "async stream"}], stream=True)
        text = "".join([ch.choices[0].delta.content or "" async for ch in s if ch.choices])
        return r.choices[0].message.content, text

    assert asyncio.run(main()) == ("async hello", "async stream")


def test_slow_and_idle_connections_are_closed_and_the_sdk_carries_on(mock, tmp_path):
    """A connection that sends no complete request head in time — idle
    between requests, or trickling its head (slowloris) — is closed
    (`server.header_timeout_ms`); a body that does not arrive in time gets a
    408 (`server.body_timeout_ms`). The SDK's pooled connection, closed
    while idle, is replaced without an error."""
    import socket
    import time

    from conftest import mock_openai_provider, own_gateway

    extra = "[server]\nheader_timeout_ms = 1000\nbody_timeout_ms = 1000"
    with own_gateway(tmp_path, mock_openai_provider(mock), extra) as (client, proc):
        port = client.base_url.port
        msgs = [{"role": "user", "content": "hi"}]
        assert client.chat.completions.create(model="openai/gpt-4o-mini", messages=msgs).choices
        time.sleep(2.5)  # well past the 1 s: the close is not racing the next request
        assert client.chat.completions.create(model="openai/gpt-4o-mini", messages=msgs).choices

        def read_all(s):
            s.settimeout(10)
            t, out = time.time(), b""
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out and out.startswith(b"HTTP/1.1 408"):
                    break
            return out, time.time() - t

        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            out, took = read_all(s)
            assert out == b"" and 0.8 < took < 5, (out, took)
        with socket.create_connection(("127.0.0.1", port)) as s:
            out, took = read_all(s)
            assert out == b"" and 0.8 < took < 5, "an idle connection is closed"
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"PRI * HTTP/2.0\r\n")  # an HTTP/2 preface begun, never finished
            t = time.time()
            try:
                out, _ = read_all(s)
            except ConnectionResetError:  # closed with its bytes unread: a reset
                out = b""
            took = time.time() - t
            assert out == b"" and 0.8 < took < 5, ("a stalled HTTP/2 preface is closed", took)
        body = json.dumps({"model": "openai/gpt-4o-mini", "messages": msgs}).encode()
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                      % (client.api_key.encode(), len(body)) + body[:10])
            time.sleep(1.5)
            out, _ = read_all(s)
            assert out.startswith(b"HTTP/1.1 408"), out[:80]
            s.settimeout(5)
            rest = out.split(b"\r\n\r\n", 1)[1] + s.recv(65536)
            assert json.loads(rest[rest.index(b"{"):rest.rindex(b"}") + 1])["error"]["code"] == "request_timeout"
        # A client that goes mid-body is recorded as gone (499); a body
        # that is malformed (a bad chunk size) is the client's error (400).
        head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                b"Content-Type: application/json\r\n" % client.api_key.encode())
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
            time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
            out, _ = read_all(s)
            assert out.startswith(b"HTTP/1.1 400"), out[:80]
        deadline = time.time() + 10
        while proc.output().count("polyplex::usage") < 5:
            assert time.time() < deadline, proc.output()[-2000:]
            time.sleep(0.05)
        statuses = [l.split(" status=")[1].split()[0] for l in proc.output().splitlines() if "polyplex::usage" in l]
        assert statuses == ["200", "200", "408", "499", "400"], statuses


def test_client_connections_are_kept_alive_by_tcp_probes(gateway):
    """A client gone without a word is noticed by TCP keep-alive probes
    (30 s idle, 10 s apart, 3 of them), so its request and the upstream
    call are dropped instead of answered for nobody."""
    import shutil
    import socket
    import subprocess

    if not shutil.which("ss"):
        pytest.skip("needs ss (iproute2)")
    port = int(gateway.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as s:
        mine = s.getsockname()[1]
        out = subprocess.run(["ss", "-tnoH", "state", "established", f"( sport = :{port} and dport = :{mine} )"],
                             capture_output=True, text=True, timeout=10).stdout
        assert "timer:(keepalive" in out, out


def test_out_of_file_descriptors_is_waited_out(mock, tmp_path):
    """With every file descriptor taken (connections held open past the
    process's limit), accepting fails with EMFILE: the gateway says so in
    its log, waits, and serves again once connections close — it neither
    exits nor spins."""
    import shutil
    import socket
    import time

    from conftest import BIN, MASTER_KEY, Proc, free_port, mock_openai_provider, wait_http

    if not shutil.which("prlimit"):
        pytest.skip("needs prlimit (util-linux)")
    port = free_port()
    (tmp_path / "polyplex.toml").write_text(f"""listen = "127.0.0.1:{port}"
[auth]
master_key = "{MASTER_KEY}"
{mock_openai_provider(mock)}""")
    proc = Proc(["prlimit", "--nofile=64:64", BIN, "serve"], cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/healthz")
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(150)]
        deadline = time.time() + 10
        while "cannot accept connections" not in proc.output():
            assert time.time() < deadline, proc.output()[-2000:]
            time.sleep(0.1)
        for s in held:
            s.close()
        client = OpenAI(base_url=base + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=15)
        r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "back"}])
        assert r.choices[0].message.content == "back"
        assert proc.p.poll() is None
    finally:
        proc.stop()
