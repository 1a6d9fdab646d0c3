//! Secrets are written in the config as references (`env:NAME`) and resolved at start-up.
//! The resolved value never appears in Debug output, logs or `check-config`.

use std::fmt;

/// A secret and the reference it came from.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    reference: String,
    value: String,
}

impl Secret {
    pub fn new(reference: impl Into<String>, value: impl Into<String>) -> Self {
        Secret {
            reference: reference.into(),
            value: value.into(),
        }
    }

    /// The secret itself: only for building the upstream request.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Where the secret came from, e.g. `env:OPENAI_API_KEY`: safe to print.
    pub fn reference(&self) -> &str {
        &self.reference
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}: ***)", self.reference)
    }
}

/// Parses `env:NAME` into `NAME`; anything else is not a reference.
pub fn env_reference(text: &str) -> Option<&str> {
    let name = text.strip_prefix("env:")?;
    let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    valid.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret::new("env:KEY", "sk-very-secret");
        let printed = format!("{secret:?}");
        assert!(!printed.contains("sk-very-secret"));
        assert!(printed.contains("env:KEY"));
        assert_eq!(secret.expose(), "sk-very-secret");
    }

    #[test]
    fn only_env_references_are_accepted() {
        assert_eq!(env_reference("env:OPENAI_API_KEY"), Some("OPENAI_API_KEY"));
        assert_eq!(env_reference("sk-inline"), None);
        assert_eq!(env_reference("env:"), None);
        assert_eq!(env_reference("env:BAD-NAME"), None);
    }
}
