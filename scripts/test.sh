#!/usr/bin/env bash
# The whole test suite, with the real services it needs, all on 127.0.0.1 with free ports:
#   - Milvus Lite 3.2.2 for the everyday suite, then Milvus Lite 2.5.1 (C++) and the Milvus 2.3.5
#     standalone engine for the engine-compatibility runs of the same store and retrieval tests;
#   - the embedding model (all-MiniLM-L6-v2 as ONNX) and ONNX Runtime, from PyPI packages;
#   - llama.cpp's llama-server with a small GGUF model, for the real OpenAI-compatible backend;
#   - the official openai Python SDK (a venv made by `make sdk-venv`) and Node SDK (npm's
#     openai, installed by `make sdk-node`);
#   - redis-server (Debian's) for the limits shared by several replicas; the outage tests start
#     and stop servers of their own.
# Everything is fetched and built once into ${WARDEN_CACHE:-$HOME/.cache/warden} by the scripts
# below; the servers started here are stopped on exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/milvus.sh setup
scripts/models.sh setup
scripts/llama-server.sh setup
scripts/redis.sh setup
eval "$(scripts/models.sh paths)"
eval "$(scripts/redis.sh paths)"
eval "$(scripts/llama-server.sh paths)"

CACHE=${WARDEN_CACHE:-$HOME/.cache/warden}
run_dir=$(mktemp -d "${TMPDIR:-/tmp}/warden-test.XXXXXX")
pids=()
redis_pid=
cleanup() {
  [[ -z "$redis_pid" ]] || scripts/redis.sh stop "$redis_pid" >/dev/null 2>&1 || true
  for pid in "${pids[@]}"; do scripts/milvus.sh stop "$pid" >/dev/null 2>&1 || true; done
  rm -rf "$run_dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# The standalone engine takes PORT..PORT+11: find a base where all of them are free.
free_block() {
  python3 - <<'PY'
import random, socket
for _ in range(200):
    base = random.randrange(20000, 60000)
    socks = []
    try:
        for p in range(base, base + 12):
            s = socket.socket(); s.bind(("127.0.0.1", p)); socks.append(s)
        print(base); break
    except OSError:
        pass
    finally:
        for s in socks: s.close()
PY
}

lite_port=$(free_port)
pids+=("$(scripts/milvus.sh start-lite "$run_dir/lite" "$lite_port")")

redis_port=$(free_port)
redis_pid=$(scripts/redis.sh start "$run_dir/redis" "$redis_port")

export REDIS_TEST_URL="redis://127.0.0.1:$redis_port" REDIS_SERVER_BIN
export OPENAI_SDK_PYTHON="$CACHE/sdk-venv/bin/python"
export OPENAI_NODE_MODULES="$CACHE/sdk-node/node_modules"
export PLAYWRIGHT_MODULES="$CACHE/console-browser/node_modules" CHROMIUM_BIN="$(command -v chromium)"
export ORT_DYLIB_PATH
export EMBED_TEST_MODEL_DIR="$EMBED_MODEL_DIR"
export LLAMA_SERVER_BIN LLAMA_MODEL
export MILVUS_TEST_URI="http://127.0.0.1:$lite_port"
# What the server under test is and can do, so tests check that Warden found out the same by itself.
export MILVUS_TEST_ENGINE=lite MILVUS_TEST_FULL_TEXT=yes
cargo test --locked -- --include-ignored

echo "== engine compatibility: store and retrieval tests on Milvus Lite 2.5.1"
lite25_port=$(free_port)
pids+=("$(scripts/milvus.sh start-lite25 "$run_dir/lite25" "$lite25_port")")
MILVUS_TEST_URI="http://127.0.0.1:$lite25_port" MILVUS_TEST_ENGINE=lite25 MILVUS_TEST_FULL_TEXT=yes cargo test --locked --test integration -- --include-ignored store:: retrieval::

echo "== engine compatibility: store and retrieval tests on Milvus 2.3.5 standalone"
standalone_port=$(free_block)
pids+=("$(scripts/milvus.sh start-standalone "$run_dir/standalone" "$standalone_port")")
MILVUS_TEST_URI="http://127.0.0.1:$standalone_port" MILVUS_TEST_ENGINE=standalone MILVUS_TEST_FULL_TEXT=no cargo test --locked --test integration -- --include-ignored store:: retrieval::
