//! Reading Llama Guard's answer: `safe`, or `unsafe` and a line of category codes. The parser
//! is lenient about whitespace, case, separators and trailing text, and never panics; what it
//! cannot read is a guard failure, handled by the policy's fail mode.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    Safe,
    /// Codes as the prompt numbered them (`S1` = index 0); empty when the model named none.
    Unsafe(Vec<usize>),
}

pub fn parse(answer: &str) -> Option<Reading> {
    let trimmed = answer.trim_start_matches(|c: char| c.is_whitespace() || c == '"' || c == '\'');
    let lower = trimmed.to_ascii_lowercase();
    if lower.starts_with("unsafe") {
        return Some(Reading::Unsafe(codes(&trimmed["unsafe".len()..])));
    }
    if lower.starts_with("safe") {
        return Some(Reading::Safe);
    }
    None
}

/// Every `S<number>` in the text, in order, without repeats.
fn codes(text: &str) -> Vec<usize> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let boundary = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        if boundary && (bytes[i] == b'S' || bytes[i] == b's') {
            let digits: String = text[i + 1..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(n) = digits.parse::<usize>()
                && n >= 1
                && !out.contains(&(n - 1))
            {
                out.push(n - 1);
            }
            i += 1 + digits.len();
        } else {
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_shapes_seen_in_practice() {
        assert_eq!(parse("safe"), Some(Reading::Safe));
        assert_eq!(parse("\n\nsafe<|eot_id|>"), Some(Reading::Safe));
        assert_eq!(parse("Safe."), Some(Reading::Safe));
        assert_eq!(parse("unsafe\nS6"), Some(Reading::Unsafe(vec![5])));
        assert_eq!(parse("unsafe \nS1, S6"), Some(Reading::Unsafe(vec![0, 5])));
        assert_eq!(
            parse("unsafe\nS1,S10,S1 because..."),
            Some(Reading::Unsafe(vec![0, 9]))
        );
        assert_eq!(parse("UNSAFE"), Some(Reading::Unsafe(vec![])));
        assert_eq!(parse("unsafe\ns2"), Some(Reading::Unsafe(vec![1])));
    }

    #[test]
    fn garbage_is_unreadable_and_never_panics() {
        assert_eq!(parse(""), None);
        assert_eq!(parse("I think this is fine"), None);
        assert_eq!(parse("unsure"), None);
        assert_eq!(
            parse("unsafe\nS99999999999999999999999"),
            Some(Reading::Unsafe(vec![]))
        );
        assert_eq!(parse("unsafe\nS0 Sé S"), Some(Reading::Unsafe(vec![])));
    }
}
