#!/bin/sh
# What web-ui's tests need beyond Rust, for CI and fresh machines (Debian 12, as root):
#   pebble    the ACME test CA (tests/acme_pebble.rs), with pebble-challtestsrv
#   chromium  the browser for tests/browser_flows.rs (driven by playwright-core)
#   openssl   makes Pebble's API certificate at test time
#   wrk       the static-asset benchmark (docs/benchmarks.md)
#   node >= 20 and npm, then `npm ci` of the pinned playwright-core in tests/browser/
# Then CI runs the tests with CLOISTER_REQUIRE_BROWSER=1 CLOISTER_REQUIRE_PEBBLE=1 so a
# missing dependency fails instead of skipping.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive
missing=""
for package in pebble chromium openssl wrk; do
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
