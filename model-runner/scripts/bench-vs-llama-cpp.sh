#!/usr/bin/env bash
# Runs llama.cpp and model-runner on the same GGUF file, same thread count, one after the
# other in one run, and prints model-runner's figures with ratios against llama.cpp's.
# Usage: model-runner/scripts/bench-vs-llama-cpp.sh [THREADS]   (release build of the bench)
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${1:-2}
model=$(model-runner/scripts/fetch-model.sh)
llama=$(model-runner/scripts/build-llama-cpp.sh)
target=${CARGO_TARGET_DIR:-target}
cargo build --release -p cloister-model-runner --example engine_bench >&2

echo "== llama.cpp: llama-bench -m MODEL -t $threads -p 512 -n 128 -o json" >&2
bench_json=$("$llama/llama-bench" -m "$model" -t "$threads" -p 512 -n 128 -o json 2>/dev/null)
echo "== llama.cpp: llama-batched-bench -m MODEL -t $threads -c 8192 -npp 8 -ntg 128 -npl 1,8,32" >&2
batched=$("$llama/llama-batched-bench" -m "$model" -t "$threads" -tb "$threads" -c 8192 -b 2048 -ub 512 \
    -npp 8 -ntg 128 -npl 1,8,32 2>/dev/null)
eval "$(BENCH_JSON="$bench_json" BATCHED="$batched" python3 - <<'PY'
import json, os
for r in json.loads(os.environ["BENCH_JSON"]):
    if r["n_prompt"] == 512 and r["n_gen"] == 0:
        print(f"export LLAMA_CPP_PP512={r['avg_ts']:.2f}")
    if r["n_gen"] == 128 and r["n_prompt"] == 0:
        print(f"export LLAMA_CPP_TG128={r['avg_ts']:.2f}")
for line in os.environ["BATCHED"].splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) >= 8 and cells[0] == "8" and cells[1] == "128" and cells[2] in ("8", "32"):
        print(f"export LLAMA_CPP_TG_{cells[2]}={float(cells[7]):.2f}")
PY
)"
env | grep '^LLAMA_CPP_' >&2 || true
echo "$batched" >&2
"$target/release/examples/engine_bench" "$model" "$threads"
