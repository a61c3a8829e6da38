"""The README's promise: with no configuration at all, `polyplex serve` answers
`demo/echo` through the official SDK."""
import os

from openai import OpenAI

from conftest import BIN, Proc, free_port, wait_http


def test_zero_config_demo_answers_through_the_sdk(tmp_path):
    port = free_port()
    env = {k: "" for k in os.environ if k.endswith("_API_KEY")}
    env["POLYPLEX_LISTEN"] = f"127.0.0.1:{port}"
    proc = Proc([BIN, "serve"], cwd=tmp_path, env=env)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="anything")
        r = client.chat.completions.create(model="demo/echo", messages=[{"role": "user", "content": "Hello, polyplex!"}])
        assert r.choices[0].message.content == "Hello, polyplex!"
        assert r.usage.total_tokens > 0
    finally:
        proc.stop()
    log = proc.output()
    assert "demo" in log and "test double" in log


def test_refuses_public_address_without_master_key(tmp_path):
    import subprocess

    env = dict(os.environ, POLYPLEX_LISTEN="0.0.0.0:0")
    env.pop("POLYPLEX_MASTER_KEY", None)
    r = subprocess.run([BIN, "serve"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=20)
    assert r.returncode != 0
    assert "without a master key" in r.stderr
