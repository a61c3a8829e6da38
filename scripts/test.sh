#!/usr/bin/env bash
# The whole test suite: Rust unit + integration tests, then the conformance
# suite (official `openai` Python SDK against a running gateway and mock).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace
cargo build --bin polyplex

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q -r tests/conformance/requirements.txt
POLYPLEX_BIN="$PWD/target/debug/polyplex" .venv/bin/python -m pytest -q tests/conformance
