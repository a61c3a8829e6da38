#!/usr/bin/env bash
# The benchmark in one command (loopback only, bounded in time):
#
#   bash bench/run.sh            # full run: installs nginx, LiteLLM and Portkey
#                                # (bench/setup.sh), builds release, ~15 min
#   bash bench/run.sh --smoke    # CI: debug build, polyplex targets only, ~1 min
#
# Extra arguments go to `polyplex-bench run` (e.g. --rounds 3 --targets
# direct,nginx,polyplex). Writes bench/results/results.{md,json} and chart.png
# (bench/results/smoke/ for --smoke) and prints the table.
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
args=()
for a in "$@"; do
  if [ "$a" = "--smoke" ]; then smoke=1; else args+=("$a"); fi
done

if [ "$smoke" = 1 ]; then
  profile=debug
  out=bench/results/smoke
  cargo build -q -p polyplex
  cargo build -q -p polyplex-bench
  targets="direct,polyplex,polyplex-anthropic"
  if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then targets="direct,nginx,polyplex,polyplex-anthropic"; fi
  extra=(--smoke --targets "$targets")
else
  profile=release
  out=bench/results
  bash bench/setup.sh
  # Apart: built with the bench, the gateway's dependencies would take the
  # bench's features too and its symbol names would no longer be those
  # crates/polyplex/symbol-order.txt lists (crates/polyplex/build.rs).
  cargo build -q --release -p polyplex
  cargo build -q --release -p polyplex-bench
  # How much of the list of hot functions this build could lay out together
  # (crates/polyplex/build.rs; rerun scripts/symbol-order.sh when it drops).
  list=crates/polyplex/symbol-order.txt
  defined=$(nm --defined-only target/release/polyplex 2>/dev/null | awk '{print $3}' | sort -u)
  listed=$(sort -u "$list" | wc -l)
  found=$(comm -12 <(echo "$defined") <(sort -u "$list") | wc -l)
  # Rust's own (mangled) names: a dependency update or a toolchain change
  # renames them, and then the list no longer finds them.
  rust_listed=$(grep -E '^(_R|_ZN)' "$list" | sort -u | wc -l)
  rust_found=$(comm -12 <(echo "$defined") <(grep -E '^(_R|_ZN)' "$list" | sort -u) | wc -l)
  echo "symbol order: $found of $listed listed functions are in the binary (the rest are libc's); Rust's: $rust_found of $rust_listed"
  if [ $((rust_found * 10)) -lt $((rust_listed * 9)) ]; then
    echo "WARNING: the symbol order is stale (fewer than 90 % of its Rust functions are in the binary): run bash scripts/symbol-order.sh, then rebuild" >&2
  fi
  extra=()
fi

rm -rf "$out/logs"
"target/$profile/polyplex-bench" run --polyplex "target/$profile/polyplex" --out "$out" \
  --bench-dir bench "${extra[@]}" ${args[@]+"${args[@]}"}

if [ -x bench/.venv/bin/python ] && bench/.venv/bin/python -c 'import matplotlib' 2>/dev/null; then
  bench/.venv/bin/python bench/chart.py "$out/results.json" "$out/chart.png"
else
  echo "(no chart: matplotlib is installed by bench/setup.sh)"
fi

if [ "$smoke" = 1 ]; then
  # The smoke run shows the harness works: every polyplex target measured
  # and the table written. It asserts no time.
  for t in polyplex polyplex-anthropic; do
    grep -q "^| $t |" "$out/results.md" || { echo "smoke: no row for $t in $out/results.md" >&2; exit 1; }
  done
  echo "bench smoke: ok"
fi
