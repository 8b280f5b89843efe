#!/usr/bin/env bash
# Runs llama.cpp and model-runner on the same GGUF file, same thread count, in one run
# (per round: llama.cpp, then model-runner), and prints model-runner's figures with ratios
# against llama.cpp's. The same as `cloister bench`, without building the cloister command.
# Usage: model-runner/scripts/bench-vs-llama-cpp.sh [THREADS] [ROUNDS]   (release build)
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${1:-2}
rounds=${2:-3}
model=$(model-runner/scripts/fetch-model.sh)
LLAMA_CPP_BIN=$(model-runner/scripts/build-llama-cpp.sh)
export LLAMA_CPP_BIN
target=${CARGO_TARGET_DIR:-target}
cargo build --release -p cloister-model-runner --example engine_bench >&2
"$target/release/examples/engine_bench" "$model" "$threads" "$rounds"
