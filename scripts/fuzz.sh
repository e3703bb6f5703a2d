#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 60): libFuzzer through cargo-fuzz,
# on the nightly toolchain (sanitizers need it). Seeds come from tests/fixtures
# (fuzz/seeds.py); what libFuzzer finds interesting is kept in fuzz/corpus/ between runs
# (not committed). One build, one target dir (fuzz/target), for all targets.
#
#   scripts/fuzz.sh            # 60 s per target
#   scripts/fuzz.sh 30         # CI's quick mode
#   FUZZ_TARGETS="sse_decoder fold" scripts/fuzz.sh 600
#   FUZZ_JOBS=2 scripts/fuzz.sh 600   # libFuzzer workers per target
#
# A crash stops the script with the target's exit status; its input is in
# fuzz/artifacts/<target>/ and replays with `cargo +nightly fuzz run <target> <file>`.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
jobs="${FUZZ_JOBS:-1}"
# AddressSanitizer by default (cargo-fuzz's): it guards the C decoders (zstd) the targets reach.
# CI's quick mode passes FUZZ_SANITIZER=none: the crate is `#![deny(unsafe_code)]`, so the
# sanitizer adds little in 30 s, and the uninstrumented build is much quicker on a fresh machine.
sanitizer="${FUZZ_SANITIZER:-address}"
targets="${FUZZ_TARGETS:-sse_decoder json_scan normalize_body fold cap rechunk classify hints decode}"
# A version that builds on the stable toolchain the machines have (1.95).
cargo_fuzz_version="0.13.1"

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz.sh: needs a nightly toolchain (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked "cargo-fuzz@${cargo_fuzz_version}"
fi

python3 fuzz/seeds.py

cd fuzz
# Release with debug assertions and AddressSanitizer (cargo-fuzz's defaults), every target.
cargo +nightly fuzz build --sanitizer "$sanitizer"
parallel=()
if [ "$jobs" -gt 1 ]; then
  # Workers log to fuzz-<n>.log in fuzz/.
  parallel=(-jobs="$jobs" -workers="$jobs")
fi
for target in $targets; do
  printf '\n==> fuzz %s for %ss\n' "$target" "$seconds"
  # -rss_limit_mb: a decoder that holds far more than its bound fails the run;
  # -max_len: larger than every seed, small enough to stay fast.
  cargo +nightly fuzz run --sanitizer "$sanitizer" "$target" -- \
    -max_total_time="$seconds" "${parallel[@]}" \
    -rss_limit_mb=1024 -max_len=16384 -timeout=10 -print_final_stats=1
done
echo
echo "fuzz: every target ran ${seconds}s without a finding"
