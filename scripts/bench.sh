#!/usr/bin/env bash
# One command to reproduce BENCHMARKS.md: installs nginx and wrk (Debian packages) and
# LiteLLM (in a venv under ~/.cache), builds the load harness in release mode, runs the
# side-by-side comparison against nginx (`loadgen side`: pinned with taskset, interleaved
# rounds, two upstreams), then every target on loopback (`loadgen run`), and writes the
# tables to target/bench/loadgen-<date>.md.
#
#   scripts/bench.sh            # full run (about 8 minutes of load, plus installs and build)
#   scripts/bench.sh --quick    # short phases, 200 streams: for development
#   scripts/bench.sh --micro    # also run the criterion micro benchmarks
#   scripts/bench.sh --callgrind  # also count instructions per stream (valgrind) for the
#                                 # full stack and the passthrough
#
# Needs root for apt-get (or nginx already installed). Without network access to PyPI the
# LiteLLM row is reported as not measured, with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=()
micro=0
callgrind=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=(--quick) ;;
    --micro) micro=1 ;;
    --callgrind) callgrind=1 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

cache="${XDG_CACHE_HOME:-$HOME/.cache}/tower-responses-bench"
mkdir -p "$cache"

missing=()
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then missing+=(nginx); fi
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
if [ "$callgrind" = 1 ] && ! command -v valgrind >/dev/null 2>&1; then missing+=(valgrind); fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"

litellm_args=()
venv="$cache/litellm-venv"
if [ ! -x "$venv/bin/litellm" ]; then
  echo "==> installing litellm[proxy] into $venv" >&2
  if python3 -m venv "$venv" && "$venv/bin/pip" install -q 'litellm[proxy]'; then :; else
    echo "LiteLLM could not be installed; its row will say so" >&2
  fi
fi
if [ -x "$venv/bin/litellm" ]; then
  litellm_args=(--litellm "$venv/bin/litellm")
fi

echo "==> building the harness (release)" >&2
# Line tables keep callgrind's profile readable and do not change the code.
CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release --all-features --example loadgen
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
loadgen="$target_dir/release/examples/loadgen"

# 1,000 streams through a proxy need ~4,000 descriptors across the processes.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

mkdir -p target/bench
out="target/bench/loadgen-$(date -u +%Y%m%dT%H%M%SZ).md"
{
  echo "## Run of $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/{print $2}') GiB; load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- kernel: $(uname -r); $(rustc --version)"
  echo "- nginx: $("$nginx_bin" -v 2>&1 | sed 's/.*: //')"
  if [ -x "$venv/bin/python" ]; then
    echo "- litellm: $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))' 2>/dev/null || echo unknown) on $("$venv/bin/python" --version 2>&1)"
  fi
  echo "- tower-responses: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
} > "$out"
echo "==> side by side against nginx (pinned: upstream and wrk on CPU 0, proxy on CPU 1)" >&2
"$loadgen" side "${quick[@]}" --nginx "$nginx_bin" --out "$out.side"
cat "$out.side" >> "$out"
echo >> "$out"
rm -f "$out.side"
"$loadgen" run "${quick[@]}" --nginx "$nginx_bin" "${litellm_args[@]}" --out "$out.tables"
cat "$out.tables" >> "$out"
rm -f "$out.tables"

if [ "$callgrind" = 1 ]; then
  # Instructions per proxied 58-event stream, user space: deterministic for a binary, so it
  # measures a change exactly whatever else the machine is doing.
  cg="$(mktemp -d)"
  drive_args=()
  count() { # count NAME ARGS...: runs `loadgen ARGS` under callgrind, drives 1,000 streams
    local name="$1"; shift
    taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$cg/$name" "$loadgen" "$@" > "$cg/$name.addr" 2>/dev/null &
    local vg=$!
    for _ in $(seq 1 120); do [ -s "$cg/$name.addr" ] && break; sleep 1; done
    local addr; addr="$(awk '{print $2}' "$cg/$name.addr")"
    "$loadgen" drive --addr "$addr" --requests 100 "${drive_args[@]}" >/dev/null
    callgrind_control -z "$vg" >/dev/null 2>&1
    "$loadgen" drive --addr "$addr" --requests 1000 --concurrency 4 "${drive_args[@]}" >/dev/null
    callgrind_control -d "$vg" >/dev/null 2>&1
    sleep 2; kill "$vg"; wait "$vg" 2>/dev/null || true
    local total; total="$(callgrind_annotate "$cg/$name.1" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')"
    echo "- $name: $((total / 1000)) instructions per stream" | tee -a "$out"
  }
  taskset -c 0 "$loadgen" serve-mock > "$cg/mock.addr" & mock_pid=$!
  sleep 1; mock="$(awk '{print $2}' "$cg/mock.addr")"
  { echo; echo "### Callgrind (1,000 streams of 58 events, concurrency 4, after 100 warm-up)"; echo; } >> "$out"
  count tower-responses serve-proxy --upstream "http://$mock/v1"
  count passthrough serve-passthrough --upstream "$mock"
  kill "$mock_pid"
  # The `static` upstream (nginx, the whole answer at once): the plain stream, the
  # `stream:false` fold and `max_output_tokens` enforcement (caps the answer stays under, and
  # one it passes).
  taskset -c 0 "$loadgen" serve-static --nginx "$nginx_bin" > "$cg/static.addr" & static_pid=$!
  for _ in $(seq 1 30); do [ -s "$cg/static.addr" ] && break; sleep 0.5; done
  static="$(awk '{print $2}' "$cg/static.addr")"
  count static-plain serve-proxy --upstream "http://$static/v1"
  drive_args=(--no-stream)
  count static-fold serve-proxy --upstream "http://$static/v1"
  drive_args=(--max-output-tokens 4000)
  count static-capped serve-proxy --upstream "http://$static/v1"
  # A cap near the answer (69 tokens), and one it passes: the stream is cut there.
  drive_args=(--max-output-tokens 300)
  count static-capped-near serve-proxy --upstream "http://$static/v1"
  drive_args=(--max-output-tokens 40)
  count static-cut serve-proxy --upstream "http://$static/v1"
  drive_args=()
  kill -INT "$static_pid"; wait "$static_pid" 2>/dev/null || true
fi
echo "==> results in $out" >&2

if [ "$micro" = 1 ]; then
  for b in sse classify hold_back normalize; do
    cargo bench --all-features --bench "$b"
  done
fi
