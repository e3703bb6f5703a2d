#!/usr/bin/env bash
# The chaos soak (issue 21): 200 simulated sessions through the full proxy (three
# credentials) against the fault-injecting mock upstream, a random fault per request, and the
# invariants checked on every answer and at the end. Exits non-zero on any break.
#
#   scripts/chaos.sh                  # 200 sessions, 10 minutes
#   scripts/chaos.sh --quick          # 200 sessions, 2 minutes (what CI runs)
#   scripts/chaos.sh --minutes 30 --sessions 400 --seed 7
#
# The summary (requests, faults by kind, outcomes, checks) goes to stdout and to
# target/chaos/chaos-<date>.md. Slow and vanishing clients and the long session are tests:
#   cargo test --all-features --test slow_clients --test client_disconnects --test long_session
set -euo pipefail
cd "$(dirname "$0")/.."

mkdir -p target/chaos
out="target/chaos/chaos-$(date -u +%Y%m%dT%H%M%SZ).md"
# The bench profile (release with line tables): CI's benchmark step has built its dependencies.
cargo build --profile bench --locked --all-features --example loadgen
status=0
target/release/examples/loadgen chaos "$@" | tee "$out" || status=$?
echo "summary written to $out" >&2
exit "$status"
