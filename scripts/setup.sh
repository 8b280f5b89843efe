#!/usr/bin/env bash
# Installs what Cloister's build and tests need on a Debian 12 machine, idempotently.
# Every download is cached under $CLOISTER_CACHE (default /var/cache/cloister), so a second
# run is quick and a fresh machine only slower. Needs root for apt-get.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${CLOISTER_CACHE:-/var/cache/cloister}
mkdir -p "$cache"

say() { printf '==> %s\n' "$*" >&2; }

# Debian packages. Only those missing are installed; `apt-get update` runs only when needed.
packages=(qemu-system-x86 zstd cpio)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The pinned toolchain's target and components (RUSTUP_AUTO_INSTALL=0 on our machines).
toolchain=$(sed -n 's/^channel = "\(.*\)"/\1/p' "$here/rust-toolchain.toml")
rustup toolchain list | grep -q "^$toolchain" || rustup toolchain install "$toolchain" --profile minimal
rustup component add --toolchain "$toolchain" rustfmt clippy >/dev/null 2>&1
rustup target add --toolchain "$toolchain" x86_64-unknown-linux-musl >/dev/null 2>&1
