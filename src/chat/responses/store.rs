//! Stored responses: what `GET /v1/responses/{id}` returns and what `previous_response_id`
//! continues. In this replica's memory only, bounded by count, by size and by age; the oldest
//! go first. A response belongs to the key that made it: another key finds nothing, as if it
//! did not exist. Nothing of it is logged.

use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use crate::config::ResponsesConfig;

/// Who may read a stored response: the key (its name) and its tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub key: String,
    pub tenant: String,
}

#[derive(Debug, Clone)]
pub struct Stored {
    pub owner: Owner,
    /// The `Response` object as it was answered.
    pub response: Value,
    /// The conversation up to and including this response, as chat messages (instructions
    /// left out: they do not carry over), for the next turn to continue.
    pub conversation: Vec<Value>,
}

struct Entry {
    stored: Stored,
    expires: Instant,
    bytes: usize,
}

struct Inner {
    entries: HashMap<String, Entry>,
    /// Ids from oldest to newest; an id may outlive its entry (deleted), and is skipped.
    order: VecDeque<String>,
    bytes: usize,
    limits: ResponsesConfig,
}

pub struct ResponseStore {
    inner: Mutex<Inner>,
}

impl ResponseStore {
    pub fn new(limits: ResponsesConfig) -> ResponseStore {
        ResponseStore {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
                limits,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-written in a way that
        // matters more than losing the store: keep serving.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A reload's new limits; what no longer fits goes at the next `put`.
    pub fn set_limits(&self, limits: ResponsesConfig) {
        self.lock().limits = limits;
    }

    pub fn enabled(&self) -> bool {
        self.lock().limits.store
    }

    pub fn put(&self, id: String, stored: Stored) {
        let bytes = size_of(&stored);
        let mut inner = self.lock();
        if !inner.limits.store {
            return;
        }
        let expires = Instant::now() + inner.limits.ttl;
        inner.bytes += bytes;
        if let Some(old) = inner.entries.insert(
            id.clone(),
            Entry {
                stored,
                expires,
                bytes,
            },
        ) {
            inner.bytes -= old.bytes;
        }
        inner.order.push_back(id);
        inner.evict(Instant::now());
    }

    pub fn get(&self, id: &str, owner: &Owner) -> Option<Stored> {
        let mut inner = self.lock();
        let now = Instant::now();
        match inner.entries.get(id) {
            Some(entry) if entry.expires <= now => {
                inner.remove(id);
                None
            }
            Some(entry) if &entry.stored.owner == owner => Some(entry.stored.clone()),
            _ => None,
        }
    }

    /// Deletes a response of `owner`'s; false when there is none (or it is another's).
    pub fn delete(&self, id: &str, owner: &Owner) -> bool {
        if self.get(id, owner).is_none() {
            return false;
        }
        self.lock().remove(id);
        true
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn remove(&mut self, id: &str) {
        if let Some(entry) = self.entries.remove(id) {
            self.bytes -= entry.bytes;
        }
    }

    /// Drops expired entries from the front, then the oldest while over a bound. Ids are
    /// never reused, so the front is always the oldest.
    fn evict(&mut self, now: Instant) {
        while let Some(oldest) = self.order.front() {
            let over = self.entries.len() > self.limits.max_stored
                || self.bytes > self.limits.max_stored_bytes;
            let gone = self.entries.get(oldest).is_none_or(|e| e.expires <= now);
            if !over && !gone {
                break;
            }
            if let Some(id) = self.order.pop_front() {
                self.remove(&id);
            }
        }
    }
}

fn size_of(stored: &Stored) -> usize {
    let json = |value: &Value| serde_json::to_string(value).map_or(0, |text| text.len());
    json(&stored.response) + stored.conversation.iter().map(json).sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn limits(max_stored: usize, max_stored_bytes: usize, ttl: Duration) -> ResponsesConfig {
        ResponsesConfig {
            store: true,
            max_stored,
            max_stored_bytes,
            ttl,
        }
    }

    fn owner(key: &str) -> Owner {
        Owner {
            key: key.to_owned(),
            tenant: "default".to_owned(),
        }
    }

    fn stored(key: &str, text: &str) -> Stored {
        Stored {
            owner: owner(key),
            response: json!({"id": text}),
            conversation: vec![json!({"role": "user", "content": text})],
        }
    }

    #[test]
    fn a_response_is_its_owners_only() {
        let store = ResponseStore::new(limits(10, 1 << 20, Duration::from_secs(60)));
        store.put("resp_1".into(), stored("team", "hello"));
        assert!(store.get("resp_1", &owner("team")).is_some());
        assert!(store.get("resp_1", &owner("other")).is_none());
        assert!(
            !store.delete("resp_1", &owner("other")),
            "another key cannot delete it"
        );
        assert!(store.delete("resp_1", &owner("team")));
        assert!(store.get("resp_1", &owner("team")).is_none());
        assert!(!store.delete("resp_1", &owner("team")));
    }

    #[test]
    fn the_oldest_go_first_past_the_count_or_the_size() {
        let store = ResponseStore::new(limits(2, 1 << 20, Duration::from_secs(60)));
        for i in 0..3 {
            store.put(format!("resp_{i}"), stored("team", "x"));
        }
        assert_eq!(store.len(), 2);
        assert!(store.get("resp_0", &owner("team")).is_none());
        assert!(store.get("resp_2", &owner("team")).is_some());

        let one = size_of(&stored("team", "0123456789"));
        let store = ResponseStore::new(limits(100, one * 2, Duration::from_secs(60)));
        for i in 0..3 {
            store.put(format!("resp_{i}"), stored("team", "0123456789"));
        }
        assert_eq!(store.len(), 2, "two fit in the size bound");
        assert!(store.get("resp_0", &owner("team")).is_none());
    }

    #[test]
    fn an_expired_response_is_gone() {
        let store = ResponseStore::new(limits(10, 1 << 20, Duration::from_millis(20)));
        store.put("resp_1".into(), stored("team", "x"));
        assert!(store.get("resp_1", &owner("team")).is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert!(store.get("resp_1", &owner("team")).is_none());
        assert!(store.is_empty());
    }

    #[test]
    fn with_storing_off_nothing_is_kept() {
        let mut off = limits(10, 1 << 20, Duration::from_secs(60));
        off.store = false;
        let store = ResponseStore::new(off);
        store.put("resp_1".into(), stored("team", "x"));
        assert!(store.is_empty());
    }
}
