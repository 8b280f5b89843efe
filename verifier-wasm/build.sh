#!/bin/sh
# Builds the browser's attestation verifier, verifier.wasm, reproducibly, and prints its path.
#
#   verifier-wasm/build.sh [DEST]    # DEST: also copy the file there
#
# Reproducible: --locked (Cargo.lock's exact versions), --release, the pinned toolchain
# (rust-toolchain.toml), and paths remapped so the output does not name this checkout or
# this cargo home. Small: size-optimised (opt-level "s"), fat LTO, panic=abort and stripped,
# set here with --config for this build only (the workspace's release profile is left as
# it is). Its own target folder keeps these settings from rebuilding anyone else's.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=wasm32-unknown-unknown
if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target" >&2
fi
target_dir="${CARGO_TARGET_DIR:-$root/target}/verifier-wasm"
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
RUSTFLAGS="--remap-path-prefix=$root=/cloister --remap-path-prefix=$cargo_home=/cargo" \
    cargo build --locked --release --target "$target" -p cloister-verifier-wasm \
    --target-dir "$target_dir" \
    --config 'profile.release.opt-level="s"' \
    --config 'profile.release.lto=true' \
    --config 'profile.release.codegen-units=1' \
    --config 'profile.release.panic="abort"' \
    --config 'profile.release.strip=true' >&2
out="$target_dir/$target/release/cloister_verifier_wasm.wasm"
if [ $# -ge 1 ]; then
    cp "$out" "$1"
    out=$1
fi
echo "$out"
