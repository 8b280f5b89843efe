#!/usr/bin/env bash
# Builds llama.cpp's llama-bench, llama-batched-bench and llama-server from the source that
# the PyPI sdist of llama-cpp-python vendors, for side-by-side benchmarks against
# model-runner. Portable flags only: GGML_NATIVE=OFF (this CPU advertises AMX but traps
# it), AMX off, AVX2/FMA/F16C/AVX-512 on. CMake and Ninja come from PyPI too.
#
# Cache: $CLOISTER_CACHE/llama-cpp-<version> (default /var/cache/cloister). Prints the folder
# holding the binaries. About 6 minutes on 2 cores the first time.
set -euo pipefail

VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
cache="${CLOISTER_CACHE:-/var/cache/cloister}/llama-cpp-$VERSION"
bin="$cache/build/bin"
if [ -x "$bin/llama-bench" ] && [ -x "$bin/llama-batched-bench" ] && [ -x "$bin/llama-server" ]; then
    echo "$bin"
    exit 0
fi
mkdir -p "$cache"
cd "$cache"
if [ ! -x venv/bin/cmake ]; then
    python3 -m venv venv >&2
    venv/bin/pip install --quiet --disable-pip-version-check cmake ninja >&2
fi
if [ ! -d src ]; then
    venv/bin/pip download --quiet --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$VERSION" -d sdist >&2
    mkdir -p src
    tar -xzf sdist/llama_cpp_python-"$VERSION".tar.gz -C src --strip-components=1
fi
PATH="$cache/venv/bin:$PATH" cmake -S src/vendor/llama.cpp -B build -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
    -DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
    -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON >&2
PATH="$cache/venv/bin:$PATH" cmake --build build -j "$(nproc)" \
    --target llama-bench llama-batched-bench llama-server >&2
echo "$bin"
