#!/usr/bin/env bash
# A short libFuzzer run of every fuzz target in fuzz/Cargo.toml (SECONDS_EACH, default 10),
# as CI's smoke check that no parser of outside bytes panics on the first inputs a fuzzer
# finds. Needs a nightly toolchain (libFuzzer's instrumentation) and cargo-fuzz, which it
# installs into $CLOISTER_CACHE/bin. The bodies of the targets also run on stable, inside
# each crate's unit tests, on mutated real data.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${CLOISTER_CACHE:-/var/cache/cloister}
seconds=${1:-10}
CARGO_FUZZ_VERSION=0.13.2
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz-smoke: FAILED: no nightly toolchain on this machine; libFuzzer needs one" >&2
  exit 1
fi
export PATH="$cache/bin:$PATH"
if ! cargo-fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  cargo install --locked --quiet --root "$cache" "cargo-fuzz@$CARGO_FUZZ_VERSION"
fi
cd "$here/fuzz"
export CARGO_TARGET_DIR=$cache/target-fuzz
for target in $(sed -n 's/^name = "\(.*\)"/\1/p' Cargo.toml | grep -v '^cloister-fuzz$'); do
  echo "== fuzz $target for ${seconds}s"
  cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
    -max_len=65536 2>&1 | tail -n 3
done
