#!/usr/bin/env bash
# The main job: build the Cloister image (kernel, initramfs with the default model, command
# line, manifest) from the pinned inputs, then boot it under QEMU with its web ports
# forwarded to 127.0.0.1. Extra arguments go to `cloister run` (try --detach or --dry-run).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export CLOISTER_CACHE=${CLOISTER_CACHE:-/var/cache/cloister}
"$here/scripts/setup.sh"
cargo run --release --locked -q -p cloister -- build --out target/cloister-image
exec cargo run --release --locked -q -p cloister -- run "$@"
