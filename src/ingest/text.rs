//! Documents → plain text: which format a file or URL holds, HTML turned into the text a
//! reader sees, Markdown's title, and one normalisation for every format.
//!
//! The HTML converter aims at what LlamaIndex's `SimpleWebPageReader(html_to_text=True)` gives
//! (it runs the `html2text` package): scripts, styles and the `<head>` gone, blocks as line
//! breaks, headings as `#`s, list items as `- `, entities decoded, `<pre>` verbatim. It is hand
//! written, not a parser crate: ingestion needs only the readable text in reading order, and a
//! single forgiving scanner that never fails keeps the dependency tree lean. Links keep their
//! text and drop their URL: a chunk is embedded for what it says, and the page's own URL is
//! kept beside it anyway.

use std::borrow::Cow;

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
            let text = normalise(content);
            Extracted {
                title: markdown_title(&text),
                text,
            }
        }
        Format::Html => {
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
    let mut in_fence = false;
    for line in text.lines() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        if indent > 3 {
            continue;
        }
        let line = line.trim_start_matches(' ');
        if line.starts_with("```") || line.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let Some(rest) = line.strip_prefix("# ").or_else(|| line.strip_prefix("#\t")) else {
            continue;
        };
        let rest = rest.trim();
        // "# Title #" closes with #s; "# C#" does not (no space before them).
        let without_closing = rest.trim_end_matches('#');
        let title = if without_closing.is_empty() || without_closing.ends_with([' ', '\t']) {
            without_closing.trim_end()
        } else {
            rest
        };
        if !title.is_empty() {
            return Some(title.to_owned());
        }
    }
    None
}

/// Scans the HTML once, left to right, and writes the text as it goes.
fn convert(html: &str) -> (Option<String>, String) {
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
    (converter.title, normalise(&converter.out.out))
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
}

impl Converter {
    fn hidden(&self) -> bool {
        self.template_depth > 0 || self.svg_depth > 0
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
        let text = decode_entities(raw);
        if self.out.pre_depth > 0 {
            self.out.pre_text(&text);
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
        if let Some(kind) = raw_text_kind(&name) {
            // "<script/>" in an XHTML-minded page has no content, whatever HTML5 says.
            return if self_closing {
                tag_end
            } else {
                self.raw_text(html, tag_end, &name, kind)
            };
        }
        if !self.hidden() && !self.in_head {
            self.out.open(&name);
        }
        tag_end
    }

    fn end_tag(&mut self, name: &str) {
        match name {
            "head" | "body" | "html" => self.in_head = false,
            "template" => self.template_depth = self.template_depth.saturating_sub(1),
            "svg" => self.svg_depth = self.svg_depth.saturating_sub(1),
            _ if self.hidden() || self.in_head => {}
            _ => self.out.close(name),
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
        self.out.push_str(text);
        self.line_empty = text.ends_with('\n');
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
            "Code:\n\nfn main() {\n    let x = 1 < 2;\n\n    println!(\"{x}\");\n}\n\nAfter it"
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
                    <a href=\"broken>link text</a> <p>tail</p></>< /p>";
        assert_eq!(
            html_to_text(html),
            "1 < 2 and 3 <= 4 <3\n\nunclosed bold italic\n\nnext\nlink text\n\ntail\n\n< /p>"
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
        let html = include_str!("../../tests/fixtures/ingest/page.html");
        let extracted = extract(html, Format::Html);
        assert_eq!(extracted.title.as_deref(), Some("Warden — Getting started"));
        let expected = include_str!("../../tests/fixtures/ingest/page.txt");
        assert_eq!(extracted.text, expected.trim_end());
    }
}
