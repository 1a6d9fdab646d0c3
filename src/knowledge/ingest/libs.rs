//! Maintained libraries in place of the hand-written HTML converter and chunker, for comparing
//! them on `make eval-retrieval` (the same corpora, questions and engine). Built with
//! `--features ingest-libs` only; `EVAL_INGEST_VARIANT` (read once) picks, comma-separated:
//! - `htmd`: HTML → Markdown by `htmd`, then Warden's Markdown noise rules;
//! - `readability`: the main content by `dom_smoothie` (Mozilla Readability), as Markdown, then
//!   the same rules;
//! - `text-splitter`: `text-splitter`'s `MarkdownSplitter`, counting the embedding model's
//!   tokens, with Warden's heading paths computed for its chunks.
//!
//! Anything else (or nothing) keeps Warden's own code. The default build has none of this.

use std::sync::LazyLock;

use super::chunk::{Chunk, ChunkConfig, heading_paths_at};
use super::text::Extracted;

static VARIANT: LazyLock<String> =
    LazyLock::new(|| std::env::var("EVAL_INGEST_VARIANT").unwrap_or_default());

fn picked(name: &str) -> bool {
    VARIANT.split(',').any(|v| v.trim() == name)
}

/// An HTML page by the library the variant names, or `None` for Warden's own converter.
pub(crate) fn html(content: &str) -> Option<Extracted> {
    let (title, markdown) = if picked("htmd") {
        let title = super::text::convert(content).0;
        (title, htmd::convert(content).ok()?)
    } else if picked("readability") {
        let config = dom_smoothie::Config {
            text_mode: dom_smoothie::TextMode::Markdown,
            ..Default::default()
        };
        let article = dom_smoothie::Readability::new(content, None, Some(config))
            .ok()?
            .parse()
            .ok()?;
        let title = (!article.title.trim().is_empty()).then(|| article.title.trim().to_owned());
        (title, article.text_content.to_string())
    } else {
        return None;
    };
    let text = super::text::extract(&markdown, super::text::Format::Markdown).text;
    Some(Extracted { title, text })
}

struct Counter<'a>(&'a dyn Fn(&str) -> usize);

impl text_splitter::ChunkSizer for Counter<'_> {
    fn size(&self, chunk: &str) -> usize {
        (self.0)(chunk)
    }
}

/// Chunks by `text-splitter` when the variant names it, else `None` for Warden's own chunker.
pub(crate) fn chunks(
    text: &str,
    config: &ChunkConfig,
    count_tokens: &dyn Fn(&str) -> usize,
) -> Option<Vec<Chunk>> {
    if !picked("text-splitter") {
        return None;
    }
    let max = config.max_tokens.max(1);
    let sizing = text_splitter::ChunkConfig::new(max)
        .with_overlap(config.overlap_tokens.min(max - 1))
        .ok()?
        .with_sizer(Counter(count_tokens));
    let splitter = text_splitter::MarkdownSplitter::new(sizing);
    let pieces: Vec<(usize, &str)> = splitter.chunk_indices(text).collect();
    let starts: Vec<usize> = pieces.iter().map(|(start, _)| *start).collect();
    let headings = heading_paths_at(text, &starts);
    Some(
        pieces
            .into_iter()
            .zip(headings)
            .enumerate()
            .map(|(index, ((start, piece), heading))| Chunk {
                index,
                text: piece.to_owned(),
                start,
                tokens: count_tokens(piece),
                heading,
            })
            .collect(),
    )
}
