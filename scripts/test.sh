#!/usr/bin/env bash
# The whole test suite: Rust unit + integration tests, then the conformance
# suite (official `openai` Python SDK against a running gateway and mock).
set -euo pipefail
cd "$(dirname "$0")/.."

# The Postgres store test runs when a server answers (CI starts one; see
# .ci/run); set POLYPLEX_TEST_POSTGRES to point it elsewhere.
if [ -z "${POLYPLEX_TEST_POSTGRES:-}" ] && command -v pg_isready >/dev/null \
    && pg_isready -q -h 127.0.0.1 -p 5432; then
  export POLYPLEX_TEST_POSTGRES="postgres://postgres@127.0.0.1:5432/test"
fi

# The shared-limits tests (crates/polyplex/tests/keys.rs) run when a Redis
# server answers (CI starts one); POLYPLEX_TEST_REDIS points them elsewhere.
if [ -z "${POLYPLEX_TEST_REDIS:-}" ] && (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  export POLYPLEX_TEST_REDIS="redis://127.0.0.1:6379"
fi

cargo test --workspace
cargo build --bin polyplex

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q -r tests/conformance/requirements.txt
POLYPLEX_BIN="$PWD/target/debug/polyplex" .venv/bin/python -m pytest -q tests/conformance
