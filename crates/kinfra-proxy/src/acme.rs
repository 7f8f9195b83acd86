//! ACME challenge answers: HTTP-01 tokens served on the plain HTTP listener at
//! `/.well-known/acme-challenge/<token>` (also when HTTPS redirects are on), and TLS-ALPN-01
//! certificates served by the TLS listener to clients that offer only `acme-tls/1`
//! (RFC 8737; see `tls::AcmeAlpnResponder`).

use crate::tls::CertifiedKey;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;

/// The path prefix of HTTP-01 challenges.
pub(crate) const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Tokens and key authorizations the proxy answers ACME HTTP-01 challenges with, and the
/// certificates it answers TLS-ALPN-01 challenges with (by domain).
#[derive(Debug, Default)]
pub struct ChallengeStore {
    map: ArcSwap<HashMap<String, Arc<str>>>,
    alpn: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
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

    /// Answers TLS-ALPN-01 handshakes (ALPN `acme-tls/1`) for `domain` with `cert`, the
    /// self-signed certificate carrying the `acmeIdentifier` extension.
    pub fn insert_tls_alpn(&self, domain: &str, cert: Arc<CertifiedKey>) {
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        let _guard = self.writer.lock();
        let mut next = HashMap::clone(&self.alpn.load());
        next.insert(domain, cert);
        self.alpn.store(Arc::new(next));
    }

    /// Stops answering TLS-ALPN-01 for `domain`; true when it was there.
    pub fn remove_tls_alpn(&self, domain: &str) -> bool {
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        let _guard = self.writer.lock();
        let mut next = HashMap::clone(&self.alpn.load());
        let removed = next.remove(&domain).is_some();
        self.alpn.store(Arc::new(next));
        removed
    }

    /// The TLS-ALPN-01 certificate for `domain`.
    pub fn tls_alpn(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.alpn.load().get(&domain).cloned()
    }

    /// True when no TLS-ALPN-01 challenge is pending (one atomic load per TLS connection).
    pub(crate) fn tls_alpn_is_empty(&self) -> bool {
        self.alpn.load().is_empty()
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
        assert!(s.tls_alpn_is_empty());
        let (c, k) = crate::tls::generate_self_signed(&["a.test".into()]).unwrap();
        let ck = Arc::new(crate::tls::certified_key_from_pem(c.as_bytes(), k.as_bytes()).unwrap());
        s.insert_tls_alpn("A.test.", ck);
        assert!(s.tls_alpn("a.test").is_some());
        assert!(s.remove_tls_alpn("a.test"));
        assert!(s.tls_alpn_is_empty());
    }
}
