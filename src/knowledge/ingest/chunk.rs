//! Text → chunks for embedding, measured in the embedding model's tokens. (Measured against
//! `text-splitter`'s Markdown splitter on the eval sets, these chunks retrieve as well or
//! better: README, "Ingestion".)
//!
//! The text is cut into blocks: Markdown ATX headings, fenced code blocks and tables (runs of
//! lines starting with `|`), and paragraphs of the rest (split at blank lines). Then into
//! units: a heading is one; a code block or table is one when it fits in a chunk, else one per
//! line; a paragraph is cut into sentences (and at the line breaks of lists), and a sentence
//! or line longer than a chunk into runs of words (a word longer than a chunk into runs of
//! characters). Whole units are then packed into chunks up to `max_tokens`; the next chunk
//! starts with the previous one's last whole sentences, up to `overlap_tokens`, so that a fact
//! stated across a cut is whole in at least one chunk.
//!
//! A chunk keeps a section together when it can: it ends early, once at least half full,
//! before a heading whose section would not fit, as before a paragraph that would not fit; it
//! never ends on a heading that has its section after it; and a chunk that starts at a
//! heading repeats nothing of the section before. Each chunk carries the heading path in
//! force where it starts, so that a chunk from the middle of a section still says which.
//!
//! Units are counted once each and the counts added, which keeps a 1 MB text linear; every
//! chunk is then counted as written, because tokenizers are not additive (a BPE merges across
//! the space between sentences, a model adds special tokens), and trimmed if the sum was off.
//! A chunk's text is the exact slice of the source that starts at `start`.

use super::text::{Fences, atx_heading};

/// How big chunks are, in the embedding model's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkConfig {
    /// The most tokens in a chunk; taken as 1 when 0.
    pub max_tokens: usize,
    /// The most tokens a chunk repeats from the end of the one before.
    pub overlap_tokens: usize,
}

/// A piece of the source text, ready to embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Its position among the document's chunks, from 0.
    pub index: usize,
    /// `source[start..start + text.len()]`: it starts and ends on a unit, never on whitespace.
    pub text: String,
    /// Byte offset of `text` in the source text.
    pub start: usize,
    /// `count_tokens(&text)`.
    pub tokens: usize,
    /// The Markdown headings in force where `text` starts, outermost first (its own first
    /// line included when that is a heading): the section it is from.
    pub heading: Vec<String>,
}

/// Cuts `text` into chunks of at most `config.max_tokens` tokens as `count_tokens` counts
/// them, in order, together covering every sentence of the text, consecutive chunks sharing
/// whole sentences of at most `config.overlap_tokens` tokens.
///
/// A chunk ends early at a paragraph or a heading when it is at least half full and the next
/// paragraph or section would not fit whole, and never on a heading with text after it
/// unless nothing of that text fits beside it. The one case where a chunk may exceed the
/// limit: a single character that alone counts more than `max_tokens` (a tokenizer whose
/// fixed overhead is the whole budget), because a chunk is never empty.
pub fn chunk(text: &str, config: &ChunkConfig, count_tokens: &dyn Fn(&str) -> usize) -> Vec<Chunk> {
    #[cfg(feature = "ingest-libs")]
    if let Some(chunks) = super::libs::chunks(text, config, count_tokens) {
        return chunks;
    }
    let max = config.max_tokens.max(1);
    let segments = segment(text, max, count_tokens);
    let units = &segments.units;
    let mut headings = HeadingPath::new(&segments.headings);
    let mut chunks = Vec::new();
    // The chunk being built holds units[first..end]; units[fresh..] are in no chunk yet.
    let mut first = 0;
    let mut fresh = 0;
    while fresh < units.len() {
        let mut sum = units[first..fresh]
            .iter()
            .fold(0usize, |sum, unit| sum.saturating_add(unit.tokens));
        let mut end = fresh;
        // The first new unit always goes in: the overlap was sized to leave room for it.
        while let Some(unit) = units.get(end) {
            if end > fresh && segments.ends_before(unit, sum, max) {
                break;
            }
            sum = sum.saturating_add(unit.tokens);
            end += 1;
        }
        let fitted = fit(text, units, first, fresh, end, max, count_tokens);
        let start = units[fitted.first].start;
        let stop = units[fitted.end - 1].end;
        chunks.push(Chunk {
            index: chunks.len(),
            text: text[start..stop].to_owned(),
            start,
            tokens: fitted.tokens,
            heading: headings.at(start),
        });
        fresh = fitted.end;
        first = overlap_start(units, fitted.first, fitted.end, config.overlap_tokens, max);
    }
    chunks
}

/// A sentence, a line of a list, a heading, a whole code block or table (or a line of one too
/// big for a chunk), or a run of words of an overlong sentence: the smallest piece a chunk is
/// made of.
#[derive(Debug)]
struct Unit {
    start: usize,
    end: usize,
    tokens: usize,
    /// The block it is from.
    paragraph: usize,
    opens_paragraph: bool,
    /// Sections run from a heading (or a run of headings) to the next; 0 is before the first.
    section: usize,
    opens_section: bool,
    heading: bool,
    /// A piece of a code block or table after its first: a chunk should not start there.
    continues_block: bool,
}

/// The text cut into units, with the sizes the packing looks ahead at.
struct Segments {
    units: Vec<Unit>,
    /// Each paragraph's (block's) tokens, summed over its units.
    paragraph_tokens: Vec<usize>,
    /// Each section's tokens, summed over its units.
    section_tokens: Vec<usize>,
    headings: Vec<HeadingMark>,
}

impl Segments {
    /// Whether a chunk holding `sum` tokens ends before `unit`: when it would not fit, or when
    /// the chunk is at least half full and the section or paragraph `unit` opens would not
    /// fit whole.
    fn ends_before(&self, unit: &Unit, sum: usize, max: usize) -> bool {
        if sum.saturating_add(unit.tokens) > max {
            return true;
        }
        let whole_fits = |tokens: &[usize], index: usize| {
            sum.saturating_add(tokens.get(index).copied().unwrap_or_default()) <= max
        };
        let half_full = sum.saturating_mul(2) >= max;
        half_full
            && ((unit.opens_section && !whole_fits(&self.section_tokens, unit.section))
                || (unit.opens_paragraph && !whole_fits(&self.paragraph_tokens, unit.paragraph)))
    }
}

/// A heading of the text: where it starts, its level and its text.
#[derive(Debug)]
struct HeadingMark {
    start: usize,
    level: usize,
    text: String,
}

/// The heading path in force at each of `positions` (ascending byte offsets of `text`): for
/// chunks that another splitter cut. Headings inside fenced code are not headings.
#[cfg(feature = "ingest-libs")]
pub(crate) fn heading_paths_at(text: &str, positions: &[usize]) -> Vec<Vec<String>> {
    let mut marks = Vec::new();
    let mut fences = Fences::default();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches('\n');
        if !fences.is_code(bare)
            && let Some((level, title)) = atx_heading(bare)
        {
            marks.push(HeadingMark {
                start: offset,
                level,
                text: title.to_owned(),
            });
        }
        offset += line.len();
    }
    let mut path = HeadingPath::new(&marks);
    positions.iter().map(|&p| path.at(p)).collect()
}

/// The heading path at positions that only grow, built as they pass each heading.
struct HeadingPath<'a> {
    headings: &'a [HeadingMark],
    passed: usize,
    /// The open headings, outermost first, with their levels.
    open: Vec<(usize, &'a str)>,
}

impl<'a> HeadingPath<'a> {
    fn new(headings: &'a [HeadingMark]) -> Self {
        Self {
            headings,
            passed: 0,
            open: Vec::new(),
        }
    }

    /// The path in force at `position`, a heading starting there included.
    fn at(&mut self, position: usize) -> Vec<String> {
        while let Some(mark) = self.headings.get(self.passed) {
            if mark.start > position {
                break;
            }
            // A heading closes those at its level and below.
            while self
                .open
                .last()
                .is_some_and(|(level, _)| *level >= mark.level)
            {
                self.open.pop();
            }
            // "#" alone still closes them, but names nothing.
            if !mark.text.is_empty() {
                self.open.push((mark.level, &mark.text));
            }
            self.passed += 1;
        }
        self.open
            .iter()
            .map(|(_, text)| (*text).to_owned())
            .collect()
    }
}

/// The units of the text in order, with the sizes of its paragraphs and sections.
fn segment(text: &str, max: usize, count: &dyn Fn(&str) -> usize) -> Segments {
    let mut segments = Segments {
        units: Vec::new(),
        paragraph_tokens: Vec::new(),
        section_tokens: vec![0],
        headings: Vec::new(),
    };
    let mut after_heading = false;
    for (paragraph, block) in blocks(text).into_iter().enumerate() {
        let mut pieces = Vec::new();
        let mut push = |s: usize, e: usize| {
            let tokens = count(&text[s..e]);
            if tokens <= max {
                pieces.push((s, e, tokens));
            } else {
                split_long(text, s, e, max, count, &mut pieces);
            }
        };
        match block.kind {
            BlockKind::Prose => {
                for (s, e) in sentences(&text[block.start..block.end]) {
                    push(block.start + s, block.start + e);
                }
            }
            BlockKind::Heading => push(block.start, block.end),
            BlockKind::Code | BlockKind::Table => {
                let tokens = count(&text[block.start..block.end]);
                if tokens <= max {
                    pieces.push((block.start, block.end, tokens));
                } else {
                    // Too big for one chunk: cut between lines.
                    for (s, e) in lines(text, block.start, block.end) {
                        push(s, e);
                    }
                }
            }
        }
        let heading = block.kind == BlockKind::Heading;
        if heading {
            if let Some((level, title)) = atx_heading(&text[block.start..block.end]) {
                segments.headings.push(HeadingMark {
                    start: block.start,
                    level,
                    text: title.to_owned(),
                });
            }
            // Headings in a row open one section: the first one's.
            if !after_heading {
                segments.section_tokens.push(0);
            }
        }
        let opens_section = heading && !after_heading;
        after_heading = heading;
        let section = segments.section_tokens.len() - 1;
        let mut total = 0usize;
        for (i, (start, end, tokens)) in pieces.into_iter().enumerate() {
            total = total.saturating_add(tokens);
            segments.units.push(Unit {
                start,
                end,
                tokens,
                paragraph,
                opens_paragraph: i == 0,
                section,
                opens_section: opens_section && i == 0,
                heading,
                continues_block: i > 0 && matches!(block.kind, BlockKind::Code | BlockKind::Table),
            });
        }
        segments.paragraph_tokens.push(total);
        if let Some(section_total) = segments.section_tokens.last_mut() {
            *section_total = section_total.saturating_add(total);
        }
    }
    segments
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Prose,
    Heading,
    /// A fenced code block, fences included.
    Code,
    Table,
}

/// A block as a byte range, trimmed.
#[derive(Debug)]
struct Block {
    start: usize,
    end: usize,
    kind: BlockKind,
}

/// The blocks of the text in order: a heading is one line; a code block runs from its
/// opening fence to its closing one (blank lines included); a table is a run of lines
/// starting with `|`; a paragraph runs to a blank line or to a block of another kind.
fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut current: Option<Block> = None;
    let mut fences = Fences::default();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let line_start = offset;
        offset += line.len();
        let content = line.trim_end();
        let start = line_start + (line.len() - line.trim_start().len());
        let end = line_start + content.len();
        let in_code = fences.is_open();
        if fences.is_code(content) {
            if !in_code {
                out.extend(current.take());
                current = Some(Block {
                    start,
                    end,
                    kind: BlockKind::Code,
                });
            } else if let Some(block) = current.as_mut().filter(|_| !content.trim().is_empty()) {
                block.end = end;
            }
            if !fences.is_open() {
                out.extend(current.take());
            }
            continue;
        }
        let kind = if content.trim().is_empty() {
            out.extend(current.take());
            continue;
        } else if atx_heading(content).is_some() {
            BlockKind::Heading
        } else if content.trim_start().starts_with('|') {
            BlockKind::Table
        } else {
            BlockKind::Prose
        };
        match &mut current {
            Some(block) if block.kind == kind && kind != BlockKind::Heading => block.end = end,
            _ => {
                out.extend(current.take());
                current = Some(Block { start, end, kind });
            }
        }
    }
    out.extend(current);
    out
}

/// The lines of `text[start..end]` as byte ranges, trimmed, blank ones left out.
fn lines(text: &str, start: usize, end: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut offset = start;
    for line in text[start..end].split_inclusive('\n') {
        push_trimmed(text, offset, offset + line.len(), &mut out);
        offset += line.len();
    }
    out
}

/// Words after which a full stop does not end a sentence (compared lower-cased, without the
/// stop). Words with a stop inside ("e.g", "U.S", "p.m") and single capitals (initials) are
/// caught by rule, not listed.
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "cf", "al", "fig", "figs",
    "approx", "dept", "inc", "ltd", "co", "corp", "vol", "jan", "feb", "mar", "apr", "jun", "jul",
    "aug", "sep", "sept", "oct", "nov", "dec",
];

/// Sentence ranges within a paragraph, trimmed and never empty.
///
/// A sentence ends at `.`, `!` or `?` (closing quotes and brackets included) followed by
/// whitespace and then something that starts a sentence (not a lower-case letter), unless the
/// word before a lone `.` is an abbreviation; at `。`, `！` or `？`; and at a line break where
/// either line is a list item, a heading or a table row.
fn sentences(paragraph: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while let Some(c) = paragraph[i..].chars().next() {
        let next = i + c.len_utf8();
        match c {
            '\n' if line_break_ends_unit(paragraph, i) => {
                push_trimmed(paragraph, start, i, &mut out);
                start = next;
            }
            '.' | '!' | '?' => {
                let stops_end = skip_while(paragraph, next, |d| matches!(d, '.' | '!' | '?'));
                let end = skip_while(paragraph, stops_end, is_closer);
                let resume = skip_while(paragraph, end, char::is_whitespace);
                let followed_by_start = resume > end
                    && paragraph[resume..]
                        .chars()
                        .next()
                        .is_some_and(starts_sentence);
                let abbreviation =
                    c == '.' && stops_end == next && is_abbreviation(&paragraph[start..i]);
                if followed_by_start && !abbreviation {
                    push_trimmed(paragraph, start, end, &mut out);
                    start = resume;
                    i = resume;
                } else {
                    i = end;
                }
                continue;
            }
            '。' | '！' | '？' => {
                let end = skip_while(paragraph, next, is_closer);
                push_trimmed(paragraph, start, end, &mut out);
                start = end;
                i = end;
                continue;
            }
            _ => {}
        }
        i = next;
    }
    push_trimmed(paragraph, start, paragraph.len(), &mut out);
    out
}

fn push_trimmed(text: &str, start: usize, end: usize, out: &mut Vec<(usize, usize)>) {
    let piece = &text[start..end];
    let trimmed = piece.trim_start();
    let start = start + (piece.len() - trimmed.len());
    let trimmed = trimmed.trim_end();
    if !trimmed.is_empty() {
        out.push((start, start + trimmed.len()));
    }
}

fn skip_while(text: &str, from: usize, keep: impl Fn(char) -> bool) -> usize {
    text[from..]
        .char_indices()
        .find(|&(_, c)| !keep(c))
        .map_or(text.len(), |(i, _)| from + i)
}

fn is_closer(c: char) -> bool {
    matches!(c, '"' | '\'' | ')' | ']' | '”' | '’' | '»')
}

fn starts_sentence(c: char) -> bool {
    (c.is_alphabetic() && !c.is_lowercase())
        || c.is_numeric()
        || matches!(c, '"' | '\'' | '“' | '‘' | '«' | '(' | '[' | '*')
}

/// Whether the text before a `.` ends in an abbreviation.
fn is_abbreviation(before: &str) -> bool {
    let word = before
        .rsplit(char::is_whitespace)
        .next()
        .unwrap_or_default()
        .trim_start_matches(|c: char| !c.is_alphanumeric());
    let mut chars = word.chars();
    let initial = matches!((chars.next(), chars.next()), (Some(c), None) if c.is_uppercase());
    initial || word.contains('.') || ABBREVIATIONS.iter().any(|a| a.eq_ignore_ascii_case(word))
}

/// Whether the line break at `at` ends a unit: lists, headings and tables are written one
/// item per line, where prose may be wrapped anywhere.
fn line_break_ends_unit(text: &str, at: usize) -> bool {
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let next_line = text[at + 1..].split('\n').next().unwrap_or_default();
    is_block_line(&text[line_start..at]) || is_block_line(next_line)
}

fn is_block_line(line: &str) -> bool {
    let line = line.trim_start();
    if ["- ", "* ", "+ ", "• ", "|"]
        .iter()
        .any(|marker| line.starts_with(marker))
    {
        return true;
    }
    let hashes = line.len() - line.trim_start_matches('#').len();
    if (1..=6).contains(&hashes) && line[hashes..].starts_with([' ', '\t']) {
        return true;
    }
    let digits = line.len() - line.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    (1..=9).contains(&digits)
        && (line[digits..].starts_with(". ") || line[digits..].starts_with(") "))
}

/// Splits a unit too long for a chunk into runs of whole words, each as long as fits, and a
/// word too long for a chunk into runs of characters.
fn split_long(
    text: &str,
    start: usize,
    end: usize,
    max: usize,
    count: &dyn Fn(&str) -> usize,
    out: &mut Vec<(usize, usize, usize)>,
) {
    let words: Vec<(usize, usize)> = word_spans(&text[start..end])
        .into_iter()
        .map(|(s, e)| (start + s, start + e))
        .collect();
    let mut w = 0;
    while let Some(&(piece_start, word_end)) = words.get(w) {
        let fits = |k: usize| count(&text[piece_start..words[w + k - 1].1]) <= max;
        let k = largest_fitting(words.len() - w, fits);
        if k == 0 {
            split_word(text, piece_start, word_end, max, count, out);
            w += 1;
            continue;
        }
        let piece_end = words[w + k - 1].1;
        out.push((piece_start, piece_end, count(&text[piece_start..piece_end])));
        w += k;
    }
}

fn split_word(
    text: &str,
    start: usize,
    end: usize,
    max: usize,
    count: &dyn Fn(&str) -> usize,
    out: &mut Vec<(usize, usize, usize)>,
) {
    let bounds: Vec<usize> = text[start..end]
        .char_indices()
        .map(|(i, _)| start + i)
        .chain(std::iter::once(end))
        .collect();
    let mut b = 0;
    while b + 1 < bounds.len() {
        let from = bounds[b];
        let fits = |k: usize| count(&text[from..bounds[b + k]]) <= max;
        // A character that alone is over the limit still goes somewhere.
        let k = largest_fitting(bounds.len() - 1 - b, fits).max(1);
        let to = bounds[b + k];
        out.push((from, to, count(&text[from..to])));
        b += k;
    }
}

/// Byte ranges of the whitespace-separated words of `text`.
fn word_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut word_start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), word_start) {
            (true, Some(start)) => {
                spans.push((start, i));
                word_start = None;
            }
            (false, None) => word_start = Some(i),
            _ => {}
        }
    }
    spans.extend(word_start.map(|start| (start, text.len())));
    spans
}

/// The largest `k` in `1..=n` with `fits(k)`, or 0 if not even 1 fits, assuming that what fits
/// grows with `k`. Galloping from 1 keeps the cost proportional to the answer, not to `n`:
/// the rest of a 1 MB sentence is never counted whole.
fn largest_fitting(n: usize, mut fits: impl FnMut(usize) -> bool) -> usize {
    if n == 0 || !fits(1) {
        return 0;
    }
    let mut good: usize = 1;
    let mut bad = loop {
        let probe = good.saturating_mul(2).min(n);
        if probe == good {
            return good;
        }
        if fits(probe) {
            good = probe;
        } else {
            break probe;
        }
    };
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        if fits(mid) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    good
}

/// The units a chunk holds once counted as written.
struct Fitted {
    first: usize,
    end: usize,
    tokens: usize,
}

/// Counts `units[first..end]` as one text and, when the summed counts were too low, keeps as
/// many of the new units (from `fresh`) as fit; if not even one fits after the overlap, drops
/// the overlap. Either way the chunk does not end on headings (see [`before_headings`]).
fn fit(
    text: &str,
    units: &[Unit],
    first: usize,
    fresh: usize,
    end: usize,
    max: usize,
    count: &dyn Fn(&str) -> usize,
) -> Fitted {
    let measure = |a: usize, b: usize| count(&text[units[a].start..units[b - 1].end]);
    let end = before_headings(units, fresh, end);
    let tokens = measure(first, end);
    if tokens <= max {
        return Fitted { first, end, tokens };
    }
    let fresh_units = end - fresh;
    let keep = largest_fitting(fresh_units, |k| measure(first, fresh + k) <= max);
    if keep > 0 {
        let end = before_headings(units, fresh, fresh + keep);
        return Fitted {
            first,
            end,
            tokens: measure(first, end),
        };
    }
    let keep = largest_fitting(fresh_units, |k| measure(fresh, fresh + k) <= max).max(1);
    let end = before_headings(units, fresh, fresh + keep);
    Fitted {
        first: fresh,
        end,
        tokens: measure(fresh, end),
    }
}

/// Where a chunk whose new units are `units[fresh..end]` ends so that it does not end on
/// headings whose section comes after it: before them, as long as a new unit is left.
fn before_headings(units: &[Unit], fresh: usize, end: usize) -> usize {
    if end >= units.len() {
        // Nothing comes after: the document's last headings stay where they are.
        return end;
    }
    let mut end = end;
    while end > fresh + 1 && units[end - 1].heading {
        end -= 1;
    }
    end
}

/// Where the chunk after `units[first..end]` starts: its last whole units totalling at most
/// `overlap` tokens, fewer if the next unit would not fit beside them, and never all of them,
/// so that every chunk starts later than the one before. Nothing is repeated before a
/// heading (a new section needs nothing of the last one), and the overlap does not start
/// inside a code block or table unless the next chunk does anyway.
fn overlap_start(units: &[Unit], first: usize, end: usize, overlap: usize, max: usize) -> usize {
    let Some(next) = units.get(end) else {
        return end;
    };
    if next.heading {
        return end;
    }
    let budget = overlap.min(max.saturating_sub(next.tokens));
    let mut start = end;
    let mut sum = 0usize;
    while start > first + 1 {
        let tokens = units[start - 1].tokens;
        if sum.saturating_add(tokens) > budget {
            break;
        }
        sum += tokens;
        start -= 1;
    }
    if !next.continues_block {
        while start < end && units[start].continues_block {
            start += 1;
        }
    }
    start
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn words(text: &str) -> usize {
        text.split_whitespace().count()
    }

    fn sentence_texts(paragraph: &str) -> Vec<&str> {
        sentences(paragraph)
            .into_iter()
            .map(|(s, e)| &paragraph[s..e])
            .collect()
    }

    /// A document of numbered sentences (so each is unique) of 3 to 14 words, in paragraphs of
    /// 1 to 6 sentences, some of them list items.
    fn document(sentences: usize) -> (String, Vec<String>) {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n) as usize
        };
        let vocabulary = [
            "gateway", "token", "stream", "model", "policy", "backend", "chunk", "vector", "guard",
            "request", "answer", "latency",
        ];
        let mut text = String::new();
        let mut all = Vec::new();
        let mut in_paragraph = 0;
        let mut paragraph_len = 1 + next(6);
        let mut list = false;
        for n in 0..sentences {
            let mut sentence = format!("Sentence {n}");
            for _ in 0..1 + next(12) {
                sentence.push(' ');
                sentence.push_str(vocabulary[next(vocabulary.len() as u64)]);
            }
            sentence.push(['.', '!', '?'][next(3)]);
            if in_paragraph == 0 {
                if !text.is_empty() {
                    text.push_str("\n\n");
                }
                list = next(4) == 0;
            } else if list {
                text.push('\n');
            } else {
                text.push(' ');
            }
            if list {
                text.push_str("- ");
            }
            text.push_str(&sentence);
            all.push(sentence);
            in_paragraph += 1;
            if in_paragraph == paragraph_len {
                in_paragraph = 0;
                paragraph_len = 1 + next(6);
            }
        }
        (text, all)
    }

    fn check_invariants(text: &str, chunks: &[Chunk], max: usize, count: &dyn Fn(&str) -> usize) {
        assert!(!chunks.is_empty());
        for (i, chunk) in chunks.iter().enumerate() {
            assert_eq!(chunk.index, i);
            assert!(!chunk.text.trim().is_empty());
            assert_eq!(chunk.text.trim(), chunk.text);
            assert_eq!(
                &text[chunk.start..chunk.start + chunk.text.len()],
                chunk.text
            );
            assert_eq!(chunk.tokens, count(&chunk.text));
            assert!(
                chunk.tokens <= max,
                "chunk {i} has {} > {max} tokens",
                chunk.tokens
            );
        }
        for pair in chunks.windows(2) {
            assert!(pair[1].start > pair[0].start, "chunks go forward");
            let end = pair[0].start + pair[0].text.len();
            assert!(pair[1].start <= end + text[end..].len() - text[end..].trim_start().len());
        }
        // Every non-whitespace byte is in some chunk.
        let mut covered = vec![false; text.len()];
        for chunk in chunks {
            covered[chunk.start..chunk.start + chunk.text.len()].fill(true);
        }
        for (i, c) in text.char_indices() {
            assert!(
                c.is_whitespace() || covered[i],
                "byte {i} ({c:?}) is in no chunk"
            );
        }
    }

    #[test]
    fn chunks_never_exceed_the_limit_with_a_word_tokenizer() {
        let (text, _) = document(600);
        for (max, overlap) in [
            (1, 0),
            (5, 2),
            (16, 4),
            (40, 10),
            (100, 30),
            (100, 0),
            (512, 64),
        ] {
            let config = ChunkConfig {
                max_tokens: max,
                overlap_tokens: overlap,
            };
            let chunks = chunk(&text, &config, &words);
            check_invariants(&text, &chunks, max, &words);
        }
    }

    #[test]
    fn every_sentence_is_in_some_chunk_in_order() {
        let (text, sentences) = document(400);
        let config = ChunkConfig {
            max_tokens: 48,
            overlap_tokens: 12,
        };
        let chunks = chunk(&text, &config, &words);
        let mut last_chunk = 0;
        for sentence in &sentences {
            let position = chunks[last_chunk..]
                .iter()
                .position(|c| c.text.contains(sentence.as_str()))
                .unwrap_or_else(|| panic!("{sentence:?} is in no chunk after {last_chunk}"));
            last_chunk += position;
        }
        assert!(chunks.len() > 1);
    }

    #[test]
    fn consecutive_chunks_overlap_by_whole_sentences_within_the_budget() {
        let (text, sentences) = document(300);
        let config = ChunkConfig {
            max_tokens: 60,
            overlap_tokens: 20,
        };
        let chunks = chunk(&text, &config, &words);
        assert!(chunks.len() > 10);
        for pair in chunks.windows(2) {
            let previous_end = pair[0].start + pair[0].text.len();
            // Units have at most 15 words, so 20 tokens always leave room for one.
            assert!(pair[1].start < previous_end, "no overlap: {pair:?}");
            let shared = &text[pair[1].start..previous_end];
            assert!(words(shared) <= 20, "overlap of {} tokens", words(shared));
            // It starts on a sentence (or a list item holding one).
            let shared = shared.trim_start_matches("- ");
            assert!(
                sentences.iter().any(|s| shared.starts_with(s.as_str())),
                "{shared:?}"
            );
        }
        let no_overlap = chunk(
            &text,
            &ChunkConfig {
                max_tokens: 60,
                overlap_tokens: 0,
            },
            &words,
        );
        for pair in no_overlap.windows(2) {
            assert!(pair[1].start >= pair[0].start + pair[0].text.len());
        }
    }

    #[test]
    fn an_overlap_as_big_as_the_chunk_still_moves_forward() {
        let (text, _) = document(100);
        let config = ChunkConfig {
            max_tokens: 30,
            overlap_tokens: 30,
        };
        let chunks = chunk(&text, &config, &words);
        check_invariants(&text, &chunks, 30, &words);
    }

    #[test]
    fn a_one_sentence_giant_paragraph_is_split_on_words() {
        let text = (0..1000)
            .map(|i| format!("word{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let config = ChunkConfig {
            max_tokens: 64,
            overlap_tokens: 0,
        };
        let chunks = chunk(&text, &config, &words);
        check_invariants(&text, &chunks, 64, &words);
        assert_eq!(chunks.len(), 16);
        assert!(chunks[..15].iter().all(|c| c.tokens == 64));
        assert!(chunks[0].text.starts_with("word0 word1 "));
        assert!(chunks[1].text.starts_with("word64 "));
        // Cuts fall between words.
        assert!(
            chunks
                .iter()
                .all(|c| c.text.split(' ').all(|w| w.starts_with("word")))
        );
    }

    #[test]
    fn a_word_longer_than_a_chunk_is_split_on_characters() {
        let chars = |s: &str| s.chars().count();
        let text = format!("Short one. {} Tail.", "é".repeat(25));
        let config = ChunkConfig {
            max_tokens: 10,
            overlap_tokens: 0,
        };
        let chunks = chunk(&text, &config, &chars);
        check_invariants(&text, &chunks, 10, &chars);
        let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(
            texts,
            ["Short one.", "éééééééééé", "éééééééééé", "ééééé", "Tail."]
        );
    }

    #[test]
    fn sums_that_undercount_are_fixed_by_counting_the_chunk() {
        // Each line break costs 5 tokens: invisible when units are counted one by one.
        let costly_breaks = |s: &str| words(s) + 5 * s.matches('\n').count();
        let (text, _) = document(300);
        let config = ChunkConfig {
            max_tokens: 40,
            overlap_tokens: 10,
        };
        let chunks = chunk(&text, &config, &costly_breaks);
        check_invariants(&text, &chunks, 40, &costly_breaks);
        // And a tokenizer that adds special tokens to every count (sums overcount).
        let with_specials = |s: &str| words(s) + 2;
        let chunks = chunk(&text, &config, &with_specials);
        check_invariants(&text, &chunks, 40, &with_specials);
    }

    #[test]
    fn chunks_end_at_a_paragraph_that_would_not_fit() {
        let first = "One two three four five six seven eight nine ten. ".repeat(3);
        let second = "Eleven twelve thirteen fourteen fifteen sixteen. ".repeat(4);
        let text = format!("{}\n\n{}", first.trim_end(), second.trim_end());
        let config = ChunkConfig {
            max_tokens: 50,
            overlap_tokens: 0,
        };
        let chunks = chunk(&text, &config, &words);
        assert_eq!(chunks[0].text, first.trim_end());
        assert_eq!(chunks[1].text, second.trim_end());

        // A short heading is not left alone: under half full, the chunk keeps filling.
        let text = format!("# Heading\n\n{}", second.trim_end());
        let config = ChunkConfig {
            max_tokens: 20,
            overlap_tokens: 0,
        };
        let chunks = chunk(&text, &config, &words);
        assert!(
            chunks[0].text.starts_with("# Heading\n\nEleven"),
            "{:?}",
            chunks[0]
        );
    }

    #[test]
    fn sentences_split_after_stops_but_not_after_abbreviations() {
        assert_eq!(
            sentence_texts(
                "Dr. Smith met Mr. Jones, e.g. at noon. Then they left! Did they? \"Yes.\" \
                 It cost 3.50 vs. 4 dollars etc. and J. R. Tolkien agreed. 2 more. (Really.) ok"
            ),
            [
                "Dr. Smith met Mr. Jones, e.g. at noon.",
                "Then they left!",
                "Did they?",
                "\"Yes.\"",
                "It cost 3.50 vs. 4 dollars etc. and J. R. Tolkien agreed.",
                "2 more.",
                "(Really.) ok",
            ]
        );
        assert_eq!(
            sentence_texts("Wait... What? no. 这是第一句。这是第二句！"),
            ["Wait...", "What? no.", "这是第一句。", "这是第二句！",]
        );
        assert_eq!(sentence_texts("  "), Vec::<&str>::new());
    }

    #[test]
    fn list_items_headings_and_table_rows_are_units_but_wrapped_prose_is_not() {
        assert_eq!(
            sentence_texts(
                "## Steps\nDo these:\n- install it\n- run it\n1. first\n2) second\nthen go"
            ),
            [
                "## Steps",
                "Do these:",
                "- install it",
                "- run it",
                "1. first",
                "2) second",
                "then go"
            ]
        );
        assert_eq!(
            sentence_texts("| a | b |\n| 1 | 2 |"),
            ["| a | b |", "| 1 | 2 |"]
        );
        assert_eq!(
            sentence_texts("a sentence wrapped\nat eighty columns\nends here."),
            ["a sentence wrapped\nat eighty columns\nends here."]
        );
    }

    #[test]
    fn paragraphs_split_at_blank_lines() {
        let text = "\n  first para\nline two  \n \t \n\n second\r\n\r\nthird";
        let ranges: Vec<&str> = blocks(text).iter().map(|b| &text[b.start..b.end]).collect();
        assert_eq!(ranges, ["first para\nline two", "second", "third"]);
    }

    #[test]
    fn empty_text_gives_no_chunks_and_zero_limits_still_progress() {
        let config = ChunkConfig {
            max_tokens: 10,
            overlap_tokens: 3,
        };
        assert!(chunk("", &config, &words).is_empty());
        assert!(chunk(" \n\n\t ", &config, &words).is_empty());
        let zero = ChunkConfig {
            max_tokens: 0,
            overlap_tokens: 0,
        };
        let chunks = chunk("one two. Three", &zero, &words);
        let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, ["one", "two.", "Three"]);
    }

    #[test]
    fn a_megabyte_is_chunked_with_linear_counting() {
        let (mut text, _) = document(20_000);
        // And one 100 kB sentence without a stop.
        text.push_str("\n\n");
        text.push_str(&"lorem ipsum ".repeat(8_500));
        assert!(text.len() > 1_000_000, "{}", text.len());
        let counted = Cell::new(0usize);
        let counting = |s: &str| {
            counted.set(counted.get() + s.len());
            words(s)
        };
        let config = ChunkConfig {
            max_tokens: 256,
            overlap_tokens: 32,
        };
        let started = std::time::Instant::now();
        let chunks = chunk(&text, &config, &counting);
        let elapsed = started.elapsed();
        check_invariants(&text, &chunks, 256, &words);
        // Units once, chunks once, the long sentence's galloping a few times over.
        assert!(
            counted.get() < 8 * text.len(),
            "counted {} bytes for {}",
            counted.get(),
            text.len()
        );
        assert!(elapsed.as_secs() < 10, "{elapsed:?}");
    }

    #[test]
    fn chunking_is_deterministic() {
        let (text, _) = document(200);
        let config = ChunkConfig {
            max_tokens: 50,
            overlap_tokens: 10,
        };
        assert_eq!(chunk(&text, &config, &words), chunk(&text, &config, &words));
    }

    fn texts(chunks: &[Chunk]) -> Vec<&str> {
        chunks.iter().map(|c| c.text.as_str()).collect()
    }

    fn headings(chunks: &[Chunk]) -> Vec<Vec<&str>> {
        chunks
            .iter()
            .map(|c| c.heading.iter().map(String::as_str).collect())
            .collect()
    }

    #[test]
    fn chunks_carry_the_heading_path_where_they_start() {
        let text = "# tar(1) — an archiving utility\n\n\
                    tar saves many files together into one archive.\n\n\
                    ## Options ##\n\n\
                    Options come in three styles, all of them optional.\n\n\
                    ### Compression options\n\n\
                    Use -z for gzip. Use -j for bzip2. Use -J for xz.\n\n\
                    ## Examples\n\n\
                    ```sh\n# create an archive\ntar -cf all.tar notes\n```\n\n\
                    Extract it again with tar -xf all.tar in a fresh folder.";
        let config = ChunkConfig {
            max_tokens: 16,
            overlap_tokens: 4,
        };
        let chunks = chunk(text, &config, &words);
        check_invariants(text, &chunks, 16, &words);
        assert_eq!(
            texts(&chunks),
            [
                "# tar(1) — an archiving utility\n\ntar saves many files together into one archive.",
                "## Options ##\n\nOptions come in three styles, all of them optional.",
                "### Compression options\n\nUse -z for gzip. Use -j for bzip2. Use -J for xz.",
                "## Examples\n\n```sh\n# create an archive\ntar -cf all.tar notes\n```",
                "Extract it again with tar -xf all.tar in a fresh folder.",
            ]
        );
        let tar = "tar(1) — an archiving utility";
        // The comment in the code block is no heading; a chunk from mid-section still says
        // which section it is in.
        assert_eq!(
            headings(&chunks),
            [
                vec![tar],
                vec![tar, "Options"],
                vec![tar, "Options", "Compression options"],
                vec![tar, "Examples"],
                vec![tar, "Examples"],
            ]
        );
    }

    #[test]
    fn a_chunk_does_not_end_on_a_heading() {
        let text = "One two three four five.\n\n## Next\n\nSix seven eight nine ten eleven twelve thirteen.";
        let config = ChunkConfig {
            max_tokens: 12,
            overlap_tokens: 3,
        };
        let chunks = chunk(text, &config, &words);
        check_invariants(text, &chunks, 12, &words);
        // The heading fits after the first paragraph, but its section does not: it moves to
        // the next chunk, which repeats nothing of the section before.
        assert_eq!(
            texts(&chunks),
            [
                "One two three four five.",
                "## Next\n\nSix seven eight nine ten eleven twelve thirteen."
            ]
        );
        assert_eq!(headings(&chunks), [vec![], vec!["Next"]]);

        // Half full, a chunk ends before a section that would not fit whole...
        let text = "One two three four five six seven.\n\n## Next\n\nEight nine ten eleven.";
        let chunks = chunk(text, &config, &words);
        assert_eq!(
            texts(&chunks),
            [
                "One two three four five six seven.",
                "## Next\n\nEight nine ten eleven."
            ]
        );
        // ...and keeps one that fits.
        let text = "One two three four five six seven.\n\n## Next\n\nEight nine ten.";
        assert_eq!(texts(&chunk(text, &config, &words)), [text]);
    }

    #[test]
    fn a_code_block_that_fits_is_kept_whole() {
        let code = "```python\n# Not a heading.\nprint(1)\n\nprint(2)\n```";
        let text = format!(
            "Intro sentence one here. Intro sentence two here.\n\n{code}\n\nAfter the code."
        );
        let config = ChunkConfig {
            max_tokens: 12,
            overlap_tokens: 4,
        };
        let chunks = chunk(&text, &config, &words);
        check_invariants(&text, &chunks, 12, &words);
        assert_eq!(
            texts(&chunks),
            [
                "Intro sentence one here. Intro sentence two here.",
                &format!("Intro sentence two here.\n\n{code}"),
                "After the code.",
            ]
        );
        assert!(chunks.iter().all(|c| c.heading.is_empty()));
    }

    #[test]
    fn a_table_that_fits_is_kept_whole() {
        let table = "| Flag | Meaning |\n| --- | --- |\n| -z | gzip |\n| -j | bzip2 |";
        let text = format!("Flags. Here is what they mean.\n\n{table}\n\nThat is all.");
        let config = ChunkConfig {
            max_tokens: 24,
            overlap_tokens: 0,
        };
        let chunks = chunk(&text, &config, &words);
        check_invariants(&text, &chunks, 24, &words);
        assert_eq!(
            texts(&chunks),
            [
                "Flags. Here is what they mean.",
                &format!("{table}\n\nThat is all."),
            ]
        );
    }

    #[test]
    fn a_code_block_bigger_than_a_chunk_is_cut_between_lines() {
        let text = "```\nalpha beta gamma\ndelta epsilon zeta\neta theta iota\nkappa lambda mu\n```\n\n\
                    The end of it all.";
        let config = ChunkConfig {
            max_tokens: 8,
            overlap_tokens: 4,
        };
        let chunks = chunk(text, &config, &words);
        check_invariants(text, &chunks, 8, &words);
        // Inside the block the overlap is whole lines; after it, the next chunk does not
        // start inside the block for the sake of an overlap.
        assert_eq!(
            texts(&chunks),
            [
                "```\nalpha beta gamma\ndelta epsilon zeta",
                "delta epsilon zeta\neta theta iota",
                "eta theta iota\nkappa lambda mu\n```",
                "The end of it all.",
            ]
        );
    }

    #[test]
    fn blocks_are_headings_code_tables_and_paragraphs() {
        let text = "Intro line\n## Head ##\nText\n| a |\n| b |\nAfter\n\n  ~~~\n  # code\n\n  ~~~\n#hashtag\n```\nopen";
        let kinds: Vec<(&str, BlockKind)> = blocks(text)
            .iter()
            .map(|b| (&text[b.start..b.end], b.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("Intro line", BlockKind::Prose),
                ("## Head ##", BlockKind::Heading),
                ("Text", BlockKind::Prose),
                ("| a |\n| b |", BlockKind::Table),
                ("After", BlockKind::Prose),
                ("~~~\n  # code\n\n  ~~~", BlockKind::Code),
                ("#hashtag", BlockKind::Prose),
                // An unclosed fence runs to the end.
                ("```\nopen", BlockKind::Code),
            ]
        );
    }

    /// `document`'s text with headings (three levels), code blocks and tables between its
    /// paragraphs.
    fn markdown_document(sentences: usize) -> String {
        let (text, _) = document(sentences);
        let mut out = String::new();
        for (i, paragraph) in text.split("\n\n").enumerate() {
            if !out.is_empty() {
                out.push_str("\n\n");
            }
            match i % 7 {
                0 => out.push_str(&format!("# Part {i}\n\n")),
                2 => out.push_str(&format!("## Section {i}\n\n### Detail {i}\n\n")),
                3 => out.push_str(&format!(
                    "```sh\n# step {i}\nrun --fast {i}\n\nrun --slow {i}\n```\n\n"
                )),
                5 => out.push_str(&format!(
                    "## Table {i}\n\n| key | value |\n| --- | --- |\n| k{i} | v{i} |\n\n"
                )),
                _ => {}
            }
            out.push_str(paragraph);
        }
        out
    }

    /// The heading path at `position`, the slow way.
    fn path_at(text: &str, position: usize) -> Vec<String> {
        let mut path: Vec<(usize, String)> = Vec::new();
        let mut fences = Fences::default();
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            let line_start = offset;
            offset += line.len();
            if line_start > position {
                break;
            }
            if fences.is_code(line.trim_end()) {
                continue;
            }
            if let Some((level, title)) = atx_heading(line.trim_end()) {
                path.retain(|(open, _)| *open < level);
                if !title.is_empty() {
                    path.push((level, title.to_owned()));
                }
            }
        }
        path.into_iter().map(|(_, title)| title).collect()
    }

    #[test]
    fn markdown_documents_keep_the_invariants_and_their_sections() {
        let text = markdown_document(300);
        for (max, overlap) in [(1, 0), (7, 2), (16, 4), (40, 10), (64, 16), (200, 30)] {
            let config = ChunkConfig {
                max_tokens: max,
                overlap_tokens: overlap,
            };
            let chunks = chunk(&text, &config, &words);
            check_invariants(&text, &chunks, max, &words);
            for c in &chunks {
                assert_eq!(c.heading, path_at(&text, c.start), "{c:?}");
            }
            if max < 40 {
                continue;
            }
            // Roomy chunks: every code block and table is whole in some chunk, and no chunk
            // but the last ends on a heading.
            for block in blocks(&text) {
                if matches!(block.kind, BlockKind::Code | BlockKind::Table) {
                    let whole = &text[block.start..block.end];
                    assert!(chunks.iter().any(|c| c.text.contains(whole)), "{whole:?}");
                }
            }
            for c in &chunks[..chunks.len() - 1] {
                let last_line = c.text.rsplit('\n').next().unwrap_or_default();
                assert!(atx_heading(last_line).is_none(), "{c:?}");
            }
        }
    }

    #[test]
    fn random_markdown_keeps_the_invariants() {
        const PIECES: &[&str] = &[
            "```", "~~~", "# ", "## ", "| ", " |", "\n", "\n\n", "  ", "word", "Word. ", "x", "- ",
            "1. ", "#", "é", "\t",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for round in 0..500 {
            let mut text = String::new();
            for _ in 0..80 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.push_str(PIECES[(state % PIECES.len() as u64) as usize]);
            }
            let max = 1 + round % 13;
            let config = ChunkConfig {
                max_tokens: max,
                overlap_tokens: round % 5,
            };
            let chunks = chunk(&text, &config, &words);
            if text.trim().is_empty() {
                assert!(chunks.is_empty());
                continue;
            }
            check_invariants(&text, &chunks, max, &words);
            for c in &chunks {
                assert_eq!(c.heading, path_at(&text, c.start), "{text:?} {c:?}");
            }
        }
    }
}
