#!/usr/bin/env bash
# `make eval-retrieval`: retrieval quality on four eval sets of different kinds, through Warden's
# own path.
#
# The sets (eval/sets/NAME/questions.jsonl): `manpages` (80 man pages as Markdown,
# scripts/eval-corpus.sh), `pylib` (Python 3.11 library-reference pages, HTML), `pyguide`
# (Python's HOWTOs, tutorial and FAQ, HTML) and `pycapi` (the Python/C API reference, HTML,
# identifier-heavy; the three from Debian's python3.11-doc, scripts/eval-corpus-pydoc.sh).
# EVAL_SETS picks some ("manpages pylib"). Starts Milvus Lite
# (EVAL_ENGINE=lite, the default: Milvus Lite 3.2.2; EVAL_ENGINE=lite25: Milvus Lite 2.5.1, C++)
# on a free port with a fresh data folder, ingests each corpus into its own collection with
# `warden ingest` (the release binary, with a config written here), computes the pure-BM25
# baseline of each without Milvus (scripts/eval_bm25.py), then runs examples/eval_retrieval.rs:
# hit@1/3/5 and MRR@10 per set and mode, their mean, a grid of fusion settings with
# leave-one-set-out choice, and the search latency of dense and hybrid on EVAL_LATENCY_ROWS
# chunks (default 10000; 0 skips it). Milvus is stopped on exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${WARDEN_CACHE:-$HOME/.cache/warden}
target=${CARGO_TARGET_DIR:-$CACHE/target}
warden="$target/release/warden"
evaluate="$target/release/examples/eval_retrieval"
[[ -x "$warden" && -x "$evaluate" ]] ||
  { echo "eval-retrieval.sh: build first: cargo build --release --bin warden --example eval_retrieval" >&2; exit 1; }

engine=${EVAL_ENGINE:-lite}
case "$engine" in
  lite | lite25) ;;
  *) echo "eval-retrieval.sh: EVAL_ENGINE must be lite or lite25, got '$engine'" >&2; exit 2 ;;
esac
export EVAL_ENGINE="$engine"
scripts/milvus.sh setup "$engine"
scripts/models.sh setup
eval "$(scripts/models.sh paths)"
export ORT_DYLIB_PATH EMBED_MODEL_DIR

sets=(${EVAL_SETS:-manpages pylib pyguide pycapi})
for set_name in "${sets[@]}"; do
  [[ -f "eval/sets/$set_name/questions.jsonl" ]] ||
    { echo "eval-retrieval.sh: no eval set '$set_name' (eval/sets/$set_name/questions.jsonl)" >&2; exit 2; }
done
corpus_of() {
  case "$1" in
    manpages) echo "$CACHE/eval-corpus" ;;
    *) echo "$CACHE/eval-corpus-$1" ;;
  esac
}
for set_name in "${sets[@]}"; do
  case "$set_name" in
    manpages) scripts/eval-corpus.sh "$(corpus_of manpages)" >&2 ;;
    *) scripts/eval-corpus-pydoc.sh "$set_name" "$(corpus_of "$set_name")" >&2 ;;
  esac
done

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/warden-eval.XXXXXX")
pid=
cleanup() {
  if [[ -n "$pid" ]]; then scripts/milvus.sh stop "$pid" >/dev/null 2>&1 || true; fi
  rm -rf "$run_dir"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pid=$(scripts/milvus.sh "start-$engine" "$run_dir/milvus" "$port")
export MILVUS_EVAL_URI="http://127.0.0.1:$port"

cat >"$run_dir/eval.toml" <<TOML
# Only what ingestion needs: the embedding model and Milvus (a model entry is required).
[backends.none]
kind = "ollama"
base_url = "http://127.0.0.1:9"
[[models]]
id = "none"
targets = [{ backend = "none", model = "none" }]
[embeddings]
model_dir = "$EMBED_MODEL_DIR"
[milvus]
uri = "$MILVUS_EVAL_URI"
timeout_ms = 60000
TOML

args=()
for set_name in "${sets[@]}"; do
  corpus=$(corpus_of "$set_name")
  collection="eval_$set_name"
  echo "== ingesting $corpus into $collection (Milvus $engine on port $port)" >&2
  "$warden" ingest --config "$run_dir/eval.toml" --collection "$collection" "$corpus" >&2
  echo "== pure BM25 baseline of $set_name (no Milvus)" >&2
  python3 scripts/eval_bm25.py "$corpus" "eval/sets/$set_name/questions.jsonl" --json 2>/dev/null >"$run_dir/$set_name.baseline.json"
  args+=("$set_name=$collection,eval/sets/$set_name/questions.jsonl,$corpus,$run_dir/$set_name.baseline.json")
done

"$evaluate" "${args[@]}"
