#!/usr/bin/env bash
# Installs what Cloister's build needs on a Debian 12 machine, idempotently; with --tests,
# also what the tests alone need (Pebble, Chromium, node and playwright-core, wrk, the model
# fixture, the reference OVMF). scripts/run.sh calls it plain, scripts/test.sh with --tests.
# Every download is cached under $CLOISTER_CACHE (default /var/cache/cloister), so a second
# run is quick and a fresh machine only slower. Needs root for apt-get.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export CLOISTER_CACHE=${CLOISTER_CACHE:-/var/cache/cloister}
mkdir -p "$CLOISTER_CACHE"

say() { printf '==> setup: %s\n' "$*" >&2; }

# Debian packages, only the missing ones installed.
install_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}
# The image build (python3 and pip fetch pinned packages, image/src/fetch.rs) and boot.
install_packages qemu-system-x86 zstd cpio iproute2 util-linux xz-utils git python3 python3-pip \
  python3-venv ca-certificates debian-archive-keyring musl-tools libc-bin

# The pinned toolchain's target and components (RUSTUP_AUTO_INSTALL=0 on our machines).
toolchain=$(sed -n 's/^channel = "\(.*\)"/\1/p' "$here/rust-toolchain.toml")
rustup toolchain list | grep -q "^$toolchain" || rustup toolchain install "$toolchain" --profile minimal
rustup component add --toolchain "$toolchain" rustfmt clippy >/dev/null 2>&1
rustup target add --toolchain "$toolchain" x86_64-unknown-linux-musl wasm32-unknown-unknown >/dev/null 2>&1

# `cloister run`'s host channel where the host kernel has no vhost-vsock (docs/vsock.md):
# rust-vmm's vhost-user vsock backend, built from its crate with its own lock, pinned.
vhost_vsock_version=0.3.0
vhost_vsock_root=$CLOISTER_CACHE/vhost-device-vsock-$vhost_vsock_version
if [[ ! -x $vhost_vsock_root/bin/vhost-device-vsock ]]; then
  say "vhost-device-vsock $vhost_vsock_version"
  CARGO_TARGET_DIR=$CLOISTER_CACHE/target-vhost-device-vsock cargo install --locked --quiet \
    --root "$vhost_vsock_root" "vhost-device-vsock@$vhost_vsock_version"
  rm -rf "$CLOISTER_CACHE/target-vhost-device-vsock"
fi

case ${1:-} in
  --tests) ;;
  "") exit 0 ;;
  *) echo "usage: $0 [--tests]" >&2; exit 2 ;;
esac

# web-ui's tests: Pebble (ACME), Chromium and playwright-core (passkeys), openssl, wrk.
say "web-ui test dependencies"
"$here/web-ui/scripts/setup-test-deps.sh" >&2

# Pinned downloads, checked by sha256 and cached: the model fixture and the reference OVMF.
say "model fixture"
CLOISTER_MODEL=$("$here/model-runner/scripts/fetch-model.sh")
say "reference OVMF"
CLOISTER_OVMF=$("$here/measurements/scripts/fetch-ovmf.sh")
printf 'CLOISTER_MODEL=%s\nCLOISTER_OVMF=%s\n' "$CLOISTER_MODEL" "$CLOISTER_OVMF" >"$CLOISTER_CACHE/fixtures.env"
