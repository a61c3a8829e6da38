"""Reloading the configuration while serving: `POST /admin/reload` and
SIGHUP. A valid file swaps providers, routes and the strategy at once; an
invalid one changes nothing; health and requests under way survive it."""
import json
import signal
import threading
import time
import urllib.request

import openai
import pytest

from conftest import MASTER_KEY, admin, own_gateway, own_mock, records_of


def provider(name, mock, models, extra=""):
    return f"""
[[providers]]
name = "{name}"
kind = "openai"
base_url = "{mock}/v1"
api_key = "sk-mock-provider"
models = {json.dumps(models)}
max_retries = 0
{extra}"""


def rewrite(d, old, new):
    path = d / "polyplex.toml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def served_by(client, model):
    r = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "reload marker"}])
    return r.headers["x-polyplex-provider"], r.parse().choices[0].message.content


def test_a_reload_swaps_providers_and_routes(tmp_path, mock):
    first = provider("alpha", mock, ["gpt-4o-mini", "gpt-4.1-nano"]) + """
[[routes]]
name = "team"
targets = ["alpha/gpt-4o-mini"]
"""
    with own_gateway(tmp_path, first) as (client, _):
        base = str(client.base_url).removesuffix("/v1/")
        assert served_by(client, "team")[0] == "alpha"
        # Nothing changed: said so.
        st, body = admin(base, "POST", "/admin/reload")
        assert st == 200 and body["providers"] == {"added": [], "removed": [], "changed": [], "unchanged": 1}
        # A new provider, the route moved to it, a route gone, one added, a new strategy.
        rewrite(tmp_path, first, provider("beta", mock, ["gpt-4o-mini", "gpt-4o"]) + """
[[routes]]
name = "team"
targets = ["beta/gpt-4o"]

[[routes]]
name = "other"
targets = ["beta/gpt-4o-mini"]

[routing]
strategy = "cost"
""")
        st, body = admin(base, "POST", "/admin/reload")
        assert st == 200, body
        assert body["object"] == "gateway.reload" and body["reloaded"] is True
        assert body["providers"] == {"added": ["beta"], "removed": ["alpha"], "changed": [], "unchanged": 0}
        assert body["routes"] == {"added": ["other"], "removed": [], "changed": ["team"], "unchanged": 0}
        assert body["strategy"] == "cost" and body["restart_needed"] == []
        assert served_by(client, "team")[0] == "beta"
        assert served_by(client, "other")[0] == "beta"
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="alpha/gpt-4.1-nano",
                                           messages=[{"role": "user", "content": "x"}])
        ids = {m.id for m in client.models.list()}
        assert {"beta/gpt-4o", "team", "other"} <= ids and "alpha/gpt-4o-mini" not in ids
        st, body = admin(base, "GET", "/admin/providers")
        assert [p["name"] for p in body["data"]] == ["beta"]


def test_an_invalid_file_changes_nothing(tmp_path, mock):
    first = provider("alpha", mock, ["gpt-4o-mini"])
    with own_gateway(tmp_path, first) as (client, _):
        base = str(client.base_url).removesuffix("/v1/")
        for broken, says in [
            (first + "\nbogus_setting = 1\n", "bogus_setting"),
            (first.replace('models = ["gpt-4o-mini"]', 'models = ["gpt-4o-mini"]\nmax_retries = "two"'), "max_retries"),
            (first + '\n[[routes]]\nname = "r"\ntargets = ["nobody/gpt-4o"]\n', "nobody"),
            (first.replace('api_key = "sk-mock-provider"', 'api_key = "${RELOAD_TEST_UNSET_VARIABLE}"'), "RELOAD_TEST_UNSET_VARIABLE"),
        ]:
            (tmp_path / "polyplex.toml").write_text((tmp_path / "polyplex.toml").read_text().split("[[providers]]")[0] + broken)
            st, body = admin(base, "POST", "/admin/reload")
            assert st == 400, body
            assert body["error"]["code"] == "invalid_config" and says in body["error"]["message"], body
            assert served_by(client, "alpha/gpt-4o-mini")[0] == "alpha"
        # The SDK sees it as OpenAI's own 400.
        admin_client = openai.OpenAI(base_url=base, api_key=MASTER_KEY, max_retries=0)
        with pytest.raises(openai.BadRequestError):
            admin_client.post("/admin/reload", cast_to=object)


def test_sighup_reloads_and_the_log_says_what_changed(tmp_path, mock):
    first = provider("alpha", mock, ["gpt-4o-mini"])
    with own_gateway(tmp_path, first) as (client, proc):
        rewrite(tmp_path, first, first + provider("beta", mock, ["gpt-4o"]))
        proc.p.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while "configuration reloaded" not in proc.output() and time.time() < deadline:
            time.sleep(0.05)
        assert "configuration reloaded" in proc.output()
        assert served_by(client, "beta/gpt-4o")[0] == "beta"
        # A broken file on SIGHUP: logged, the gateway serves on as it was.
        (tmp_path / "polyplex.toml").write_text((tmp_path / "polyplex.toml").read_text() + "\n[nonsense\n")
        proc.p.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while "running configuration is unchanged" not in proc.output() and time.time() < deadline:
            time.sleep(0.05)
        assert "running configuration is unchanged" in proc.output()
        assert proc.p.poll() is None
        assert served_by(client, "beta/gpt-4o")[0] == "beta"
        assert "sk-mock-provider" not in proc.output()


def test_a_reload_turns_the_response_cache_on_resizes_it_and_off(tmp_path, mock):
    first = provider("alpha", mock, ["gpt-4o-mini"])
    with own_gateway(tmp_path, first) as (client, _):
        base = str(client.base_url).removesuffix("/v1/")
        path = tmp_path / "polyplex.toml"

        def ask(text):
            r = client.chat.completions.with_raw_response.create(
                model="alpha/gpt-4o-mini", messages=[{"role": "user", "content": text}])
            return r.headers.get("x-polyplex-cache")

        assert ask("cached?") is None
        path.write_text(path.read_text() + "\n[cache]\nttl_s = 60\n")
        st, body = admin(base, "POST", "/admin/reload")
        assert st == 200 and body["cache"] == "added" and body["restart_needed"] == [], body
        assert (ask("cached?"), ask("cached?")) == ("miss", "hit")
        # Another TTL: what is kept stays.
        path.write_text(path.read_text().replace("ttl_s = 60", "ttl_s = 120"))
        st, body = admin(base, "POST", "/admin/reload")
        assert st == 200 and body["cache"] == "changed", body
        assert ask("cached?") == "hit"
        # Off: no cache at all (no header), and back on: empty.
        path.write_text(path.read_text().replace("[cache]\nttl_s = 120\n", ""))
        st, body = admin(base, "POST", "/admin/reload")
        assert st == 200 and body["cache"] == "removed", body
        assert ask("cached?") is None
        path.write_text(path.read_text() + "\n[cache]\n")
        st, body = admin(base, "POST", "/admin/reload")
        assert st == 200 and body["cache"] == "added", body
        assert ask("cached?") == "miss"


def test_settings_bound_at_start_are_named_not_applied(tmp_path, mock):
    first = provider("alpha", mock, ["gpt-4o-mini"])
    with own_gateway(tmp_path, first) as (client, _):
        base = str(client.base_url).removesuffix("/v1/")
        text = (tmp_path / "polyplex.toml").read_text()
        text = text.replace("[auth]", "[server]\nheader_timeout_ms = 5000\n\n[batches]\nconcurrency = 2\n\n[auth]")
        (tmp_path / "polyplex.toml").write_text(text + provider("beta", mock, ["gpt-4o"]))
        st, body = admin(base, "POST", "/admin/reload")
        assert st == 200, body
        assert body["providers"]["added"] == ["beta"] and body["master_key_rotated"] is False
        assert sorted(body["restart_needed"]) == ["batches", "server.header_timeout_ms"]
        assert body["server"] == []
        # The body limit and the CORS origins are applied at once.
        text = (tmp_path / "polyplex.toml").read_text().replace(
            "[server]\n", '[server]\nmax_body_bytes = 1000\ncors_origins = ["https://app.example.com"]\n')
        (tmp_path / "polyplex.toml").write_text(text)
        st, body = admin(base, "POST", "/admin/reload")
        assert st == 200 and body["server"] == ["server.max_body_bytes", "server.cors_origins"], body
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model="beta/gpt-4o", messages=[{"role": "user", "content": "x" * 2000}])
        assert e.value.status_code == 413
        pre = urllib.request.Request(base + "/v1/chat/completions", method="OPTIONS", headers={
            "origin": "https://app.example.com", "access-control-request-method": "POST"})
        with urllib.request.urlopen(pre, timeout=5) as r:
            assert r.headers["access-control-allow-origin"] == "https://app.example.com"
        pre = urllib.request.Request(base + "/v1/chat/completions", method="OPTIONS", headers={
            "origin": "https://other.example.com", "access-control-request-method": "POST"})
        try:
            with urllib.request.urlopen(pre, timeout=5) as r:
                assert r.headers.get("access-control-allow-origin") is None
        except urllib.error.HTTPError as err:
            assert err.headers.get("access-control-allow-origin") is None
        # Taking the master key away is bound at start too (it is what keeps a gateway on loopback).
        text = (tmp_path / "polyplex.toml").read_text().replace(f'master_key = "{MASTER_KEY}"', "")
        (tmp_path / "polyplex.toml").write_text(text)
        st, body = admin(base, "POST", "/admin/reload")
        assert st == 200 and "auth.master_key (set or unset)" in body["restart_needed"], body
        assert admin(base, "GET", "/admin/providers")[0] == 200
        req = urllib.request.Request(base + "/admin/providers")
        try:
            urllib.request.urlopen(req, timeout=5)
            raise AssertionError("served without the master key")
        except urllib.error.HTTPError as e:
            assert e.code == 401


def test_a_reload_rotates_the_master_key(tmp_path, mock):
    first = provider("alpha", mock, ["gpt-4o-mini"])
    with own_gateway(tmp_path, first) as (client, proc):
        base = str(client.base_url).removesuffix("/v1/")
        rewrite(tmp_path, f'master_key = "{MASTER_KEY}"', 'master_key = "${ROTATED_MASTER_KEY}"')
        # An unset variable: refused, the old key still works.
        st, body = admin(base, "POST", "/admin/reload")
        assert st == 400 and "ROTATED_MASTER_KEY" in body["error"]["message"]
        rewrite(tmp_path, 'master_key = "${ROTATED_MASTER_KEY}"', 'master_key = "rotated-master-key-456"')
        st, body = admin(base, "POST", "/admin/reload")
        assert st == 200 and body["master_key_rotated"] is True and body["restart_needed"] == [], body
        assert "rotated-master-key" not in json.dumps(body) and "rotated-master-key" not in proc.output()
        # The old key is refused at once, the new one serves everything.
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
        assert admin(base, "GET", "/admin/providers")[0] == 401
        new = openai.OpenAI(base_url=base + "/v1", api_key="rotated-master-key-456", max_retries=0)
        assert served_by(new, "alpha/gpt-4o-mini")[0] == "alpha"
        assert admin(base, "GET", "/admin/providers", key="rotated-master-key-456")[0] == 200
        # Gateway keys are not the file's: they keep working.
        st, k = admin(base, "POST", "/admin/keys", {"name": "kept"}, key="rotated-master-key-456")
        assert st == 200
        rewrite(tmp_path, 'master_key = "rotated-master-key-456"', 'master_key = "third-master-key-789"')
        st, body = admin(base, "POST", "/admin/reload", key="rotated-master-key-456")
        assert st == 200 and body["master_key_rotated"] is True
        keyed = openai.OpenAI(base_url=base + "/v1", api_key=k["key"], max_retries=0)
        assert served_by(keyed, "alpha/gpt-4o-mini")[0] == "alpha"


def test_a_provider_kept_keeps_its_health(tmp_path, mock, fault):
    first = provider("alpha", mock, ["gpt-4o-mini"], "") + """
[routing]
breaker_min_requests = 2
breaker_cooldown_ms = 60000
"""
    with own_gateway(tmp_path, first) as (client, _):
        base = str(client.base_url).removesuffix("/v1/")
        fault(fault="500", count=4)
        for _ in range(3):
            with pytest.raises(openai.APIStatusError):
                client.chat.completions.create(model="alpha/gpt-4o-mini",
                                               messages=[{"role": "user", "content": "x"}])

        def circuit():
            _, body = admin(base, "GET", "/admin/providers")
            [p] = [p for p in body["data"] if p["name"] == "alpha"]
            [d] = [d for d in p["deployments"] if d["deployment"] == "alpha/gpt-4o-mini"]
            return d["circuit"], d["requests"]

        state, requests = circuit()
        assert state == "open"
        # Another provider added, alpha's own settings as they were: its circuit stays open.
        rewrite(tmp_path, "[routing]", provider("beta", mock, ["gpt-4o"]) + "\n[routing]")
        st, body = admin(base, "POST", "/admin/reload")
        assert st == 200 and body["providers"]["unchanged"] == 1, body
        assert circuit() == (state, requests)


def test_a_stream_under_way_ends_whole_when_its_provider_is_removed(tmp_path):
    with own_mock("--tokens-per-s", "20") as slow:
        first = provider("alpha", slow, ["gpt-4o-mini"])
        with own_gateway(tmp_path, first) as (client, _):
            base = str(client.base_url).removesuffix("/v1/")
            stream = client.chat.completions.with_raw_response.create(
                model="alpha/gpt-4o-mini", stream=True, stream_options={"include_usage": True},
                messages=[{"role": "user", "content": "one two three four five six seven eight"}])
            rid = stream.headers["x-request-id"]
            chunks = stream.parse()
            first_chunk = next(iter(chunks))
            assert first_chunk.id
            rewrite(tmp_path, first, provider("beta", slow, ["gpt-4o"]))
            st, body = admin(base, "POST", "/admin/reload")
            assert st == 200 and body["providers"]["removed"] == ["alpha"]
            rest = list(chunks)
            text = "".join(c.choices[0].delta.content or "" for c in rest if c.choices)
            assert text.strip().endswith("eight")
            assert rest[-1].usage.completion_tokens > 0
            [record] = records_of(base, rid)
            assert (record["provider"], record["status"]) == ("alpha", 200)


def test_reloads_while_serving_lose_no_request(tmp_path, mock):
    """Requests keep flowing while the file is reloaded over and over: every
    one is answered by one of the two configurations, none fails."""
    a = provider("alpha", mock, ["gpt-4o-mini"]) + '\n[[routes]]\nname = "team"\ntargets = ["alpha/gpt-4o-mini"]\n'
    b = provider("beta", mock, ["gpt-4o-mini"]) + '\n[[routes]]\nname = "team"\ntargets = ["beta/gpt-4o-mini"]\n'
    with own_gateway(tmp_path, a) as (client, _):
        base = str(client.base_url).removesuffix("/v1/")
        head = (tmp_path / "polyplex.toml").read_text().split("[[providers]]")[0]
        stop = threading.Event()
        errors, seen = [], set()

        def traffic():
            while not stop.is_set():
                try:
                    seen.add(served_by(client, "team")[0])
                except Exception as e:  # noqa: BLE001 - every failure is the finding
                    errors.append(repr(e))

        workers = [threading.Thread(target=traffic) for _ in range(4)]
        for w in workers:
            w.start()
        try:
            for i in range(20):
                (tmp_path / "polyplex.toml").write_text(head + (b if i % 2 == 0 else a))
                st, body = admin(base, "POST", "/admin/reload")
                assert st == 200, body
                time.sleep(0.02)
        finally:
            stop.set()
            for w in workers:
                w.join()
        assert errors == []
        assert seen == {"alpha", "beta"}


def test_a_zero_config_gateway_has_nothing_to_reload(tmp_path):
    import os
    import subprocess
    from conftest import BIN, free_port, wait_http

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update({"POLYPLEX_LISTEN": f"127.0.0.1:{port}", "POLYPLEX_MASTER_KEY": MASTER_KEY})
    p = subprocess.Popen([BIN, "serve"], cwd=tmp_path, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/healthz")
        st, body = admin(base, "POST", "/admin/reload")
        assert st == 400 and body["error"]["code"] == "no_config_file", body
        # Not for a gateway key, nor without one.
        req = urllib.request.Request(base + "/admin/reload", method="POST")
        try:
            urllib.request.urlopen(req, timeout=5)
            raise AssertionError("reload without a key was served")
        except urllib.error.HTTPError as e:
            assert e.code == 401
    finally:
        p.terminate()
        p.wait(timeout=10)
