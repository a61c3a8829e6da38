#!/usr/bin/env bash
# Regenerates crates/polyplex/symbol-order.txt: the functions a running
# gateway executes, hottest first, which release builds of the binary lay out
# together (crates/polyplex/build.rs; docs/performance.md, "Eleventh
# session"). Runs the release binary under callgrind (valgrind) against the
# benchmark's upstream mock on loopback, drives every common request kind
# through it, and lists the functions that ran. Takes about two minutes.
#
#   bash scripts/symbol-order.sh
#
# Needs valgrind and python3. Rerun after a dependency update (symbol names
# carry a hash of the crate's build settings) or a large change of the
# request path; a stale list only leaves the functions it misses unordered.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }

# Apart, as bench/run.sh and `cargo build --release` build it: the symbol
# names depend on the features the gateway's dependencies were built with.
cargo build -q --release -p polyplex
cargo build -q --release -p polyplex-bench
bin=target/release/polyplex
bench=target/release/polyplex-bench
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(free_port)
gw=$(free_port)
"$bench" upstream --listen "127.0.0.1:$up" >"$dir/upstream.log" 2>&1 &
pids+=($!)
master=symbol-order-master-key-0123456789
cat >"$dir/polyplex.toml" <<TOML
listen = "127.0.0.1:$gw"
[auth]
master_key = "$master"
[store]
url = "sqlite://$dir/polyplex.db"
[[providers]]
name = "openai"
kind = "openai"
base_url = "http://127.0.0.1:$up/v1"
api_key = "sk-order"
models = ["gpt-4o-mini"]
[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "http://127.0.0.1:$up"
api_key = "sk-order"
models = ["claude-sonnet-4-5"]
TOML
key=$("$bin" keys create --config "$dir/polyplex.toml" --name order | grep -o 'plx-[A-Za-z0-9]*' | head -1)

# No re-exec (valgrind would not follow it); otherwise the production setup.
POLYPLEX_NO_REEXEC=1 valgrind --tool=callgrind --demangle=no \
  --callgrind-out-file="$dir/callgrind.out" "$bin" serve --config "$dir/polyplex.toml" \
  >"$dir/serve.log" 2>&1 &
vg=$!
pids+=($vg)
for _ in $(seq 1 200); do
  curl -s -o /dev/null "http://127.0.0.1:$gw/healthz" && break
  sleep 0.3
done

a="127.0.0.1:$gw"
load() { "$bench" load --addr "$a" --key "$key" "$@" | tail -1; }
load --seconds 3
load --seconds 3 --model claude-sonnet-4-5
load --streams 20
load --streams 20 --model claude-sonnet-4-5
load --seconds 3 --concurrency 16
auth=(-H "authorization: Bearer $key")
admin=(-H "authorization: Bearer $master")
json=(-H 'content-type: application/json')
curl -s -o /dev/null "${auth[@]}" "http://$a/v1/models"
curl -s -o /dev/null "${auth[@]}" "http://$a/v1/models/gpt-4o-mini"
curl -s -o /dev/null "${auth[@]}" "${json[@]}" "http://$a/v1/chat/completions" -d '{"model":"gpt-4o-mini"}'
curl -s -o /dev/null "${auth[@]}" "${json[@]}" "http://$a/v1/chat/completions" -d '{"model":"nope","messages":[{"role":"user","content":"hi"}]}'
curl -s -o /dev/null -H "authorization: Bearer plx-wrong" "${json[@]}" "http://$a/v1/chat/completions" -d '{}'
curl -s -o /dev/null "http://$a/metrics"
curl -s -o /dev/null "http://$a/readyz"
curl -s -o /dev/null "${admin[@]}" "http://$a/admin/keys"
curl -s -o /dev/null "${admin[@]}" "http://$a/admin/usage?by=model"
curl -s -o /dev/null "${admin[@]}" "http://$a/admin/providers"
kill -INT "$vg"
wait "$vg" || true

python3 - "$dir/callgrind.out" crates/polyplex/symbol-order.txt <<'PY'
import collections, re, sys
names, cost, cur, call_line = {}, collections.Counter(), None, False
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
    if m:
        kind, i, name = m.groups()
        if name:
            names[i] = name
        if kind == "fn":
            cur = i
        continue
    if line.startswith("calls="):
        call_line = True  # the next cost line is the callee's, not ours
        continue
    if line[:1].isdigit() or line[:1] in "+-*":
        if call_line:
            call_line = False
            continue
        parts = line.split()
        if cur is not None and len(parts) >= 2 and parts[1].isdigit():
            cost[cur] += int(parts[1])
ran = sorted((i for i in names if cost[i] > 0), key=lambda i: -cost[i])
with open(sys.argv[2], "w") as f:
    for i in ran:
        f.write(names[i] + "\n")
print(f"{len(ran)} functions written to {sys.argv[2]}")
PY
