"""A store that stops taking usage records: the gateway keeps serving,
holds the records, writes them when the store answers again, and — stopped
before it does — spools them to a file the next start writes. No record
and no key's spend is lost.

The store is the gateway's SQLite file; it "fails" while its usage table is
renamed away (every INSERT fails at once), and recovers when it is renamed
back."""
import json
import sqlite3
import subprocess
import time
import urllib.request

import openai

from conftest import BIN, MASTER_KEY, admin, mock_openai_provider, own_gateway, receiver

MSGS = [{"role": "user", "content": "keep this record"}]


def table(db, frm, to):
    with sqlite3.connect(db, timeout=10) as c:
        c.execute(f"ALTER TABLE {frm} RENAME TO {to}")


def held(base):
    with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("polyplex_usage_records_held "):
                return float(line.split()[1])
    return None


def until(what, timeout=15):
    deadline = time.time() + timeout
    while True:
        got = what()
        if got:
            return got
        assert time.time() < deadline, f"timed out waiting: {what}"
        time.sleep(0.1)


def serve(client, key, n):
    """`n` requests with `key`: their request ids and costs."""
    c = openai.OpenAI(base_url=str(client.base_url), api_key=key, max_retries=0)
    out = []
    for _ in range(n):
        r = c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSGS)
        out.append((r.headers["x-request-id"], r.parse().usage.model_extra["cost"]))
    return out


def stored(base, rid):
    st, out = admin(base, "GET", f"/admin/usage/records/{rid}")
    return st == 200 and len(out["data"]) == 1 and out["data"][0]


def test_records_are_held_through_a_store_outage_and_spooled_across_a_restart(tmp_path, mock):
    spool = tmp_path / "usage-spool.jsonl"
    config = mock_openai_provider(mock)
    extra = f'[store]\nurl = "sqlite://polyplex.db"\nspool = "{spool}"'
    db = tmp_path / "polyplex.db"
    with own_gateway(tmp_path, config, extra) as (client, proc):
        base = str(client.base_url).removesuffix("/v1/")
        st, k = admin(base, "POST", "/admin/keys", {"name": "outage", "budget_usd": 10})
        assert st == 200, k
        first = serve(client, k["key"], 1)
        until(lambda: stored(base, first[0][0]))

        # The store fails: requests are served all the same, their records held.
        table(db, "polyplex_usage", "polyplex_usage_away")
        during = serve(client, k["key"], 3)
        until(lambda: held(base) == 3)
        # Their spend counts against the key meanwhile.
        st, row = admin(base, "GET", f"/admin/keys/{k['id']}")
        assert row["spent_usd"] >= sum(c for _, c in first + during) - 1e-9, row

        # It answers again: the held records are written, in order, once each.
        table(db, "polyplex_usage_away", "polyplex_usage")
        until(lambda: held(base) == 0)
        for rid, cost in during:
            rec = until(lambda: stored(base, rid))
            assert rec["cost_usd"] == cost and rec["status"] == 200

        # It fails again, and the gateway is stopped before it answers.
        table(db, "polyplex_usage", "polyplex_usage_away")
        last = serve(client, k["key"], 2)
        until(lambda: held(base) == 2)
        started = time.time()
        proc.stop()
        assert proc.p.returncode == 0
        assert time.time() - started < 8
        log = proc.output()
        assert "usage records the store did not take are spooled" in log
        assert "stopped; the usage records the store did not take are in the spool" in log

    lines = [json.loads(ln) for ln in spool.read_text().splitlines()]
    assert [r["request_id"] for r in lines] == [rid for rid, _ in last]
    assert all(r["key_id"] == k["id"] and r["status"] == 200 for r in lines)
    assert k["key"] not in spool.read_text()

    # The next start (the store answering) writes the spooled records first.
    table(db, "polyplex_usage_away", "polyplex_usage")
    # `polyplex check` says they wait.
    out = subprocess.run([BIN, "check"], cwd=tmp_path, capture_output=True, text=True, timeout=30).stdout
    assert "usage spool: 2 record(s)" in out, out
    # and `polyplex usage` that its report lacks them.
    u = subprocess.run([BIN, "usage", "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert "2 usage record(s)" in u.stderr and json.loads(u.stdout)["object"] == "list", u
    with own_gateway(tmp_path, config, extra) as (client, proc):
        base = str(client.base_url).removesuffix("/v1/")
        for rid, cost in last:
            rec = until(lambda: stored(base, rid))
            assert rec["cost_usd"] == cost and rec["key_id"] == k["id"]
        assert not spool.exists()
        assert not list(tmp_path.glob("usage-spool.jsonl.taken-*"))
        # Every request's cost is the key's spend: nothing lost, nothing twice.
        st, row = admin(base, "GET", f"/admin/keys/{k['id']}")
        total = sum(c for _, c in first + during + last)
        assert abs(row["spent_usd"] - total) < 1e-9, (row["spent_usd"], total)
        st, report = admin(base, "GET", "/admin/usage?by=key&since=0")
        [mine] = [r for r in report["data"] if r["key"] == k["id"]]
        assert mine["requests"] == 6


def test_a_store_failing_for_ten_seconds_is_alerted_and_so_is_its_recovery(tmp_path, mock):
    with receiver() as (url, got):
        extra = f'[alerts]\nwebhook_url = "{url}"\nevents = ["store"]'
        with own_gateway(tmp_path, mock_openai_provider(mock), extra) as (client, proc):
            base = str(client.base_url).removesuffix("/v1/")
            db = tmp_path / "polyplex.db"
            table(db, "polyplex_usage", "polyplex_usage_away")
            [(rid, _)] = serve(client, MASTER_KEY, 1)
            until(lambda: held(base) == 1)
            time.sleep(5)
            assert got == [], "a store failing for less than 10 s is not alerted"
            until(lambda: got, timeout=20)
            [(_, failing)] = got
            assert failing["type"] == "store.failing"
            assert failing["held"] == 1 and failing["failing_for_s"] >= 10
            assert "no such table" in failing["last_error"] and failing["node"]
            assert "1 held" in failing["text"]
            table(db, "polyplex_usage_away", "polyplex_usage")
            until(lambda: len(got) == 2, timeout=20)
            recovered = got[1][1]
            assert recovered["type"] == "store.recovered" and recovered["written"] == 1
            assert stored(base, rid)
            time.sleep(1)
            assert len(got) == 2
