#!/usr/bin/env bash
# Interleaved A/B of two builds of the full stack's CPU per request, on the `static` upstream:
#
#   scripts/ab.sh OLD_LOADGEN NEW_LOADGEN [PAIRS] [CONNECTIONS]
#
# OLD_LOADGEN and NEW_LOADGEN are `examples/loadgen` release binaries of two commits (build
# one, copy it away, check out the other, build again). For each pair, each binary in turn:
# `loadgen serve-static` (nginx, the 60-event answer from memory) and `wrk -t1` on CPU 0,
# `loadgen serve-proxy` on CPU 1, 200 warm-up requests, then `wrk` for 5 s while the proxy's
# utime and stime are read from /proc. Prints one line per run and the medians. Alternating
# the binaries spreads the machine's drift over both; `loadgen side` runs each target once
# per round and cannot resolve a change smaller than its run-to-run spread (BENCHMARKS.md).
set -euo pipefail
old="$1"; new="$2"; pairs="${3:-5}"; conns="${4:-32}"
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
ulimit -n 20000 2>/dev/null || true
"$new" wrk-script > "$work/request.lua"
ticks="$(getconf CLK_TCK)"

one() { # one LOADGEN: prints "req/s cpu_ms_per_1000"
  local lg="$1"
  rm -f "$work/s.addr" "$work/p.addr"
  taskset -c 0 "$lg" serve-static --nginx "$nginx_bin" > "$work/s.addr" 2>/dev/null & local sp=$!
  for _ in $(seq 1 60); do [ -s "$work/s.addr" ] && break; sleep 0.5; done
  local st; st="$(awk '{print $2}' "$work/s.addr")"
  taskset -c 1 "$lg" serve-proxy --upstream "http://$st/v1" > "$work/p.addr" 2>/dev/null & local pp=$!
  for _ in $(seq 1 60); do [ -s "$work/p.addr" ] && break; sleep 0.5; done
  local pa; pa="$(awk '{print $2}' "$work/p.addr")"
  "$lg" drive --addr "$pa" --requests 200 >/dev/null 2>&1
  local u0 s0 u1 s1 rps
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pp/stat")
  rps="$(taskset -c 0 wrk -t1 "-c$conns" -d5s -s "$work/request.lua" "http://$pa/v1/responses" | awk '/^Requests\/sec/{print $2}')"
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pp/stat")
  kill "$pp"; kill -INT "$sp"; wait "$pp" "$sp" 2>/dev/null || true
  python3 -c "r=$rps; n=r*5; print(f'{r:.0f} {(($u1-$u0)+($s1-$s0))/$ticks/n*1e6:.1f}')"
}

: > "$work/runs"
for i in $(seq 1 "$pairs"); do
  for side in old new; do
    if [ "$side" = old ]; then lg="$old"; else lg="$new"; fi
    line="$(one "$lg")"
    echo "$side $line" | tee -a "$work/runs"
  done
done
python3 - "$work/runs" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    side, rps, cpu = line.split()
    runs.setdefault(side, []).append((float(rps), float(cpu)))
for side in ("old", "new"):
    r = runs[side]
    print(f"{side}: median {statistics.median(x for x, _ in r):.0f} req/s, "
          f"{statistics.median(y for _, y in r):.1f} ms CPU per 1,000 requests")
# Each pair ran back to back, so its ratio cancels most of the machine's drift.
ratios = [n[1] / o[1] for o, n in zip(runs["old"], runs["new"])]
ahead = sum(r < 1 for r in ratios)
print(f"new/old CPU per request, median of the {len(ratios)} pairs: "
      f"{statistics.median(ratios):.2f} (new cheaper in {ahead} of {len(ratios)})")
PY
