#!/usr/bin/env bash
# Smoke-run the measurements fuzz targets under libFuzzer for a few seconds each, seeded
# with the public test data. Needs a nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz --locked`). Usage: measurements/scripts/fuzz-smoke.sh [SECONDS]
set -euo pipefail
SECONDS_EACH="${1:-20}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DATA="$ROOT/measurements/tests/data/go-tdx-guest"
SEEDS="$(mktemp -d)"
trap 'rm -rf "$SEEDS"' EXIT
mkdir -p "$SEEDS"/{quote,eventlog,tdvf,pe}
cp "$DATA"/tdx_prod_quote_SPR_E4.dat "$DATA"/quote_v5_sample.dat "$DATA"/ccel/cos-113-tdx-quote.dat "$SEEDS/quote/"
head -c 18200 "$DATA/ccel/ccel_data.dat" > "$SEEDS/eventlog/cos-113"
# The reference OVMF is 4 MiB: too slow a seed for a smoke run; the fuzzer starts empty.
# A small PE seed: the headers of a kernel, if one is at hand.
if [ -n "${CLOISTER_KERNEL:-}" ] && [ -f "$CLOISTER_KERNEL" ]; then
    head -c 65536 "$CLOISTER_KERNEL" > "$SEEDS/pe/kernel-head"
fi
cd "$ROOT/fuzz"
for t in quote eventlog tdvf pe; do
    echo "== measurements_$t for ${SECONDS_EACH}s"
    cargo +nightly fuzz run "measurements_$t" "$SEEDS/$t" -- \
        -max_total_time="$SECONDS_EACH" -max_len=1048576 -rss_limit_mb=2048
done
