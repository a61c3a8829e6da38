"""OpenAI's Files and Batch APIs (`client.files`, `client.batches`) through
polyplex: a batch's requests run on every provider, through the key's
limits and the router, each with its usage record tagged with the batch;
bad input files fail the batch naming each line; a cancel stops it with
what ran so far; a gateway stopped mid-batch goes on where it was when it
starts again, running no request twice."""
import json
import time

from conftest import admin, own_gateway, own_mock
from test_keys_via_openai_sdk import new_key, sdk

import openai
import pytest

CHAT = "/v1/chat/completions"
MODELS = ["gpt-4o-mini", "anthropic/claude-sonnet-4-5", "google/gemini-2.5-flash"]
DONE = ("completed", "failed", "expired", "cancelled")


def jsonl(lines):
    return "\n".join(json.dumps(line) for line in lines).encode()


def chat_line(custom_id, model, text):
    return {"custom_id": custom_id, "method": "POST", "url": CHAT,
            "body": {"model": model, "messages": [{"role": "user", "content": text}]}}


def upload(client, lines, name="in.jsonl"):
    return client.files.create(file=(name, jsonl(lines)), purpose="batch")


def wait(client, batch_id, timeout=60.0, until=DONE):
    end = time.time() + timeout
    while time.time() < end:
        b = client.batches.retrieve(batch_id)
        if b.status in until:
            return b
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} still {b.status}")


def lines_of(client, file_id):
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_a_batch_runs_on_every_provider_with_output_and_error_files(client, gateway):
    lines = [chat_line(f"r{i}", MODELS[i % 3], f"say {i}") for i in range(9)]
    lines.append(chat_line("unknown", "no-such-model", "x"))
    f = upload(client, lines)
    assert f.object == "file" and f.purpose == "batch" and f.bytes == len(jsonl(lines))
    assert f.id.startswith("file-") and f.filename == "in.jsonl"
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h",
                              metadata={"job": "nightly"})
    assert b.object == "batch" and b.status == "validating" and b.id.startswith("batch_")
    assert b.metadata == {"job": "nightly"} and b.expires_at == b.created_at + 86400
    b = wait(client, b.id)
    assert b.status == "completed", b
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (10, 9, 1)
    assert b.in_progress_at and b.finalizing_at and b.completed_at and b.model == "gpt-4o-mini"
    out = lines_of(client, b.output_file_id)
    assert [o["custom_id"] for o in out] == [f"r{i}" for i in range(9)]
    for i, o in enumerate(out):
        assert o["id"].startswith("batch_req_") and o["error"] is None
        r = o["response"]
        assert r["status_code"] == 200 and r["request_id"].startswith("req_")
        assert r["body"]["object"] == "chat.completion"
        assert r["body"]["choices"][0]["message"]["content"] == f"say {i}"
    errors = lines_of(client, b.error_file_id)
    assert [(e["custom_id"], e["response"]["status_code"]) for e in errors] == [("unknown", 404)]
    assert errors[0]["response"]["body"]["error"]["code"] == "model_not_found"
    tokens = sum(o["response"]["body"]["usage"]["prompt_tokens"] for o in out)
    assert b.usage.input_tokens == tokens and b.usage.total_tokens == tokens + b.usage.output_tokens
    # Every request wrote its usage record, tagged with its batch.
    status, report = admin(gateway, "GET", f"/admin/usage?by=metadata.batch_id&metadata.batch_id={b.id}")
    assert status == 200 and report["data"][0]["requests"] == 10 and report["data"][0]["errors"] == 1
    status, record = admin(gateway, "GET", f"/admin/usage/records/{out[0]['response']['request_id']}")
    assert status == 200 and record["data"][0]["metadata"] == {"batch_id": b.id}
    # The output files are the owner's files, listed by purpose.
    outputs = client.files.list(purpose="batch_output")
    assert b.output_file_id in [x.id for x in outputs]
    listed = [x.id for x in client.batches.list(limit=100)]
    assert listed[0] == b.id, "the newest batch first"


def test_embeddings_and_responses_batches(client):
    emb = upload(client, [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
                           "body": {"model": "text-embedding-3-small", "input": f"text {i}"}} for i in range(3)])
    b = wait(client, client.batches.create(input_file_id=emb.id, endpoint="/v1/embeddings",
                                           completion_window="24h").id)
    assert b.status == "completed" and b.request_counts.completed == 3
    assert all(o["response"]["body"]["object"] == "list" for o in lines_of(client, b.output_file_id))
    resp = upload(client, [{"custom_id": "a", "method": "POST", "url": "/v1/responses",
                            "body": {"model": "anthropic/claude-sonnet-4-5", "input": "hello"}}])
    b = wait(client, client.batches.create(input_file_id=resp.id, endpoint="/v1/responses",
                                           completion_window="24h").id)
    assert b.status == "completed", b
    body = lines_of(client, b.output_file_id)[0]["response"]["body"]
    assert body["object"] == "response" and body["output"][0]["content"][0]["text"] == "hello"
    assert b.usage.input_tokens == body["usage"]["input_tokens"]


def test_a_bad_input_file_fails_the_batch_naming_each_line(client):
    good = chat_line("a", "gpt-4o-mini", "x")
    streaming = chat_line("s", "gpt-4o-mini", "x")
    streaming["body"]["stream"] = True
    text = b"\n".join([json.dumps(good).encode(), b"{not json", json.dumps(good).encode(),
                       json.dumps({**chat_line("u", "gpt-4o-mini", "x"), "url": "/v1/embeddings"}).encode(),
                       json.dumps(streaming).encode()])
    f = client.files.create(file=("bad.jsonl", text), purpose="batch")
    b = wait(client, client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h").id)
    assert b.status == "failed" and b.failed_at and b.output_file_id is None
    assert [(e.code, e.line) for e in b.errors.data] == [
        ("invalid_json_line", 2), ("duplicate_custom_id", 3), ("invalid_url", 4), ("invalid_value", 5)]
    assert b.errors.data[3].param == "body.stream"


def test_bad_requests_name_their_field(client):
    f = upload(client, [chat_line("a", "gpt-4o-mini", "x")])
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(input_file_id=f.id, endpoint="/v1/images/generations", completion_window="24h")
    assert e.value.body["param"] == "endpoint"
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="1h")
    assert e.value.body["param"] == "completion_window"
    with pytest.raises(openai.NotFoundError) as e:
        client.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")
    assert e.value.body["param"] == "input_file_id"
    other = client.files.create(file=("notes.txt", b"hello"), purpose="user_data")
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(input_file_id=other.id, endpoint=CHAT, completion_window="24h")
    assert e.value.body["param"] == "input_file_id"
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("x.jsonl", b"{}"), purpose="homework")
    assert e.value.body["param"] == "purpose"
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        client.batches.cancel("batch_nope")


def test_files_round_trip_and_go_when_deleted(client):
    content = bytes(range(256)) * 10
    f = client.files.create(file=("blob.bin", content), purpose="user_data",
                            expires_after={"anchor": "created_at", "seconds": 3600})
    assert f.expires_at == f.created_at + 3600 and f.bytes == len(content)
    assert client.files.retrieve(f.id).filename == "blob.bin"
    assert client.files.content(f.id).content == content
    assert f.id in [x.id for x in client.files.list(purpose="user_data")]
    # Newest first, in the order they were made (the same second too).
    made = [client.files.create(file=(f"n{i}.txt", b"x"), purpose="evals").id for i in range(4)]
    assert [x.id for x in client.files.list(purpose="evals")][:4] == made[::-1]
    assert [x.id for x in client.files.list(purpose="evals", order="asc")][-4:] == made
    assert f.id not in [x.id for x in client.files.list(purpose="batch")]
    assert client.files.delete(f.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(f.id)
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("x", b"x"), purpose="user_data",
                            expires_after={"anchor": "created_at", "seconds": 5})
    assert e.value.body["param"] == "expires_after.seconds"


def test_a_keys_files_and_batches_are_its_own_and_run_under_its_rules(gateway):
    a = sdk(gateway, new_key(gateway, models=["gpt-4o-mini"])["key"])
    b = sdk(gateway, new_key(gateway)["key"])
    f = upload(a, [chat_line("ok", "gpt-4o-mini", "fine"), chat_line("no", "anthropic/claude-sonnet-4-5", "x")])
    with pytest.raises(openai.NotFoundError):
        b.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        b.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    batch = a.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        b.batches.retrieve(batch.id)
    assert batch.id not in [x.id for x in b.batches.list()]
    batch = wait(a, batch.id)
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 1)
    denied = lines_of(a, batch.error_file_id)[0]
    assert denied["custom_id"] == "no" and denied["response"]["status_code"] == 403


def test_a_key_out_of_budget_fails_its_batch_requests(gateway):
    key = new_key(gateway, budget_usd=0.0000001)
    c = sdk(gateway, key["key"])
    c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "spend it all"}])
    batch = wait(c, c.batches.create(input_file_id=upload(c, [chat_line("a", "gpt-4o-mini", "x")]).id,
                                     endpoint=CHAT, completion_window="24h").id)
    assert batch.status == "completed" and batch.request_counts.failed == 1
    err = lines_of(c, batch.error_file_id)[0]["response"]
    assert err["status_code"] == 429 and err["body"]["error"]["code"] == "insufficient_quota"


SLOW_PROVIDER = """
[[providers]]
name = "openai"
kind = "openai"
base_url = "{mock}/v1"
api_key = "sk-mock"
models = ["gpt-4o-mini"]
"""


def test_a_cancel_stops_a_batch_with_what_ran(tmp_path):
    with own_mock("--latency-ms", "150") as mock, \
            own_gateway(tmp_path, SLOW_PROVIDER.format(mock=mock), "[batches]\nconcurrency = 1") as (client, _):
        f = upload(client, [chat_line(f"r{i}", "gpt-4o-mini", f"n{i}") for i in range(40)])
        b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
        b = wait(client, b.id, until=("in_progress",))
        assert b.request_counts.total == 40
        time.sleep(0.5)
        # A batch waiting behind it whose input file is deleted meanwhile
        # fails, naming the file.
        f2 = upload(client, [chat_line("x", "gpt-4o-mini", "x")])
        orphan = client.batches.create(input_file_id=f2.id, endpoint=CHAT, completion_window="24h")
        client.files.delete(f2.id)
        cancelling = client.batches.cancel(b.id)
        assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
        b = wait(client, b.id)
        assert b.status == "cancelled" and b.cancelled_at
        ran = b.request_counts.completed
        assert 0 < ran < 40 and b.request_counts.failed == 0
        assert len(lines_of(client, b.output_file_id)) == ran
        orphan = wait(client, orphan.id)
        assert orphan.status == "failed" and orphan.errors.data[0].code == "invalid_file"
        assert orphan.errors.data[0].param == "input_file_id"
        with pytest.raises(openai.ConflictError):
            done = wait(client, client.batches.create(
                input_file_id=upload(client, [chat_line("x", "gpt-4o-mini", "x")]).id,
                endpoint=CHAT, completion_window="24h").id)
            assert done.status == "completed"
            client.batches.cancel(done.id)


def test_a_gateway_stopped_mid_batch_goes_on_where_it_was(tmp_path):
    with own_mock("--latency-ms", "100") as mock:
        providers = SLOW_PROVIDER.format(mock=mock)
        extra = "[batches]\nconcurrency = 2"
        with own_gateway(tmp_path, providers, extra) as (client, _):
            f = upload(client, [chat_line(f"r{i}", "gpt-4o-mini", f"n{i}") for i in range(30)])
            b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
            end = time.time() + 20
            while client.batches.retrieve(b.id).request_counts.completed < 4 and time.time() < end:
                time.sleep(0.1)
        # Stopped (gracefully) part way; started again, it finishes the rest.
        with own_gateway(tmp_path, providers, extra) as (client, _):
            first = client.batches.retrieve(b.id)
            assert first.status == "in_progress" and 0 < first.request_counts.completed < 30
            done = wait(client, b.id)
            assert done.status == "completed" and done.request_counts.completed == 30
            out = lines_of(client, done.output_file_id)
            assert sorted(o["custom_id"] for o in out) == sorted(f"r{i}" for i in range(30))
            base = str(client.base_url).removesuffix("/v1/")
            status, report = admin(base, "GET", f"/admin/usage?by=metadata.batch_id&metadata.batch_id={b.id}")
            # One answered request a line (none ran twice), and no attempt
            # failed for the stop (each would have a record of its own).
            row = report["data"][0]
            assert status == 200 and (row["requests"], row["errors"]) == (30, 0), row
