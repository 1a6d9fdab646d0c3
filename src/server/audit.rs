//! The audit log: one JSON line per guard block or flag, for the compliance officer — when,
//! which request, which key and tenant, which policy and categories, input or output. The
//! content is left out unless the config asks for it.

use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::guard::Decision;

pub struct Audit {
    file: Mutex<std::io::BufWriter<std::fs::File>>,
    include_content: bool,
    pub path: PathBuf,
}

/// One decision worth recording.
pub struct Entry<'a> {
    pub request_id: &'a str,
    pub key: &'a str,
    pub tenant: &'a str,
    pub model: &'a str,
    pub policy: &'a str,
    pub turn: &'static str,
    pub decision: Decision,
    pub categories: &'a [String],
    pub content: Option<&'a str>,
}

impl Audit {
    pub fn open(path: &std::path::Path, include_content: bool) -> std::io::Result<Audit> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Audit {
            file: Mutex::new(std::io::BufWriter::new(file)),
            include_content,
            path: path.to_owned(),
        })
    }

    /// Records blocks and flags (and guard failures); safe verdicts are not audit events.
    pub fn record(&self, entry: Entry<'_>) {
        if entry.decision == Decision::Safe {
            return;
        }
        let time = humantime_now();
        let mut line = json!({
            "time": time,
            "request_id": entry.request_id,
            "key": entry.key,
            "tenant": entry.tenant,
            "model": entry.model,
            "policy": entry.policy,
            "turn": entry.turn,
            "verdict": entry.decision.label(),
            "categories": entry.categories,
        });
        if self.include_content
            && let (Some(content), Some(object)) = (entry.content, line.as_object_mut())
        {
            object.insert("content".to_owned(), json!(content));
        }
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let written = writeln!(file, "{line}").and_then(|()| file.flush());
        if let Err(err) = written {
            tracing::error!(path = %self.path.display(), error = %err, "cannot write the audit log");
        }
    }
}

/// Who and what a request is, for its audit entries.
#[derive(Clone)]
pub struct Context {
    pub audit: std::sync::Arc<Audit>,
    pub request_id: String,
    pub key: String,
    pub tenant: String,
    pub model: String,
}

impl Context {
    pub fn record(
        &self,
        policy: &str,
        turn: &'static str,
        decision: Decision,
        categories: &[String],
        content: Option<&str>,
    ) {
        self.audit.record(Entry {
            request_id: &self.request_id,
            key: &self.key,
            tenant: &self.tenant,
            model: &self.model,
            policy,
            turn,
            decision,
            categories,
            content,
        });
    }
}

/// RFC 3339 UTC time with milliseconds, without a date library.
pub fn humantime_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (hour, minute, second) = (rest / 3600, rest % 3600 / 60, rest % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{:03}Z",
        now.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_is_rfc3339() {
        let t = humantime_now();
        assert_eq!(t.len(), 24);
        assert!(
            t.starts_with("20") && t.ends_with('Z') && &t[10..11] == "T",
            "{t}"
        );
    }
}
