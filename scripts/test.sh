#!/usr/bin/env bash
# Runs every test of the workspace: unit tests beside the code and the end-to-end tests
# (QEMU boot, Pebble, Chromium, the real model). Installs what they need first
# (scripts/setup.sh --tests). Dependencies that are missing make tests fail here, never skip.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export CLOISTER_CACHE=${CLOISTER_CACHE:-/var/cache/cloister}
"$here/scripts/setup.sh" --tests
set -a
# shellcheck disable=SC1091
. "$CLOISTER_CACHE/fixtures.env"
set +a
export CLOISTER_REQUIRE_BROWSER=1 CLOISTER_REQUIRE_PEBBLE=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CLOISTER_CACHE/target}
# The README's build on a host without TDX (scripts/run.sh): the model and the SIMULATED
# TEE. It fetches and checks the pinned kernel, which the measurement tests read
# (CLOISTER_KERNEL), and compiles the guest binaries into the folder the image tests share,
# so tests/tests/booted_chat.rs, which boots the same image, finds them built.
cargo build --release --locked -q -p cloister
export CLOISTER_GUEST_TARGET_DIR=$CLOISTER_CACHE/target-guest
CARGO_TARGET_DIR=$CLOISTER_GUEST_TARGET_DIR "$CARGO_TARGET_DIR/release/cloister" \
  build --tee simulated --out "$CLOISTER_CACHE/test-image"
export CLOISTER_KERNEL=$CLOISTER_CACHE/test-image/vmlinuz
# tests/tests/model_disk.rs boots this image (its model disk) instead of building its own.
export CLOISTER_TEST_IMAGE=$CLOISTER_CACHE/test-image
# The browser's attestation verifier (wasm), for the Chromium tests that load it.
CLOISTER_VERIFIER_WASM=$("$here/verifier-wasm/build.sh")
export CLOISTER_VERIFIER_WASM
cargo test --workspace --locked --no-fail-fast
# The attested chat against the simulated TEE: a feature that no production build has.
cargo test --locked -p cloister-web-ui --features simulated-tee --test chat_api --test chat_browser \
  --test console_browser --test hostile_attestation
# `cloister verify` against that web-ui (the binary the previous step built).
CLOISTER_WEB_UI_BIN=$CARGO_TARGET_DIR/debug/web-ui CLOISTER_REQUIRE_WEB_UI=1 \
  cargo test --locked -p cloister --test verify_web_ui
# model-runner's CUDA path: without a GPU its device tests say SKIPPED; the rest (errors
# without a device, the synthetic model) run. On a GPU machine, CLOISTER_REQUIRE_CUDA=1.
cargo test --locked -p cloister-model-runner --features cuda --test cuda
