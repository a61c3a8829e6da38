"""Gateway keys through the official `openai` SDK: a key made with the admin
API (and one with the CLI) serves requests; each refusal raises the exception
class OpenAI's own API would cause, with its code; usage is recorded per key.
"""
import json
import subprocess
import time
import urllib.request

import openai
import pytest
from openai import OpenAI

from conftest import BIN, MASTER_KEY, admin


def new_key(gateway, **settings):
    status, k = admin(gateway, "POST", "/admin/keys", {"name": "conformance", **settings})
    assert status == 200, k
    assert k["key"].startswith("plx-")
    return k


def sdk(gateway, key):
    return OpenAI(base_url=gateway + "/v1", api_key=key, max_retries=0)


def hello(client, model="gpt-4o-mini", **kw):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello there"}], **kw
    )


def test_a_gateway_key_serves_and_is_limited_to_its_models(gateway):
    k = new_key(gateway, models=["gpt-4o-mini"])
    c = sdk(gateway, k["key"])
    r = hello(c)
    assert r.choices[0].message.content == "hello there"
    assert r.usage.total_tokens > 0
    with pytest.raises(openai.PermissionDeniedError) as e:
        hello(c, model="gpt-4o")
    assert e.value.code == "model_not_allowed"
    # The model itself, and `auto` (which chooses among what the key may use).
    assert [m.id for m in c.models.list()] == ["openai/gpt-4o-mini", "auto"]
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-4o")
    # Streams too.
    chunks = list(hello(c, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.total_tokens > 0


def test_a_keys_models_are_the_deployments_it_may_reach(gateway):
    # Two providers serve gpt-4o here (openai and slow); the key may use one.
    k = new_key(gateway, models=["openai/gpt-4o", "anthropic/*"])
    c = sdk(gateway, k["key"])
    for name in ["gpt-4o", "gpt-4o:floor", "gpt-4o:nitro", "openai/gpt-4o:floor"]:
        for _ in range(3):
            raw = c.chat.completions.with_raw_response.create(
                model=name, messages=[{"role": "user", "content": "hi"}])
            assert raw.headers["x-polyplex-provider"] == "openai", name
    # `auto` chooses among the allowed deployments only.
    raw = c.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-polyplex-provider"] in ("openai", "anthropic")
    # What it does not reach stays refused, a fallback too (naming which).
    for name in ["slow/gpt-4o", "gpt-4o-mini", "google/gemini-2.5-flash"]:
        with pytest.raises(openai.PermissionDeniedError) as e:
            hello(c, model=name)
        assert e.value.code == "model_not_allowed" and name in e.value.message
    with pytest.raises(openai.PermissionDeniedError) as e:
        hello(c, model="gpt-4o", extra_body={"models": ["claude-sonnet-4-5", "gpt-4o-mini"]})
    assert e.value.body["param"] == "models[1]"
    # The listing names what it may request.
    ids = [m.id for m in c.models.list()]
    assert "openai/gpt-4o" in ids and "auto" in ids
    assert "slow/gpt-4o" not in ids and "openai/gpt-4o-mini" not in ids
    assert all(i.startswith(("openai/", "anthropic/")) or i == "auto" for i in ids)
    assert c.models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-4o-mini")
    # A key limited to embeddings has no chat model for `auto`.
    k = new_key(gateway, models=["openai/text-embedding-3-small"])
    with pytest.raises(openai.NotFoundError):
        hello(sdk(gateway, k["key"]), model="auto")
    k = new_key(gateway, models=["mistral/*"])  # no such provider here
    with pytest.raises(openai.PermissionDeniedError):
        hello(sdk(gateway, k["key"]), model="auto")


def test_revoked_and_unknown_keys_raise_authentication_error(gateway):
    k = new_key(gateway)
    c = sdk(gateway, k["key"])
    hello(c)
    status, _ = admin(gateway, "DELETE", f"/admin/keys/{k['id']}")
    assert status == 200
    with pytest.raises(openai.AuthenticationError):
        hello(c)
    with pytest.raises(openai.AuthenticationError):
        hello(sdk(gateway, "plx-made-up"))


def test_requests_per_minute_raise_rate_limit_error_with_headers(gateway):
    k = new_key(gateway, rpm=2)
    c = sdk(gateway, k["key"])
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    assert raw.headers["x-ratelimit-reset-requests"]
    hello(c)
    with pytest.raises(openai.RateLimitError) as e:
        hello(c)
    assert e.value.code == "rate_limit_exceeded"
    assert int(e.value.response.headers["retry-after"]) >= 1
    # The 429 says where the limits stand, as OpenAI's does.
    assert e.value.response.headers["x-ratelimit-limit-requests"] == "2"
    assert e.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert e.value.response.headers["x-ratelimit-reset-requests"]


def test_each_end_user_of_a_key_has_its_own_requests_per_minute(gateway, gateway_dir):
    """`user_rpm`: each end user a request names (`user`, else
    `safety_identifier`) may make that many requests a minute with the
    key; requests naming none are held by the key's own limits only."""
    k = new_key(gateway, user_rpm=2)
    assert k["user_rpm"] == 2
    c = sdk(gateway, k["key"])
    hello(c, user="ann")
    c.embeddings.create(model="text-embedding-3-small", input="hi", user="ann")
    with pytest.raises(openai.RateLimitError) as e:
        hello(c, safety_identifier="ann")
    assert e.value.code == "rate_limit_exceeded" and "end user 'ann'" in e.value.message
    assert 1 <= int(e.value.response.headers["retry-after"]) <= 60
    with pytest.raises(openai.RateLimitError):
        c.responses.create(model="gpt-4o-mini", input="hi", user="ann")
    hello(c, user="bob")
    for _ in range(3):
        hello(c)
    status, rep = admin(gateway, "GET", f"/admin/usage?by=user&key={k['id']}")
    assert {r["user"]: (r["requests"], r["errors"]) for r in rep["data"]}["ann"] == (4, 2)
    status, got = admin(gateway, "PATCH", f"/admin/keys/{k['id']}", {"user_rpm": None})
    assert status == 200 and got["user_rpm"] is None
    hello(c, user="ann")
    status, err = admin(gateway, "POST", "/admin/keys", {"name": "x", "user_rpm": -1})
    assert status == 400 and err["error"]["param"] == "user_rpm"
    # `user_tpm`: an end user's tokens of the last minute, counted when
    # each answer is in (streams too).
    t = new_key(gateway, user_tpm=5)
    ct = sdk(gateway, t["key"])
    list(hello(ct, user="cat", stream=True, stream_options={"include_usage": True}))
    with pytest.raises(openai.RateLimitError) as e:
        hello(ct, user="cat")
    assert e.value.code == "rate_limit_exceeded" and "tokens per min" in e.value.message
    hello(ct, user="dan")
    env = {"POLYPLEX_MASTER_KEY": MASTER_KEY, "MOCK_PROVIDER_KEY": "x", "MOCK_AWS_SECRET": "x"}
    out = subprocess.run([BIN, "keys", "create", "per-user", "--user-rpm", "30", "--user-tpm", "9000", "--json"],
                         cwd=gateway_dir, capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    made = json.loads(out.stdout)
    assert (made["user_rpm"], made["user_tpm"]) == (30, 9000)


def test_each_end_user_of_a_key_has_its_own_budget(gateway):
    """`user_budget_usd`: what each end user of the key may spend (in the
    key's budget period with `budget_reset`); one that spent it gets
    `insufficient_quota` naming it, the others go on."""
    k = new_key(gateway, user_budget_usd=0.000001, budget_reset="daily")
    assert k["user_budget_usd"] == 0.000001
    c = sdk(gateway, k["key"])
    hello(c, user="gus")
    with pytest.raises(openai.RateLimitError) as e:
        hello(c, user="gus")
    assert e.value.code == "insufficient_quota"
    assert "end user 'gus'" in e.value.message and "daily budget" in e.value.message
    with pytest.raises(openai.RateLimitError):
        c.embeddings.create(model="text-embedding-3-small", input="hi", user="gus")
    hello(c, user="hal")
    hello(c)
    hello(c)
    status, got = admin(gateway, "PATCH", f"/admin/keys/{k['id']}", {"user_budget_usd": 1})
    assert status == 200 and got["user_budget_usd"] == 1
    hello(c, user="gus")
    status, err = admin(gateway, "PATCH", f"/admin/keys/{k['id']}", {"user_budget_usd": "lots"})
    assert status == 400 and err["error"]["param"] == "user_budget_usd"


def test_a_spent_budget_raises_insufficient_quota(gateway):
    k = new_key(gateway, budget_usd=0.0000001)
    c = sdk(gateway, k["key"])
    hello(c)  # admitted with nothing spent; its cost uses the budget up
    with pytest.raises(openai.RateLimitError) as e:
        hello(c)
    assert e.value.code == "insufficient_quota"
    assert e.value.type == "insufficient_quota"
    assert "has spent $0.0000" in e.value.message and "of its $0.0000001 budget" in e.value.message
    # A spent budget does not come back in a second: no retry-after, and the
    # SDK told not to retry, so one with its default retries raises at once.
    assert "retry-after" not in e.value.response.headers
    assert e.value.response.headers["x-should-retry"] == "false"
    retrying = OpenAI(base_url=gateway + "/v1", api_key=k["key"], max_retries=2)
    with pytest.raises(openai.RateLimitError):
        hello(retrying)
    status, rows = admin(gateway, "GET", "/admin/usage?by=key")
    assert status == 200, rows
    mine = [r for r in rows["data"] if r["key"] == k["id"]]
    assert mine and mine[0]["requests"] == 3 and mine[0]["errors"] == 2, mine


def test_a_budget_that_starts_again_each_month(gateway, gateway_dir):
    """`budget_reset` (daily, weekly, monthly; UTC): the budget is the
    period's. The key says when it starts again; a spent one is refused
    with insufficient_quota saying so; all-time spend stays in `spent_usd`."""
    import datetime

    k = new_key(gateway, budget_usd=0.0000001, budget_reset="monthly")
    now = datetime.datetime.now(datetime.timezone.utc)
    first = datetime.datetime(now.year + (now.month == 12), now.month % 12 + 1, 1,
                              tzinfo=datetime.timezone.utc)
    assert (k["budget_reset"], k["budget_resets_at"]) == ("monthly", int(first.timestamp()))
    assert k["budget_spent_usd"] == 0
    c = sdk(gateway, k["key"])
    hello(c)
    with pytest.raises(openai.RateLimitError) as e:
        hello(c)
    assert e.value.code == "insufficient_quota"
    assert "monthly budget" in e.value.message
    assert f"starts again at {first.strftime('%Y-%m-%dT%H:%M:%SZ')}" in e.value.message
    status, got = admin(gateway, "GET", f"/admin/keys/{k['id']}")
    assert got["budget_spent_usd"] > 0 and got["budget_spent_usd"] == got["spent_usd"]
    # Another period length: this period's spend is summed from the usage
    # records, so the key stays spent; without a reset it counts all time.
    for reset in ("daily", None):
        status, got = admin(gateway, "PATCH", f"/admin/keys/{k['id']}", {"budget_reset": reset})
        assert status == 200 and got["budget_reset"] == reset, got
        assert got["budget_spent_usd"] > 0
        with pytest.raises(openai.RateLimitError):
            hello(c)
    # A bigger budget lets it in again.
    admin(gateway, "PATCH", f"/admin/keys/{k['id']}", {"budget_usd": 5, "budget_reset": "weekly"})
    hello(c)
    status, err = admin(gateway, "POST", "/admin/keys", {"name": "x", "budget_reset": "yearly"})
    assert status == 400 and err["error"]["param"] == "budget_reset", err
    out = subprocess.run(
        [BIN, "keys", "create", "--name", "weekly", "--budget-usd", "2", "--budget-reset", "weekly", "--json"],
        cwd=gateway_dir, capture_output=True, text=True, timeout=30,
        env={"POLYPLEX_MASTER_KEY": MASTER_KEY, "MOCK_PROVIDER_KEY": "x", "MOCK_AWS_SECRET": "x"})
    assert out.returncode == 0, out.stderr
    made = json.loads(out.stdout)
    assert (made["budget_usd"], made["budget_reset"]) == (2, "weekly")


def test_admin_api_needs_the_master_key(gateway):
    k = new_key(gateway)
    status, body = admin(gateway, "GET", "/admin/keys", key=k["key"])
    assert status == 403, body
    status, body = admin(gateway, "GET", "/admin/keys", key="wrong")
    assert status == 401, body
    status, listed = admin(gateway, "GET", "/admin/keys")
    assert status == 200
    assert k["key"] not in json.dumps(listed)
    status, err = admin(gateway, "POST", "/admin/keys", {"name": "x", "budget_usd": "lots"})
    assert status == 400 and err["error"]["param"] == "budget_usd"


def test_usage_is_recorded_per_key_and_reported(gateway):
    k = new_key(gateway)
    c = sdk(gateway, k["key"])
    for _ in range(3):
        hello(c)
    status, rep = admin(gateway, "GET", "/admin/usage?by=key")
    assert status == 200, rep
    row = next(r for r in rep["data"] if r["key"] == k["id"])
    assert row["requests"] == 3
    assert row["prompt_tokens"] > 0 and row["cost_usd"] > 0
    status, one = admin(gateway, "GET", f"/admin/keys/{k['id']}")
    assert abs(one["spent_usd"] - row["cost_usd"]) < 1e-9


def test_usage_is_reported_by_the_end_user_a_request_names(gateway, gateway_dir):
    """`user` (or its successor `safety_identifier`) on any endpoint puts
    the request's usage under that end user: `by=user` in the admin API
    and the CLI."""
    import uuid

    alice, bob = f"alice-{uuid.uuid4().hex[:8]}", f"bob-{uuid.uuid4().hex[:8]}"
    c = sdk(gateway, MASTER_KEY)
    hello(c, user=alice)
    list(hello(c, model="anthropic/claude-haiku-4-5", user=alice, stream=True))
    c.embeddings.create(model="text-embedding-3-small", input="hi", user=alice)
    c.completions.create(model="gpt-4o-mini", prompt="hi", user=bob)
    hello(c, safety_identifier=bob)
    c.responses.create(model="gpt-4o-mini", input="hi", safety_identifier=bob)
    # A failed request is the user's too.
    with pytest.raises(openai.BadRequestError):
        hello(c, user=bob, temperature=5)
    status, rep = admin(gateway, "GET", "/admin/usage?by=user")
    assert status == 200, rep
    rows = {r["user"]: r for r in rep["data"]}
    assert (rows[alice]["requests"], rows[alice]["errors"]) == (3, 0)
    assert (rows[bob]["requests"], rows[bob]["errors"]) == (4, 1)
    assert rows[alice]["cost_usd"] > 0 and rows[alice]["prompt_tokens"] > 0
    out = subprocess.run(
        [BIN, "usage", "--by", "user"], cwd=gateway_dir, capture_output=True, text=True, timeout=30,
        env={"POLYPLEX_MASTER_KEY": MASTER_KEY, "MOCK_PROVIDER_KEY": "x", "MOCK_AWS_SECRET": "x"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("USER") and alice in out.stdout and bob in out.stdout
    # One key's users: a key's requests only.
    k = new_key(gateway)
    hello(sdk(gateway, k["key"]), user=alice)
    status, rep = admin(gateway, "GET", f"/admin/usage?by=user&key={k['id']}")
    assert [(r["user"], r["requests"]) for r in rep["data"]] == [(alice, 1)]
    out = subprocess.run(
        [BIN, "usage", "--by", "user", "--key", k["id"], "--json"], cwd=gateway_dir, capture_output=True,
        text=True, timeout=30, env={"POLYPLEX_MASTER_KEY": MASTER_KEY, "MOCK_PROVIDER_KEY": "x", "MOCK_AWS_SECRET": "x"})
    assert [r["user"] for r in json.loads(out.stdout)["data"]] == [alice], out.stdout + out.stderr


def last_upstream_body(mock, path):
    with urllib.request.urlopen(mock + "/__mock/requests", timeout=5) as r:
        seen = json.loads(r.read())
    return next(r for r in reversed(seen) if r["path"] == path)["body"]


def test_usage_is_reported_by_the_metadata_a_request_carries(gateway, gateway_dir, mock):
    """`metadata` (the SDK's own parameter; `extra_body` where an endpoint
    lacks it) and the `x-polyplex-metadata` header tag a request's usage on
    every provider: `by=metadata.<key>` groups by a key's values and
    `metadata.<key>=<value>` picks the requests tagged so, in the admin API
    and the CLI. OpenAI is sent `metadata` only with `store: true`."""
    import uuid

    team = f"search-{uuid.uuid4().hex[:8]}"
    c = sdk(gateway, MASTER_KEY)
    hello(c, model="openai/gpt-4o-mini", metadata={"team": team, "feature": "qa"})
    assert "metadata" not in last_upstream_body(mock, "/v1/chat/completions")
    hello(c, model="openai/gpt-4o-mini", metadata={"team": team, "feature": "qa"}, store=True)
    assert last_upstream_body(mock, "/v1/chat/completions")["metadata"] == {"team": team, "feature": "qa"}
    chunks = list(hello(c, model="anthropic/claude-haiku-4-5", metadata={"team": team, "feature": "chat"},
                        stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.total_tokens > 0
    # The header tags any endpoint; the body's pairs win a key both name.
    c.embeddings.create(model="text-embedding-3-small", input="hi",
                        extra_headers={"x-polyplex-metadata": json.dumps({"team": team, "feature": "embed"})})
    hello(c, metadata={"feature": "qa"}, extra_headers={"x-polyplex-metadata": json.dumps({"team": team, "feature": "x"})})
    r = c.responses.create(model="gpt-4o-mini", input="hi", metadata={"team": team, "feature": "chat"})
    assert r.metadata == {"team": team, "feature": "chat"}
    # A refused request is the team's too; bad metadata is refused by name.
    with pytest.raises(openai.BadRequestError):
        hello(c, temperature=5, metadata={"team": team, "feature": "qa"})
    with pytest.raises(openai.BadRequestError):
        c.responses.create(model="gpt-4o-mini", input="hi", background=True, metadata={"team": team, "feature": "qa"})
    with pytest.raises(openai.BadRequestError) as e:
        hello(c, metadata={"team": 7})
    assert e.value.param == "metadata.team"
    with pytest.raises(openai.BadRequestError) as e:
        hello(c, metadata={f"k{i}": "v" for i in range(17)})
    assert e.value.param == "metadata"
    with pytest.raises(openai.BadRequestError) as e:
        hello(c, extra_headers={"x-polyplex-metadata": "team=ads"})
    assert e.value.param == "x-polyplex-metadata"

    status, rep = admin(gateway, "GET", f"/admin/usage?by=metadata.feature&metadata.team={team}")
    assert status == 200, rep
    assert rep["by"] == "metadata.feature"
    rows = {r["metadata.feature"]: (r["requests"], r["errors"]) for r in rep["data"]}
    assert rows == {"qa": (5, 2), "chat": (2, 0), "embed": (1, 0)}, rows
    status, rep = admin(gateway, "GET", "/admin/usage?by=metadata.team")
    assert {r["metadata.team"]: r["requests"] for r in rep["data"]}[team] == 8
    status, rep = admin(gateway, "GET", f"/admin/usage?by=provider&metadata.team={team}&metadata.feature=chat")
    assert sorted(r["provider"] for r in rep["data"]) == ["anthropic", "openai"]
    assert all(r["cost_usd"] > 0 for r in rep["data"])
    # By the hour, and within a window (`until` not included).
    status, rep = admin(gateway, "GET", f"/admin/usage?by=hour&metadata.team={team}")
    assert sum(r["requests"] for r in rep["data"]) == 8
    assert all(len(r["hour"]) == 17 and r["hour"].endswith(":00Z") for r in rep["data"])
    status, rep = admin(gateway, "GET", f"/admin/usage?by=endpoint&metadata.team={team}")
    assert {r["endpoint"]: r["requests"] for r in rep["data"]} == {
        "chat.completions": 5, "embeddings": 1, "responses": 2}
    status, rep = admin(gateway, "GET", f"/admin/usage?by=model&metadata.team={team}&until=2020-01-01")
    assert status == 200 and rep["data"] == [] and rep["until"] == 1577836800
    status, rep = admin(gateway, "GET", "/admin/usage?until=someday")
    assert status == 400 and rep["error"]["param"] == "until"
    status, rep = admin(gateway, "GET", "/admin/usage?by=metadata.")
    assert status == 400 and rep["error"]["param"] == "by"
    out = subprocess.run(
        [BIN, "usage", "--by", "metadata.feature", "--metadata", f"team={team}", "--json"], cwd=gateway_dir,
        capture_output=True, text=True, timeout=30,
        env={"POLYPLEX_MASTER_KEY": MASTER_KEY, "MOCK_PROVIDER_KEY": "x", "MOCK_AWS_SECRET": "x"})
    assert out.returncode == 0, out.stderr
    assert {r["metadata.feature"] for r in json.loads(out.stdout)["data"]} == {"qa", "chat", "embed"}


def test_a_keys_metadata_tags_every_request_it_makes(gateway, gateway_dir):
    """A key's `metadata` (admin API, `polyplex keys create --metadata`)
    tags every request made with it, over the request's own pairs: a client
    cannot move its spend to another team."""
    import uuid

    team, other = f"team-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    k = new_key(gateway, metadata={"team": team})
    assert k["metadata"] == {"team": team}
    status, got = admin(gateway, "GET", f"/admin/keys/{k['id']}")
    assert got["metadata"] == {"team": team}
    c = sdk(gateway, k["key"])
    hello(c)
    hello(c, model="anthropic/claude-haiku-4-5", metadata={"team": other, "feature": "qa"})
    c.embeddings.create(model="text-embedding-3-small", input="hi",
                        extra_headers={"x-polyplex-metadata": json.dumps({"team": other})})
    status, rep = admin(gateway, "GET", f"/admin/usage?by=metadata.team&key={k['id']}")
    assert [(r["metadata.team"], r["requests"]) for r in rep["data"]] == [(team, 3)]
    status, rep = admin(gateway, "GET", f"/admin/usage?by=metadata.feature&metadata.team={team}")
    assert sorted((r["metadata.feature"] or "-", r["requests"]) for r in rep["data"]) == [("-", 2), ("qa", 1)]
    # Changed and cleared by PATCH; bad metadata is refused by name.
    status, got = admin(gateway, "PATCH", f"/admin/keys/{k['id']}", {"metadata": {"team": other}})
    assert status == 200 and got["metadata"] == {"team": other}
    status, got = admin(gateway, "PATCH", f"/admin/keys/{k['id']}", {"metadata": None})
    assert status == 200 and got["metadata"] is None
    status, err = admin(gateway, "POST", "/admin/keys", {"name": "x", "metadata": {"team": 1}})
    assert status == 400 and err["error"]["param"] == "metadata.team"
    status, err = admin(gateway, "POST", "/admin/keys", {"name": "x", "metadata": ["team"]})
    assert status == 400 and err["error"]["param"] == "metadata"
    env = {"POLYPLEX_MASTER_KEY": MASTER_KEY, "MOCK_PROVIDER_KEY": "x", "MOCK_AWS_SECRET": "x"}
    out = subprocess.run([BIN, "keys", "create", "cli-tagged", "--metadata", f"team={team}", "--metadata",
                          "env=ci", "--json"], cwd=gateway_dir, capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["metadata"] == {"team": team, "env": "ci"}
    out = subprocess.run([BIN, "keys", "list"], cwd=gateway_dir, capture_output=True, text=True, timeout=30,
                         env=env)
    line = next(l for l in out.stdout.splitlines() if "cli-tagged" in l)
    assert line.endswith(f"all models team={team},env=ci"), line
    out = subprocess.run([BIN, "keys", "create", "cli-bad", "--metadata", "team"], cwd=gateway_dir,
                         capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode != 0 and "KEY=VALUE" in out.stderr


def test_a_requests_usage_record_is_found_by_its_request_id(gateway, gateway_dir):
    """The `x-request-id` a client was answered with finds that request's
    usage record (`GET /admin/usage/records/{id}`, `polyplex usage
    --request`); `GET /admin/usage/records` pages through them all, newest
    first, picked by key and metadata."""
    k = new_key(gateway, metadata={"team": "records"})
    c = sdk(gateway, k["key"])
    raw = c.chat.completions.with_raw_response.create(
        model="anthropic/claude-haiku-4-5", messages=[{"role": "user", "content": "hello there"}],
        user="rec-user", metadata={"feature": "lookup"})
    rid = raw.headers["x-request-id"]
    usage = raw.parse().usage
    status, page = admin(gateway, "GET", f"/admin/usage/records/{rid}")
    assert status == 200, page
    [r] = page["data"]
    assert (r["request_id"], r["key_id"], r["provider"], r["status"]) == (rid, k["id"], "anthropic", 200)
    assert (r["prompt_tokens"], r["completion_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert r["cost_usd"] == pytest.approx(usage.cost) and r["cost_usd"] > 0
    assert r["user"] == "rec-user" and r["metadata"] == {"team": "records", "feature": "lookup"}
    assert r["latency_ms"] >= 0 and r["endpoint"] == "chat.completions" and r["stream"] is False
    with pytest.raises(openai.BadRequestError):
        hello(c, temperature=9)
    list(hello(c, stream=True))
    status, page = admin(gateway, "GET", f"/admin/usage/records?key={k['id']}&limit=2")
    assert [r["status"] for r in page["data"]] == [200, 400] and page["data"][0]["stream"] is True
    assert page["has_more"] and page["next"]
    status, rest = admin(gateway, "GET", f"/admin/usage/records?key={k['id']}&limit=2&after={page['next']}")
    assert [r["request_id"] for r in rest["data"]] == [rid] and not rest["has_more"]
    status, tagged = admin(gateway, "GET", "/admin/usage/records?metadata.feature=lookup")
    assert rid in [r["request_id"] for r in tagged["data"]]
    status, err = admin(gateway, "GET", "/admin/usage/records/req_never_made")
    assert status == 404
    status, err = admin(gateway, "GET", "/admin/usage/records?limit=5000")
    assert status == 400 and err["error"]["param"] == "limit"
    # The admin API's: a gateway key may not read them.
    status, err = admin(gateway, "GET", f"/admin/usage/records/{rid}", key=k["key"])
    assert status in (401, 403), err
    env = {"POLYPLEX_MASTER_KEY": MASTER_KEY, "MOCK_PROVIDER_KEY": "x", "MOCK_AWS_SECRET": "x"}
    out = subprocess.run([BIN, "usage", "--request", rid, "--json"], cwd=gateway_dir, capture_output=True,
                         text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    assert [r["request_id"] for r in json.loads(out.stdout)["data"]] == [rid]
    out = subprocess.run([BIN, "usage", "--records", "--key", k["id"], "--limit", "5"], cwd=gateway_dir,
                         capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("TIME") and rid in out.stdout and "anthropic/claude-haiku-4-5" in out.stdout


def test_usage_report_counts_prompt_cache_reads_and_writes(gateway):
    """A key's prompt-cache writes and reads (Claude, through `cache_control`)
    are in its usage rows and the report's total, beside the prompt tokens
    they are part of."""
    k = new_key(gateway)
    c = sdk(gateway, k["key"])
    system = {"role": "system", "content": [{"type": "text", "text": "usage report " + "house rules " * 60,
                                             "cache_control": {"type": "ephemeral"}}]}
    answers = [c.chat.completions.create(model="anthropic/claude-sonnet-4-5",
                                         messages=[system, {"role": "user", "content": q}]) for q in ("a", "b")]
    written = answers[0].usage.prompt_tokens_details.cache_write_tokens
    assert written > 60 and answers[1].usage.prompt_tokens_details.cached_tokens == written
    status, rep = admin(gateway, "GET", "/admin/usage?by=key")
    assert status == 200, rep
    row = next(r for r in rep["data"] if r["key"] == k["id"])
    assert (row["requests"], row["cache_write_tokens"], row["cached_tokens"]) == (2, written, written)
    assert row["prompt_tokens"] == sum(a.usage.prompt_tokens for a in answers)
    assert rep["total"]["cache_write_tokens"] >= written


def test_cli_keys_and_usage_share_the_servers_store(gateway, gateway_dir):
    out = subprocess.run(
        [BIN, "keys", "create", "--name", "from-cli", "--models", "gpt-4o", "--json"],
        cwd=gateway_dir, capture_output=True, text=True, timeout=30,
        env={"POLYPLEX_MASTER_KEY": MASTER_KEY, "MOCK_PROVIDER_KEY": "x", "MOCK_AWS_SECRET": "x", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    k = json.loads(out.stdout)
    # Made by the CLI in the store: the running gateway takes it at once.
    r = hello(sdk(gateway, k["key"]), model="gpt-4o")
    assert r.choices[0].message.content
    listed = subprocess.run(
        [BIN, "keys", "list"], cwd=gateway_dir, capture_output=True, text=True, timeout=30,
        env={"POLYPLEX_MASTER_KEY": MASTER_KEY, "MOCK_PROVIDER_KEY": "x", "MOCK_AWS_SECRET": "x"},
    )
    assert listed.returncode == 0, listed.stderr
    assert k["id"] in listed.stdout and k["key"] not in listed.stdout
    admin(gateway, "GET", "/admin/usage")  # writes what the gateway holds
    usage = subprocess.run(
        [BIN, "usage", "--by", "key", "--json"], cwd=gateway_dir, capture_output=True,
        text=True, timeout=30, env={"POLYPLEX_MASTER_KEY": MASTER_KEY, "MOCK_PROVIDER_KEY": "x", "MOCK_AWS_SECRET": "x"},
    )
    assert usage.returncode == 0, usage.stderr
    rows = json.loads(usage.stdout)["data"]
    assert any(r["key"] == k["id"] and r["requests"] == 1 for r in rows)
    table = subprocess.run(
        [BIN, "usage", "--by", "key"], cwd=gateway_dir, capture_output=True,
        text=True, timeout=30, env={"POLYPLEX_MASTER_KEY": MASTER_KEY, "MOCK_PROVIDER_KEY": "x", "MOCK_AWS_SECRET": "x"},
    )
    mine = next(l for l in table.stdout.splitlines() if l.startswith(k["id"]))
    # The cost in plain decimals (JSON would write 0.00003 as 3e-05).
    cost = mine.split()[-1]
    assert "e" not in cost and float(cost) == next(r["cost_usd"] for r in rows if r["key"] == k["id"]), mine
    revoked = subprocess.run(
        [BIN, "keys", "revoke", k["id"]], cwd=gateway_dir, capture_output=True, text=True,
        timeout=30, env={"POLYPLEX_MASTER_KEY": MASTER_KEY, "MOCK_PROVIDER_KEY": "x", "MOCK_AWS_SECRET": "x"},
    )
    assert revoked.returncode == 0, revoked.stderr


def test_cli_takes_the_name_as_an_argument_and_revokes_by_the_key_itself(gateway, gateway_dir):
    env = {"POLYPLEX_MASTER_KEY": MASTER_KEY, "MOCK_PROVIDER_KEY": "x", "MOCK_AWS_SECRET": "x"}
    run = lambda *args: subprocess.run([BIN, *args], cwd=gateway_dir, capture_output=True, text=True,
                                       timeout=30, env=env)
    out = run("keys", "create", "ci-bot", "--json")
    assert out.returncode == 0, out.stderr
    k = json.loads(out.stdout)
    assert k["name"] == "ci-bot"
    assert hello(sdk(gateway, k["key"]), model="gpt-4o").choices[0].message.content
    assert run("keys", "create").returncode != 0  # a name is required
    revoked = run("keys", "revoke", k["key"])
    assert revoked.returncode == 0, revoked.stderr
    assert k["id"] in revoked.stdout and k["key"] not in revoked.stdout
    # The running gateway stops taking it within seconds (it rereads the store).
    deadline = time.time() + 15
    while True:
        try:
            hello(sdk(gateway, k["key"]), model="gpt-4o")
        except openai.AuthenticationError:
            break
        assert time.time() < deadline, "the revoked key was still served"
        time.sleep(0.2)
    assert run("keys", "revoke", "plx-not-a-key").returncode != 0


def test_keys_update_changes_a_key_from_the_cli(gateway, gateway_dir):
    """`polyplex keys update ID|plx-... --setting value|none`: changes what
    is given, clears what says `none`; the running gateway takes it within
    its key reload."""
    k = new_key(gateway, rpm=100, budget_usd=5)
    env = {"POLYPLEX_MASTER_KEY": MASTER_KEY, "MOCK_PROVIDER_KEY": "x", "MOCK_AWS_SECRET": "x"}

    def update(*args):
        out = subprocess.run([BIN, "keys", "update", *args, "--json"], cwd=gateway_dir,
                             capture_output=True, text=True, timeout=30, env=env)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    row = update(k["id"], "--models", "gpt-4o", "--rpm", "none", "--tpm", "5000", "--metadata", "team=cli")
    assert (row["models"], row["rpm"], row["tpm"], row["budget_usd"]) == (["gpt-4o"], None, 5000, 5)
    assert row["metadata"] == {"team": "cli"} and "key" not in row
    c = sdk(gateway, k["key"])
    deadline = time.time() + 15
    while True:
        try:
            hello(c)  # gpt-4o-mini: no longer on its list
        except openai.PermissionDeniedError:
            break
        assert time.time() < deadline, "the running gateway did not take the change"
        time.sleep(0.2)
    # By the key itself; `none` opens the models again.
    row = update(k["key"], "--models", "none", "--budget-reset", "daily")
    assert row["models"] is None and row["budget_reset"] == "daily" and row["id"] == k["id"]
    bad = subprocess.run([BIN, "keys", "update", k["id"], "--rpm", "lots"], cwd=gateway_dir,
                         capture_output=True, text=True, timeout=30, env=env)
    assert bad.returncode != 0 and "--rpm" in bad.stderr
