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

if [ ! -f node/node_modules/@portkey-ai/gateway/package.json ]; then
  mkdir -p node
  (cd node && [ -f package.json ] || echo '{"private":true}' > package.json)
  (cd node && npm install --silent --no-audit --no-fund @portkey-ai/gateway)
fi
echo "bench setup: nginx, litellm, portkey ready"
