//! Where configuration comes from besides the file: the process environment, read through a
//! small trait so tests never touch the real one.
//!
//! Override scheme: `WARDEN_<KEY>__<KEY>...=VALUE` sets the key at that path. Keys match
//! case-insensitively with `-` and `_` treated alike (`WARDEN_BACKENDS__LOCAL_OLLAMA__BASE_URL`
//! sets `backends.local-ollama.base_url`); a number selects an array element
//! (`WARDEN_MODELS__0__ID`). The value is read as a TOML value when it is one (`8080`, `true`,
//! `["a"]`, `"quoted"`) and as a plain string otherwise.

use std::collections::BTreeMap;

/// Variables that configure Warden itself rather than a config key.
pub const CONFIG_PATH_VAR: &str = "WARDEN_CONFIG";
/// The cache folder of the project's scripts (`make run`, `make test`): not a config key.
pub const CACHE_VAR: &str = "WARDEN_CACHE";
const PREFIX: &str = "WARDEN_";
const SEPARATOR: &str = "__";

pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
    /// All variables whose name starts with `WARDEN_`.
    fn warden_vars(&self) -> Vec<(String, String)>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn warden_vars(&self) -> Vec<(String, String)> {
        let mut vars: Vec<_> = std::env::vars()
            .filter(|(name, _)| name.starts_with(PREFIX))
            .collect();
        vars.sort();
        vars
    }
}

/// A fixed environment, for tests and embedding.
#[derive(Default, Clone)]
pub struct MapEnv(pub BTreeMap<String, String>);

impl MapEnv {
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.0.insert(name.to_owned(), value.to_owned());
        self
    }
}

impl Environment for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }

    fn warden_vars(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter(|(name, _)| name.starts_with(PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// One override that was applied, for error messages (`set by WARDEN_...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedOverride {
    pub variable: String,
    pub path: String,
}

fn same_key(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes().zip(b.bytes()).all(|(x, y)| {
            let norm = |c: u8| {
                if c == b'-' {
                    b'_'
                } else {
                    c.to_ascii_lowercase()
                }
            };
            norm(x) == norm(y)
        })
}

fn parse_value(raw: &str) -> toml::Value {
    // `toml` parses documents, so read the value as the right-hand side of a key.
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut table| table.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// Applies every `WARDEN_...` override to the parsed file.
pub fn apply_overrides(
    root: &mut toml::Table,
    env: &dyn Environment,
) -> Result<Vec<AppliedOverride>, String> {
    let mut applied = Vec::new();
    for (variable, raw) in env.warden_vars() {
        if variable == CONFIG_PATH_VAR || variable == CACHE_VAR {
            continue;
        }
        let Some(rest) = variable.strip_prefix(PREFIX) else {
            continue;
        };
        let segments: Vec<&str> = rest.split(SEPARATOR).collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(format!(
                "environment variable {variable}: empty key segment (use `__` between keys)"
            ));
        }
        let path = set_path(root, &segments, parse_value(&raw))
            .map_err(|why| format!("environment variable {variable}: {why}"))?;
        applied.push(AppliedOverride { variable, path });
    }
    Ok(applied)
}

/// Sets `value` at `segments` below `table`, creating tables as needed; returns the dotted path.
fn set_path(
    table: &mut toml::Table,
    segments: &[&str],
    value: toml::Value,
) -> Result<String, String> {
    let Some((first, rest)) = segments.split_first() else {
        return Err("no key given".to_owned());
    };
    let key = table
        .keys()
        .find(|existing| same_key(existing, first))
        .cloned()
        .unwrap_or_else(|| first.to_ascii_lowercase());
    if rest.is_empty() {
        table.insert(key.clone(), value);
        return Ok(key);
    }
    let child = table
        .entry(key.clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let below = set_in_value(child, rest, value)?;
    Ok(format!("{key}{below}"))
}

fn set_in_value(
    node: &mut toml::Value,
    segments: &[&str],
    value: toml::Value,
) -> Result<String, String> {
    match node {
        toml::Value::Table(table) => set_path(table, segments, value).map(|p| format!(".{p}")),
        toml::Value::Array(items) => {
            let Some((first, rest)) = segments.split_first() else {
                return Err("no key given".to_owned());
            };
            let index: usize = first
                .parse()
                .map_err(|_| format!("`{first}` is not an array index"))?;
            let len = items.len();
            let item = items
                .get_mut(index)
                .ok_or_else(|| format!("index {index} is past the end of an array of {len}"))?;
            if rest.is_empty() {
                *item = value;
                return Ok(format!("[{index}]"));
            }
            set_in_value(item, rest, value).map(|p| format!("[{index}]{p}"))
        }
        _ => Err(format!(
            "`{}` is not a table, so it has no key `{}`",
            segments.first().copied().unwrap_or_default(),
            segments.first().copied().unwrap_or_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn overrides_match_keys_loosely_and_parse_values() {
        let mut root = table(
            "[server]\nlisten = \"127.0.0.1:8080\"\n[backends.local-ollama]\nbase_url = \"http://a\"\n",
        );
        let env = MapEnv::default()
            .with("WARDEN_SERVER__LISTEN", "0.0.0.0:9000")
            .with("WARDEN_SERVER__MAX_BODY_BYTES", "1024")
            .with("WARDEN_BACKENDS__LOCAL_OLLAMA__BASE_URL", "http://b:11434")
            .with("WARDEN_CONFIG", "ignored.toml")
            .with("WARDEN_CACHE", "/tmp/ignored");
        let applied = apply_overrides(&mut root, &env).unwrap();
        assert_eq!(applied.len(), 3);
        assert_eq!(root["server"]["listen"].as_str(), Some("0.0.0.0:9000"));
        assert_eq!(root["server"]["max_body_bytes"].as_integer(), Some(1024));
        assert_eq!(
            root["backends"]["local-ollama"]["base_url"].as_str(),
            Some("http://b:11434")
        );
        assert!(
            applied
                .iter()
                .any(|a| a.path == "backends.local-ollama.base_url")
        );
    }

    #[test]
    fn array_elements_are_addressed_by_index() {
        let mut root = table("[[models]]\nid = \"a\"\n[[models]]\nid = \"b\"\n");
        let env = MapEnv::default().with("WARDEN_MODELS__1__ID", "c");
        apply_overrides(&mut root, &env).unwrap();
        assert_eq!(root["models"][1]["id"].as_str(), Some("c"));
        let bad = MapEnv::default().with("WARDEN_MODELS__5__ID", "c");
        let err = apply_overrides(&mut root, &bad).unwrap_err();
        assert!(err.contains("WARDEN_MODELS__5__ID"), "{err}");
        assert!(err.contains("index 5"), "{err}");
    }

    #[test]
    fn empty_segments_are_rejected() {
        let mut root = toml::Table::new();
        let env = MapEnv::default().with("WARDEN_SERVER____LISTEN", "x");
        assert!(apply_overrides(&mut root, &env).is_err());
    }
}
