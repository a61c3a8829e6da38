"""Routing as a client drives it through the official `openai` SDK: OpenRouter's
`models` and `provider` options in `extra_body`, `auto`, `:floor`, the
`x-polyplex-*` headers, and `GET /admin/providers`."""
import json
import time
import urllib.request

import openai
import pytest

from conftest import MASTER_KEY, admin, own_gateway

HI = [{"role": "user", "content": "hi"}]


def create(client, **kw):
    raw = client.chat.completions.with_raw_response.create(messages=HI, **kw)
    return raw.headers, raw.parse()


def test_provider_order_only_and_ignore_in_extra_body(client):
    h, r = create(client, model="gpt-4o", extra_body={"provider": {"order": ["slow", "openai"]}})
    assert (h["x-polyplex-provider"], h["x-polyplex-model"]) == ("slow", "gpt-4o")
    assert r.choices[0].message.content == "hi"
    h, _ = create(client, model="gpt-4o", extra_body={"provider": {"only": ["openai"]}})
    assert h["x-polyplex-provider"] == "openai"
    h, _ = create(client, model="gpt-4o", extra_body={"provider": {"ignore": ["openai"]}})
    assert h["x-polyplex-provider"] == "slow"
    with pytest.raises(openai.NotFoundError) as e:
        create(client, model="gpt-4o", extra_body={"provider": {"only": ["nobody"]}})
    assert e.value.body["param"] == "provider"


def test_models_fallback_list_in_extra_body(client, fault):
    fault(fault="500", count=2, model="gpt-4o")
    h, r = create(client, model="openai/gpt-4o", extra_body={"models": ["openai/gpt-4o-mini"]})
    assert (h["x-polyplex-model"], h["x-polyplex-attempts"]) == ("gpt-4o-mini", "3")
    assert h["x-polyplex-fallbacks"] == "openai/gpt-4o"
    assert r.model == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError) as e:
        create(client, model="openai/gpt-4o", extra_body={"models": ["no-such-model"]})
    assert e.value.body["param"] == "models[0]"


def test_a_prompt_too_long_for_one_model_fails_over_to_the_next(client, fault):
    """Every provider's words for a prompt longer than its model's window
    become OpenAI's `context_length_exceeded` (BadRequestError, one code to
    catch), and a plan goes on to its next deployment, whose model may have
    a larger window."""
    models = {
        "openai/gpt-4o": "gpt-4o",
        "anthropic/claude-haiku-4-5": "claude-haiku-4-5",
        "google/gemini-2.5-flash": "gemini-2.5-flash",
        "cohere/command-a-03-2025": "command-a-03-2025",
        "bedrock/anthropic.claude-haiku-4-5-20251001-v1:0": "anthropic.claude-haiku-4-5-20251001-v1:0",
    }
    for name, model in models.items():
        fault(fault="context", count=1, model=model)
        with pytest.raises(openai.BadRequestError) as e:
            create(client, model=name)
        assert e.value.code == "context_length_exceeded", (name, e.value.body)
        assert e.value.response.headers["x-polyplex-attempts"] == "1"
    # With somewhere to go, it goes there at once (no retry on the first),
    # streamed or not.
    for stream in (False, True):
        fault(fault="context", count=1, model="claude-haiku-4-5")
        raw = client.chat.completions.with_raw_response.create(
            model="anthropic/claude-haiku-4-5", messages=HI, stream=stream,
            extra_body={"models": ["openai/gpt-4o-mini"]})
        h = raw.headers
        assert (h["x-polyplex-provider"], h["x-polyplex-attempts"]) == ("openai", "2")
        assert h["x-polyplex-fallbacks"] == "anthropic/claude-haiku-4-5"
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        else:
            text = raw.parse().choices[0].message.content
        assert text == "hi"


def test_floor_and_auto(client):
    # Both `openai` and `slow` serve gpt-4o; only openai's price is known.
    h, _ = create(client, model="gpt-4o:floor")
    assert h["x-polyplex-provider"] == "openai"
    h, r = create(client, model="auto")
    assert h["x-polyplex-provider"] and h["x-polyplex-model"]
    assert r.choices[0].message.content
    assert r.usage.total_tokens > 0
    assert client.models.retrieve("auto").id == "auto"
    with pytest.raises(openai.NotFoundError):
        create(client, model="auto", max_tokens=10_000_000)


def test_admin_providers_lists_deployments(gateway, client):
    create(client, model="openai/gpt-4o-mini")
    req = urllib.request.Request(gateway + "/admin/providers", headers={"authorization": f"Bearer {MASTER_KEY}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        body = json.loads(r.read())
    names = [p["name"] for p in body["data"]]
    assert "openai" in names and "slow" in names
    openai_p = next(p for p in body["data"] if p["name"] == "openai")
    d = next(d for d in openai_p["deployments"] if d["model"] == "gpt-4o-mini")
    assert d["requests"] >= 1 and d["circuit"] in ("closed", "open", "half_open")
    assert "sk-mock-provider" not in json.dumps(body)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(gateway + "/admin/providers", timeout=5)
    assert e.value.code == 401


def test_a_deployment_that_cannot_carry_the_request_is_passed_over(client):
    """Routing picks a provider that can do the job: where the first choice's
    protocol has no place for a parameter (`logprobs`, `seed`, `n` above
    the 16 choices polyplex asks Anthropic for apart), the next one that has
    serves it — streamed too —
    without an upstream attempt spent on the first. With none that can, the
    refusal names the parameter, as it would for that provider alone."""
    fallback = {"models": ["openai/gpt-4o"]}
    h, r = create(client, model="anthropic/claude-sonnet-4-5", seed=7, extra_body=fallback)
    assert (h["x-polyplex-provider"], h["x-polyplex-attempts"]) == ("openai", "1")
    assert h["x-polyplex-fallbacks"] == "anthropic/claude-sonnet-4-5"
    h, r = create(client, model="anthropic/claude-sonnet-4-5", logprobs=True, top_logprobs=1,
                  extra_body=fallback)
    assert h["x-polyplex-provider"] == "openai" and r.choices[0].logprobs.content
    raw = client.chat.completions.with_raw_response.create(
        model="anthropic/claude-sonnet-4-5", messages=HI, n=17, stream=True, extra_body=fallback)
    assert raw.headers["x-polyplex-provider"] == "openai"
    assert {c.choices[0].index for c in raw.parse() if c.choices} == set(range(17))
    # What the first can carry stays with it.
    h, _ = create(client, model="anthropic/claude-sonnet-4-5", extra_body=fallback)
    assert (h["x-polyplex-provider"], h["x-polyplex-attempts"]) == ("anthropic", "1")
    # Nobody can: the first refusal, by name.
    with pytest.raises(openai.BadRequestError) as e:
        create(client, model="anthropic/claude-sonnet-4-5", seed=7, extra_body={"models": [
            "bedrock/us.anthropic.claude-haiku-4-5-20251001-v1:0"]})
    assert (e.value.param, e.value.code) == ("seed", "unsupported_parameter")
    assert "`anthropic`" in e.value.message


def test_metrics_show_each_deployments_attempts_and_health(mock, fault, tmp_path):
    """`/metrics`: the requests by the provider and model that answered, and
    each deployment's own attempts, failures, circuit and in-flight count —
    the failed-over attempt included, which no request record names."""
    from conftest import mock_openai_provider, own_gateway

    providers = mock_openai_provider(mock) + f"""[[providers]]
name = "backup"
kind = "openai"
base_url = "{mock}/v1"
models = ["gpt-4o-mini"]
max_retries = 0
"""
    route = '[[routes]]\nname = "steady"\ntargets = ["openai/gpt-4o-mini", "backup/gpt-4o-mini"]'
    with own_gateway(tmp_path, providers, route) as (client, _):
        fault(fault="500", count=1, model="gpt-4o-mini")
        h, _ = create(client, model="steady")
        assert (h["x-polyplex-provider"], h["x-polyplex-attempts"]) == ("backup", "2")
        base = str(client.base_url).removesuffix("/v1/")

        def scrape():
            with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
                lines = r.read().decode().splitlines()
            return {k: float(v) for k, v in (ln.rsplit(" ", 1) for ln in lines if ln and not ln.startswith("#"))}

        # The records reach the metrics through the usage writer, a moment later.
        deadline = time.time() + 5
        series = scrape()
        while not any(k.startswith("polyplex_requests_total{") for k in series):
            assert time.time() < deadline, series
            time.sleep(0.05)
            series = scrape()
        one = 'provider="openai",model="gpt-4o-mini"'
        two = 'provider="backup",model="gpt-4o-mini"'
        assert series[f"polyplex_upstream_attempts_total{{{one}}}"] == 1
        assert series[f"polyplex_upstream_errors_total{{{one}}}"] == 1
        assert series[f"polyplex_deployment_error_rate{{{one}}}"] == 1
        assert series[f"polyplex_upstream_attempts_total{{{two}}}"] == 1
        assert series[f"polyplex_upstream_errors_total{{{two}}}"] == 0
        assert series[f'polyplex_deployment_circuit_state{{{two},state="closed"}}'] == 1
        assert series[f"polyplex_deployment_healthy{{{two}}}"] == 1
        assert series[f"polyplex_deployment_in_flight{{{two}}}"] == 0
        # The records: one request, answered by backup.
        answered = [k for k in series if k.startswith("polyplex_requests_total{")]
        assert answered == ['polyplex_requests_total{endpoint="chat.completions",provider="backup",model="gpt-4o-mini",status="200"}'], answered


def test_cost_routing_loads_the_token_encoding_at_start(mock, tmp_path):
    """Cost routing counts every request's prompt: the encoding (~50 MiB,
    ~0.1–1 s to load) is loaded at start on a thread of its own, not by the
    first request on a serving thread; without cost routing it is not."""
    from conftest import mock_openai_provider, own_gateway

    route = '[[routes]]\nname = "cheap"\ntargets = ["openai/gpt-4o-mini"]\nstrategy = "cost"'
    with own_gateway(tmp_path, mock_openai_provider(mock), route) as (client, proc):
        deadline = time.time() + 15
        while "token encoding loaded" not in proc.output():
            assert time.time() < deadline, proc.output()[-2000:]
            time.sleep(0.05)
        assert "the token encoding loads ahead of the first" in proc.output()
        h, r = create(client, model="cheap")
        assert r.choices[0].message.content == "hi"
    plain = tmp_path / "plain"
    plain.mkdir()
    with own_gateway(plain, mock_openai_provider(mock)) as (client, proc):
        create(client, model="gpt-4o-mini")
        time.sleep(0.3)
        assert "token encoding" not in proc.output()



def test_providers_by_their_common_names(mock, tmp_path):
    """`name = "gemini"` is the catalog's Google AI Studio (`google`): its
    protocol without a `kind`. A provider configured as `google` (as
    zero-config names it) serves `gemini/<model>` too, as LiteLLM users
    write it."""
    def gemini_provider(name, model):
        return f"""
[[providers]]
name = "{name}"
base_url = "{mock}"
api_key = "g-key"
models = ["{model}"]
"""
    (tmp_path / "named").mkdir()
    with own_gateway(tmp_path / "named", gemini_provider("gemini", "gemini-2.5-flash")) as (client, proc):
        assert 'provider=gemini base_url=' in proc.output() and 'protocol="gemini"' in proc.output()
        h, r = create(client, model="gemini/gemini-2.5-flash")
        assert (h["x-polyplex-provider"], r.choices[0].message.content) == ("gemini", "hi")
    (tmp_path / "zero").mkdir()
    with own_gateway(tmp_path / "zero", gemini_provider("google", "gemini-2.5-pro")) as (client, proc):
        h, r = create(client, model="gemini/gemini-2.5-pro")
        assert (h["x-polyplex-provider"], h["x-polyplex-model"]) == ("google", "gemini-2.5-pro")
        assert r.model == "gemini-2.5-pro"
        with pytest.raises(openai.NotFoundError):
            create(client, model="gemini/gemini-9-nothing")


def test_a_providers_configured_rpm_and_tpm_are_never_exceeded(mock, tmp_path):
    """`rpm` / `tpm` on a provider: the most requests and tokens a minute
    polyplex sends each of its models. A deployment at its limit is passed
    over for the next one (named in x-polyplex-skipped, nothing sent to it);
    when none has room, the SDK raises RateLimitError with `retry-after`,
    and nothing reached the upstream."""
    providers = f"""
[[providers]]
name = "small"
kind = "openai"
catalog = "openai"
base_url = "{mock}/v1"
api_key = "k"
models = ["gpt-4o-mini"]
rpm = 2
[[providers]]
name = "metered"
kind = "openai"
catalog = "openai"
base_url = "{mock}/v1"
api_key = "k"
models = ["gpt-4o-mini"]
tpm = 25
"""
    ten = "one two three four five six seven eight nine ten"
    with own_gateway(tmp_path, providers) as (client, proc):
        served = []
        for stream in (False, True):
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": ten}], stream=stream)
            served.append((raw.headers["x-polyplex-provider"], raw.headers.get("x-polyplex-skipped")))
            list(raw.parse()) if stream else raw.parse()
        # `small` took its two requests; the next goes to `metered`.
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": ten}])
        served.append((raw.headers["x-polyplex-provider"], raw.headers.get("x-polyplex-skipped")))
        assert served == [("small", None), ("small", None), ("metered", "small/gpt-4o-mini")]
        assert raw.parse().usage.total_tokens >= 25
        # Now both are at their limits: a 429 of the gateway's own, before
        # anything is sent upstream.
        before = mock_stats(mock)
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert e.value.code == "rate_limit_exceeded"
        assert 1 <= int(e.value.response.headers["retry-after"]) <= 60
        assert "small/gpt-4o-mini" in e.value.message and "Limit 2" in e.value.message
        assert e.value.response.headers["x-polyplex-skipped"] == "small/gpt-4o-mini, metered/gpt-4o-mini"
        after = mock_stats(mock)
        assert after["requests"] == before["requests"]
        # A model named on the limited provider gets the same answer.
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(
                model="metered/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        # The admin API shows each deployment's use of its limits.
        status, providers = admin(str(client.base_url).removesuffix("/v1/"), "GET", "/admin/providers")
        assert status == 200
        limits = {p["name"]: (p["rpm"], p["tpm"], p["deployments"][0]["upstream_limits"])
                  for p in providers["data"]}
        assert limits["small"][:2] == (2, None)
        assert limits["small"][2]["requests_last_minute"] == 2
        assert limits["metered"][:2] == (None, 25)
        assert limits["metered"][2]["tokens_last_minute"] >= 25


def test_a_models_own_limits_over_its_providers(mock, tmp_path):
    """`model_limits."<model>" = { rpm, tpm }` in place of the provider's
    `rpm` / `tpm` for that model, as OpenAI's limits differ per model."""
    providers = f"""
[[providers]]
name = "openai"
base_url = "{mock}/v1"
api_key = "k"
models = ["gpt-4o", "gpt-4o-mini"]
max_retries = 0
rpm = 100
model_limits."gpt-4o-mini" = {{ rpm = 1 }}
"""
    with own_gateway(tmp_path, providers) as (client, proc):
        create(client, model="gpt-4o-mini")
        with pytest.raises(openai.RateLimitError) as e:
            create(client, model="gpt-4o-mini")
        assert "Limit 1," in e.value.message
        for _ in range(3):
            create(client, model="gpt-4o")
        status, got = admin(str(client.base_url).removesuffix("/v1/"), "GET", "/admin/providers")
        deployments = {d["model"]: d["upstream_limits"] for d in got["data"][0]["deployments"]}
        assert deployments["gpt-4o-mini"]["rpm"] == 1 and deployments["gpt-4o"]["rpm"] == 100
        assert deployments["gpt-4o"]["requests_last_minute"] == 3


def mock_stats(mock):
    with urllib.request.urlopen(mock + "/__mock/stats", timeout=10) as r:
        return json.loads(r.read())
