#!/usr/bin/env bash
# Prints the newest trixie versions and sha256 digests of the Debian packages pinned in
# image/lock.toml, read through a private apt configuration (its own sources list, lists
# and state under $CLOISTER_CACHE/apt-update) that reuses the Debian mirror configured on
# this machine. It changes nothing: copy what it prints into image/lock.toml by hand,
# rebuild, and publish the new measurements.
set -euo pipefail
cache=${CLOISTER_CACHE:-/var/cache/cloister}
d="$cache/apt-update"
mkdir -p "$d"/{etc/sources.list.d,etc/preferences.d,lists/partial,archives/partial,state}
touch "$d/state/status"

# The first Debian archive (and security archive) configured on this machine.
uris=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
  sed -n -e 's/^URIs:[[:space:]]*//p' -e 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\).*/\2/p' || true)
archive=$(grep -v -- '-security' <<<"$uris" | grep '/debian/\?$' | head -n1)
security=$(grep -- '-security' <<<"$uris" | head -n1 || true)
[[ -n $archive ]] || { echo "no Debian archive configured in /etc/apt" >&2; exit 1; }
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
{
  echo "deb [arch=amd64 signed-by=$keyring] ${archive%/} trixie main"
  [[ -z $security ]] || echo "deb [arch=amd64 signed-by=$keyring] ${security%/} trixie-security main"
} >"$d/etc/sources.list"
apt=(-o "Dir::Etc=$d/etc" -o "Dir::Etc::sourcelist=$d/etc/sources.list"
  -o "Dir::Etc::sourceparts=$d/etc/sources.list.d" -o "Dir::State=$d/state"
  -o "Dir::State::lists=$d/lists" -o "Dir::State::status=$d/state/status"
  -o "Dir::Cache=$d" -o "Debug::NoLocking=1" -q)
apt-get "${apt[@]}" update >/dev/null

show() { # package -> version and sha256 of its newest version
  apt-cache "${apt[@]}" show "$1" | awk -v p="$1" '
    /^Version:/ {v=$2} /^SHA256:/ {s=$2}
    /^$/ && v {print p, v, s; v=""} END {if (v) print p, v, s}' | sort -V -k2 | tail -n1
}
kernel=$(apt-cache "${apt[@]}" pkgnames linux-image-6.12. | grep -E -- '-cloud-amd64$' | sort -V | tail -n1)
echo "# package version sha256"
show "$kernel"
show ovmf
echo "# kernel release (lock [kernel] release): ${kernel#linux-image-}"
