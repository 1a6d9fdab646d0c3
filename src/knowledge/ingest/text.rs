//! Documents → plain text: which format a file or URL holds, HTML turned into the text a
//! reader sees, Markdown's title, and one normalisation for every format.
//!
//! The HTML converter aims at what LlamaIndex's `SimpleWebPageReader(html_to_text=True)` gives
//! (it runs the `html2text` package): scripts, styles and the `<head>` gone, blocks as line
//! breaks, headings as `#`s, list items as `- `, entities decoded, `<pre>` verbatim in a
//! ```` ``` ```` fence (so that the chunker keeps it whole and reads no `#` comment in it as a
//! heading). It is hand written, not a parser crate (measured against `htmd` and `dom_smoothie`
//! on the eval sets, it retrieves as well or better: README, "Ingestion"): ingestion needs only the readable text in
//! reading order, and a single forgiving scanner that never fails keeps the dependency tree
//! lean. Links keep their text and drop their URL: a chunk is embedded for what it says, and
//! the page's own URL is kept beside it anyway.
//!
//! Noise goes before chunking, so that it is neither embedded nor shown as a source: in HTML,
//! the page's navigation and furniture (`<nav>`, `<aside>`, and `<header>` and `<footer>`
//! outside an article or section); in HTML and Markdown, lines made only of links, images or
//! URLs (navigation bars, badges, tables of contents); in Markdown, comments, reference
//! definitions and lines made only of HTML tags, and links reduced to their text. Code is never
//! touched.

use std::borrow::Cow;
use std::collections::HashMap;

/// The document formats ingestion reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Markdown,
    Html,
}

/// The format of a document from its name and, when fetched over HTTP, its `Content-Type`.
///
/// A known content type wins over the name, except that `text/plain` keeps a Markdown name:
/// servers (raw.githubusercontent.com among them) send Markdown as `text/plain`. A content
/// type that says nothing (`application/octet-stream`, empty) defers to the name; any other
/// content type is unsupported. `None` when neither says a supported format.
pub fn format_of(path_or_url: &str, content_type: Option<&str>) -> Option<Format> {
    let by_name = format_by_extension(path_or_url);
    let Some(content_type) = content_type else {
        return by_name;
    };
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match media_type.as_str() {
        "text/html" | "application/xhtml+xml" => Some(Format::Html),
        "text/markdown" | "text/x-markdown" => Some(Format::Markdown),
        "text/plain" if by_name == Some(Format::Markdown) => Some(Format::Markdown),
        "text/plain" => Some(Format::Text),
        "" | "application/octet-stream" => by_name,
        _ => None,
    }
}

fn format_by_extension(path_or_url: &str) -> Option<Format> {
    // A URL's query and fragment are not part of its name; a local path keeps its `#` and `?`.
    let path = if path_or_url.contains("://") {
        path_or_url.split(['?', '#']).next().unwrap_or_default()
    } else {
        path_or_url
    };
    let name = path.rsplit(['/', '\\']).next().unwrap_or_default();
    let (_, extension) = name.rsplit_once('.')?;
    match extension.to_ascii_lowercase().as_str() {
        "txt" | "text" => Some(Format::Text),
        "md" | "markdown" => Some(Format::Markdown),
        "html" | "htm" => Some(Format::Html),
        _ => None,
    }
}

/// A document's text, ready to chunk, and its title when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// HTML: the first `<title>`; Markdown: the first `# ` heading; text: none.
    pub title: Option<String>,
    pub text: String,
}

/// Turns a document into normalised plain text (see [`normalise`]) and takes its title.
///
/// Markdown stays Markdown: its markup is readable as it is and tells the chunker where
/// headings and list items are.
pub fn extract(content: &str, format: Format) -> Extracted {
    match format {
        Format::Text => Extracted {
            title: None,
            text: normalise(content),
        },
        Format::Markdown => {
            let text = strip_markdown_noise(&normalise(content));
            Extracted {
                title: markdown_title(&text),
                text,
            }
        }
        Format::Html => {
            #[cfg(feature = "ingest-libs")]
            if let Some(extracted) = super::libs::html(content) {
                return extracted;
            }
            let (title, text) = convert(content);
            Extracted { title, text }
        }
    }
}

/// The text a reader sees in an HTML page (title excepted), normalised. Never fails: any
/// input, however malformed, gives some text.
pub fn html_to_text(html: &str) -> String {
    convert(html).1
}

/// One shape for every format: `\r\n` and lone `\r` become `\n`, a leading byte-order mark
/// goes, trailing whitespace goes from every line, a run of blank lines becomes one blank
/// line, and the text neither starts nor ends with a blank line. Leading indentation stays
/// (Markdown code and nested lists need it).
pub fn normalise(text: &str) -> String {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let text: Cow<'_, str> = if text.contains('\r') {
        Cow::Owned(text.replace("\r\n", "\n").replace('\r', "\n"))
    } else {
        Cow::Borrowed(text)
    };
    let mut out = String::with_capacity(text.len());
    let mut blank_before = false;
    for line in text.split('\n') {
        let line = line.trim_end();
        if line.is_empty() {
            blank_before = !out.is_empty();
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
            if blank_before {
                out.push('\n');
            }
        }
        out.push_str(line);
        blank_before = false;
    }
    out
}

/// The first level-one ATX heading (`# Title`) outside fenced code, closing `#`s removed.
fn markdown_title(text: &str) -> Option<String> {
    let mut fences = Fences::default();
    text.lines()
        .filter(|line| !fences.is_code(line))
        .find_map(|line| match atx_heading(line) {
            Some((1, title)) if !title.is_empty() => Some(title.to_owned()),
            _ => None,
        })
}

/// An ATX heading (`## Options ##`): its level and its text without the `#`s, trimmed; `None`
/// for any other line. At most three spaces before it, as in CommonMark: more make it code.
pub(crate) fn atx_heading(line: &str) -> Option<(usize, &str)> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    if indent > 3 {
        return None;
    }
    let line = &line[indent..];
    let level = line.len() - line.trim_start_matches('#').len();
    let rest = &line[level..];
    if !(1..=6).contains(&level) || !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
        return None;
    }
    let rest = rest.trim();
    // "# Title #" closes with #s; "# C#" does not (no space before them).
    let without_closing = rest.trim_end_matches('#');
    let text = if without_closing.is_empty() || without_closing.ends_with([' ', '\t']) {
        without_closing.trim_end()
    } else {
        rest
    };
    Some((level, text))
}

/// Follows fenced code blocks (three or more `` ` `` or `~`) line by line. Any indentation
/// opens one, since fences nest in list items; an unclosed fence runs to the end of the text,
/// as in CommonMark.
#[derive(Debug, Default)]
pub(crate) struct Fences {
    /// The open fence's character and length.
    open: Option<(char, usize)>,
}

impl Fences {
    /// Whether `line`, the next line of the text, is code: a fence line or a line inside one.
    pub(crate) fn is_code(&mut self, line: &str) -> bool {
        let fence = fence_of(line);
        match self.open {
            Some((open_char, open_len)) => {
                if let Some((c, len, info)) = fence
                    && c == open_char
                    && len >= open_len
                    && info.is_empty()
                {
                    self.open = None;
                }
                true
            }
            None => {
                self.open = fence.map(|(c, len, _)| (c, len));
                self.open.is_some()
            }
        }
    }

    /// Whether the lines so far leave a fence open.
    pub(crate) fn is_open(&self) -> bool {
        self.open.is_some()
    }
}

/// A fence line's character, length and info string (`rust` in "```rust").
fn fence_of(line: &str) -> Option<(char, usize, &str)> {
    let line = line.trim_start();
    let c = line.chars().next().filter(|c| matches!(c, '`' | '~'))?;
    let len = line.len() - line.trim_start_matches(c).len();
    let info = line[len..].trim();
    // "```x```" is inline code: a backtick fence's info string holds no backtick.
    (len >= 3 && !(c == '`' && info.contains('`'))).then_some((c, len, info))
}

/// Marks link text while an HTML page is converted, so that lines made only of links can be
/// found once the URLs are gone: private-use characters, removed from the page's own text.
const LINK_OPEN: char = '\u{e000}';
const LINK_CLOSE: char = '\u{e001}';

/// A line with its links reduced to their text, and what is needed to tell whether it held
/// anything but links.
#[derive(Debug, Default)]
struct Reduced {
    text: String,
    /// Links, images and autolinks seen.
    links: usize,
    /// The text outside links and images.
    outside: String,
}

impl Reduced {
    fn plain(&mut self, text: &str, in_link: bool) {
        self.text.push_str(text);
        if !in_link {
            self.outside.push_str(text);
        }
    }

    /// Whether the line stays: anything but a line made only of links, images and URLs (with
    /// separators, emphasis marks and a list marker between them). Headings stay unless only
    /// images made them, and table rows stay whole so that their table does.
    fn keep(&self) -> bool {
        if let Some((_, title)) = atx_heading(&self.text) {
            return self.links == 0 || !title.is_empty();
        }
        if self.text.trim_start().starts_with('|') {
            return true;
        }
        let mut links = self.links;
        for (n, word) in self.outside.split_whitespace().enumerate() {
            let bare = word.trim_start_matches(['(', '<', '[', '"', '\'']);
            if ["http://", "https://", "www."]
                .iter()
                .any(|scheme| bare.starts_with(scheme))
            {
                links += 1;
            } else if word.chars().any(char::is_alphanumeric) && !(n == 0 && is_ordinal(word)) {
                return true;
            }
        }
        links == 0
    }
}

/// "1." or "12)": an ordered list item's marker.
fn is_ordinal(word: &str) -> bool {
    let digits = word.trim_end_matches(['.', ')']);
    word.len() - digits.len() == 1
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Markdown without its noise (see the module's doc), normalised again.
fn strip_markdown_noise(text: &str) -> String {
    let definitions = reference_labels(text);
    let mut out = String::with_capacity(text.len());
    let mut fences = Fences::default();
    let mut in_comment = false;
    for line in text.split('\n') {
        let kept = if !in_comment && fences.is_code(line) {
            Some(Cow::Borrowed(line))
        } else {
            clean_markdown_line(line, &mut in_comment, &definitions)
        };
        if let Some(kept) = kept {
            out.push_str(&kept);
            out.push('\n');
        }
    }
    normalise(&out)
}

/// A line of Markdown prose with comments gone and links reduced to their text, or `None`
/// when nothing worth keeping is left.
fn clean_markdown_line<'a>(
    line: &'a str,
    in_comment: &mut bool,
    definitions: &[String],
) -> Option<Cow<'a, str>> {
    if line.trim().is_empty() {
        // Blank lines keep paragraphs apart.
        return Some(Cow::Borrowed(line));
    }
    let line = strip_comments(line, in_comment);
    if line.trim().is_empty() || reference_definition(&line).is_some() || is_markup_only(&line) {
        return None;
    }
    // Without these the line holds no link, image or URL.
    if !line.contains(['[', '<', ':', '.']) {
        return Some(line);
    }
    let mut reduced = Reduced::default();
    reduce_links(&line, false, definitions, &mut reduced);
    reduced.keep().then_some(Cow::Owned(reduced.text))
}

/// The labels of the reference definitions outside code (`[label]: url`), lower-cased: a
/// `[text][label]` link is one only when its label is defined.
fn reference_labels(text: &str) -> Vec<String> {
    let mut fences = Fences::default();
    let mut labels: Vec<String> = text
        .lines()
        .filter(|line| !fences.is_code(line))
        .filter_map(reference_definition)
        .map(str::to_lowercase)
        .collect();
    labels.sort_unstable();
    labels.dedup();
    labels
}

/// The label of a reference definition line (`[label]: https://...`); footnotes (`[^1]: ...`)
/// are text, not definitions.
fn reference_definition(line: &str) -> Option<&str> {
    let trimmed = line.trim_start_matches(' ');
    if line.len() - trimmed.len() > 3 {
        return None;
    }
    let (label, destination) = trimmed.strip_prefix('[')?.split_once("]:")?;
    let valid = !label.trim().is_empty()
        && !label.starts_with('^')
        && !label.contains(['[', ']'])
        && !destination.trim().is_empty();
    valid.then_some(label.trim())
}

/// Whether a line holds only HTML tags (`<p align="center">`, `<img src=...>`, `</div>`):
/// markup that renders as nothing but layout or images.
fn is_markup_only(line: &str) -> bool {
    let mut rest = line.trim();
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let Some(tag) = rest.strip_prefix('<') else {
            return false;
        };
        let name = tag.strip_prefix('/').unwrap_or(tag);
        if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return false;
        }
        let Some(gt) = tag.find('>') else {
            return false;
        };
        rest = tag[gt + 1..].trim_start();
    }
    true
}

/// The line without its HTML comments (`<!-- ... -->`, which may span lines: `in_comment` says
/// whether one is open), leaving code spans alone. A line that started inside a comment loses
/// the indentation before its text too.
fn strip_comments<'a>(line: &'a str, in_comment: &mut bool) -> Cow<'a, str> {
    if !*in_comment && !line.contains("<!--") {
        return Cow::Borrowed(line);
    }
    let comment_first = *in_comment || line.trim_start().starts_with("<!--");
    let code = code_spans(line);
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        let rest = &line[i..];
        if *in_comment {
            match rest.find("-->") {
                Some(end) => {
                    *in_comment = false;
                    i += end + 3;
                }
                None => i = line.len(),
            }
        } else if rest.starts_with("<!--") {
            *in_comment = true;
            // "<!-->" is an empty comment, hence going on from its "-".
            i += 2;
        } else if let Some(&end) = code.get(&i) {
            out.push_str(&line[i..end]);
            i = end;
        } else {
            let len = rest.chars().next().map_or(1, char::len_utf8);
            out.push_str(&rest[..len]);
            i += len;
        }
    }
    if comment_first {
        out = out.trim_start().to_owned();
    }
    Cow::Owned(out)
}

/// The code spans of a line, from the start of each to its end. A run of backticks opens one
/// that ends at the next run as long; with none, the run is text. Found in one pass, so that
/// a line of a megabyte of unmatched backticks costs no more than its length.
fn code_spans(line: &str) -> HashMap<usize, usize> {
    let mut spans = HashMap::new();
    if !line.contains('`') {
        return spans;
    }
    let bytes = line.as_bytes();
    let mut runs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let len = bytes[i..].iter().take_while(|&&b| b == b'`').count();
        if len > 0 {
            runs.push((i, len));
            i += len;
        } else {
            i += 1;
        }
    }
    // For each run, the next one as long, found from the right.
    let mut next_as_long = vec![None; runs.len()];
    let mut last_of_len: HashMap<usize, usize> = HashMap::new();
    for (k, &(_, len)) in runs.iter().enumerate().rev() {
        next_as_long[k] = last_of_len.insert(len, k);
    }
    let mut k = 0;
    while let Some(&(start, _)) = runs.get(k) {
        match next_as_long[k] {
            Some(close) => {
                let (close_start, close_len) = runs[close];
                spans.insert(start, close_start + close_len);
                k = close + 1;
            }
            None => k += 1,
        }
    }
    spans
}

/// The bracket pairs of a line (`[` with `]`, or `(` with `)`), from each opener to its
/// closer, escaped brackets left out; found in one pass with a stack.
fn bracket_pairs(bytes: &[u8], opener: u8, closer: u8) -> HashMap<usize, usize> {
    let mut pairs = HashMap::new();
    let mut open = Vec::new();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'\\' {
            i += 1;
        } else if b == opener {
            open.push(i);
        } else if b == closer
            && let Some(start) = open.pop()
        {
            pairs.insert(start, i);
        }
        i += 1;
    }
    pairs
}

/// Where the code spans and brackets of a line are.
struct LineIndex {
    code: HashMap<usize, usize>,
    squares: HashMap<usize, usize>,
    rounds: HashMap<usize, usize>,
}

impl LineIndex {
    fn new(line: &str) -> Self {
        Self {
            code: code_spans(line),
            squares: bracket_pairs(line.as_bytes(), b'[', b']'),
            rounds: bracket_pairs(line.as_bytes(), b'(', b')'),
        }
    }
}

/// Writes `line` into `out` with images gone, links as their text and autolinks as their URL;
/// code spans and backslash escapes stay as written. In a link's text (`in_link`), brackets
/// are text but for images: a link holds no link.
fn reduce_links(line: &str, in_link: bool, definitions: &[String], out: &mut Reduced) {
    let index = LineIndex::new(line);
    let bytes = line.as_bytes();
    // Every slice starts and ends at an ASCII delimiter, so on a character boundary.
    let mut plain_from = 0;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let parsed = match b {
            b'\\' => {
                i += if bytes.get(i + 1).is_some_and(u8::is_ascii) {
                    2
                } else {
                    1
                };
                continue;
            }
            b'`' => {
                i = index.code.get(&i).copied().unwrap_or(i + 1);
                continue;
            }
            b'!' if bytes.get(i + 1) == Some(&b'[') => {
                parse_link(line, i + 1, &index, definitions).map(|(_, end)| (end, None))
            }
            b'[' if !in_link => {
                parse_link(line, i, &index, definitions).map(|(text, end)| (end, Some(text)))
            }
            b'<' => autolink_end(line, i).map(|end| (end, None)),
            _ => None,
        };
        let Some((end, link_text)) = parsed else {
            i += 1;
            continue;
        };
        out.plain(&line[plain_from..i], in_link);
        out.links += 1;
        if b == b'<' {
            // An autolink shows its URL.
            out.plain(&line[i + 1..end - 1], true);
        } else if let Some(text) = link_text {
            reduce_links(&line[text], true, definitions, out);
        }
        i = end;
        plain_from = end;
    }
    out.plain(&line[plain_from..], in_link);
}

/// The link starting at the `[` at `open`: inline (`[text](url "title")`), or by reference
/// (`[text][label]`, `[text][]`, `[label]`) to a defined label. Returns the range of its text
/// and where it ends.
fn parse_link(
    line: &str,
    open: usize,
    index: &LineIndex,
    definitions: &[String],
) -> Option<(std::ops::Range<usize>, usize)> {
    let close = *index.squares.get(&open)?;
    let text = open + 1..close;
    let defined = |label: &str| {
        let label = label.trim().to_lowercase();
        definitions.binary_search(&label).is_ok()
    };
    match line.as_bytes().get(close + 1) {
        Some(b'(') => Some((text, index.rounds.get(&(close + 1))? + 1)),
        Some(b'[') => {
            let label_end = *index.squares.get(&(close + 1))?;
            let label = &line[close + 2..label_end];
            let label = if label.is_empty() {
                &line[text.clone()]
            } else {
                label
            };
            defined(label).then_some((text, label_end + 1))
        }
        _ => defined(&line[text.clone()]).then_some((text, close + 1)),
    }
}

/// Where the autolink (`<https://...>`, `<me@example.com>`) starting at `open` ends.
fn autolink_end(line: &str, open: usize) -> Option<usize> {
    let rest = &line[open + 1..];
    // Stopping at the next "<" too keeps a line of many "<" linear.
    let len = rest.find(|c: char| c.is_whitespace() || c == '<' || c == '>')?;
    if len == 0 || !rest[len..].starts_with('>') {
        return None;
    }
    let inner = &rest[..len];
    let scheme = inner.split_once(':').is_some_and(|(scheme, _)| {
        (2..=32).contains(&scheme.len())
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
    });
    let email = inner.contains('@') && inner.contains('.');
    (scheme || email).then_some(open + 1 + inner.len() + 1)
}

/// HTML-converted text without the lines made only of links or URLs, link marks removed.
fn strip_html_noise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut fences = Fences::default();
    for line in text.split('\n') {
        if fences.is_code(line) {
            out.extend(
                line.chars()
                    .filter(|c| !matches!(*c, LINK_OPEN | LINK_CLOSE)),
            );
            out.push('\n');
            continue;
        }
        let mut reduced = Reduced::default();
        let mut in_link = false;
        let mut from = 0;
        for (i, c) in line.char_indices() {
            if matches!(c, LINK_OPEN | LINK_CLOSE) {
                reduced.plain(&line[from..i], in_link);
                reduced.links += usize::from(c == LINK_OPEN);
                in_link = c == LINK_OPEN;
                from = i + c.len_utf8();
            }
        }
        reduced.plain(&line[from..], in_link);
        if reduced.keep() {
            out.push_str(&reduced.text);
            out.push('\n');
        }
    }
    normalise(&out)
}

/// Scans the HTML once, left to right, and writes the text as it goes.
pub(crate) fn convert(html: &str) -> (Option<String>, String) {
    let mut converter = Converter::default();
    let mut pos = 0;
    while pos < html.len() {
        let Some(offset) = html[pos..].find('<') else {
            converter.text(&html[pos..]);
            break;
        };
        let lt = pos + offset;
        if lt > pos {
            converter.text(&html[pos..lt]);
        }
        pos = converter.markup(html, lt);
    }
    // An unclosed <pre> runs to the end, as in browsers, and its fence closes there.
    converter.out.end_code();
    (
        converter.title,
        strip_html_noise(&normalise(&converter.out.out)),
    )
}

/// Elements that may stay in `<head>`; any other start tag there opens the body, as browsers do.
const HEAD_ELEMENTS: &[&str] = &[
    "base", "basefont", "bgsound", "link", "meta", "title", "style", "script", "noscript",
    "template", "head",
];

#[derive(Default)]
struct Converter {
    out: Writer,
    title: Option<String>,
    in_head: bool,
    /// Inside `<template>`: markup that is not shown.
    template_depth: usize,
    /// Inside `<svg>`: icons whose `<title>`s and labels are not page text.
    svg_depth: usize,
    /// The open navigation and furniture elements (see [`Converter::chrome`]), innermost last.
    chrome: Vec<&'static str>,
    /// Inside `<article>`, `<main>` or `<section>`, where `<header>` and `<footer>` are content.
    sectioning_depth: usize,
    /// Inside `<a>` since the last line break: its text is marked (see [`LINK_OPEN`]).
    link_depth: usize,
}

impl Converter {
    fn hidden(&self) -> bool {
        self.template_depth > 0 || self.svg_depth > 0 || !self.chrome.is_empty()
    }

    /// Whether a start tag opens navigation or page furniture, whose content is not the page's:
    /// `<nav>` and `<aside>` anywhere, `<header>` and `<footer>` of the page (in an article or
    /// section they hold its title and byline instead).
    fn chrome(&self, name: &str) -> Option<&'static str> {
        let name = match name {
            "nav" => "nav",
            "aside" => "aside",
            "header" => "header",
            "footer" => "footer",
            _ => return None,
        };
        let of_the_page = self.sectioning_depth == 0 || !self.chrome.is_empty();
        (matches!(name, "nav" | "aside") || of_the_page).then_some(name)
    }

    /// Keeps the link marking to text inside `<a>` on its own line: an `<a>` wrapping whole
    /// blocks (a card, a teaser) holds content, not navigation, and an unclosed one would
    /// otherwise mark the rest of the page.
    fn track_link(&mut self, name: &str, start: bool) {
        match name {
            "a" if start => self.link_depth += 1,
            "a" => self.link_depth = self.link_depth.saturating_sub(1),
            _ if !is_inline(name) => self.link_depth = 0,
            _ => {}
        }
    }

    fn text(&mut self, raw: &str) {
        if self.hidden() {
            return;
        }
        if self.in_head {
            // Text in the head starts the body, as in browsers.
            if raw.trim().is_empty() {
                return;
            }
            self.in_head = false;
        }
        let mut text = decode_entities(raw);
        if text.contains([LINK_OPEN, LINK_CLOSE]) {
            text = Cow::Owned(text.replace([LINK_OPEN, LINK_CLOSE], ""));
        }
        if self.out.pre_depth > 0 {
            self.out.pre_text(&text);
        } else if self.link_depth > 0 {
            self.out.flow_text(&mark_link_words(&text));
        } else {
            self.out.flow_text(&text);
        }
    }

    /// Handles the markup starting at `lt` (a `<`) and returns where scanning goes on; always
    /// past `lt`.
    fn markup(&mut self, html: &str, lt: usize) -> usize {
        let rest = &html[lt..];
        let bytes = rest.as_bytes();
        if rest.starts_with("<!--") {
            // "<!-->" is an empty comment, hence the search from the "-".
            return match rest[2..].find("-->") {
                Some(i) => lt + 2 + i + 3,
                None => html.len(),
            };
        }
        if rest.starts_with("<![CDATA[") {
            return match rest.find("]]>") {
                Some(i) => lt + i + 3,
                None => html.len(),
            };
        }
        match bytes.get(1) {
            Some(b'!' | b'?') => skip_past_gt(html, lt + 2),
            Some(b'/') => match bytes.get(2) {
                Some(c) if c.is_ascii_alphabetic() => {
                    let (name, name_end) = tag_name(html, lt + 2);
                    self.end_tag(&name);
                    skip_past_gt(html, name_end)
                }
                // "</>" and "</ x>": ignored, as browsers do.
                _ => skip_past_gt(html, lt + 2),
            },
            Some(c) if c.is_ascii_alphabetic() => self.start_tag(html, lt),
            // A stray "<" ("a < b", "<3") is text.
            _ => {
                self.text("<");
                lt + 1
            }
        }
    }

    fn start_tag(&mut self, html: &str, lt: usize) -> usize {
        let (name, name_end) = tag_name(html, lt + 1);
        let Some((tag_end, self_closing)) = scan_attributes(html, name_end) else {
            // A tag cut off by the end of the document is dropped, as browsers do.
            return html.len();
        };
        if self.in_head && !HEAD_ELEMENTS.contains(&name.as_str()) {
            self.in_head = false;
        }
        match name.as_str() {
            "head" => {
                // A second <head> after the content has started means nothing.
                if self.out.out.is_empty() && !self.hidden() {
                    self.in_head = true;
                }
                return tag_end;
            }
            "template" if !self_closing => {
                self.template_depth += 1;
                return tag_end;
            }
            "svg" if !self_closing => {
                self.svg_depth += 1;
                return tag_end;
            }
            _ => {}
        }
        if !self_closing && let Some(chrome) = self.chrome(&name) {
            self.chrome.push(chrome);
            return tag_end;
        }
        if let Some(kind) = raw_text_kind(&name) {
            // "<script/>" in an XHTML-minded page has no content, whatever HTML5 says.
            return if self_closing {
                tag_end
            } else {
                self.raw_text(html, tag_end, &name, kind)
            };
        }
        if !self.hidden() && !self.in_head {
            if is_sectioning(&name) && !self_closing {
                self.sectioning_depth += 1;
            }
            self.track_link(&name, !self_closing);
            self.out.open(&name);
        }
        tag_end
    }

    fn end_tag(&mut self, name: &str) {
        match name {
            "head" | "body" | "html" => self.in_head = false,
            "template" => self.template_depth = self.template_depth.saturating_sub(1),
            "svg" => self.svg_depth = self.svg_depth.saturating_sub(1),
            _ if self.chrome.last().is_some_and(|open| *open == name) => {
                self.chrome.pop();
            }
            _ if self.hidden() || self.in_head => {}
            _ => {
                if is_sectioning(name) {
                    self.sectioning_depth = self.sectioning_depth.saturating_sub(1);
                }
                self.track_link(name, false);
                self.out.close(name);
            }
        }
    }

    /// The content of an element whose content is not markup, up to its end tag; returns
    /// where scanning goes on.
    fn raw_text(&mut self, html: &str, from: usize, name: &str, kind: RawText) -> usize {
        let (content_end, resume) = match find_end_tag(html, from, name) {
            Some(found) => found,
            // An unclosed <title> or <textarea> would swallow the page: stop at the next tag.
            None if matches!(kind, RawText::Title | RawText::Escapable) => {
                let stop = html[from..].find('<').map_or(html.len(), |i| from + i);
                (stop, stop)
            }
            // An unclosed <script> runs to the end, as in browsers.
            None => (html.len(), html.len()),
        };
        let content = &html[from..content_end];
        match kind {
            RawText::Dropped => {}
            RawText::Title => {
                if self.title.is_none() && !self.hidden() {
                    let title = collapse_whitespace(&decode_entities(content));
                    if !title.is_empty() {
                        self.title = Some(title);
                    }
                }
            }
            RawText::Escapable => self.text(content),
            RawText::Verbatim => {
                if !self.hidden() && !self.in_head {
                    self.out.open("pre");
                    self.out.pre_text(content);
                    self.out.close("pre");
                }
            }
        }
        resume
    }
}

fn is_sectioning(name: &str) -> bool {
    matches!(name, "article" | "main" | "section")
}

/// Elements that stay within a line of text.
fn is_inline(name: &str) -> bool {
    matches!(
        name,
        "a" | "abbr"
            | "b"
            | "bdi"
            | "bdo"
            | "cite"
            | "code"
            | "data"
            | "del"
            | "dfn"
            | "em"
            | "font"
            | "i"
            | "img"
            | "ins"
            | "kbd"
            | "label"
            | "mark"
            | "q"
            | "s"
            | "samp"
            | "small"
            | "span"
            | "strong"
            | "sub"
            | "sup"
            | "time"
            | "tt"
            | "u"
            | "var"
            | "wbr"
    )
}

/// `text` with each word between [`LINK_OPEN`] and [`LINK_CLOSE`], whitespace as it was.
fn mark_link_words(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut in_word = false;
    for c in text.chars() {
        match (c.is_whitespace(), in_word) {
            (false, false) => out.push(LINK_OPEN),
            (true, true) => out.push(LINK_CLOSE),
            _ => {}
        }
        in_word = !c.is_whitespace();
        out.push(c);
    }
    if in_word {
        out.push(LINK_CLOSE);
    }
    out
}

/// Elements whose content is not markup.
#[derive(Clone, Copy)]
enum RawText {
    /// Scripts, styles and the like: dropped.
    Dropped,
    Title,
    /// `<textarea>`: text with entities.
    Escapable,
    /// `<xmp>`: shown as it is written.
    Verbatim,
}

fn raw_text_kind(name: &str) -> Option<RawText> {
    match name {
        "script" | "style" | "noscript" | "iframe" | "noembed" | "noframes" => {
            Some(RawText::Dropped)
        }
        "title" => Some(RawText::Title),
        "textarea" => Some(RawText::Escapable),
        "xmp" => Some(RawText::Verbatim),
        _ => None,
    }
}

/// The lower-cased tag name starting at `from`, and where it ends.
fn tag_name(html: &str, from: usize) -> (String, usize) {
    let len = html.as_bytes()[from..]
        .iter()
        .position(|&b| b.is_ascii_whitespace() || b == b'/' || b == b'>')
        .unwrap_or(html.len() - from);
    // Stopping only at ASCII bytes keeps `from + len` on a character boundary.
    (html[from..from + len].to_ascii_lowercase(), from + len)
}

/// Scans a start tag's attributes from `from`; returns the offset just past its `>` and
/// whether it ended in `/>`, or `None` when the document ends first. A quoted value may hold
/// `>`; a quote left open ends at the first `>` after it instead of swallowing the page.
fn scan_attributes(html: &str, from: usize) -> Option<(usize, bool)> {
    let bytes = html.as_bytes();
    let mut i = from;
    let mut last = 0u8;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'>' => return Some((i + 1, last == b'/')),
            b'=' => {
                i += 1;
                while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
                    i += 1;
                }
                if let Some(&quote) = bytes.get(i).filter(|&&q| q == b'"' || q == b'\'') {
                    let value = i + 1;
                    let close = bytes[value..].iter().position(|&c| c == quote);
                    match close {
                        Some(len) => i = value + len + 1,
                        None => {
                            let gt = bytes[value..].iter().position(|&c| c == b'>')?;
                            return Some((value + gt + 1, false));
                        }
                    }
                }
                last = b'=';
                continue;
            }
            _ if b.is_ascii_whitespace() => {}
            _ => last = b,
        }
        i += 1;
    }
    None
}

fn skip_past_gt(html: &str, from: usize) -> usize {
    match html.get(from..).and_then(|rest| rest.find('>')) {
        Some(i) => from + i + 1,
        None => html.len(),
    }
}

/// Finds `</name` (any case) followed by `>`, `/`, whitespace or the end, from `from`; returns
/// where the content ends and where scanning goes on.
fn find_end_tag(html: &str, from: usize, name: &str) -> Option<(usize, usize)> {
    let bytes = html.as_bytes();
    let mut at = from;
    while let Some(offset) = html[at..].find("</") {
        let lt = at + offset;
        let name_start = lt + 2;
        let name_end = name_start + name.len();
        let matches = bytes
            .get(name_start..name_end)
            .is_some_and(|candidate| candidate.eq_ignore_ascii_case(name.as_bytes()))
            && bytes
                .get(name_end)
                .is_none_or(|&b| b == b'>' || b == b'/' || b.is_ascii_whitespace());
        if matches {
            return Some((lt, skip_past_gt(html, name_end)));
        }
        at = name_start;
    }
    None
}

fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Decodes character references: named ones (the common set and all of Latin-1), `&#...;` and
/// `&#x...;`. A reference that is not one stays as written. `&nbsp;` becomes a plain space,
/// which the text then collapses like any other.
fn decode_entities(text: &str) -> Cow<'_, str> {
    if !text.contains('&') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        match decode_reference(after) {
            Some((decoded, used)) => {
                if let Some(c) = decoded {
                    out.push(c);
                }
                rest = &after[used..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Reads the reference after an `&`: what it stands for (`None` for the invisible ones such
/// as `&shy;`) and how many bytes it used.
fn decode_reference(after: &str) -> Option<(Option<char>, usize)> {
    let bytes = after.as_bytes();
    if bytes.first() == Some(&b'#') {
        let (radix, digits_start) = match bytes.get(1) {
            Some(b'x' | b'X') => (16, 2),
            _ => (10, 1),
        };
        let digits = bytes[digits_start..]
            .iter()
            .take_while(|b| (**b as char).is_digit(radix))
            .count();
        if digits == 0 {
            return None;
        }
        let digits_end = digits_start + digits;
        let value = after[digits_start..digits_end]
            .chars()
            .filter_map(|c| c.to_digit(radix))
            .fold(0u32, |acc, d| acc.saturating_mul(radix).saturating_add(d));
        let used = digits_end + usize::from(bytes.get(digits_end) == Some(&b';'));
        return Some((Some(numeric_char(value)), used));
    }
    let name_len = bytes
        .iter()
        .take(32)
        .take_while(|b| b.is_ascii_alphanumeric())
        .count();
    if name_len == 0 {
        return None;
    }
    let name = &after[..name_len];
    if bytes.get(name_len) == Some(&b';') {
        let decoded = named_entity(name)?;
        return Some((decoded, name_len + 1));
    }
    // Without a ";" only the references sloppy pages write bare ("AT&T" stays).
    match name {
        "amp" | "lt" | "gt" | "quot" | "nbsp" => Some((named_entity(name)?, name_len)),
        _ => None,
    }
}

/// A numeric reference's character as HTML5 reads it: 0x80–0x9F are Windows-1252 (pages
/// write `&#150;` for an en dash), and nothing invalid gets through.
fn numeric_char(value: u32) -> char {
    const WINDOWS_1252: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž',
        '\u{8f}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}',
        'ž', 'Ÿ',
    ];
    match value {
        0 => char::REPLACEMENT_CHARACTER,
        0xa0 => ' ',
        0x80..=0x9f => WINDOWS_1252
            .get((value - 0x80) as usize)
            .copied()
            .unwrap_or(char::REPLACEMENT_CHARACTER),
        _ => char::from_u32(value).unwrap_or(char::REPLACEMENT_CHARACTER),
    }
}

/// Latin-1's named characters, U+00A0 to U+00FF in order; the array's length checks the list.
const LATIN1: [&str; 96] = [
    "nbsp", "iexcl", "cent", "pound", "curren", "yen", "brvbar", "sect", "uml", "copy", "ordf",
    "laquo", "not", "shy", "reg", "macr", "deg", "plusmn", "sup2", "sup3", "acute", "micro",
    "para", "middot", "cedil", "sup1", "ordm", "raquo", "frac14", "frac12", "frac34", "iquest",
    "Agrave", "Aacute", "Acirc", "Atilde", "Auml", "Aring", "AElig", "Ccedil", "Egrave", "Eacute",
    "Ecirc", "Euml", "Igrave", "Iacute", "Icirc", "Iuml", "ETH", "Ntilde", "Ograve", "Oacute",
    "Ocirc", "Otilde", "Ouml", "times", "Oslash", "Ugrave", "Uacute", "Ucirc", "Uuml", "Yacute",
    "THORN", "szlig", "agrave", "aacute", "acirc", "atilde", "auml", "aring", "aelig", "ccedil",
    "egrave", "eacute", "ecirc", "euml", "igrave", "iacute", "icirc", "iuml", "eth", "ntilde",
    "ograve", "oacute", "ocirc", "otilde", "ouml", "divide", "oslash", "ugrave", "uacute", "ucirc",
    "uuml", "yacute", "thorn", "yuml",
];

/// A named reference: `Some(Some(c))` a character, `Some(None)` an invisible one (soft hyphen,
/// joiners, direction marks), `None` not a name this decoder knows.
fn named_entity(name: &str) -> Option<Option<char>> {
    let c = match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" | "ensp" | "emsp" | "thinsp" => ' ',
        "shy" | "zwj" | "zwnj" | "lrm" | "rlm" => return Some(None),
        "ndash" => '–',
        "mdash" => '—',
        "minus" => '−',
        "lsquo" => '‘',
        "rsquo" => '’',
        "sbquo" => '‚',
        "ldquo" => '“',
        "rdquo" => '”',
        "bdquo" => '„',
        "lsaquo" => '‹',
        "rsaquo" => '›',
        "hellip" => '…',
        "bull" => '•',
        "prime" => '′',
        "Prime" => '″',
        "dagger" => '†',
        "Dagger" => '‡',
        "permil" => '‰',
        "euro" => '€',
        "trade" => '™',
        "larr" => '←',
        "rarr" => '→',
        "uarr" => '↑',
        "darr" => '↓',
        "harr" => '↔',
        "le" => '≤',
        "ge" => '≥',
        "ne" => '≠',
        "asymp" => '≈',
        "infin" => '∞',
        "OElig" => 'Œ',
        "oelig" => 'œ',
        "Scaron" => 'Š',
        "scaron" => 'š',
        "Yuml" => 'Ÿ',
        "fnof" => 'ƒ',
        "circ" => 'ˆ',
        "tilde" => '˜',
        _ => {
            let index = LATIN1.iter().position(|n| *n == name)?;
            return Some(char::from_u32(0xa0 + index as u32));
        }
    };
    Some(Some(c))
}

/// What a line of output sits inside; each adds to the start of the line.
enum Context {
    /// `> `.
    Quote,
    List {
        ordered: bool,
        next: usize,
    },
    /// Continuation lines are indented by the marker's width.
    Item {
        indent: usize,
    },
}

/// Builds the text: words joined by single spaces, breaks asked for by blocks and written
/// only when more text follows, so empty blocks leave no blank lines behind.
#[derive(Default)]
struct Writer {
    out: String,
    /// Nothing, not even a prefix, is on the current line yet.
    line_empty: bool,
    pending_space: bool,
    /// Between table cells.
    pending_separator: bool,
    /// Line breaks to write before the next text: 1 a new line, 2 a blank line.
    pending_breaks: usize,
    contexts: Vec<Context>,
    /// The marker of the innermost list item, until its first text.
    item_marker: Option<String>,
    /// The level of the heading being written, until its first text.
    heading: Option<usize>,
    pre_depth: usize,
    /// Just after `<pre>`: its first newline is not content.
    pre_fresh: bool,
    /// Where the open code block's opening fence is in `out`, once its first text is written.
    fence_at: Option<usize>,
}

impl Writer {
    fn breaks(&mut self, n: usize) {
        // An item's first block ("<li><p>Three</p>") stays on the marker's line.
        let n = if self.item_marker.is_some() {
            n.min(1)
        } else {
            n
        };
        self.pending_breaks = self.pending_breaks.max(n);
    }

    fn in_item(&self) -> bool {
        self.contexts
            .iter()
            .any(|c| matches!(c, Context::Item { .. }))
    }

    fn open(&mut self, name: &str) {
        match name {
            "br" => {
                if self.pre_depth > 0 {
                    self.pre_text("\n");
                } else {
                    self.pending_breaks = (self.pending_breaks + 1).min(2);
                }
            }
            "p" | "dl" | "table" | "figure" | "address" | "details" | "fieldset" | "hr" => {
                self.breaks(2);
            }
            "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                self.breaks(2);
                self.heading = name[1..].parse().ok();
            }
            "pre" | "listing" => {
                self.breaks(2);
                self.pre_depth += 1;
                self.pre_fresh = true;
            }
            "blockquote" => {
                self.breaks(2);
                self.contexts.push(Context::Quote);
            }
            "ul" | "ol" | "menu" | "dir" => {
                self.breaks(if self.in_item() { 1 } else { 2 });
                self.contexts.push(Context::List {
                    ordered: name == "ol",
                    next: 1,
                });
            }
            "li" => self.open_item(),
            // A failed guard falls through to the last arm: nothing to do.
            "td" | "th" if self.pending_breaks == 0 && !self.line_empty && !self.out.is_empty() => {
                self.pending_separator = true;
            }
            "img" if !self.line_empty => self.pending_space = true,
            "div" | "section" | "article" | "main" | "header" | "footer" | "nav" | "aside"
            | "tr" | "dt" | "dd" | "caption" | "figcaption" | "summary" | "legend" | "form"
            | "center" | "hgroup" | "option" | "body" => self.breaks(1),
            _ => {}
        }
    }

    fn close(&mut self, name: &str) {
        match name {
            "p" | "dl" | "table" | "figure" | "address" | "details" | "fieldset" => {
                self.breaks(2);
            }
            "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                self.heading = None;
                self.breaks(2);
            }
            "pre" | "listing" => {
                self.pre_depth = self.pre_depth.saturating_sub(1);
                self.pre_fresh = false;
                if self.pre_depth == 0 {
                    self.end_code();
                }
                self.breaks(2);
            }
            "blockquote" => {
                if let Some(i) = self
                    .contexts
                    .iter()
                    .rposition(|c| matches!(c, Context::Quote))
                {
                    self.contexts.truncate(i);
                }
                self.breaks(2);
            }
            "ul" | "ol" | "menu" | "dir" => {
                if let Some(i) = self
                    .contexts
                    .iter()
                    .rposition(|c| matches!(c, Context::List { .. }))
                {
                    self.contexts.truncate(i);
                    self.item_marker = None;
                }
                self.breaks(if self.in_item() { 1 } else { 2 });
            }
            "li" => {
                self.close_item();
                self.breaks(1);
            }
            "div" | "section" | "article" | "main" | "header" | "footer" | "nav" | "aside"
            | "tr" | "dt" | "dd" | "caption" | "figcaption" | "summary" | "legend" | "form"
            | "center" | "hgroup" | "option" => self.breaks(1),
            _ => {}
        }
    }

    fn open_item(&mut self) {
        // "<li>a<li>b": an item ends where its sibling starts.
        self.close_item();
        let list = self.contexts.iter_mut().rev().find_map(|c| match c {
            Context::List { ordered, next } => Some((*ordered, next)),
            _ => None,
        });
        let marker = match list {
            Some((true, next)) => {
                let marker = format!("{next}. ");
                *next += 1;
                marker
            }
            _ => "- ".to_owned(),
        };
        self.breaks(1);
        self.contexts.push(Context::Item {
            indent: marker.chars().count(),
        });
        self.item_marker = Some(marker);
    }

    /// Ends the innermost item of the innermost list, if one is open.
    fn close_item(&mut self) {
        let list = self
            .contexts
            .iter()
            .rposition(|c| matches!(c, Context::List { .. }));
        let item = self
            .contexts
            .iter()
            .rposition(|c| matches!(c, Context::Item { .. }));
        if let Some(item) = item
            && list.is_none_or(|list| item > list)
        {
            self.contexts.truncate(item);
            self.item_marker = None;
        }
    }

    /// Text outside `<pre>`: whitespace runs become one space.
    fn flow_text(&mut self, text: &str) {
        let mut rest = text;
        while !rest.is_empty() {
            let space = rest
                .find(|c: char| !c.is_whitespace())
                .unwrap_or(rest.len());
            if space > 0 && !self.line_empty && !self.out.is_empty() {
                self.pending_space = true;
            }
            rest = &rest[space..];
            let word = rest.find(char::is_whitespace).unwrap_or(rest.len());
            if word > 0 {
                self.flush(false);
                self.out.push_str(&rest[..word]);
            }
            rest = &rest[word..];
        }
    }

    /// Text inside `<pre>`: as written.
    fn pre_text(&mut self, text: &str) {
        let text = if std::mem::take(&mut self.pre_fresh) {
            text.strip_prefix("\r\n")
                .or_else(|| text.strip_prefix('\n'))
                .unwrap_or(text)
        } else {
            text
        };
        if text.is_empty() {
            return;
        }
        self.flush(true);
        if self.fence_at.is_none() {
            // A fence opens a line: after a list item's marker it goes below it.
            if !self.out.is_empty() && !self.out.ends_with('\n') {
                self.out.push('\n');
            }
            self.fence_at = Some(self.out.len());
            self.out.push_str("```\n");
        }
        self.out.push_str(text);
        self.line_empty = text.ends_with('\n');
    }

    /// Closes the open code block's fence, lengthened past any run of backticks in the code;
    /// a block with no visible text goes entirely.
    fn end_code(&mut self) {
        let Some(fence_at) = self.fence_at.take() else {
            return;
        };
        let code = self.out.get(fence_at + 3..).unwrap_or_default();
        if code.trim().is_empty() {
            self.out.truncate(fence_at);
            self.line_empty = self.out.is_empty() || self.out.ends_with('\n');
            return;
        }
        let longest_run = code
            .split(|c| c != '`')
            .map(str::len)
            .max()
            .unwrap_or_default();
        let fence_len = (longest_run + 1).max(3);
        self.out
            .insert_str(fence_at, &"`".repeat(fence_len.saturating_sub(3)));
        if !self.out.ends_with('\n') {
            self.out.push('\n');
        }
        self.out.extend(std::iter::repeat_n('`', fence_len));
        self.line_empty = false;
    }

    /// Writes what is pending before the next text: breaks, then the line's prefix, or else
    /// the space or cell separator. Verbatim text gets no indentation or quote marks: they
    /// could not be added to its later lines without changing it.
    fn flush(&mut self, verbatim: bool) {
        if self.out.is_empty() {
            self.line_empty = true;
        } else if self.pending_breaks > 0 {
            let have = self
                .out
                .bytes()
                .rev()
                .take(2)
                .take_while(|&b| b == b'\n')
                .count();
            for _ in have..self.pending_breaks {
                self.out.push('\n');
            }
            self.line_empty = true;
        }
        self.pending_breaks = 0;
        if self.line_empty {
            if verbatim {
                // A list item that starts with code still shows its marker.
                if let Some(marker) = self.item_marker.take() {
                    self.out.push_str(&marker);
                }
            } else {
                self.write_prefix();
            }
            self.line_empty = false;
        } else if self.pending_separator {
            self.out.push_str(" | ");
        } else if self.pending_space {
            self.out.push(' ');
        }
        self.pending_space = false;
        self.pending_separator = false;
    }

    fn write_prefix(&mut self) {
        let last_item = self
            .contexts
            .iter()
            .rposition(|c| matches!(c, Context::Item { .. }));
        for (i, context) in self.contexts.iter().enumerate() {
            match context {
                Context::Quote => self.out.push_str("> "),
                Context::List { .. } => {}
                Context::Item { indent } => match self.item_marker.take() {
                    Some(marker) if Some(i) == last_item => self.out.push_str(&marker),
                    marker => {
                        self.item_marker = marker;
                        self.out.extend(std::iter::repeat_n(' ', *indent));
                    }
                },
            }
        }
        if let Some(level) = self.heading.take() {
            self.out.extend(std::iter::repeat_n('#', level));
            self.out.push(' ');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_come_from_the_name_or_the_content_type() {
        assert_eq!(format_of("notes.txt", None), Some(Format::Text));
        assert_eq!(format_of("NOTES.TEXT", None), Some(Format::Text));
        assert_eq!(format_of("docs/guide.md", None), Some(Format::Markdown));
        assert_eq!(
            format_of("C:\\docs\\guide.markdown", None),
            Some(Format::Markdown)
        );
        assert_eq!(format_of("index.HTM", None), Some(Format::Html));
        assert_eq!(
            format_of("https://example.com/a/page.html?x=1.pdf#top", None),
            Some(Format::Html)
        );
        assert_eq!(format_of("report.pdf", None), None);
        assert_eq!(format_of("README", None), None);
        assert_eq!(format_of("https://example.com/", None), None);

        assert_eq!(
            format_of("https://example.com/", Some("text/html; charset=utf-8")),
            Some(Format::Html)
        );
        assert_eq!(
            format_of("x", Some("Text/Markdown")),
            Some(Format::Markdown)
        );
        assert_eq!(format_of("x", Some("text/plain")), Some(Format::Text));
        // Markdown served as text/plain stays Markdown.
        assert_eq!(
            format_of(
                "https://raw.githubusercontent.com/o/r/main/README.md",
                Some("text/plain")
            ),
            Some(Format::Markdown)
        );
        assert_eq!(
            format_of("page.html", Some("application/octet-stream")),
            Some(Format::Html)
        );
        assert_eq!(format_of("page.html", Some("application/pdf")), None);
        assert_eq!(format_of("data.json", Some("application/json")), None);
    }

    #[test]
    fn normalise_fixes_line_ends_trailing_spaces_and_blank_runs() {
        let text = "\u{feff}\n\nTitle  \r\n\r\n\r\n\r\nfirst line\t\r\n  indented\rlast \n\n\n";
        assert_eq!(normalise(text), "Title\n\nfirst line\n  indented\nlast");
        assert_eq!(normalise("a\n\nb"), "a\n\nb");
        assert_eq!(normalise("   \n\t\n"), "");
    }

    #[test]
    fn text_has_no_title_and_is_normalised() {
        let extracted = extract("# Not a title\r\nbody  \r\n", Format::Text);
        assert_eq!(extracted.title, None);
        assert_eq!(extracted.text, "# Not a title\nbody");
    }

    #[test]
    fn markdown_title_is_the_first_level_one_heading() {
        let markdown = "## Sub first\n\n```\n# not this, it is code\n```\n\n#   Install Warden #\n\n# Second\n";
        let extracted = extract(markdown, Format::Markdown);
        assert_eq!(extracted.title.as_deref(), Some("Install Warden"));
        assert!(
            extracted
                .text
                .starts_with("## Sub first\n\n```\n# not this")
        );

        assert_eq!(markdown_title("# C#\n").as_deref(), Some("C#"));
        assert_eq!(markdown_title("#hashtag\n## Two\n"), None);
        assert_eq!(
            markdown_title("#\n# \n   # Indented ok\n").as_deref(),
            Some("Indented ok")
        );
        assert_eq!(markdown_title("    # code block\n"), None);
    }

    #[test]
    fn html_drops_head_scripts_styles_comments_and_hidden_markup() {
        let html = r#"<!DOCTYPE html>
<html><head>
  <meta charset="utf-8"><title>  The   Page &amp; More </title>
  <style>body { color: red } p > a { x: "</p>" }</style>
  <script>var s = "<p>not text</p>"; if (a < b && c > d) {}</script>
  <link rel="stylesheet" href="x.css">
</head>
<body>
  <!-- a comment with <p>markup</p> -->
  <noscript><p>Enable JavaScript</p></noscript>
  <template><p>template text</p></template>
  <svg viewBox="0 0 1 1"><title>Close icon</title><path d="M0"/></svg>
  <p>Visible <b>bold</b> text.</p>
  <SCRIPT type="module">alert("hi")</SCRIPT >
</body></html>"#;
        let extracted = extract(html, Format::Html);
        assert_eq!(extracted.title.as_deref(), Some("The Page & More"));
        assert_eq!(extracted.text, "Visible bold text.");
    }

    #[test]
    fn html_decodes_entities() {
        let text = html_to_text(
            "<p>&lt;tag&gt; &amp; &quot;q&quot; &#39;s&#39; a&nbsp;b &#x41;&#66;&#x1F600; \
             &copy; &eacute;t&eacute; &mdash; &hellip; &#150; AT&T &amp &unknown; &#0; &#xZZ;</p>",
        );
        assert_eq!(
            text,
            "<tag> & \"q\" 's' a b AB😀 © été — … – AT&T & &unknown; \u{fffd} &#xZZ;"
        );
        // Decoded markup is text, never parsed again.
        assert_eq!(
            html_to_text("&lt;script&gt;x&lt;/script&gt;"),
            "<script>x</script>"
        );
    }

    #[test]
    fn html_blocks_become_lines_and_paragraphs() {
        let html = "<h1>Title</h1><p>First   paragraph\n  spread over\tlines.</p>\
                    <div>A div</div><div>Another div</div>\
                    <h3>Sub <em>heading</em></h3>line one<br>line two<br/><br>after a gap\
                    <p></p><p>  </p><section><article><p>Deep</p></article></section>";
        assert_eq!(
            html_to_text(html),
            "# Title\n\nFirst paragraph spread over lines.\n\nA div\nAnother div\n\n\
             ### Sub heading\n\nline one\nline two\n\nafter a gap\n\nDeep"
        );
    }

    #[test]
    fn html_lists_get_markers_and_nesting() {
        let html = "<p>Intro</p><ul><li>One</li><li>Two<ul><li>Two a<li>Two b</ul></li>\
                    <li><p>Three</p><p>more</p></ul><ol><li>First<li>Second</ol><p>End</p>";
        assert_eq!(
            html_to_text(html),
            "Intro\n\n- One\n- Two\n  - Two a\n  - Two b\n- Three\n\n  more\n\n\
             1. First\n2. Second\n\nEnd"
        );
    }

    #[test]
    fn html_pre_is_verbatim() {
        let html = "<p>Code:</p><pre>\nfn main() {\n    let x = 1 &lt; 2;\n\n    <span class=\"k\">println!</span>(\"{x}\");\n}\n</pre><p>After   it</p>";
        assert_eq!(
            html_to_text(html),
            "Code:\n\n```\nfn main() {\n    let x = 1 < 2;\n\n    println!(\"{x}\");\n}\n```\n\nAfter it"
        );
    }

    #[test]
    fn html_links_keep_their_text_and_tables_their_cells() {
        let html = "<p>See <a href=\"https://example.com/x\">the docs</a>, then <a href=#>go</a>.</p>\
                    <table><tr><th>Name</th><th>Port</th></tr>\
                    <tr><td>warden</td><td>8080</td></tr></table>\
                    <blockquote><p>Quoted</p><p>twice</p></blockquote>";
        assert_eq!(
            html_to_text(html),
            "See the docs, then go.\n\nName | Port\nwarden | 8080\n\n> Quoted\n\n> twice"
        );
    }

    #[test]
    fn html_survives_malformed_markup() {
        // Stray "<", a ">" inside a quoted attribute, unclosed tags, an unclosed quote.
        let html = "<p title=\"a > b\" data-x='<p>'>1 < 2 and 3 <= 4 <3</p>\
                    <p>unclosed <b>bold <i>italic</p><div>next</div>\
                    see <a href=\"broken>link text</a> <p>tail</p></>< /p>";
        assert_eq!(
            html_to_text(html),
            "1 < 2 and 3 <= 4 <3\n\nunclosed bold italic\n\nnext\nsee link text\n\ntail\n\n< /p>"
        );
        assert_eq!(html_to_text("text <div class=\"cut off"), "text");
        assert_eq!(html_to_text("<p>a<!-- never closed <p>b"), "a");
        assert_eq!(html_to_text("<title>Unclosed<p>body"), "body");
        assert_eq!(
            extract("<title>Unclosed<p>body", Format::Html)
                .title
                .as_deref(),
            Some("Unclosed")
        );
        assert_eq!(html_to_text("<script>never closed <p>gone"), "");
        assert_eq!(
            html_to_text("<head><title>t</title><p>implied body</p>"),
            "implied body"
        );
        assert_eq!(
            html_to_text("<li>stray item</li></ul></blockquote></li>"),
            "- stray item"
        );
    }

    #[test]
    fn html_never_panics_on_random_input() {
        const PIECES: &[&str] = &[
            "<",
            ">",
            "</",
            "/>",
            "<!--",
            "-->",
            "<!",
            "<?",
            "&",
            "&#",
            "&#x",
            ";",
            "\"",
            "'",
            "=",
            " ",
            "\n",
            "<p>",
            "</p>",
            "<li>",
            "<ul>",
            "</ol>",
            "<pre>",
            "</pre>",
            "<script>",
            "</script",
            "<title>",
            "<svg>",
            "</svg>",
            "<template>",
            "<head>",
            "<br>",
            "<td>",
            "<h2>",
            "<blockquote>",
            "&amp;",
            "&#9999999999;",
            "é",
            "😀",
            "a",
            "Z",
            "9",
            "\r",
            "<![CDATA[",
            "]]>",
            "<textarea>",
            "<xmp>",
            "</",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..3000 {
            let mut html = String::new();
            for _ in 0..40 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                html.push_str(PIECES[(state % PIECES.len() as u64) as usize]);
            }
            let extracted = extract(&html, Format::Html);
            assert_eq!(extracted.text, normalise(&extracted.text), "{html:?}");
        }
    }

    #[test]
    fn html_fixture_page_reads_like_a_reader_sees_it() {
        let html = include_str!("../../../tests/fixtures/ingest/page.html");
        let extracted = extract(html, Format::Html);
        assert_eq!(extracted.title.as_deref(), Some("Warden — Getting started"));
        let expected = include_str!("../../../tests/fixtures/ingest/page.txt");
        assert_eq!(extracted.text, expected.trim_end());
    }

    #[test]
    fn markdown_loses_badges_navigation_comments_and_link_urls() {
        let markdown = "\
# Warden [![build](https://ci.example/badge.svg)](https://ci.example)

[![build](https://ci.example/b.svg)](https://ci.example) ![license](https://img.example/l.svg)
[Home](/) | [Docs](/docs) | [Blog](/blog)
<p align=\"center\"><img src=\"logo.png\" width=\"120\"></p>
<!-- a note for editors -->

Warden is a [gateway](https://example.com/gw \"title\") for ![logo](l.png)chat, see the
[manual][man] and <https://example.com/faq>. Not a link: [sic] and `[a](b)`.
<!-- spread
over lines --> Kept after the comment.

- [Install](#install)
- [Usage](#usage)
1. [First](first.md)
https://example.com/alone

## [Install](install.md) <!-- x -->

| Name | Link |
| --- | --- |
| [a](x) | [b](y) |

```md
[Home](/) | [Docs](/docs)
<!-- kept -->
# Inside a fence
```

[man]: https://example.com/manual
[^1]: A footnote stays.
";
        let extracted = extract(markdown, Format::Markdown);
        assert_eq!(extracted.title.as_deref(), Some("Warden"));
        assert_eq!(
            extracted.text,
            "\
# Warden

Warden is a gateway for chat, see the
manual and https://example.com/faq. Not a link: [sic] and `[a](b)`.
Kept after the comment.

## Install

| Name | Link |
| --- | --- |
| a | b |

```md
[Home](/) | [Docs](/docs)
<!-- kept -->
# Inside a fence
```

[^1]: A footnote stays."
        );
    }

    #[test]
    fn markdown_link_only_lines_need_only_links_urls_and_separators() {
        let keep = |line: &str| {
            let text = extract(line, Format::Markdown).text;
            (!text.is_empty()).then_some(text)
        };
        assert_eq!(
            keep("**[Docs](/docs)** · [API](/api) » <me@example.com>"),
            None
        );
        assert_eq!(keep("> [Quoted link](x)"), None);
        assert_eq!(keep("![x](y)"), None);
        assert_eq!(keep("See [Docs](/docs)."), Some("See Docs.".to_owned()));
        assert_eq!(keep("2 [items](x)"), Some("2 items".to_owned()));
        assert_eq!(keep("---"), Some("---".to_owned()));
        assert_eq!(
            keep("Visit www.example.com today"),
            Some("Visit www.example.com today".to_owned())
        );
        // A heading of images only goes; one with text keeps its text.
        assert_eq!(keep("# ![logo](l.png)"), None);
        assert_eq!(keep("## [API](api.md) ##"), Some("## API ##".to_owned()));
        // Undefined references and escapes are text; nested brackets and parentheses are fine.
        assert_eq!(
            keep("a[0][1] and \\[x](y) then [f(x)](https://e.org/a_(b)) end"),
            Some("a[0][1] and \\[x](y) then f(x) end".to_owned())
        );
    }

    #[test]
    fn html_skips_navigation_and_page_furniture_but_keeps_article_headers() {
        let html = "<body><header><a href=/>Logo</a><p>Site tagline</p></header>\
                    <nav><a href=/>Home</a> | <a href=/docs>Docs</a></nav>\
                    <main><article><header><h1>Title</h1><p>By Ann</p></header>\
                    <p>Body text with <a href=/x>a link</a>.</p>\
                    <p><a href=/a>Home</a> › <a href=/b>Guides</a> › <a href=/c>Install</a></p>\
                    <ul><li><a href=#one>One</a></li><li><a href=#two>Two</a> and more</li></ul>\
                    <a href=/card><h2>Card title</h2><p>Card text.</p></a>\
                    <p>https://example.com/bare</p>\
                    <aside>Related: <a href=/r>other</a></aside>\
                    <footer><p>Article footer</p></footer></article></main>\
                    <footer>Page footer <a href=/privacy>Privacy</a></footer></body>";
        assert_eq!(
            html_to_text(html),
            "# Title\n\nBy Ann\n\nBody text with a link.\n\n- Two and more\n\n\
             ## Card title\n\nCard text.\n\nArticle footer"
        );
        // The page's own private-use characters cannot pass for link marks.
        assert_eq!(
            html_to_text("<p>a\u{e000}b <a href=/>c\u{e001}</a>&#xE001;</p>"),
            "ab c"
        );
    }

    #[test]
    fn html_pre_is_fenced_longer_than_its_backticks() {
        assert_eq!(
            html_to_text(
                "<pre>``` not a fence\nhttps://example.com/kept\n# comment</pre><p>After</p>"
            ),
            "````\n``` not a fence\nhttps://example.com/kept\n# comment\n````\n\nAfter"
        );
        // An empty <pre> leaves nothing; an unclosed one closes at the end.
        assert_eq!(html_to_text("<p>a</p><pre> \n </pre><p>b</p>"), "a\n\nb");
        assert_eq!(html_to_text("<p>a</p><pre>code"), "a\n\n```\ncode\n```");
        // After a list item's marker the fence starts its own line.
        assert_eq!(
            html_to_text("<ul><li><pre>x</pre></li></ul>"),
            "-\n```\nx\n```"
        );
    }

    #[test]
    fn markdown_noise_stripping_never_panics_and_stays_linear() {
        const PIECES: &[&str] = &[
            "[",
            "]",
            "(",
            ")",
            "](",
            "![",
            "][",
            "`",
            "``",
            "```",
            "~~~",
            "<",
            ">",
            "<!--",
            "-->",
            "\\",
            "!",
            "http://x.y",
            " ",
            "\n",
            "\n\n",
            "# ",
            "| ",
            "- ",
            "1. ",
            "é",
            "word",
            "[l]: u",
            "[l]",
            "<a@b.c>",
            "<https://e>",
            "😀",
            ":",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..3000 {
            let mut markdown = String::new();
            for _ in 0..40 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                markdown.push_str(PIECES[(state % PIECES.len() as u64) as usize]);
            }
            let extracted = extract(&markdown, Format::Markdown);
            assert_eq!(extracted.text, normalise(&extracted.text), "{markdown:?}");
        }
        // Lines of unmatched brackets, backticks, "<" and comment openers cost their length.
        let started = std::time::Instant::now();
        for piece in ["[", "(", "` ``", "<", "![", "<!-- ", "[a](", "`` ` "] {
            let line = piece.repeat(200_000 / piece.len());
            extract(&line, Format::Markdown);
        }
        assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());
    }
}
