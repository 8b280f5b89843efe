#!/bin/sh
# Builds, here (no GPU, no CUDA toolkit needed), the CUDA test binary and the cuda_bench
# example in release mode with the `cuda` feature, and copies them into <repo>/.device/
# for model-runner/scripts/cuda-device-check.sh to run on a GPU machine (which needs the
# NVIDIA driver and libnvrtc, not Rust). The binaries are ordinary glibc binaries: the CUDA
# libraries are opened with dlopen at run time.
set -eu
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
: "${CARGO_TARGET_DIR:=/var/cache/cloister/target-cuda}"
export CARGO_TARGET_DIR
out="$repo/.device"
mkdir -p "$out"
# The test binary's path comes from cargo's JSON messages (its name carries a hash).
tests_bin=$(cargo test -p cloister-model-runner --release --features cuda --test cuda \
    --no-run --message-format=json -j2 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | grep '/cuda-' | tail -n1)
if [ -z "$tests_bin" ]; then
    echo "cuda-prepare: building the cuda tests failed; rerun without 2>/dev/null to see why" >&2
    exit 1
fi
cargo build -p cloister-model-runner --release --features cuda --example cuda_bench -j2
install -m 0755 "$tests_bin" "$out/cuda-tests"
install -m 0755 "$CARGO_TARGET_DIR/release/examples/cuda_bench" "$out/cuda_bench"
ls -l "$out"
echo "cuda-prepare: carry .device/ to the GPU machine and run model-runner/scripts/cuda-device-check.sh there"
