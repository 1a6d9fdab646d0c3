#!/usr/bin/env bash
# The official OpenAI Node SDK for `make test`: npm's `openai`, at the version pinned in
# tests/sdk/node/package.json and package-lock.json, installed with `npm ci` into DIR.
# Node.js and npm come from Debian (apt-get) when the machine has none.
#
#   scripts/node-sdk.sh DIR     # DIR/node_modules/openai afterwards
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: scripts/node-sdk.sh DIR}

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "node-sdk.sh: installing nodejs and npm with apt-get" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
mkdir -p "$dir"
cp tests/sdk/node/package.json tests/sdk/node/package-lock.json "$dir/"
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
