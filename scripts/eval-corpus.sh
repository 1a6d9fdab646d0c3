#!/usr/bin/env bash
# The retrieval evaluation's corpus: a fixed list of English manual pages that every machine of
# this kind has (Debian bookworm: coreutils, grep, sed, tar, gzip, findutils, diffutils,
# util-linux, procps, psmisc, passwd, git, make, openssh-client, ...), rendered to plain text by
# man-db and turned into one Markdown file per page, `<name>.<section>.md`.
#
# Usage: scripts/eval-corpus.sh [DIR]   (default: ${WARDEN_CACHE:-$HOME/.cache/warden}/eval-corpus)
#
# DIR is rebuilt from scratch each time. It must be new, empty, or a corpus this script made
# (it leaves a `.warden-eval-corpus` marker; hidden files are not ingested). A listed page that
# is missing is an error: the question set (eval/sets/manpages/questions.jsonl) depends on every one.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-${WARDEN_CACHE:-$HOME/.cache/warden}/eval-corpus}"
mandir="${EVAL_MANDIR:-/usr/share/man}"

# name.section, one per entry. Changing this list means checking eval/sets/manpages/questions.jsonl again.
pages=(
  # coreutils
  cat.1 cp.1 mv.1 rm.1 ln.1 ls.1 mkdir.1 chmod.1 chown.1 touch.1
  head.1 tail.1 sort.1 uniq.1 cut.1 tr.1 wc.1 du.1 df.1 date.1
  dd.1 split.1 tee.1 paste.1 join.1 comm.1 seq.1 base64.1 sha256sum.1 stat.1
  realpath.1 env.1 nohup.1 timeout.1 install.1 mktemp.1 truncate.1 numfmt.1 shred.1
  # text, archives, files
  grep.1 sed.1 tar.1 gzip.1 bzip2.1 find.1 xargs.1 diff.1 cmp.1 patch.1 make.1 file.1
  # openssh-client, git
  ssh-keygen.1 scp.1 ssh-agent.1 ssh-copy-id.1
  git-stash.1 git-bisect.1 git-clean.1 git-revert.1 git-worktree.1
  # procps, psmisc, util-linux, bsdextrautils, man-db, dpkg, passwd
  pgrep.1 kill.1 free.1 watch.1 killall.1 fuser.1
  flock.1 column.1 hexdump.1 ionice.1 fallocate.1 dmesg.1
  apropos.1 update-alternatives.1 passwd.1
  # file formats and administration
  fstab.5 passwd.5 shadow.5 useradd.8 sysctl.8
)

for tool in man col python3; do
  command -v "$tool" >/dev/null || { echo "eval-corpus: '$tool' is needed and not installed" >&2; exit 1; }
done

# Every page first, so that a missing one fails before anything is written.
missing=()
for page in "${pages[@]}"; do
  section="${page##*.}"
  src="$mandir/man$section/$page.gz"
  [[ -e "$src" || -e "$mandir/man$section/$page" ]] || missing+=("$page ($src)")
done
if ((${#missing[@]})); then
  echo "eval-corpus: ${#missing[@]} listed manual page(s) missing on this machine:" >&2
  printf '  %s\n' "${missing[@]}" >&2
  echo "eval-corpus: install the package that ships each (dpkg -S, apt-file), or check that" >&2
  echo "  /etc/dpkg/dpkg.cfg.d does not exclude /usr/share/man; the question set needs every page." >&2
  exit 1
fi

if [[ -e "$out" ]]; then
  if [[ ! -d "$out" ]]; then
    echo "eval-corpus: $out exists and is not a directory" >&2
    exit 1
  fi
  if [[ ! -e "$out/.warden-eval-corpus" ]] && [[ -n "$(ls -A "$out")" ]]; then
    echo "eval-corpus: $out is not empty and was not made by this script; refusing to touch it" >&2
    exit 1
  fi
  find "$out" -maxdepth 1 -type f -name '*.md' -delete
fi
mkdir -p "$out"
touch "$out/.warden-eval-corpus"

export LC_ALL=C.UTF-8 MANWIDTH=100 MANPAGER=cat PAGER=cat
unset MAN_KEEP_FORMATTING MANOPT MANROFFOPT GROFF_SGR

bytes=0
words=0
for page in "${pages[@]}"; do
  section="${page##*.}"
  name="${page%.*}"
  src="$mandir/man$section/$page.gz"
  [[ -e "$src" ]] || src="$mandir/man$section/$page"
  dest="$out/$page.md"
  # --nh --nj: no hyphenation, no justification, so words come out whole and single-spaced.
  rendered="$(man --nh --nj -E UTF-8 -l "$src" 2>/dev/null | col -bx)"
  if [[ -z "$rendered" ]]; then
    echo "eval-corpus: $page rendered to nothing ($src)" >&2
    exit 1
  fi
  printf '%s\n' "$rendered" | python3 "$here/man_to_markdown.py" "$name" "$section" >"$dest"
  bytes=$((bytes + $(wc -c <"$dest")))
  words=$((words + $(wc -w <"$dest")))
done

echo "eval-corpus: ${#pages[@]} documents, $bytes bytes, $words words (~$((words / 150)) chunks of ~150 words) in $out"
