#!/bin/sh
# Runs on the GPU machine, from the repository root, after model-runner/scripts/cuda-prepare.sh
# filled .device/ here: shows the GPU and where libnvrtc is, then runs the CUDA tests
# (CLOISTER_REQUIRE_CUDA=1: a missing GPU fails them instead of skipping) and the
# CPU-vs-CUDA benchmark, each under a timeout. Needs no Rust and no network.
#   TEST_TIMEOUT_S (default 300), BENCH_TIMEOUT_S (default 240), BENCH_NEW_TOKENS (default 64)
set -u
dir=.device
[ -x "$dir/cuda-tests" ] || { echo "no $dir/cuda-tests: run model-runner/scripts/cuda-prepare.sh first" >&2; exit 2; }
echo "== nvidia-smi"
nvidia-smi || echo "nvidia-smi failed"
echo "== libnvrtc"
found=""
for d in ${LD_LIBRARY_PATH:+$(echo "$LD_LIBRARY_PATH" | tr ':' ' ')} /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu /usr/local/cuda-*/lib64 /opt/cuda/lib64; do
    for f in "$d"/libnvrtc.so*; do
        [ -e "$f" ] || continue
        case "$f" in *builtins*) continue ;; esac
        echo "$f"
        [ -n "$found" ] || found="$f"
    done
done
[ -n "$found" ] || found=$(ldconfig -p 2>/dev/null | sed -n 's/.*libnvrtc\.so[^ ]* => \(.*\)$/\1/p' | head -n1)
if [ -z "$found" ]; then
    echo "libnvrtc not found: the tests will fail with a clear error" >&2
else
    echo "using $found"
    nvrtc_dir=$(dirname "$found")
    # The binaries look for libnvrtc.so, libnvrtc.so.12, ...: give a CUDA 13 (or other)
    # library an unversioned name in a private folder.
    shim=$(mktemp -d)
    ln -s "$found" "$shim/libnvrtc.so"
    export LD_LIBRARY_PATH="$shim:$nvrtc_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
rc=0
echo "== cuda tests"
CLOISTER_REQUIRE_CUDA=1 RUST_BACKTRACE=1 timeout "${TEST_TIMEOUT_S:-300}" \
    "$dir/cuda-tests" --test-threads=1 --nocapture || rc=$?
echo "cuda tests: exit $rc"
echo "== cuda_bench"
brc=0
timeout "${BENCH_TIMEOUT_S:-240}" "$dir/cuda_bench" "${BENCH_NEW_TOKENS:-64}" || brc=$?
echo "cuda_bench: exit $brc"
[ "$rc" -eq 0 ] && [ "$brc" -eq 0 ]
