//! Safety policies (`policies/*.toml`): the Llama Guard categories and what to do about each,
//! which turns are checked, how streamed output is moderated, and what happens when the guard
//! cannot answer.
//!
//! A policy file that does not validate is an error naming the file, the line and the key.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// The Llama Guard 3 hazard categories as the model's prompt format names them (the model card
/// lists longer titles for some: S3 Sex-Related Crimes, S4 Child Sexual Exploitation, S11
/// Suicide & Self-Harm). Llama Guard 3 1B was trained on S1–S13, the 8B on all 14.
pub const STANDARD_CATEGORIES: [(&str, &str); 14] = [
    ("S1", "Violent Crimes"),
    ("S2", "Non-Violent Crimes"),
    ("S3", "Sex Crimes"),
    ("S4", "Child Exploitation"),
    ("S5", "Defamation"),
    ("S6", "Specialized Advice"),
    ("S7", "Privacy"),
    ("S8", "Intellectual Property"),
    ("S9", "Indiscriminate Weapons"),
    ("S10", "Hate"),
    ("S11", "Self-Harm"),
    ("S12", "Sexual Content"),
    ("S13", "Elections"),
    ("S14", "Code Interpreter Abuse"),
];

pub const DEFAULT_REFUSAL: &str = "I'm sorry, but I can't help with that.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Refuse the request or cut the response.
    Block,
    /// Let it through; record and report it.
    Flag,
    /// Not checked: left out of the guard prompt.
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    Input,
    Output,
    /// Chunks retrieved from the knowledge base: an unsafe one is left out of the context.
    Retrieved,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamMode {
    /// No text reaches the client before it was judged safe.
    #[default]
    Buffered,
    /// Text flows at once; the stream is cut when a window is judged unsafe.
    StreamFirst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockStyle {
    /// 200 with an assistant message carrying the refusal, `finish_reason: "content_filter"`.
    #[default]
    Refusal,
    /// HTTP 400 with code `content_filter` (Azure OpenAI's convention).
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// The guard could not answer: refuse (503 `guard_unavailable`).
    #[default]
    FailClosed,
    /// The guard could not answer: let the request through and record it.
    FailOpen,
}

/// Whether a policy's verdicts are acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// Blocks block.
    #[default]
    Enforce,
    /// Shadow mode, for rolling a policy out: every verdict is computed and recorded (audit,
    /// metrics, the `warden` object) as `would_block`, and nothing is blocked.
    Monitor,
}

/// What happens to image content parts, which a text guard cannot read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageParts {
    /// A request with an image part is a 400: nothing the guard cannot judge reaches the model.
    #[default]
    Refuse,
    /// Image parts go to the model unjudged (counted in `warden_unjudged_parts_total`): for
    /// deployments whose model cannot read images, or that judge them elsewhere.
    Pass,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    description: String,
    #[serde(default = "default_checks")]
    checks: Vec<Check>,
    #[serde(default)]
    refusal: Option<Spanned<String>>,
    #[serde(default)]
    on_block: BlockStyle,
    #[serde(default)]
    on_guard_failure: FailMode,
    #[serde(default)]
    enforcement: Enforcement,
    #[serde(default)]
    images: ImageParts,
    #[serde(default)]
    output: RawOutput,
    categories: Vec<Spanned<RawCategory>>,
}

fn default_checks() -> Vec<Check> {
    vec![Check::Input, Check::Output, Check::Retrieved]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    #[serde(default = "default_window")]
    window_chars: Spanned<usize>,
    #[serde(default)]
    mode: StreamMode,
}

impl Default for RawOutput {
    fn default() -> Self {
        RawOutput {
            window_chars: default_window(),
            mode: StreamMode::Buffered,
        }
    }
}

fn default_window() -> Spanned<usize> {
    Spanned::new(0..0, 1000)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCategory {
    /// `S1`…`S14` for Llama Guard's own categories.
    #[serde(default)]
    code: Option<String>,
    /// The identifier of a custom category (lowercase letters, digits, `_`, `-`).
    #[serde(default)]
    id: Option<String>,
    name: String,
    #[serde(default)]
    description: Option<String>,
    action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Category {
    /// `S6` for a standard category, the custom id otherwise; what responses and logs report.
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub action: Action,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    /// The first 16 hex digits of the file's SHA-256: part of every cache key.
    pub version: String,
    pub description: String,
    pub check_input: bool,
    pub check_output: bool,
    pub check_retrieved: bool,
    pub refusal: String,
    pub on_block: BlockStyle,
    pub fail_mode: FailMode,
    pub enforcement: Enforcement,
    pub images: ImageParts,
    pub window_chars: usize,
    pub stream_mode: StreamMode,
    pub categories: Vec<Category>,
}

impl Policy {
    /// The categories that go into the guard prompt, in prompt order (`allow` ones left out).
    pub fn prompt_categories(&self) -> impl Iterator<Item = &Category> {
        self.categories.iter().filter(|c| c.action != Action::Allow)
    }

    pub fn category(&self, id: &str) -> Option<&Category> {
        self.categories.iter().find(|c| c.id == id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for PolicyError {}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn valid_custom_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl Policy {
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|err| PolicyError {
            file: path.to_owned(),
            line: None,
            key: None,
            message: format!("cannot read the file: {err}"),
        })?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("policy")
            .to_owned();
        Policy::parse(&text, &name, path)
    }

    /// Validates policy text; `path` is used in messages only.
    pub fn parse(text: &str, name: &str, path: &Path) -> Result<Policy, PolicyError> {
        let error = |line: Option<usize>, key: Option<String>, message: String| PolicyError {
            file: path.to_owned(),
            line,
            key,
            message,
        };
        let deserializer = toml::de::Deserializer::parse(text).map_err(|err| {
            let line = err.span().map(|s| line_of(text, s.start));
            error(
                line,
                None,
                format!("not valid TOML: {}", err.message().trim()),
            )
        })?;
        let raw: RawPolicy = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            // `Spanned` fields show up in the path under a private name; leave it out.
            let key = err
                .path()
                .to_string()
                .replace("$__serde_spanned_private_value.", "")
                .replace(".$__serde_spanned_private_value", "");
            let inner = err.into_inner();
            let line = inner.span().map(|s| line_of(text, s.start));
            let key = (!key.is_empty() && key != ".").then_some(key);
            error(line, key, inner.message().trim().to_owned())
        })?;

        let mut categories = Vec::with_capacity(raw.categories.len());
        let mut seen = HashSet::new();
        for (i, spanned) in raw.categories.iter().enumerate() {
            let line = Some(line_of(text, spanned.span().start));
            let raw_category = spanned.get_ref();
            let key = |field: &str| Some(format!("categories[{i}].{field}"));
            let id = match (&raw_category.code, &raw_category.id) {
                (Some(_), Some(_)) => {
                    return Err(error(
                        line,
                        key("id"),
                        "a category has either a `code` (S1–S14) or an `id` (custom), not both"
                            .to_owned(),
                    ));
                }
                (Some(code), None) => {
                    if !STANDARD_CATEGORIES.iter().any(|(c, _)| c == code) {
                        return Err(error(
                            line,
                            key("code"),
                            format!(
                                "`{code}` is not a Llama Guard 3 category (S1–S14); custom categories use `id`"
                            ),
                        ));
                    }
                    code.clone()
                }
                (None, Some(id)) => {
                    if !valid_custom_id(id) {
                        return Err(error(
                            line,
                            key("id"),
                            format!("`{id}`: use lowercase letters, digits, `_` and `-`"),
                        ));
                    }
                    if raw_category
                        .description
                        .as_deref()
                        .is_none_or(|d| d.trim().is_empty())
                    {
                        return Err(error(
                            line,
                            key("description"),
                            "a custom category needs a description: it is what the guard model reads"
                                .to_owned(),
                        ));
                    }
                    id.clone()
                }
                (None, None) => {
                    return Err(error(
                        line,
                        key("code"),
                        "a category needs a `code` (S1–S14) or a custom `id`".to_owned(),
                    ));
                }
            };
            if raw_category.name.trim().is_empty() {
                return Err(error(line, key("name"), "must not be empty".to_owned()));
            }
            if raw_category.name.contains('\n') {
                return Err(error(line, key("name"), "must be one line".to_owned()));
            }
            if !seen.insert(id.clone()) {
                return Err(error(
                    line,
                    key("code"),
                    format!("category `{id}` is listed twice"),
                ));
            }
            categories.push(Category {
                id,
                name: raw_category.name.trim().to_owned(),
                description: raw_category
                    .description
                    .as_ref()
                    .map(|d| d.trim().to_owned())
                    .filter(|d| !d.is_empty()),
                action: raw_category.action,
            });
        }

        let check_input = raw.checks.contains(&Check::Input);
        let check_output = raw.checks.contains(&Check::Output);
        let check_retrieved = raw.checks.contains(&Check::Retrieved);
        if (check_input || check_output || check_retrieved)
            && categories.iter().all(|c| c.action == Action::Allow)
        {
            return Err(error(
                None,
                Some("categories".to_owned()),
                "every category is `allow`, so nothing would be checked: set `checks = []` to turn moderation off"
                    .to_owned(),
            ));
        }
        let window = &raw.output.window_chars;
        if *window.get_ref() < 20 {
            return Err(error(
                Some(line_of(text, window.span().start)),
                Some("output.window_chars".to_owned()),
                "must be at least 20 characters".to_owned(),
            ));
        }
        let refusal = match &raw.refusal {
            Some(r) if r.get_ref().trim().is_empty() => {
                return Err(error(
                    Some(line_of(text, r.span().start)),
                    Some("refusal".to_owned()),
                    "must not be empty".to_owned(),
                ));
            }
            Some(r) => r.get_ref().clone(),
            None => DEFAULT_REFUSAL.to_owned(),
        };
        let digest = Sha256::digest(text.as_bytes());
        let version: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Ok(Policy {
            name: name.to_owned(),
            version,
            description: raw.description,
            check_input,
            check_output,
            check_retrieved,
            refusal,
            on_block: raw.on_block,
            fail_mode: raw.on_guard_failure,
            enforcement: raw.enforcement,
            images: raw.images,
            window_chars: *window.get_ref(),
            stream_mode: raw.output.mode,
            categories,
        })
    }
}

/// Every policy of a folder, by name (the file stem).
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub policies: BTreeMap<String, std::sync::Arc<Policy>>,
}

impl PolicySet {
    pub fn load_dir(dir: &Path) -> Result<PolicySet, PolicyError> {
        let entries = std::fs::read_dir(dir).map_err(|err| PolicyError {
            file: dir.to_owned(),
            line: None,
            key: None,
            message: format!("cannot read the policies folder: {err}"),
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        paths.sort();
        let mut policies = BTreeMap::new();
        for path in paths {
            let policy = Policy::load(&path)?;
            policies.insert(policy.name.clone(), std::sync::Arc::new(policy));
        }
        Ok(PolicySet { policies })
    }

    pub fn get(&self, name: &str) -> Option<std::sync::Arc<Policy>> {
        self.policies.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse(text, "p", Path::new("policies/p.toml"))
    }

    const MINIMAL: &str =
        "[[categories]]\ncode = \"S1\"\nname = \"Violent Crimes\"\naction = \"block\"\n";

    #[test]
    fn defaults_are_safe() {
        let p = parse(MINIMAL).unwrap();
        assert!(p.check_input && p.check_output);
        assert_eq!(p.fail_mode, FailMode::FailClosed);
        assert_eq!(p.stream_mode, StreamMode::Buffered);
        assert_eq!(p.refusal, DEFAULT_REFUSAL);
        assert_eq!(p.version.len(), 16);
    }

    #[test]
    fn errors_name_line_and_key() {
        let err = parse("checks = [\"input\"]\n\n[[categories]]\ncode = \"S99\"\nname = \"x\"\naction = \"block\"\n").unwrap_err();
        assert_eq!(err.line, Some(3));
        assert_eq!(err.key.as_deref(), Some("categories[0].code"));
        let err =
            parse("[[categories]]\ncode = \"S1\"\nname = \"x\"\naction = \"deny\"\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("categories[0].action"));
        assert_eq!(err.line, Some(4), "{err}");
        let err = parse(&format!("colour = 1\n{MINIMAL}")).unwrap_err();
        assert_eq!(err.line, Some(1), "{err}");
        assert!(err.to_string().starts_with("policies/p.toml:1"), "{err}");
    }

    #[test]
    fn custom_categories_need_an_id_and_a_description() {
        let err = parse(
            "[[categories]]\nid = \"competitors\"\nname = \"Competitors\"\naction = \"block\"\n",
        )
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("categories[0].description"));
        let ok = parse("[[categories]]\nid = \"competitors\"\nname = \"Competitors\"\ndescription = \"Talk about rival products.\"\naction = \"flag\"\n").unwrap();
        assert_eq!(ok.categories[0].id, "competitors");
    }

    #[test]
    fn all_allowed_needs_checks_off() {
        let all_allowed = MINIMAL.replace("block", "allow");
        assert!(parse(&all_allowed).is_err());
        assert!(parse(&format!("checks = []\n{all_allowed}")).is_ok());
    }
}
