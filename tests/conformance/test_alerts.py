"""Webhook alerts (`[alerts]`): a key's budget thresholds and a circuit
that opens, posted as JSON to a receiver of the test's own, retried when
it fails, sent once across replicas sharing a Redis."""
import os
import subprocess
import time

import openai
import pytest

from conftest import BIN, admin, mock_openai_provider, own_gateway, receiver

WEBHOOK_TOKEN = "alert-webhook-secret-123"


def wait_for(got, n, timeout=15):
    deadline = time.time() + timeout
    while len(got) < n and time.time() < deadline:
        time.sleep(0.05)
    return got


def provider(mock, extra=""):
    return mock_openai_provider(mock) + extra


def alerts(url, extra=""):
    return f"""
[alerts]
webhook_url = "{url}"
headers = {{ authorization = "Bearer ${{ALERT_WEBHOOK_TOKEN}}" }}
{extra}"""


def spend(base, key, times):
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    costs = []
    for _ in range(times):
        r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "spend a little"}])
        costs.append(r.usage.model_extra["cost"])
    return costs


def test_a_keys_budget_thresholds_are_posted_once_each(tmp_path, mock, monkeypatch):
    monkeypatch.setenv("ALERT_WEBHOOK_TOKEN", WEBHOOK_TOKEN)
    with receiver() as (url, got):
        with own_gateway(tmp_path, provider(mock) + alerts(url, "budget_thresholds = [1.0, 0.5]")) as (client, proc):
            base = str(client.base_url).removesuffix("/v1/")
            st, k = admin(base, "POST", "/admin/keys", {"name": "alerted", "budget_usd": 1})
            [cost] = spend(base, k["key"], 1)
            # The budget set to 2.5 requests' worth: 40% spent, no alert yet.
            st, _ = admin(base, "PATCH", f"/admin/keys/{k['id']}", {"budget_usd": cost * 2.5})
            assert st == 200
            time.sleep(2.5)
            assert got == []
            spend(base, k["key"], 1)  # 80%: the 50% threshold
            wait_for(got, 1)
            spend(base, k["key"], 1)  # 120%: the 100% threshold
            wait_for(got, 2)
            with pytest.raises(openai.RateLimitError):
                spend(base, k["key"], 1)
            time.sleep(2.5)
            assert [b["threshold"] for _, b in got] == [0.5, 1.0], got
            headers, body = got[0]
            assert headers["authorization"] == f"Bearer {WEBHOOK_TOKEN}"
            assert headers["content-type"] == "application/json"
            assert body["type"] == "budget.threshold"
            assert (body["key_id"], body["key_name"]) == (k["id"], "alerted")
            assert body["budget_usd"] == pytest.approx(cost * 2.5)
            assert body["spent_usd"] >= 0.5 * body["budget_usd"]
            assert "alerted" in body["text"] and "50%" in body["text"] and body["at"].endswith("Z")
            assert body["content"] == body["text"]  # Discord's webhooks read `content`
            assert got[1][1]["spent_usd"] >= got[1][1]["budget_usd"]
            # A bigger budget: its own thresholds, alerted again as they are passed.
            st, _ = admin(base, "PATCH", f"/admin/keys/{k['id']}", {"budget_usd": cost * 5})
            spend(base, k["key"], 1)  # 4 of 5: 80%
            wait_for(got, 3)
            assert got[2][1]["threshold"] == 0.5 and got[2][1]["budget_usd"] == pytest.approx(cost * 5)
            log = proc.output()
            assert WEBHOOK_TOKEN not in log and url not in log


def test_a_graceful_shutdown_sends_what_is_queued_and_the_last_thresholds(tmp_path, mock, monkeypatch):
    monkeypatch.setenv("ALERT_WEBHOOK_TOKEN", WEBHOOK_TOKEN)

    def crossed(url, after_spend):
        """A gateway whose key passes its 50% threshold; `after_spend`
        runs before the gateway is stopped (SIGTERM)."""
        d = tmp_path / f"gw{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        with own_gateway(d, provider(mock) + alerts(url, "budget_thresholds = [0.5]")) as (client, proc):
            base = str(client.base_url).removesuffix("/v1/")
            st, k = admin(base, "POST", "/admin/keys", {"name": "last", "budget_usd": 1})
            [cost] = spend(base, k["key"], 1)
            admin(base, "PATCH", f"/admin/keys/{k['id']}", {"budget_usd": cost * 3})
            time.sleep(2.5)  # the first read learns the 33% spent
            spend(base, k["key"], 1)  # 67%: past 50%
            after_spend()
            started = time.time()
            proc.stop()
            assert proc.p.returncode == 0
            assert time.time() - started < 8
            return k

    # Stopped at once: the last requests' threshold is read at shutdown.
    with receiver() as (url, got):
        k = crossed(url, lambda: None)
        assert [(b["key_id"], b["threshold"]) for _, b in got] == [(k["id"], 0.5)]

    # Stopped while the alert waits to be tried again: it is sent.
    posts = []
    with receiver(fail_first=1, posts=posts) as (url, got):
        def failed_once():
            deadline = time.time() + 5
            while not posts and time.time() < deadline:
                time.sleep(0.02)
            assert posts, "the alert was never tried"
        k = crossed(url, failed_once)
        assert len(posts) == 2
        assert [(b["key_id"], b["threshold"]) for _, b in got] == [(k["id"], 0.5)]


def test_a_reload_replaces_the_alerts_settings(tmp_path, mock, monkeypatch):
    monkeypatch.setenv("ALERT_WEBHOOK_TOKEN", WEBHOOK_TOKEN)
    with receiver() as (url_a, got_a), receiver() as (url_b, got_b):
        first = alerts(url_a, "budget_thresholds = [0.5]")
        with own_gateway(tmp_path, provider(mock) + first) as (client, proc):
            base = str(client.base_url).removesuffix("/v1/")
            st, k = admin(base, "POST", "/admin/keys", {"name": "moved", "budget_usd": 1})
            [cost] = spend(base, k["key"], 1)
            admin(base, "PATCH", f"/admin/keys/{k['id']}", {"budget_usd": cost * 3})
            time.sleep(2.5)  # 33% spent, learned
            # Another webhook, with another header: applied at once.
            path = tmp_path / "polyplex.toml"
            second = f"""
[alerts]
webhook_url = "{url_b}"
headers = {{ x-team = "payments" }}
budget_thresholds = [0.5]
"""
            path.write_text(path.read_text().replace(first, second))
            st, body = admin(base, "POST", "/admin/reload")
            assert st == 200 and body["alerts"] == "changed" and body["restart_needed"] == [], body
            spend(base, k["key"], 1)  # 67%
            wait_for(got_b, 1)
            time.sleep(2.5)
            assert got_a == [] and len(got_b) == 1, (got_a, got_b)
            headers, alert = got_b[0]
            assert headers["x-team"] == "payments" and "authorization" not in headers
            assert alert["threshold"] == 0.5 and alert["key_id"] == k["id"]
            # Taken away: nothing is sent (a raised budget's 50% passed: 57%).
            path.write_text(path.read_text().replace(second, ""))
            st, body = admin(base, "POST", "/admin/reload")
            assert st == 200 and body["alerts"] == "removed", body
            admin(base, "PATCH", f"/admin/keys/{k['id']}", {"budget_usd": cost * 3.5})
            time.sleep(2.5)
            assert len(got_b) == 1
            # Back again: what was passed while it was off is learned, not sent.
            path.write_text(path.read_text() + second)
            st, body = admin(base, "POST", "/admin/reload")
            assert st == 200 and body["alerts"] == "added", body
            time.sleep(2.5)
            assert len(got_b) == 1 and got_a == []
            spend(base, k["key"], 1)  # 86%: still past 50% only, nothing new
            time.sleep(2.5)
            assert len(got_b) == 1
            assert WEBHOOK_TOKEN not in proc.output()


def test_a_key_nearing_its_expiry_is_posted_once(tmp_path, mock, monkeypatch):
    monkeypatch.setenv("ALERT_WEBHOOK_TOKEN", WEBHOOK_TOKEN)
    with receiver() as (url, got):
        cfg = alerts(url, 'events = ["key"]\nkey_expiry_notice_hours = 48')
        with own_gateway(tmp_path, provider(mock) + cfg) as (client, _):
            base = str(client.base_url).removesuffix("/v1/")
            time.sleep(2.5)  # the first read: nothing yet
            st, soon = admin(base, "POST", "/admin/keys", {"name": "soon", "expires_at": "1d"})
            st, later = admin(base, "POST", "/admin/keys", {"name": "later", "expires_at": "30d"})
            st, gone = admin(base, "POST", "/admin/keys", {"name": "gone", "expires_at": "1d"})
            admin(base, "DELETE", f"/admin/keys/{gone['id']}")
            wait_for(got, 1)
            time.sleep(2.5)
            assert [b["key_id"] for _, b in got] == [soon["id"]], got
            body = got[0][1]
            assert body["type"] == "key.expiring" and body["key_name"] == "soon"
            assert 86_000 < body["expires_in_s"] <= 86_400
            assert body["expires_at"].endswith("Z") and "soon" in body["text"]
            # Moved into the notice: posted; moved again: posted for the new expiry.
            admin(base, "PATCH", f"/admin/keys/{later['id']}", {"expires_at": "2d"})
            wait_for(got, 2)
            admin(base, "PATCH", f"/admin/keys/{later['id']}", {"expires_at": "3h"})
            wait_for(got, 3)
            time.sleep(2.5)
            assert [b["key_id"] for _, b in got] == [soon["id"], later["id"], later["id"]]
            assert got[2][1]["expires_in_s"] <= 3 * 3600


def breaker(cooldown_ms):
    """A circuit that opens after two failed requests, for `cooldown_ms`."""
    return f"""
[routing]
breaker_min_requests = 2
breaker_cooldown_ms = {cooldown_ms}
"""


def fail(client, times):
    """`times` chat requests the armed fault (or the open circuit) fails."""
    for _ in range(times):
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(model="openai/gpt-4o-mini",
                                           messages=[{"role": "user", "content": "x"}])


def test_a_circuit_that_opens_is_posted_once(tmp_path, mock, fault, monkeypatch):
    monkeypatch.setenv("ALERT_WEBHOOK_TOKEN", WEBHOOK_TOKEN)
    with receiver(fail_first=1) as (url, got):
        with own_gateway(tmp_path, provider(mock) + alerts(url, 'events = ["circuit"]') + breaker(60000)) as (client, _):
            fault(fault="500", count=6)
            fail(client, 5)
            # The webhook's first answer was a 500: the alert was sent again.
            wait_for(got, 1)
            time.sleep(2)
            assert len(got) == 1, got
            body = got[0][1]
            assert body["type"] == "circuit.opened"
            assert (body["provider"], body["model"], body["cooldown_ms"]) == ("openai", "gpt-4o-mini", 60000)
            assert body["last_error"] and "openai/gpt-4o-mini" in body["text"]


def test_a_circuit_that_recovers_is_posted_too(tmp_path, mock, fault, monkeypatch):
    import urllib.request

    monkeypatch.setenv("ALERT_WEBHOOK_TOKEN", WEBHOOK_TOKEN)
    with receiver() as (url, got):
        with own_gateway(tmp_path, provider(mock) + alerts(url) + breaker(1000)) as (client, _):
            fault(fault="500", count=10)
            fail(client, 3)
            wait_for(got, 1)
            urllib.request.urlopen(urllib.request.Request(mock + "/__mock/faults", method="DELETE"), timeout=5)
            time.sleep(1.2)
            probe = client.chat.completions.create(
                model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
            assert probe.choices[0].message.content
            wait_for(got, 2)
            assert [b["type"] for _, b in got] == ["circuit.opened", "circuit.closed"], got
            assert (got[1][1]["provider"], got[1][1]["model"]) == ("openai", "gpt-4o-mini")


def test_alert_settings_are_checked(tmp_path):
    for bad, says in [
        ('[alerts]\nwebhook_url = "ftp://x"\n', "alerts.webhook_url"),
        ('[alerts]\nwebhook_url = "http://127.0.0.1:9/h"\nbudget_thresholds = [0.5, 80]\n', "alerts.budget_thresholds[1]"),
        ('[alerts]\nwebhook_url = "http://127.0.0.1:9/h"\nevents = ["budget", "outage"]\n', "alerts.events[1]"),
        ('[alerts]\nwebhook_url = "http://127.0.0.1:9/h"\nkey_expiry_notice_hours = 0\n', "alerts.key_expiry_notice_hours"),
        ('[alerts]\nwebhook_url = "http://127.0.0.1:9/h"\nretries = 3\n', "retries"),
        ('[alerts]\nwebhook_url = "${ALERTS_TEST_UNSET_URL}"\n', "ALERTS_TEST_UNSET_URL"),
    ]:
        cfg = tmp_path / "polyplex.toml"
        cfg.write_text(bad)
        r = subprocess.run([BIN, "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and says in r.stderr, (bad, r.stderr)


REDIS = os.environ.get("POLYPLEX_TEST_REDIS")


@pytest.mark.skipif(not REDIS, reason="POLYPLEX_TEST_REDIS not set")
def test_replicas_sharing_redis_send_each_budget_alert_once(tmp_path, mock, monkeypatch):
    from test_replicas_via_openai_sdk import two_replicas

    monkeypatch.setenv("ALERT_WEBHOOK_TOKEN", WEBHOOK_TOKEN)
    with receiver() as (url, got):
        with two_replicas(tmp_path, provider(mock) + alerts(url, "budget_thresholds = [0.5]")) as (a, b):
            st, k = admin(a, "POST", "/admin/keys", {"name": "shared-alert", "budget_usd": 1})
            [cost] = spend(a, k["key"], 1)
            admin(a, "PATCH", f"/admin/keys/{k['id']}", {"budget_usd": cost * 3})
            spend(b, k["key"], 1)  # two of three, across both replicas: 67%
            wait_for(got, 1)
            time.sleep(5)  # both replicas have read the store's spend by now
            assert [body["key_id"] for _, body in got] == [k["id"]], got
