//! Compound identifiers in the text that BM25 reads. Milvus's standard tokenizer (Unicode word
//! boundaries, UAX #29) splits `node-gyp` and `std::fs` into their parts but keeps `os.path`,
//! `CLICOLOR_FORCE` and `1.70` whole, so a question that names the compound does not match its
//! parts and one that names a part does not match the compound. Both the indexed text and the
//! query get, after the text itself, each compound joined with `_` (one token for that
//! tokenizer) and its parts: then the compound matches whole, as a rare term, and each part
//! matches too. Numbers alone (`1.70`, `3.11.2`) are already kept whole and are left as they are.

/// The text BM25 indexes or searches for: `text`, then a line of the compounds it names.
pub fn keyword_form(text: &str) -> String {
    let mut extra = String::new();
    for word in text.split(|c: char| !(c.is_alphanumeric() || is_joiner(c))) {
        let word = word.trim_matches(is_joiner);
        if !word.contains(is_joiner) || !word.chars().any(char::is_alphabetic) {
            continue;
        }
        let parts: Vec<&str> = word.split(is_joiner).filter(|p| !p.is_empty()).collect();
        // `e.g.` and `i.e.` are abbreviations, not names.
        if parts.len() < 2 || parts.iter().all(|p| p.chars().count() == 1) {
            continue;
        }
        extra.push(' ');
        extra.push_str(&parts.join("_"));
        for part in parts {
            extra.push(' ');
            extra.push_str(part);
        }
    }
    if extra.is_empty() {
        text.to_owned()
    } else {
        format!("{text}\n{}", extra.trim_start())
    }
}

/// Whether a question names something exactly, the way only keyword search matches: a quoted
/// or back-ticked string, a compound (`os.path`, `PyObject_GetAttr`, `std::fs`), a camel-case
/// name (`getAttr`, `PyObject`), a command-line flag (`--failfast`, `-m`), a call (`dumps()`)
/// or a version (`3.10`).
pub fn names_an_identifier(text: &str) -> bool {
    if text.contains('`') || text.matches('"').count() >= 2 {
        return true;
    }
    text.split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '(' | '[' | '{'))
        .any(|raw| {
            let word = raw.trim_end_matches(['.', '?', '!', ':', ')', ']', '}']);
            let called = raw.contains("()");
            let flag = (word.starts_with("--") && word.len() > 2)
                || (word.len() == 2
                    && word.starts_with('-')
                    && word[1..].chars().all(char::is_alphabetic));
            let inner = word.trim_matches(|c: char| !c.is_alphanumeric());
            let compound = inner.contains("::")
                || inner.contains('_')
                || (inner.contains('.')
                    && inner.split('.').filter(|p| !p.is_empty()).count() >= 2
                    && !inner.split('.').all(|p| p.chars().count() <= 1));
            let chars: Vec<char> = inner.chars().collect();
            let camel = chars
                .windows(2)
                .any(|w| w[0].is_lowercase() && w[1].is_uppercase());
            called || flag || compound || camel
        })
}

fn is_joiner(c: char) -> bool {
    matches!(c, '-' | '.' | '_' | '/' | ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compounds_are_added_whole_and_by_their_parts() {
        assert_eq!(
            keyword_form("Run node-gyp with CLICOLOR_FORCE set."),
            "Run node-gyp with CLICOLOR_FORCE set.\nnode_gyp node gyp CLICOLOR_FORCE CLICOLOR FORCE"
        );
        assert_eq!(
            keyword_form("see os.path and std::fs::read"),
            "see os.path and std::fs::read\nos_path os path std_fs_read std fs read"
        );
    }

    #[test]
    fn questions_that_name_something_exactly_are_told_apart() {
        for question in [
            "What does PyObject_GetAttrString return on failure?",
            "How do I use `shutil.copytree` with symlinks?",
            "Is os.path.commonpath better here?",
            "Which option is --failfast?",
            "What does python -m venv create?",
            "Why does json.dumps() sort keys?",
            "What changed in 3.10?",
            "Where is getAttr documented?",
            "What does the \"O&\" format unit do?",
            "How do I call std::fs::read?",
        ] {
            assert!(names_an_identifier(question), "{question}");
        }
        for question in [
            "How do I sort a list of records by two fields?",
            "Which module compares two directory trees, e.g. for backups?",
            "What is a non-blocking socket?",
            "Why is my loop slow?",
        ] {
            assert!(!names_an_identifier(question), "{question}");
        }
    }

    #[test]
    fn plain_words_numbers_and_sentence_ends_are_left_alone() {
        for text in [
            "How do I sort a list?",
            "Rust 1.70 and Python 3.11.2.",
            "the end. Next",
            "sort it, e.g. by name",
        ] {
            assert_eq!(keyword_form(text), text);
        }
    }
}
