"""Two replicas behind one load balancer, as production runs them: one store
(a SQLite file here; Postgres in production) and one Redis. A key's limits
and budget hold across both, and the official `openai` SDK sees OpenAI's own
exceptions whichever replica answers. Needs a Redis server: POLYPLEX_TEST_REDIS
(scripts/test.sh sets it when one answers on 127.0.0.1:6379; CI starts one).
"""
import contextlib
import os
import time

import openai
import pytest

from conftest import BIN, MASTER_KEY, Proc, free_port, mock_openai_provider, wait_http
from test_keys_via_openai_sdk import admin, hello, new_key, sdk

REDIS = os.environ.get("POLYPLEX_TEST_REDIS")
pytestmark = pytest.mark.skipif(not REDIS, reason="POLYPLEX_TEST_REDIS not set")


@contextlib.contextmanager
def two_replicas(d, providers):
    """Two gateways sharing one store and one Redis, with the
    `[[providers]]` text given: yields their base URLs."""
    procs, bases = [], []
    try:
        for _ in range(2):
            port = free_port()
            cfg = d / f"replica-{port}.toml"
            cfg.write_text(f"""
listen = "127.0.0.1:{port}"
[auth]
master_key = "{MASTER_KEY}"
[store]
url = "sqlite://{d / 'shared.db'}"
[redis]
url = "{REDIS}"
{providers}""")
            procs.append(Proc([BIN, "serve", "--config", str(cfg)], cwd=d))
            bases.append(f"http://127.0.0.1:{port}")
            wait_http(bases[-1] + "/healthz")
        yield bases
    finally:
        for p in procs:
            p.stop()
    for p in procs:
        assert "Redis failed" not in p.output(), p.output()


@pytest.fixture(scope="module")
def replicas(mock, tmp_path_factory):
    with two_replicas(tmp_path_factory.mktemp("replicas"), mock_openai_provider(mock)) as bases:
        yield bases


def test_a_providers_rpm_holds_across_replicas(mock, tmp_path):
    """A provider's configured `rpm` counts every replica's requests to it
    (each deployment's window in Redis)."""
    provider = f"""
[[providers]]
name = "capped-{os.getpid()}-{time.time_ns()}"
kind = "openai"
catalog = "openai"
base_url = "{mock}/v1"
api_key = "k"
models = ["gpt-4o-mini"]
rpm = 3
"""
    with two_replicas(tmp_path, provider) as (a, b):
        for base in (a, b, a):
            hello(sdk(base, MASTER_KEY))
        for base in (b, a):
            with pytest.raises(openai.RateLimitError) as e:
                hello(sdk(base, MASTER_KEY))
            assert e.value.code == "rate_limit_exceeded" and "Limit 3" in e.value.message
            assert int(e.value.response.headers["retry-after"]) >= 1


def test_requests_per_minute_hold_across_replicas(replicas):
    a, b = replicas
    k = new_key(a, rpm=2)
    raw = sdk(a, k["key"]).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    raw = sdk(b, k["key"]).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    for base in (a, b):
        with pytest.raises(openai.RateLimitError) as e:
            hello(sdk(base, k["key"]))
        assert e.value.code == "rate_limit_exceeded"
        assert int(e.value.response.headers["retry-after"]) >= 1


def test_an_end_users_requests_per_minute_hold_across_replicas(replicas):
    a, b = replicas
    k = new_key(a, user_rpm=2)
    hello(sdk(a, k["key"]), user="dana")
    hello(sdk(b, k["key"]), user="dana")
    for base in (a, b):
        with pytest.raises(openai.RateLimitError) as e:
            hello(sdk(base, k["key"]), user="dana")
        assert e.value.code == "rate_limit_exceeded" and "end user 'dana'" in e.value.message
    # Another end user of the key, and the key itself, are not held.
    hello(sdk(b, k["key"]), user="eli")
    hello(sdk(a, k["key"]))
    # Tokens too: what one replica served counts on the other.
    t = new_key(a, user_tpm=5)
    hello(sdk(a, t["key"]), user="fay")
    e = refused_soon(lambda: hello(sdk(b, t["key"]), user="fay"))
    assert "tokens per min" in e.message


def refused_soon(ask, within=6):
    """Asks until the answer is a RateLimitError (what one replica counted
    reaches the other in the background), and returns it."""
    deadline = time.time() + within
    while True:
        try:
            ask()
        except openai.RateLimitError as e:
            return e
        assert time.time() < deadline, "never refused"
        time.sleep(0.2)


def test_an_end_users_budget_spent_on_one_replica_is_spent_on_the_other(replicas):
    a, b = replicas
    k = new_key(a, user_budget_usd=0.000001)
    hello(sdk(a, k["key"]), user="ivy")
    # The end user's spend is in Redis: the other replica refuses at once
    # (its charge goes in the background: a moment for it to land).
    time.sleep(0.1)
    with pytest.raises(openai.RateLimitError) as e:
        hello(sdk(b, k["key"]), user="ivy")
    e = e.value
    assert e.code == "insufficient_quota" and "end user 'ivy'" in e.message
    hello(sdk(b, k["key"]), user="jo")


@pytest.mark.parametrize("reset", [None, "monthly"])
def test_a_budget_spent_on_one_replica_is_spent_on_the_other(replicas, reset):
    a, b = replicas
    k = new_key(a, budget_usd=0.000001, budget_reset=reset)
    hello(sdk(a, k["key"]))
    with pytest.raises(openai.RateLimitError) as e:
        hello(sdk(b, k["key"]))
    assert e.value.code == "insufficient_quota"
    # Usage is in the one store, whichever replica is asked (a report first
    # writes what its own replica holds: ask A, then B).
    admin(a, "GET", "/admin/usage")
    status, rep = admin(b, "GET", "/admin/usage?by=key")
    assert status == 200
    row = next(r for r in rep["data"] if r["key"] == k["id"])
    assert row["requests"] == 2 and row["errors"] == 1
