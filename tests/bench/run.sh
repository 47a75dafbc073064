#!/usr/bin/env bash
# Writes docs/benchmarks.md: commander ingest at 1k and 10k sentries, ack
# latency at 5,000 hb/s, connection capacity at a 30 s interval, the bare
# Ed25519 reference, and a 100-kill crash-safety run. Measures and writes;
# asserts nothing. Takes about 15 minutes on a 2-core machine; run it on an
# otherwise idle one.
#
#   tests/bench/run.sh [bench-report flags, e.g. --capacity 10000,25000]
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
out=docs/benchmarks.md

echo "== build (release)"
cargo build --locked --release -p hashfleet-commander -p hashfleet-tests \
  --bin hashfleet-commander --bin hashfleet-loadgen --bin bench-report

echo "== ingest, latency, capacity (writes $out)"
target/release/bench-report --out "$out" "$@" >/dev/null

echo "== crash safety: 100 SIGKILLs of the commander under load"
log=$(mktemp)
HASHFLEET_CRASH_KILLS=100 cargo test --locked --release -p hashfleet-tests --test crash_safety \
  -- --nocapture >"$log" 2>&1 || { cat "$log"; echo "the crash-safety run failed" >&2; exit 1; }
{
  echo
  echo "## Crash safety"
  echo
  echo "\`HASHFLEET_CRASH_KILLS=100 cargo test --release -p hashfleet-tests --test crash_safety -- --nocapture\`:"
  echo "the commander process SIGKILLed 100 times, 200-1500 ms apart, under 30 sentries sending as fast"
  echo "as acknowledged; after the last kill the store is read directly and compared with what the"
  echo "load generator saw acknowledged. CI runs the same test with 20 kills."
  echo
  echo '```'
  grep -E '^(100 kills in|acknowledged )' "$log"
  echo '```'
} >>"$out"
rm -f "$log"
echo "== wrote $out"
cat "$out"
