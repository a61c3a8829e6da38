"""Requests from web pages: the CORS preflight and headers a browser needs
to let a page call the gateway (the OpenAI SDK in a browser), and, on a
gateway without a master key, what a page on another site must not do to
it: call it (a cross-origin POST goes out without a preflight) or reach it
through a rebound DNS name.
"""
import http.client
import json
import urllib.parse

import openai
import pytest
from openai import OpenAI

from conftest import BIN, MASTER_KEY, Proc, free_port, own_gateway, wait_http

ASK = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}


def call(base, method, path, headers=None, body=None):
    u = urllib.parse.urlparse(base)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    c.request(method, path, body=None if body is None else json.dumps(body), headers=headers or {})
    r = c.getresponse()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


def preflight(base, origin, path="/v1/chat/completions"):
    return call(base, "OPTIONS", path, {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os,x-stainless-retry-count",
    })


def test_any_page_may_call_a_gateway_with_a_master_key(gateway):
    status, h, _ = preflight(gateway, "https://app.example.com")
    assert status == 200
    assert h["access-control-allow-origin"] == "*"
    assert "POST" in h["access-control-allow-methods"] and "DELETE" in h["access-control-allow-methods"]
    # `*` would not cover authorization: the page's list comes back.
    assert "authorization" in h["access-control-allow-headers"]
    assert "x-stainless-os" in h["access-control-allow-headers"]
    assert int(h["access-control-max-age"]) > 0
    # The call itself (and a refusal: the page reads the error too), with
    # the headers the SDK reads exposed to the page's script.
    page = {"Origin": "https://app.example.com", "content-type": "application/json"}
    status, h, body = call(gateway, "POST", "/v1/chat/completions",
                           {**page, "authorization": f"Bearer {MASTER_KEY}"}, ASK)
    assert status == 200, body
    assert h["access-control-allow-origin"] == "*"
    exposed = h["access-control-expose-headers"].split(",")
    for name in ("x-request-id", "retry-after", "x-should-retry", "x-ratelimit-remaining-requests",
                 "x-polyplex-provider"):
        assert name in exposed
    status, h, _ = call(gateway, "POST", "/v1/chat/completions", page, ASK)
    assert status == 401 and h["access-control-allow-origin"] == "*"
    # The SDK with an Origin (as a browser sends it): streams as usual.
    c = OpenAI(base_url=gateway + "/v1", api_key=MASTER_KEY, max_retries=0,
               default_headers={"Origin": "https://app.example.com"})
    raw = c.chat.completions.with_raw_response.create(**ASK, stream=True)
    assert raw.headers["access-control-allow-origin"] == "*"
    assert "".join(ch.choices[0].delta.content or "" for ch in raw.parse() if ch.choices) == "hello there"
    # No Origin (servers, the SDKs, curl): no CORS headers at all.
    status, h, _ = call(gateway, "GET", "/v1/models", {"authorization": f"Bearer {MASTER_KEY}"})
    assert status == 200 and "access-control-allow-origin" not in h


def test_listed_origins_only(mock, tmp_path):
    provider = f"""[[providers]]
name = "openai"
base_url = "{mock}/v1"
models = ["gpt-4o-mini"]
"""
    extra = '[server]\ncors_origins = ["https://app.example.com", "http://localhost:*"]'
    with own_gateway(tmp_path, provider, extra) as (client, _):
        base = str(client.base_url).removesuffix("/v1/")
        status, h, _ = preflight(base, "https://app.example.com")
        assert h["access-control-allow-origin"] == "https://app.example.com"
        assert "origin" in h["vary"]
        assert preflight(base, "http://localhost:5173")[1]["access-control-allow-origin"] == "http://localhost:5173"
        # Another site: no CORS (the browser keeps the answer from the page);
        # with a master key the call needs a key anyway, so it is not refused.
        status, h, _ = preflight(base, "https://other.example")
        assert "access-control-allow-origin" not in h
        status, h, _ = call(base, "POST", "/v1/chat/completions",
                            {"Origin": "https://other.example", "authorization": f"Bearer {MASTER_KEY}",
                             "content-type": "application/json"}, ASK)
        assert status == 200 and "access-control-allow-origin" not in h


def test_a_bad_origin_in_the_config_is_named(tmp_path):
    (tmp_path / "polyplex.toml").write_text('[server]\ncors_origins = ["app.example.com"]\n')
    import subprocess
    out = subprocess.run([BIN, "check", "--config", str(tmp_path / "polyplex.toml")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "server.cors_origins[0]" in out.stdout + out.stderr


@pytest.fixture
def keyless(mock, tmp_path):
    """A gateway without a master key (loopback only, no key asked)."""
    port = free_port()
    (tmp_path / "polyplex.toml").write_text(f"""
listen = "127.0.0.1:{port}"
[[providers]]
name = "openai"
base_url = "{mock}/v1"
models = ["gpt-4o-mini"]
""")
    proc = Proc([BIN, "serve"], cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/healthz")
    yield base
    proc.stop()


def test_without_a_master_key_only_this_machine_may_call(keyless, mock):
    # The SDK (no Origin), and a page served from this machine, may.
    sdk = OpenAI(base_url=keyless + "/v1", api_key="unused", max_retries=0)
    assert sdk.chat.completions.create(**ASK).choices[0].message.content == "hello there"
    assert preflight(keyless, "http://localhost:5173")[1]["access-control-allow-origin"] == "http://localhost:5173"
    status, h, _ = call(keyless, "POST", "/v1/chat/completions",
                        {"Origin": "http://127.0.0.1:8000", "content-type": "application/json"}, ASK)
    assert status == 200 and h["access-control-allow-origin"] == "http://127.0.0.1:8000"
    # A page on another site: refused before anything reaches a provider —
    # even the "simple" text/plain POST a browser sends without a preflight.
    drive_by = {**ASK, "messages": [{"role": "user", "content": "sent by another site's page"}]}
    status, h, body = call(keyless, "POST", "/v1/chat/completions",
                           {"Origin": "https://evil.example", "content-type": "text/plain"}, drive_by)
    assert status == 403, body
    assert json.loads(body)["error"]["code"] == "origin_not_allowed"
    assert b"sent by another site" not in urllib_get(mock + "/__mock/requests")
    status, h, _ = preflight(keyless, "https://evil.example")
    assert status == 403 and "access-control-allow-origin" not in h
    evil = OpenAI(base_url=keyless + "/v1", api_key="unused", max_retries=0,
                  default_headers={"Origin": "https://evil.example"})
    with pytest.raises(openai.PermissionDeniedError) as e:
        evil.chat.completions.create(**ASK)
    assert e.value.code == "origin_not_allowed"
    # DNS rebinding: the page's own name resolving to 127.0.0.1.
    status, _, body = call(keyless, "POST", "/v1/chat/completions",
                           {"Host": "rebound.evil.example:8484", "content-type": "application/json"}, ASK)
    assert status == 403 and json.loads(body)["error"]["code"] == "host_not_allowed"
    for host in ("localhost:8484", "127.0.0.1", "[::1]:8484"):
        status, _, _ = call(keyless, "GET", "/v1/models", {"Host": host})
        assert status == 200, host


def urllib_get(url):
    import urllib.request
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read()
