#!/usr/bin/env bash
# The corpora of the second and third retrieval eval sets: pages of Python 3.11's HTML
# documentation, as Debian's python3.11-doc package ships them (installed here with apt-get when
# missing). `pylib` holds library-reference pages (API reference), `pyguide` the HOWTOs, the
# tutorial and the FAQ (prose articles). The pages of each set are listed in
# eval/sets/SET/pages.txt; they are copied as they are (HTML), one file per page named after it
# (`library/os.path.html` → `os.path.html`), and Warden's own HTML extraction reads them.
#
# Usage: scripts/eval-corpus-pydoc.sh SET [DIR]   (default: ${WARDEN_CACHE:-$HOME/.cache/warden}/eval-corpus-SET)
#
# DIR is rebuilt from scratch each time; it must be new, empty, or made by this script (it
# leaves a `.warden-eval-corpus` marker). A listed page that is missing is an error.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
set_name="${1:?usage: eval-corpus-pydoc.sh SET [DIR]}"
list="$here/../eval/sets/$set_name/pages.txt"
[[ -f "$list" ]] || { echo "eval-corpus-pydoc: no page list $list" >&2; exit 2; }
out="${2:-${WARDEN_CACHE:-$HOME/.cache/warden}/eval-corpus-$set_name}"
docs="${EVAL_PYDOC:-/usr/share/doc/python3.11/html}"
package=python3.11-doc

source "$here/apt.sh"

if [[ ! -d "$docs/library" ]]; then
  echo "eval-corpus-pydoc: installing $package with apt-get (the pages of $docs)" >&2
  apt_install "$package"
fi

mapfile -t pages < <(grep -v '^\s*\(#\|$\)' "$list")
missing=()
for page in "${pages[@]}"; do
  [[ -f "$docs/$page" ]] || missing+=("$page")
done
if ((${#missing[@]})); then
  echo "eval-corpus-pydoc: ${#missing[@]} listed page(s) missing under $docs: ${missing[*]}" >&2
  exit 1
fi

if [[ -e "$out" ]]; then
  if [[ ! -e "$out/.warden-eval-corpus" ]] && [[ -n "$(ls -A "$out")" ]]; then
    echo "eval-corpus-pydoc: $out is not empty and was not made by this script; refusing to touch it" >&2
    exit 1
  fi
  find "$out" -maxdepth 1 -type f -name '*.html' -delete
fi
mkdir -p "$out"
touch "$out/.warden-eval-corpus"
bytes=0
for page in "${pages[@]}"; do
  dest="$out/$(basename "$page")"
  [[ ! -e "$dest" ]] || { echo "eval-corpus-pydoc: two pages named $(basename "$page")" >&2; exit 1; }
  cp "$docs/$page" "$dest"
  bytes=$((bytes + $(wc -c <"$dest")))
done
echo "eval-corpus-pydoc: ${#pages[@]} documents ($set_name), $bytes bytes of HTML in $out"
