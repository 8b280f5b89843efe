#!/usr/bin/env bash
# Runs every test of the workspace: unit tests beside the code and the end-to-end tests
# in tests/. Installs what they need first (scripts/setup.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
"$here/scripts/setup.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${CLOISTER_CACHE:-/var/cache/cloister}/target}
cargo test --workspace --locked --no-fail-fast
