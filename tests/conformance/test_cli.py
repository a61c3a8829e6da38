"""The `polyplex` commands other than serve: check, models, catalog and mock."""
import json
from pathlib import Path
import subprocess
import time

from conftest import BIN, Proc, free_port


def run(*args, cwd=None, env=None):
    import os

    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run([BIN, *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=60)


def test_check_reports_reachable_and_unreachable_providers(mock, tmp_path):
    cfg = tmp_path / "polyplex.toml"
    cfg.write_text(f"""
[[providers]]
name = "up"
kind = "openai"
base_url = "{mock}/v1"
api_key = "${{SOME_KEY}}"
[[providers]]
name = "down"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
""")
    r = run("check", "--config", str(cfg), env={"SOME_KEY": "sk-check-secret"})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "configuration OK" in r.stdout
    assert "store: sqlite://polyplex.db" in r.stdout
    up = next(line for line in r.stdout.splitlines() if line.startswith("up "))
    down = next(line for line in r.stdout.splitlines() if line.startswith("down "))
    assert "reachable" in up and "UNREACHABLE" not in up
    assert "UNREACHABLE" in down
    assert "sk-check-secret" not in r.stdout + r.stderr


def test_check_and_serve_name_models_without_a_price(mock, tmp_path):
    # A model with no catalog price costs 0 and escapes key budgets: said, with the fix.
    cfg = tmp_path / "polyplex.toml"
    cfg.write_text(f"""
listen = "127.0.0.1:{free_port()}"
[[providers]]
name = "local"
kind = "openai"
base_url = "{mock}/v1"
models = ["my-finetune", "priced"]
prices."priced" = {{ input = 1.0, output = 2.0 }}
""")
    r = run("check", "--config", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    note = next(line for line in r.stdout.splitlines() if "no price known for" in line)
    assert "my-finetune" in note and "priced" not in note.replace("prices", "") and "`prices`" in note
    p = Proc([BIN, "serve", "--config", str(cfg)], cwd=tmp_path)
    try:
        deadline = time.time() + 20
        while "no price known for: my-finetune" not in p.output():
            assert time.time() < deadline, p.output()
            time.sleep(0.1)
    finally:
        p.stop()


def test_check_probes_bedrock_with_a_signed_call(mock, tmp_path):
    cfg = tmp_path / "polyplex.toml"
    cfg.write_text(f"""
[[providers]]
name = "aws"
kind = "bedrock"
base_url = "{mock}"
aws_access_key_id = "AKIAPOLYPLEXMOCK"
aws_secret_access_key = "${{AWS_SECRET}}"
[[providers]]
name = "aws-wrong"
kind = "bedrock"
base_url = "{mock}"
aws_access_key_id = "AKIAPOLYPLEXMOCK"
aws_secret_access_key = "wrong-secret-value"
""")
    r = run("check", "--config", str(cfg), env={"AWS_SECRET": "polyplex-mock-secret-access-key"})
    assert r.returncode == 2, r.stdout + r.stderr
    good = next(line for line in r.stdout.splitlines() if line.startswith("aws "))
    bad = next(line for line in r.stdout.splitlines() if line.startswith("aws-wrong "))
    assert "reachable, credentials accepted" in good, good
    assert "key was rejected (HTTP 403)" in bad, bad
    out = r.stdout + r.stderr
    assert "polyplex-mock-secret-access-key" not in out and "wrong-secret-value" not in out
    # Without credentials anywhere: refused at load, naming the setting.
    cfg.write_text('[[providers]]\nname = "aws"\nkind = "bedrock"\n')
    r = run("check", "--config", str(cfg), env={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_BEARER_TOKEN_BEDROCK": ""})
    assert r.returncode == 1 and "providers[0].api_key: Bedrock needs credentials" in r.stderr, r.stderr


def test_check_gets_a_vertex_token_and_probes(mock, tmp_path):
    pem = (Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "test-only-rsa-key.pem").read_text()
    for name, token_uri in [("good", f"{mock}/token"), ("bad", "http://127.0.0.1:9/token")]:
        (tmp_path / f"{name}.json").write_text(json.dumps({
            "type": "service_account", "project_id": "p1", "private_key": pem,
            "client_email": "x@p1.iam.gserviceaccount.com", "token_uri": token_uri}))
    cfg = tmp_path / "polyplex.toml"
    cfg.write_text(f"""
[[providers]]
name = "vx"
kind = "vertex"
base_url = "{mock}/v1/projects/p1/locations/global"
credentials_file = "{tmp_path / 'good.json'}"
[[providers]]
name = "vx-broken"
kind = "vertex"
base_url = "{mock}/v1/projects/p1/locations/global"
credentials_file = "{tmp_path / 'bad.json'}"
""")
    r = run("check", "--config", str(cfg))
    assert r.returncode == 2, r.stdout + r.stderr
    good = next(line for line in r.stdout.splitlines() if line.startswith("vx "))
    bad = next(line for line in r.stdout.splitlines() if line.startswith("vx-broken "))
    assert "reachable" in good and "UNREACHABLE" not in good, good
    assert "no Google access token" in bad, bad
    assert "PRIVATE KEY" not in r.stdout + r.stderr


def test_check_rejects_unknown_key_with_its_line(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('listen = "127.0.0.1:8484"\n[[providers]]\nname = "openai"\nmodles = ["gpt-4o"]\n')
    r = run("check", "--config", str(cfg))
    assert r.returncode == 1
    assert "modles" in r.stderr and "line 4" in r.stderr


def test_check_names_missing_env_var(tmp_path):
    cfg = tmp_path / "p.toml"
    cfg.write_text('[[providers]]\nname = "openai"\napi_key = "${DEFINITELY_UNSET_VAR}"\n')
    r = run("check", "--config", str(cfg))
    assert r.returncode == 1
    assert "providers[0].api_key" in r.stderr and "DEFINITELY_UNSET_VAR" in r.stderr


def test_models_lists_the_catalog_filtered_by_provider():
    r = run("models", "--provider", "groq")
    assert r.returncode == 0
    assert "llama-3.3-70b-versatile" in r.stdout
    assert "GROQ_API_KEY" in r.stdout and "https://api.groq.com/openai/v1" in r.stdout
    assert "models.dev" in r.stdout
    r = run("models", "--provider", "openai", "--json")
    rows = json.loads(r.stdout)
    gpt4o = next(m for m in rows if m["model"] == "gpt-4o")
    assert gpt4o["price_per_million"] == {"input": 2.5, "output": 10.0, "cache_read": 1.25, "cache_write": None}
    assert "tools" in gpt4o["capabilities"] and gpt4o["context"] == 128000
    r = run("models")
    assert r.returncode == 0 and len(r.stdout.splitlines()) > 6000
    r = run("models", "--provider", "nope")
    assert r.returncode != 0 and "unknown provider" in r.stderr
    # A provider's common name finds its catalog entry (Gemini is `google`).
    r = run("models", "--provider", "gemini", "--json")
    assert r.returncode == 0, r.stderr
    assert {m["provider"] for m in json.loads(r.stdout)} == {"google"}


def test_output_cut_short_by_its_reader_ends_quietly():
    """`polyplex models | head -3`: the reader goes away, the command ends
    at once, without a panic on stderr."""
    p = subprocess.Popen([BIN, "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = [p.stdout.readline() for _ in range(3)]
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=30) == 0
    assert first[0].startswith(b"PROVIDER") and "panicked" not in err and err == ""


def test_check_fails_on_a_redis_that_does_not_answer(tmp_path):
    cfg = tmp_path / "polyplex.toml"
    cfg.write_text("""
[redis]
url = "redis://:secret-redis-pass@127.0.0.1:9"
""")
    r = run("check", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "redis: 127.0.0.1:9 UNAVAILABLE" in r.stderr
    assert "secret-redis-pass" not in r.stdout + r.stderr


MODELS_DEV = {
    "groq": {
        "id": "groq", "name": "Groq", "npm": "@ai-sdk/groq", "env": ["GROQ_API_KEY"],
        "models": {"llama-9": {"id": "llama-9", "name": "Llama 9", "tool_call": True,
                               "cost": {"input": 0.05, "output": 0.08},
                               "limit": {"context": 131072, "output": 8192}}},
    },
}


def test_catalog_update_replaces_the_built_in_catalog(tmp_path):
    src = tmp_path / "api.json"
    src.write_text(json.dumps(MODELS_DEV))
    r = run("catalog", "update", str(src), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "polyplex-catalog.json").exists()
    m = run("models", "--provider", "groq", "--json", cwd=tmp_path)
    assert m.returncode == 0, m.stderr
    assert "llama-9" in m.stdout
    assert "llama-9" not in run("models", "--provider", "groq", "--json").stdout  # elsewhere: built-in
    c = run("check", cwd=tmp_path)
    assert "catalog: ./polyplex-catalog.json" in c.stdout, c.stdout
    # Not a catalog: refused, and the saved one stays.
    (tmp_path / "bad.json").write_text("[1, 2]")
    r = run("catalog", "update", str(tmp_path / "bad.json"), cwd=tmp_path)
    assert r.returncode != 0 and "bad.json" in r.stderr
    assert "llama-9" in run("models", "--provider", "groq", "--json", cwd=tmp_path).stdout
    # A URL that does not answer: refused, and the saved one stays.
    r = run("catalog", "update", "http://127.0.0.1:9/api.json", cwd=tmp_path)
    assert r.returncode != 0 and "cannot fetch http://127.0.0.1:9/api.json" in r.stderr
    assert "llama-9" in run("models", "--provider", "groq", "--json", cwd=tmp_path).stdout
    # A saved file that is broken stops the commands that read it, saying which.
    (tmp_path / "polyplex-catalog.json").write_text("garbage")
    m = run("models", cwd=tmp_path)
    assert m.returncode != 0 and "polyplex-catalog.json" in m.stderr


def test_mock_says_it_is_a_test_double_and_names_its_protocols(tmp_path):
    from conftest import Proc, free_port, wait_http

    help_text = run("mock", "--help").stdout
    for name in ["OpenAI", "Anthropic", "Gemini", "Bedrock", "test double"]:
        assert name in help_text, help_text
    port = free_port()
    proc = Proc([BIN, "mock", "--listen", f"127.0.0.1:{port}"], cwd=tmp_path)
    try:
        wait_http(f"http://127.0.0.1:{port}/__mock/stats")
        log = proc.output()
    finally:
        proc.stop()
    assert "test double" in log, log
    for name in ["OpenAI", "Anthropic", "Gemini", "Vertex AI", "Bedrock", "Azure", "Cohere"]:
        assert name in log, log
