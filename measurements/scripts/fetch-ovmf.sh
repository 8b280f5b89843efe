#!/usr/bin/env bash
# Fetch the reference TDVF firmware: Debian trixie's `ovmf` package, at a pinned version
# and digest, and extract /usr/share/ovmf/OVMF.fd from it. Prints the path of OVMF.fd.
#
# The system's apt is left untouched: a private apt configuration (its own sources list,
# lists and cache folders) points at the Debian mirror already configured on this machine,
# read from /etc/apt/sources.list(.d) at run time. No mirror host is written here; the
# pinned sha256 digests are what make any mirror trustworthy.
#
# Usage: measurements/scripts/fetch-ovmf.sh        (needs apt-get, dpkg-deb, sha256sum)
set -euo pipefail

OVMF_VERSION="2025.02-8+deb13u1"
OVMF_DEB_SHA256="78e0d54df11fc77406cb7a0bc9a39e5bca6d1cbe06556b91d9a73491c52decdf"
OVMF_FD_SHA256="14954040cc754ade0c625ac3470ea46d4c14318b5b1396de4ef77090203d76db"
CACHE="${CLOISTER_CACHE:-/var/cache/cloister}"
OUT="$CACHE/ovmf/$OVMF_VERSION"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

if [ -f "$OUT/OVMF.fd" ] && echo "$OVMF_FD_SHA256  $OUT/OVMF.fd" | sha256sum -c --status; then
    echo "$OUT/OVMF.fd"
    exit 0
fi

# The machine's Debian mirror: the first URI of a deb source for the main archive.
mirror() {
    {
        grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'
        grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
            sed -E 's/^deb (\[[^]]*\] )?//' | awk '{print $1}'
    } | grep -E '/debian/?$' | grep -v security | head -n1
}
MIRROR="$(mirror || true)"
if [ -z "$MIRROR" ]; then
    echo "fetch-ovmf: no Debian mirror in /etc/apt/sources.list(.d)" >&2
    exit 1
fi
SECURITY="${MIRROR%/debian}/debian-security"
[ "${MIRROR%/}" = "$MIRROR" ] || SECURITY="${MIRROR%/debian/}/debian-security"

APT="$CACHE/apt-trixie"
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/etc/preferences.d" "$OUT"
cat >"$APT/etc/sources.list" <<LIST
deb [signed-by=$KEYRING] $MIRROR trixie main
deb [signed-by=$KEYRING] $MIRROR trixie-updates main
deb [signed-by=$KEYRING] $SECURITY trixie-security main
LIST
apt_private() {
    apt-get -q \
        -o Dir::Etc::SourceList="$APT/etc/sources.list" \
        -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::Etc::PreferencesParts="$APT/etc/preferences.d" \
        -o Dir::State::Lists="$APT/lists" \
        -o Dir::Cache="$APT/cache" \
        -o Dir::State::Status=/dev/null \
        -o APT::Architecture=amd64 \
        "$@"
}
apt_private update >&2
WORK="$(mktemp -d)"
chmod 755 "$WORK"  # apt downloads as the _apt user
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && apt_private download "ovmf=$OVMF_VERSION" >&2)
DEB="$(ls "$WORK"/ovmf_*.deb)"
echo "$OVMF_DEB_SHA256  $DEB" | sha256sum -c --status || {
    echo "fetch-ovmf: $DEB has sha256 $(sha256sum "$DEB" | cut -d' ' -f1), expected $OVMF_DEB_SHA256" >&2
    exit 1
}
dpkg-deb -x "$DEB" "$WORK/root"
cp "$WORK/root/usr/share/ovmf/OVMF.fd" "$OUT/OVMF.fd.tmp"
echo "$OVMF_FD_SHA256  $OUT/OVMF.fd.tmp" | sha256sum -c --status || {
    echo "fetch-ovmf: OVMF.fd has sha256 $(sha256sum "$OUT/OVMF.fd.tmp" | cut -d' ' -f1), expected $OVMF_FD_SHA256" >&2
    exit 1
}
mv "$OUT/OVMF.fd.tmp" "$OUT/OVMF.fd"
echo "$OUT/OVMF.fd"
