#!/usr/bin/env bash
# CPU per request of one target at several concurrencies, split into user and system time:
#
#   scripts/scale.sh LOADGEN [static|mock] [proxy|passthrough] CONNECTIONS...
#
# LOADGEN is an `examples/loadgen` release binary. The upstream (`serve-static`: nginx
# serving the 60-event answer from memory, or `serve-mock`: one chunk per event) and `wrk -t1`
# run on CPU 0, the target (`serve-proxy`, the full stack, or `serve-passthrough`, bare
# hyper) on CPU 1. After 2 s of warm-up at 32 connections, each concurrency runs `wrk` for
# 4 s while the target's utime and stime are read from /proc. Prints requests per second and
# user and system CPU milliseconds per 1,000 requests. BENCHMARKS.md (seventh round) reads
# these curves: where the stack's CPU per request rises with concurrency, and which half.
set -euo pipefail
lg="$1"; upstream="${2:-static}"; target="${3:-proxy}"; shift 3 || true
[ $# -gt 0 ] || set -- 1 4 8 32 64
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
work="$(mktemp -d)"; pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n 20000 2>/dev/null || true
"$lg" wrk-script > "$work/request.lua"
ticks="$(getconf CLK_TCK)"
wait_addr() { for _ in $(seq 1 60); do [ -s "$1" ] && return 0; sleep 0.5; done; echo "no address in $1" >&2; exit 1; }
case "$upstream" in
  static) taskset -c 0 "$lg" serve-static --nginx "$nginx_bin" > "$work/up.addr" 2>/dev/null & ;;
  mock) taskset -c 0 "$lg" serve-mock > "$work/up.addr" 2>/dev/null & ;;
  *) echo "upstream: static or mock" >&2; exit 2 ;;
esac
pids+=($!); wait_addr "$work/up.addr"
up="$(awk '{print $2}' "$work/up.addr")"
case "$target" in
  proxy) taskset -c 1 "$lg" serve-proxy --upstream "http://$up/v1" > "$work/t.addr" 2>/dev/null & ;;
  passthrough) taskset -c 1 "$lg" serve-passthrough --upstream "$up" > "$work/t.addr" 2>/dev/null & ;;
  *) echo "target: proxy or passthrough" >&2; exit 2 ;;
esac
pid=$!; pids+=("$pid"); wait_addr "$work/t.addr"
addr="$(awk '{print $2}' "$work/t.addr")"
url="http://$addr/v1/responses"
taskset -c 0 wrk -t1 -c32 -d2s -s "$work/request.lua" "$url" > /dev/null
echo "connections req/s user_ms/1000 sys_ms/1000 ($target, $upstream upstream)"
for c in "$@"; do
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  out="$(taskset -c 0 wrk -t1 -c"$c" -d4s -s "$work/request.lua" "$url")"
  read -r u2 s2 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  n="$(echo "$out" | awk '/requests in/{print $1}')"
  awk -v c="$c" -v n="$n" -v u=$((u2 - u1)) -v s=$((s2 - s1)) -v t="$ticks" \
    'BEGIN { printf "%d %.0f %.1f %.1f\n", c, n / 4, u / t * 1e6 / n, s / t * 1e6 / n }'
done
