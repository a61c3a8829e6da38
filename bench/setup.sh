#!/usr/bin/env bash
# Installs what the full benchmark compares polyplex with: Debian's nginx,
# LiteLLM's proxy (PyPI, in bench/.venv) and Portkey's gateway (npm, in
# bench/node). Idempotent; each part is skipped when already present.
# The CI smoke run does not need any of it (it measures polyplex only).
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx-core >/dev/null
  # Debian starts nginx on port 80 at install; the benchmark runs its own.
  $SUDO systemctl disable --now nginx >/dev/null 2>&1 || $SUDO service nginx stop >/dev/null 2>&1 || true
fi

if [ ! -x .venv/bin/litellm ] || [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import matplotlib' 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q 'litellm[proxy]' matplotlib
fi

# Portkey's Node server runs on @hono/node-server, whose 1.14+ "lightweight"
# Response keeps the upstream fetch response's immutable Headers when Portkey
# wraps a stream in `new Response(body, upstreamResponse)`; Portkey then
# appends its x-portkey-* headers and answers every stream with HTTP 500
# ("TypeError: immutable"). 1.13.8 (within Portkey's ^1.3.3) copies them.
HONO_NODE_SERVER=1.13.8
if [ ! -f node/node_modules/@portkey-ai/gateway/package.json ] \
  || ! grep -q "\"version\": \"$HONO_NODE_SERVER\"" node/node_modules/@hono/node-server/package.json 2>/dev/null; then
  mkdir -p node
  cat > node/package.json <<JSON
{
  "private": true,
  "dependencies": { "@portkey-ai/gateway": "^1.15.2" },
  "overrides": { "@hono/node-server": "$HONO_NODE_SERVER" }
}
JSON
  (cd node && npm install --silent --no-audit --no-fund)
fi
echo "bench setup: nginx, litellm, portkey ready"
