#!/usr/bin/env python3
"""Pure Okapi BM25 baseline for the retrieval evaluation, computed without Milvus.

Usage: eval_bm25.py CORPUS_DIR QUESTIONS.jsonl [--json]

Every `*.md` file in CORPUS_DIR (made by scripts/eval-corpus.sh), or every `*.html` file (made by
scripts/eval-corpus-pydoc.sh: the text of the page's main part, `role="main"`, without the
navigation around it), is cut into passages of about
150 words at blank lines (a paragraph longer than that is cut into runs of 150 words), the
passages are scored with BM25 (k1 = 1.2, b = 0.75; lowercase, split on anything not a letter or
digit, so `--force` is `force`; a short English stopword list; no stemming), and documents are
ranked by their best passage. A question is a hit@k when its document (the file name without
`.md` or `.html`) is among the first k; MRR@10 is the mean of 1/rank, 0 past rank 10.

Prints hit@1, hit@3, hit@5 and MRR@10; with --json one JSON object instead:
{"mode": "bm25-baseline", "hit@1": ..., "hit@3": ..., "hit@5": ..., "mrr@10": ..., "questions": N}.
The questions missed at rank 1 go to stderr (id, expected document, what came first).

Standard library only.
"""

import json
import math
import os
import re
import sys
from collections import Counter, defaultdict
from html.parser import HTMLParser

K1 = 1.2
B = 0.75
PASSAGE_WORDS = 150

STOPWORDS = frozenset(
    """a an and are as at be but by can do does for from how i if in into is it its me my
    no not of on or so such that the their them then there these they this to was what when
    where which while who why will with would you your""".split()
)

TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text):
    return [t for t in TOKEN.findall(text.lower()) if t not in STOPWORDS]


def passages(text):
    """Paragraphs (split at blank lines) packed into passages of about PASSAGE_WORDS words."""
    out, current, count = [], [], 0
    for para in re.split(r"\n\s*\n", text):
        words = para.split()
        if not words:
            continue
        if len(words) > PASSAGE_WORDS:
            if current:
                out.append(" ".join(current))
                current, count = [], 0
            for i in range(0, len(words), PASSAGE_WORDS):
                out.append(" ".join(words[i:i + PASSAGE_WORDS]))
            continue
        if count + len(words) > PASSAGE_WORDS and current:
            out.append(" ".join(current))
            current, count = [], 0
        current.extend(words)
        count += len(words)
    if current:
        out.append(" ".join(current))
    return out


class MainText(HTMLParser):
    """The text of an HTML page's `role="main"` element (the whole body when it has none),
    scripts and styles left out, a blank line after each block element."""

    BLOCKS = {"p", "div", "section", "li", "dt", "dd", "pre", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table"}
    VOID = {"br", "img", "hr", "meta", "link", "input", "col", "area", "base", "wbr", "source"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts = []
        self.main_parts = []
        self.depth = 0  # open elements inside main (0: outside)
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        if self.depth:
            self.depth += 1
        elif dict(attrs).get("role") == "main":
            self.depth = 1
        if tag in ("script", "style"):
            self.skip += 1

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if tag in ("script", "style") and self.skip:
            self.skip -= 1
        if tag in self.BLOCKS:
            self.parts.append("\n\n")
            if self.depth:
                self.main_parts.append("\n\n")
        if self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if self.skip:
            return
        self.parts.append(data)
        if self.depth:
            self.main_parts.append(data)

    def text(self):
        return "".join(self.main_parts or self.parts)


def document_text(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".html"):
        parser = MainText()
        parser.feed(text)
        return parser.text()
    return text


class Index:
    def __init__(self, corpus_dir):
        self.doc_of = []  # passage -> document stem
        self.tf = []  # passage -> Counter
        self.length = []
        self.postings = defaultdict(list)  # term -> [passage]
        names = sorted(
            n for n in os.listdir(corpus_dir) if n.endswith((".md", ".html")) and not n.startswith(".")
        )
        if not names:
            sys.exit(f"eval_bm25: no .md or .html files in {corpus_dir} (build the corpus first)")
        self.docs = [n.rsplit(".", 1)[0] for n in names]
        for name, stem in zip(names, self.docs):
            text = document_text(os.path.join(corpus_dir, name))
            for passage in passages(text):
                tokens = tokenize(passage)
                pid = len(self.tf)
                counts = Counter(tokens)
                self.doc_of.append(stem)
                self.tf.append(counts)
                self.length.append(len(tokens))
                for term in counts:
                    self.postings[term].append(pid)
        n = len(self.tf)
        self.avgdl = sum(self.length) / n
        self.idf = {
            term: math.log(1 + (n - len(pids) + 0.5) / (len(pids) + 0.5))
            for term, pids in self.postings.items()
        }

    def rank_documents(self, query):
        scores = defaultdict(float)
        for term in set(tokenize(query)):
            idf = self.idf.get(term)
            if idf is None:
                continue
            for pid in self.postings[term]:
                f = self.tf[pid][term]
                norm = K1 * (1 - B + B * self.length[pid] / self.avgdl)
                scores[pid] += idf * f * (K1 + 1) / (f + norm)
        best = {}
        for pid, score in scores.items():
            doc = self.doc_of[pid]
            if score > best.get(doc, 0.0):
                best[doc] = score
        # Ties broken by name, so that the ranking is deterministic.
        return sorted(best, key=lambda d: (-best[d], d))


def load_questions(path):
    questions = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                q = json.loads(line)
                questions.append((q["id"], q["question"], q["doc"]))
            except (ValueError, KeyError) as e:
                sys.exit(f"eval_bm25: {path}:{lineno}: {e}")
    if not questions:
        sys.exit(f"eval_bm25: no questions in {path}")
    return questions


def main(argv):
    args = [a for a in argv if a != "--json"]
    as_json = len(args) != len(argv)
    if len(args) != 2:
        sys.exit("usage: eval_bm25.py CORPUS_DIR QUESTIONS.jsonl [--json]")
    corpus_dir, questions_path = args
    index = Index(corpus_dir)
    questions = load_questions(questions_path)
    unknown = sorted({doc for _, _, doc in questions if doc not in set(index.docs)})
    if unknown:
        sys.exit(f"eval_bm25: questions name documents not in {corpus_dir}: {', '.join(unknown)}")

    hits = {1: 0, 3: 0, 5: 0}
    rr = 0.0
    misses = []
    for qid, question, doc in questions:
        ranking = index.rank_documents(question)[:10]
        rank = ranking.index(doc) + 1 if doc in ranking else None
        for k in hits:
            if rank is not None and rank <= k:
                hits[k] += 1
        if rank is not None:
            rr += 1 / rank
        if rank != 1:
            misses.append((qid, doc, ranking[0] if ranking else "-", rank))

    n = len(questions)
    result = {
        "mode": "bm25-baseline",
        "hit@1": round(hits[1] / n, 4),
        "hit@3": round(hits[3] / n, 4),
        "hit@5": round(hits[5] / n, 4),
        "mrr@10": round(rr / n, 4),
        "questions": n,
    }
    for qid, doc, got, rank in misses:
        print(f"miss@1 {qid}: expected {doc} (rank {rank or '>10'}), got {got}", file=sys.stderr)
    if as_json:
        print(json.dumps(result))
    else:
        print(f"bm25-baseline over {n} questions, {len(index.docs)} documents, {len(index.tf)} passages")
        for key in ("hit@1", "hit@3", "hit@5", "mrr@10"):
            print(f"  {key:<7} {result[key]:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
