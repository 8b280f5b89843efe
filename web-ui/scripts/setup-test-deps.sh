#!/bin/sh
# What web-ui's tests need beyond Rust, for CI and fresh machines (Debian 12, as root):
#   pebble    the ACME test CA (tests/acme_pebble.rs), with pebble-challtestsrv: Debian
#             trixie's package at a pinned version and sha256 (bookworm's 2.4 has no ACME
#             renewal information, ARI, which the tests need), fetched by
#             scripts/lib/trixie-apt.sh (a private apt configuration on this machine's
#             Debian mirror; cached under $CLOISTER_CACHE, default /var/cache/cloister)
#             and installed over bookworm's with dpkg
#   chromium  the browser for tests/browser_flows.rs (driven by playwright-core)
#   openssl   makes Pebble's API certificate at test time
#   wrk       the static-asset benchmark (docs/benchmarks.md)
#   node >= 20 and npm, then `npm ci` of the pinned playwright-core in tests/browser/
# Then CI runs the tests with CLOISTER_REQUIRE_BROWSER=1 CLOISTER_REQUIRE_PEBBLE=1 so a
# missing dependency fails instead of skipping.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive

# shellcheck source=../../scripts/lib/trixie-apt.sh
. "$here/../scripts/lib/trixie-apt.sh"
PEBBLE_VERSION="2.6.0+ds1-1+b7"
PEBBLE_DEB_SHA256="94a4e1269abcad428d1276de74b984b123ac83e0313541951c41bdcb006147d3"

if [ "$(dpkg-query -W -f '${Version}' pebble 2>/dev/null || true)" != "$PEBBLE_VERSION" ]; then
    pebble_deb=$(trixie_download pebble "$PEBBLE_VERSION" "$PEBBLE_DEB_SHA256")
    # Its only dependency is libc6 (>= 2.34), which bookworm has.
    dpkg -i "$pebble_deb" >&2
fi

missing=""
for package in chromium openssl wrk; do
    dpkg -s "$package" >/dev/null 2>&1 || missing="$missing $package"
done
if ! command -v node >/dev/null 2>&1; then
    missing="$missing nodejs npm"
fi
if [ -n "$missing" ]; then
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
    echo "setup-test-deps: node $node_major is too old for playwright-core; need 20 or later" >&2
    exit 1
fi
cd "$here/tests/browser"
npm ci --no-audit --no-fund --ignore-scripts
