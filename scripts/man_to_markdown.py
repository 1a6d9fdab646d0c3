#!/usr/bin/env python3
"""Rendered manual page (plain text, as `man -l FILE | col -bx` prints it) -> Markdown.

Usage: man_to_markdown.py NAME SECTION < rendered.txt > NAME.SECTION.md

- The title is `# name(section) — description`, the description taken from the NAME section.
- The header and footer lines man prints (`TAR(1)  ...  TAR(1)`) are dropped.
- Section headings (lines at column 0, `NAME`, `SEE ALSO`) become `## Name`, `## See also`;
  sub-section headings (indented by 1-3 columns, `.SS`) become `### ...`.
- Indentation goes; lines that groff filled (wrapped) are joined back into one line, while
  lines that were short on purpose (option tags, examples, tables) keep their line breaks.
  Blocks stay separated by blank lines.

Standard library only.
"""

import os
import re
import sys

MANWIDTH = int(os.environ.get("MANWIDTH") or 100)


def indent_of(line):
    return len(line) - len(line.lstrip(" "))


def is_header_or_footer(line, name):
    """`TAR(1)   GNU TAR Manual   TAR(1)` or `GNU coreutils 9.1   September 2022   TAIL(1)`."""
    s = line.strip()
    if not s or indent_of(line) > 0 and not s.endswith(")"):
        return False
    m = re.search(r"(\S+)\((\w+)\)$", s)
    return bool(m) and m.group(1).lower() == name.lower()


def heading_text(s):
    s = s.strip()
    if s.isupper() or not any(c.islower() for c in s):
        s = s.lower()
        s = s[:1].upper() + s[1:]
    return s


def escape(s):
    # Keep lines from being read as Markdown headings, fences or block quotes.
    if s.startswith(("#", "```", "~~~", ">")):
        return "\\" + s
    return s


def convert(text, name, section):
    lines = [ln.rstrip() for ln in text.replace("\t", "        ").split("\n")]
    # Drop man's header (first non-empty line) and footer (last non-empty line).
    nonempty = [i for i, ln in enumerate(lines) if ln.strip()]
    if not nonempty:
        raise SystemExit(f"man_to_markdown: {name}({section}): empty rendering")
    drop = set()
    if is_header_or_footer(lines[nonempty[0]], name):
        drop.add(nonempty[0])
    if len(nonempty) > 1 and is_header_or_footer(lines[nonempty[-1]], name):
        drop.add(nonempty[-1])
    lines = [ln for i, ln in enumerate(lines) if i not in drop]

    # The line length groff filled to: the longest line, ignoring the odd overlong example.
    width = max((len(ln) for ln in lines if len(ln) <= MANWIDTH), default=80)

    # Blocks: runs of non-empty lines; a column-0 line is a heading and a block of its own.
    blocks = []  # ("h2" | "h3" | "body", [lines])
    current = []

    def flush():
        if current:
            blocks.append(("body", list(current)))
            current.clear()

    prev_blank = True
    for ln in lines:
        if not ln.strip():
            flush()
            prev_blank = True
            continue
        ind = indent_of(ln)
        if ind == 0:
            flush()
            blocks.append(("h2", [ln]))
        elif 1 <= ind <= 4 and prev_blank and len(ln.strip()) < 70 and not ln.strip().startswith("-"):
            # .SS sub-heading (man-db indents them by 3); option tags start with '-'.
            flush()
            blocks.append(("h3", [ln]))
        else:
            current.append(ln)
        prev_blank = False
    flush()

    # Description from the NAME section.
    description = ""
    for i, (kind, blk) in enumerate(blocks):
        if kind == "h2" and blk[0].strip().upper() == "NAME":
            # The first paragraph only: some pages list more names or a synopsis after it.
            body = []
            for k2, b2 in blocks[i + 1:]:
                if k2 != "body":
                    break
                prev = None
                for x in b2:
                    if prev is not None and (
                        indent_of(x) != indent_of(prev)
                        or len(prev) + 1 + len(x.split()[0]) <= width - 3
                    ):
                        break
                    body.append(x.strip())
                    prev = x
                break
            joined = " ".join(body)
            m = re.search(r"\s[-\u2010\u2013\u2014\u2212]{1,2}\s", joined)
            description = joined[m.end():].strip() if m else joined.strip()
            break
    title = f"# {name}({section})"
    if description:
        title += f" \u2014 {description}"

    out = [title]
    for kind, blk in blocks:
        if kind == "h2":
            out.append("## " + heading_text(blk[0]))
            continue
        if kind == "h3":
            out.append("### " + heading_text(blk[0]))
            continue
        # Join lines that groff filled: the next line is indented no less (a tag with its text on
        # the same line continues deeper), and its first word would not have fitted on this one.
        para = []
        cur, last = blk[0].strip(), blk[0]
        for nxt in blk[1:]:
            first_word = nxt.strip().split(" ")[0]
            if indent_of(nxt) >= indent_of(last) and len(last) + 1 + len(first_word) > width - 3:
                cur += " " + nxt.strip()
            else:
                para.append(cur)
                cur = nxt.strip()
            last = nxt
        para.append(cur)
        out.append("\n".join(escape(re.sub(r"\s+", " ", p)) for p in para))
    return "\n\n".join(out) + "\n"


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: man_to_markdown.py NAME SECTION < rendered.txt")
    name, section = sys.argv[1], sys.argv[2]
    text = sys.stdin.read()
    sys.stdout.write(convert(text, name, section))


if __name__ == "__main__":
    main()
