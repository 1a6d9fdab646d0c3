#!/usr/bin/env bash
# What the console's browser test needs for `make test`: Debian's Chromium (packages chromium
# and chromium-driver, /usr/bin/chromium) and npm's playwright-core at the version pinned in
# tests/console/node/package.json and package-lock.json, installed with `npm ci` into DIR.
#
#   scripts/console-browser.sh DIR     # DIR/node_modules/playwright-core afterwards
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: scripts/console-browser.sh DIR}

source scripts/apt.sh
if ! command -v chromium >/dev/null; then
  echo "console-browser.sh: installing chromium with apt-get" >&2
  apt_install chromium chromium-driver
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "console-browser.sh: installing nodejs and npm with apt-get" >&2
  apt_install nodejs npm
fi
mkdir -p "$dir"
if ! cmp -s tests/console/node/package-lock.json "$dir/package-lock.json" || [ ! -d "$dir/node_modules/playwright-core" ]; then
  cp tests/console/node/package.json tests/console/node/package-lock.json "$dir/"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
fi
