//! HTTP-01 challenge answers, served on the plain HTTP listener at
//! `/.well-known/acme-challenge/<token>` (also when HTTPS redirects are on).

use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;

/// The path prefix of HTTP-01 challenges.
pub(crate) const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Tokens and key authorizations the proxy answers ACME HTTP-01 challenges with.
#[derive(Debug, Default)]
pub struct ChallengeStore {
    map: ArcSwap<HashMap<String, Arc<str>>>,
    writer: parking_lot::Mutex<()>,
}

impl ChallengeStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers `GET /.well-known/acme-challenge/<token>` with `key_authorization`.
    pub fn insert(&self, token: &str, key_authorization: &str) {
        let _guard = self.writer.lock();
        let mut next = HashMap::clone(&self.map.load());
        next.insert(token.to_owned(), Arc::from(key_authorization));
        self.map.store(Arc::new(next));
    }

    /// Stops answering for `token`; true when it was there.
    pub fn remove(&self, token: &str) -> bool {
        let _guard = self.writer.lock();
        let mut next = HashMap::clone(&self.map.load());
        let removed = next.remove(token).is_some();
        self.map.store(Arc::new(next));
        removed
    }

    /// The key authorization for `token`.
    pub fn get(&self, token: &str) -> Option<Arc<str>> {
        self.map.load().get(token).cloned()
    }

    /// True when no challenge is pending (the common case: one atomic load).
    pub(crate) fn is_empty(&self) -> bool {
        self.map.load().is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_remove() {
        let s = ChallengeStore::new();
        assert!(s.is_empty());
        s.insert("tok", "tok.key");
        assert_eq!(s.get("tok").as_deref(), Some("tok.key"));
        assert!(s.remove("tok"));
        assert!(s.get("tok").is_none());
        assert!(!s.remove("tok"));
    }
}
