"""Token counts the gateway makes itself — an upstream that reports no
usage, a plan by cost — through the official `openai` SDK: the token
encoding (~50 MiB) loads on first need on a thread of its own, and no
serving thread pauses for it."""
import threading
import time

import openai
import pytest
from openai import OpenAI

from conftest import admin, mock_openai_provider, own_gateway, own_mock

HI = [{"role": "user", "content": "hi"}]


def create(client, **kw):
    raw = client.chat.completions.with_raw_response.create(messages=HI, **kw)
    return raw.headers, raw.parse()


def loaded_ms(output):
    """How long the token encoding's load took, from the gateway's log."""
    line = next(l for l in output.splitlines() if "token encoding loaded" in l)
    return int(line.split("ms=")[1].split()[0])


@pytest.mark.parametrize("way", ["answer", "stream", "floor"])
def test_the_first_count_does_not_pause_the_serving_thread(mock, fault, tmp_path, way):
    """The token encoding (~50 MiB) loads on first need — an upstream that
    reports no usage, a `:floor` plan — on a thread of its own. With one
    serving thread, the requests that arrive while it loads are answered at
    once (the counting request waits for it without blocking them), and the
    count is the encoding's, the same as once it is loaded."""
    # Two providers of the model: `:floor` orders them by the prompt's cost.
    providers = mock_openai_provider(mock) + mock_openai_provider(mock).replace(
        'name = "openai"', 'name = "openai2"\nkind = "openai"')
    with own_gateway(tmp_path, providers, "[server]\nthreads = 1") as (client, proc):
        create(client, model="openai/gpt-4o-mini")
        assert "token encoding" not in proc.output()

        def counted():
            if way == "floor":
                return create(client, model="gpt-4o-mini:floor")[1].usage
            fault(fault="no_usage", count=1)
            if way == "answer":
                return create(client, model="openai/gpt-4o-mini")[1].usage
            stream = client.chat.completions.create(
                model="openai/gpt-4o-mini", messages=HI, stream=True, stream_options={"include_usage": True})
            return [c for c in stream if c.usage][-1].usage

        first = {}
        t = threading.Thread(target=lambda: first.update(usage=counted()))
        t.start()
        deadline = time.time() + 30
        while "token encoding loading" not in proc.output():
            assert time.time() < deadline, proc.output()[-2000:]
            time.sleep(0.002)
        during = []
        while "token encoding loaded" not in proc.output():
            assert time.time() < deadline, proc.output()[-2000:]
            started = time.perf_counter()
            create(client, model="openai/gpt-4o-mini")
            during.append(time.perf_counter() - started)
        t.join(30)
        load = loaded_ms(proc.output())
        assert during, f"no request while it loaded ({load} ms)"
        assert max(during) * 1000 < max(load / 2, 50), (during, load)
        assert first["usage"].prompt_tokens > 0 and first["usage"].completion_tokens > 0
        if way != "floor":
            # The same request counted again: the same count.
            again = counted()
            assert (again.prompt_tokens, again.completion_tokens) == (
                first["usage"].prompt_tokens, first["usage"].completion_tokens)
        assert proc.output().count("token encoding loading") == 1


def test_a_client_gone_before_the_first_count_is_recorded_with_it(tmp_path):
    """A stream whose client goes before the upstream said its usage is
    recorded (499) with the prompt counted — by the encoding, not by bytes,
    even when it was not loaded yet: the record waits for it on a thread of
    its own, and the serving thread does not."""
    with own_mock("--tokens-per-s", "20") as mock:
        with own_gateway(tmp_path, mock_openai_provider(mock), "[server]\nthreads = 1") as (client, proc):
            prompt = [{"role": "user", "content": "word " * 200}]
            with client.chat.completions.with_streaming_response.create(
                    model="gpt-4o-mini", messages=prompt, stream=True) as r:
                next(r.iter_lines())
            # The client is gone: the gateway records 499 once it is counted,
            # and serves meanwhile.
            deadline = time.time() + 30
            while "client disconnected" not in proc.output():
                assert time.time() < deadline, proc.output()[-2000:]
                time.sleep(0.002)
            started = time.perf_counter()
            assert client.models.list().data
            meanwhile = time.perf_counter() - started
            while "status=499" not in proc.output():
                assert time.time() < deadline, proc.output()[-2000:]
                time.sleep(0.02)
            out = proc.output()
            load = loaded_ms(out)
            assert meanwhile * 1000 < max(load / 2, 50), (meanwhile, load)
            assert out.count("token encoding loaded") == 1
            gone = next(l for l in out.splitlines() if "status=499" in l)
            counted = int(gone.split("prompt_tokens=")[1].split()[0])
            assert "estimated=true" in gone
            # o200k counts "word " * 200 as 200 tokens (bytes / 4 would be 250),
            # plus the role and OpenAI's per-message overhead.
            assert 200 < counted < 220, gone


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_gives_up_is_recorded_and_charged(mock, fault, tmp_path, stream):
    """A client that gives up before the upstream answers (the SDK's
    `timeout`; the server drops the request then) still has its one usage
    record: 499, the provider the request was under way at, and the prompt
    counted — the upstream had it and bills it — charged to the key."""
    with own_gateway(tmp_path, mock_openai_provider(mock)) as (client, proc):
        base = str(client.base_url).rstrip("/").removesuffix("/v1")
        status, k = admin(base, "POST", "/admin/keys", {"name": "impatient", "budget_usd": 10})
        assert status == 200, k
        impatient = OpenAI(base_url=base + "/v1", api_key=k["key"], max_retries=0, timeout=0.5)
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)  # the pools warm
        fault(fault="timeout", delay_ms=5000, count=1)
        prompt = [{"role": "user", "content": "word " * 200}]
        with pytest.raises(openai.APITimeoutError):
            impatient.chat.completions.create(model="gpt-4o-mini", messages=prompt, stream=stream)
        deadline = time.time() + 30
        while "status=499" not in proc.output():
            assert time.time() < deadline, proc.output()[-2000:]
            time.sleep(0.02)
        gone = next(l for l in proc.output().splitlines() if "status=499" in l)
        assert " provider=openai model=gpt-4o-mini " in gone and f" stream={str(stream).lower()}" in gone
        assert " completion_tokens=0 " in gone and "estimated=true" in gone
        assert 200 < int(gone.split("prompt_tokens=")[1].split()[0]) < 220, gone
        cost = float(gone.split("cost_usd=")[1].split()[0])
        assert cost > 0
        # The key was charged what the record says, and serves on.
        status, key = admin(base, "GET", f"/admin/keys/{k['id']}")
        assert status == 200 and abs(key["spent_usd"] - cost) < 1e-9, key
        answered = impatient.chat.completions.create(model="gpt-4o-mini", messages=HI)
        assert answered.choices[0].message.content
        status, usage = admin(base, "GET", "/admin/usage")
        assert (usage["total"]["requests"], usage["total"]["errors"]) == (3, 1), usage


def test_every_request_of_clients_that_give_up_at_random_is_recorded_once(tmp_path):
    """A bounded soak (80 requests, loopback): clients with random timeouts
    over slow upstreams of three protocols, answers and streams — given up
    before the upstream answered, mid-stream or not at all. Each request
    writes exactly one usage record, and each record of a request cut short
    at an upstream counts its prompt."""
    import random
    with own_mock("--latency-ms", "150", "--tokens-per-s", "100") as mock:
        providers = mock_openai_provider(mock) + f"""
[[providers]]
name = "anthropic"
base_url = "{mock}"
api_key = "a-key"
models = ["claude-sonnet-4-5"]
[[providers]]
name = "gemini"
base_url = "{mock}"
api_key = "g-key"
models = ["gemini-2.5-flash"]
"""
        with own_gateway(tmp_path, providers) as (client, proc):
            base = str(client.base_url)
            outcomes, lock = [], threading.Lock()

            def worker(seed):
                rnd = random.Random(seed)
                for _ in range(5):
                    c = OpenAI(base_url=base, api_key=client.api_key, max_retries=0,
                               timeout=rnd.uniform(0.05, 0.6))
                    model = rnd.choice(["openai/gpt-4o-mini", "anthropic/claude-sonnet-4-5",
                                        "gemini/gemini-2.5-flash"])
                    asked = [{"role": "user", "content": "tell me " * 20}]
                    try:
                        if rnd.random() < 0.5:
                            for _ in c.chat.completions.create(model=model, messages=asked, stream=True):
                                pass
                        else:
                            c.chat.completions.create(model=model, messages=asked)
                        got = "answered"
                    except openai.APITimeoutError:
                        got = "gave up"
                    with lock:
                        outcomes.append(got)

            threads = [threading.Thread(target=worker, args=(s,)) for s in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert len(outcomes) == 80 and "gave up" in outcomes and "answered" in outcomes
            deadline = time.time() + 30
            while True:
                records = [l for l in proc.output().splitlines() if "polyplex::usage" in l and "status=" in l]
                if len(records) >= 80 or time.time() > deadline:
                    break
                time.sleep(0.05)
            time.sleep(0.3)  # none more
            records = [l for l in proc.output().splitlines() if "polyplex::usage" in l and "status=" in l]
            ids = [l.split("request_id=")[1].split()[0] for l in records]
            assert len(ids) == 80 and len(set(ids)) == 80, len(ids)
            gone = [l for l in records if "status=499" in l]
            assert gone and all(" status=200 " in l or " status=499 " in l for l in records)
            # Roughly the clients that gave up (one may give up reading a
            # stream the gateway had finished sending).
            assert abs(len(gone) - outcomes.count("gave up")) <= 3, (len(gone), outcomes.count("gave up"))
            cut = [l for l in gone if " provider=- " not in l]
            assert all(int(l.split("prompt_tokens=")[1].split()[0]) > 0 for l in cut), cut
