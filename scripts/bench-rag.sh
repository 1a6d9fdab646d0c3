#!/usr/bin/env bash
# The grounding benchmark (`make bench-rag`): starts Milvus on free ports (Lite by default;
# BENCH_RAG_MILVUS=standalone for the Milvus 2.3.5 engine), with the embedding model and ONNX
# Runtime from scripts/models.sh, runs examples/bench_rag.rs (built --release by the Makefile,
# the release `warden` binary beside it) and stops Milvus on exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

engine=${BENCH_RAG_MILVUS:-lite}
[[ $engine == lite || $engine == standalone ]] ||
  { echo "bench-rag.sh: BENCH_RAG_MILVUS must be lite or standalone" >&2; exit 2; }
scripts/milvus.sh setup "$engine"
scripts/models.sh setup
eval "$(scripts/models.sh paths)"

target=${CARGO_TARGET_DIR:-${WARDEN_CACHE:-$HOME/.cache/warden}/target}
bench="$target/release/examples/bench_rag"
[[ -x "$bench" && -x "$target/release/warden" ]] ||
  { echo "bench-rag.sh: build first: cargo build --release --bin warden --example bench_rag" >&2; exit 1; }

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/warden-bench-rag.XXXXXX")
pid=
cleanup() {
  if [[ -n "$pid" ]]; then scripts/milvus.sh stop "$pid" >/dev/null 2>&1 || true; fi
  rm -rf "$run_dir"
}
trap cleanup EXIT

# A free port, or for the standalone engine the first of 12 free ones (it takes PORT..PORT+11).
free_ports() {
  python3 - "$1" <<'PY'
import random, socket, sys
count = int(sys.argv[1])
for _ in range(200):
    base = random.randrange(20000, 60000)
    socks = []
    try:
        for p in range(base, base + count):
            s = socket.socket(); s.bind(("127.0.0.1", p)); socks.append(s)
        print(base); break
    except OSError:
        pass
    finally:
        for s in socks: s.close()
PY
}

if [[ $engine == lite ]]; then
  port=$(free_ports 1)
  pid=$(scripts/milvus.sh start-lite "$run_dir/milvus" "$port")
else
  port=$(free_ports 12)
  pid=$(scripts/milvus.sh start-standalone "$run_dir/milvus" "$port")
fi

export ORT_DYLIB_PATH
export EMBED_TEST_MODEL_DIR="$EMBED_MODEL_DIR"
export MILVUS_BENCH_URI="http://127.0.0.1:$port" BENCH_RAG_MILVUS="$engine"
"$bench"
