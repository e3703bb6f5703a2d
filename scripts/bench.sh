#!/usr/bin/env bash
# One command to reproduce BENCHMARKS.md: installs nginx (Debian package) and LiteLLM (in a
# venv under ~/.cache), builds the load harness in release mode, runs every target on
# loopback, and writes the tables to target/bench/loadgen-<date>.md.
#
#   scripts/bench.sh            # full run (about 5 minutes of load, plus installs and build)
#   scripts/bench.sh --quick    # short phases, 200 streams: for development
#   scripts/bench.sh --micro    # also run the criterion micro benchmarks
#
# Needs root for apt-get (or nginx already installed). Without network access to PyPI the
# LiteLLM row is reported as not measured, with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=()
micro=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=(--quick) ;;
    --micro) micro=1 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

cache="${XDG_CACHE_HOME:-$HOME/.cache}/tower-responses-bench"
mkdir -p "$cache"

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "==> installing nginx" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
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
cargo build --release --all-features --example loadgen
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
"$loadgen" run "${quick[@]}" --nginx "$nginx_bin" "${litellm_args[@]}" --out "$out.tables"
cat "$out.tables" >> "$out"
rm -f "$out.tables"
echo "==> results in $out" >&2

if [ "$micro" = 1 ]; then
  for b in sse classify hold_back normalize; do
    cargo bench --all-features --bench "$b"
  done
fi
