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


def test_zero_config_takes_base_urls_from_the_environment(tmp_path, mock):
    """`OPENAI_BASE_URL` / `ANTHROPIC_BASE_URL` (the names the providers' own SDKs
    read) point zero-config's providers elsewhere — here at the mock; one aimed
    at polyplex itself is ignored, and `OLLAMA_BASE_URL` enables a local server."""
    port = free_port()
    env = {k: "" for k in os.environ if k.endswith("_API_KEY") or k.endswith("_BASE_URL")}
    env.update({
        "POLYPLEX_LISTEN": f"127.0.0.1:{port}",
        "OPENAI_API_KEY": "sk-zero-config-openai",
        "OPENAI_BASE_URL": f"{mock}/v1",
        "ANTHROPIC_API_KEY": "sk-zero-config-anthropic",
        "ANTHROPIC_BASE_URL": mock,
        "GROQ_API_KEY": "gsk-zero-config",
        "GROQ_BASE_URL": f"http://localhost:{port}/openai/v1",
        "OLLAMA_BASE_URL": f"{mock}/v1",
        # Azure under the names OpenAI's own SDK reads for it.
        "AZURE_OPENAI_API_KEY": "sk-zero-config-azure",
        "AZURE_OPENAI_ENDPOINT": f"{mock}/",
        "OPENAI_API_VERSION": "2024-10-21",
    })
    for k in ("AZURE_API_KEY", "AZURE_RESOURCE_NAME"):
        env.setdefault(k, "")
    proc = Proc([BIN, "serve"], cwd=tmp_path, env=env)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="anything")
        for model, provider in [("openai/gpt-4o-mini", "openai"), ("anthropic/claude-sonnet-4-5", "anthropic"),
                                ("ollama/llama3.2", "ollama"), ("azure/gpt-4o", "azure")]:
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": "Hello, zero-config!"}])
            assert raw.headers["x-polyplex-provider"] == provider
            r = raw.parse()
            assert r.choices[0].message.content, model
            assert r.usage.total_tokens > 0
        stream = client.chat.completions.create(model="anthropic/claude-sonnet-4-5", stream=True,
                                                messages=[{"role": "user", "content": "stream it"}])
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    finally:
        proc.stop()
    log = proc.output()
    assert "OPENAI_BASE_URL" in log and "OLLAMA_BASE_URL" in log
    assert "own address" in log and "GROQ_BASE_URL" in log
    assert "sk-zero-config" not in log


def test_zero_config_refuses_a_base_url_that_is_not_one(tmp_path):
    import subprocess

    env = dict(os.environ, POLYPLEX_LISTEN="127.0.0.1:0", OPENAI_API_KEY="sk-x", OPENAI_BASE_URL="api.example.com")
    r = subprocess.run([BIN, "serve"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=20)
    assert r.returncode != 0
    assert "OPENAI_BASE_URL" in r.stderr and "not an http(s) URL" in r.stderr
