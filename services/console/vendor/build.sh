#!/usr/bin/env bash
# Rebuilds services/console/static/vendor/nats-core.js: the official NATS JavaScript client
# (@nats-io/nats-core, pinned in package.json) bundled by esbuild into one minified ES module
# the page imports. Needs node and npm, at build time only; the result is committed, so
# `make run` needs nothing but Python. Run it after changing the versions in package.json:
#   services/console/vendor/build.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/../static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$here/package.json" "$work/"
[ -f "$here/package-lock.json" ] && cp "$here/package-lock.json" "$work/"
cd "$work"
npm install --no-audit --no-fund --loglevel=error
cp package-lock.json "$here/package-lock.json"
cp "$here/entry.mjs" entry.mjs
npx esbuild entry.mjs --bundle --format=esm --target=es2020 --minify --legal-comments=eof \
  --outfile="$out/nats-core.js"
# the licences of everything bundled (nats-core and its dependencies; esbuild is not bundled)
for pkg in $(cd node_modules && ls -d @nats-io/* tweetnacl 2>/dev/null); do
  printf '==== %s ====\n\n' "$pkg"
  cat node_modules/"$pkg"/LICENSE* 2>/dev/null || echo "(no licence file in the package)"
  printf '\n'
done > "$out/nats-core.LICENSE"
version="$(node -p 'JSON.parse(require("fs").readFileSync("node_modules/@nats-io/nats-core/package.json")).version')"
printf '@nats-io/nats-core %s, bundled with esbuild %s by services/console/vendor/build.sh\n' \
  "$version" "$(npx esbuild --version)" > "$out/nats-core.VERSION"
echo "wrote $out/nats-core.js ($(wc -c < "$out/nats-core.js") bytes), nats-core $version"
