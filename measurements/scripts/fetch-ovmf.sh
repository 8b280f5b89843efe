#!/usr/bin/env bash
# Fetch the reference TDVF firmware, Debian trixie's `ovmf` package at the version and digests
# pinned in image/lock.toml's [firmware] table (the one place they are written), and extract
# OVMF.fd from it. Prints the path of OVMF.fd.
#
# Usage: measurements/scripts/fetch-ovmf.sh        (needs apt-get, dpkg-deb, sha256sum)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
# shellcheck source=../../scripts/lib/trixie-apt.sh
. "$root/scripts/lib/trixie-apt.sh"

# One key of the [firmware] table of the lock, as a bare string.
firmware() {
    awk -v key="$1" '
        /^\[/ { table = $0 }
        table == "[firmware]" && $1 == key { sub(/^[^=]*= *"/, ""); sub(/".*$/, ""); print; exit }
    ' "$root/image/lock.toml"
}
package="$(firmware package)"
version="$(firmware version)"
deb_sha256="$(firmware sha256)"
file="$(firmware file)"
file_sha256="$(firmware file_sha256)"
out="$CLOISTER_CACHE/ovmf/$version"

if [ -f "$out/OVMF.fd" ] && echo "$file_sha256  $out/OVMF.fd" | sha256sum -c --status; then
    echo "$out/OVMF.fd"
    exit 0
fi
deb="$(trixie_download "$package" "$version" "$deb_sha256")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$deb" "$work/root"
mkdir -p "$out"
cp "$work/root/$file" "$out/OVMF.fd.tmp"
echo "$file_sha256  $out/OVMF.fd.tmp" | sha256sum -c --status || {
    echo "fetch-ovmf: $file has sha256 $(sha256sum "$out/OVMF.fd.tmp" | cut -d' ' -f1), expected $file_sha256" >&2
    exit 1
}
mv "$out/OVMF.fd.tmp" "$out/OVMF.fd"
echo "$out/OVMF.fd"
