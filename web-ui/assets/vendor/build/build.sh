#!/bin/sh
# Rebuilds the vendored HPKE library, ../hpke-core-1.9.0.js, from the packages pinned in
# package-lock.json (exact versions and registry integrity hashes), and rewrites
# ../vendor-lock.json with the sha256 of every vendored file. A maintainer's tool: the build
# and the tests use the committed files and never run it. Rerunning it on an unchanged lock
# must give byte-identical files (web-ui/tests/protocol_vectors_browser.rs checks the hashes).
set -eu
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --ignore-scripts
node_modules/.bin/esbuild entry.js --bundle --format=esm --platform=browser --target=es2022 \
  --legal-comments=inline --charset=utf8 --log-level=warning \
  --banner:js="// @hpke/core 1.9.0 and @hpke/common 1.10.1 (MIT licence, ../LICENSE-hpke-js), flattened into one ES module by web-ui/assets/vendor/build/build.sh with esbuild 0.28.2. Do not edit: rebuild." \
  --outfile=../hpke-core-1.9.0.js
{
  echo "@hpke/core 1.9.0:"; echo; cat node_modules/@hpke/core/LICENSE; echo
  echo "@hpke/common 1.10.1:"; echo; cat node_modules/@hpke/common/LICENSE
} > ../LICENSE-hpke-js
node write-lock.mjs
