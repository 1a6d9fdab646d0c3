#!/usr/bin/env bash
# The official OpenAI Node SDK for `make test`: npm's `openai`, at the version pinned in
# tests/sdk/node/package.json and package-lock.json, installed with `npm ci` into DIR.
# Node.js and npm come from Debian (apt-get) when the machine has none.
#
#   scripts/node-sdk.sh DIR     # DIR/node_modules/openai afterwards
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: scripts/node-sdk.sh DIR}

source scripts/apt.sh
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "node-sdk.sh: installing nodejs and npm with apt-get" >&2
  apt_install nodejs npm
fi
mkdir -p "$dir"
cp tests/sdk/node/package.json tests/sdk/node/package-lock.json "$dir/"
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
