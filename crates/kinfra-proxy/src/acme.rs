//! ACME challenge answers: HTTP-01 tokens served on the plain HTTP listener at
//! `/.well-known/acme-challenge/<token>` (also when HTTPS redirects are on), and TLS-ALPN-01
//! certificates served by the TLS listener to clients that offer only `acme-tls/1`
//! (RFC 8737; see `tls::AcmeAlpnResponder`).
//!
//! In a fleet the CA may connect to any node, not only the one that ordered: an HTTP-01
//! token this node does not hold is looked up through a [`ChallengeLookup`] (the answers the
//! nodes publish in their shared store). TLS-ALPN-01 answers stay node-local: looking them up
//! would put a store round trip into the TLS listener's pre-handshake hook of every
//! connection while an order runs, so a fleet validates with HTTP-01.

use crate::tls::CertifiedKey;
use arc_swap::ArcSwap;
use kinfra_core::view::BoxFuture;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Lookups in flight at once; a request beyond that is answered as a miss.
const MAX_LOOKUPS: usize = 8;

/// The longest a lookup may take; then the request is answered as a miss. Generous: a CA
/// waits longer than this, and a busy store (a debug-built test server on a loaded machine
/// took seconds) should not fail a validation it could still answer.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest token looked up (the CA's are 43 characters of base64url).
const MAX_TOKEN: usize = 256;

/// Where a node finds an HTTP-01 answer it does not hold itself: the ones other nodes of the
/// fleet published (kinfra-acme implements it on the shared store).
pub trait ChallengeLookup: Send + Sync + std::fmt::Debug {
    /// The key authorization for `token`, if some node published it and it is still valid.
    fn key_authorization<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Option<String>>;
}

/// The path prefix of HTTP-01 challenges.
pub(crate) const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Tokens and key authorizations the proxy answers ACME HTTP-01 challenges with, and the
/// certificates it answers TLS-ALPN-01 challenges with (by domain).
#[derive(Debug, Default)]
pub struct ChallengeStore {
    map: ArcSwap<HashMap<String, Arc<str>>>,
    alpn: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    writer: parking_lot::Mutex<()>,
    lookup: parking_lot::RwLock<Option<Arc<dyn ChallengeLookup>>>,
    lookups: Lookups,
}

/// The bound on lookups in flight.
#[derive(Debug)]
struct Lookups(tokio::sync::Semaphore);

impl Default for Lookups {
    fn default() -> Self {
        Self(tokio::sync::Semaphore::new(MAX_LOOKUPS))
    }
}

/// A token as the CA sends it: base64url, not empty, not long.
fn plausible_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
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

    /// Looks tokens this node does not hold up in `lookup` from now on (the fleet's answers).
    pub fn set_lookup(&self, lookup: Arc<dyn ChallengeLookup>) {
        *self.lookup.write() = Some(lookup);
    }

    /// Stops looking tokens up elsewhere.
    pub fn clear_lookup(&self) {
        *self.lookup.write() = None;
    }

    /// True when a request for a challenge may have an answer: one is pending here, or tokens
    /// are looked up elsewhere.
    pub(crate) fn may_answer(&self) -> bool {
        !self.is_empty() || self.lookup.read().is_some()
    }

    /// The answer for `token`: this node's, else the lookup's (bounded in time and in lookups
    /// at once; a token that does not look like one is not looked up).
    pub(crate) async fn answer(&self, token: &str) -> Option<Arc<str>> {
        if let Some(answer) = self.get(token) {
            return Some(answer);
        }
        let lookup = self.lookup.read().clone()?;
        if !plausible_token(token) {
            return None;
        }
        let Ok(_permit) = self.lookups.0.try_acquire() else {
            tracing::debug!("Too many challenge lookups at once; answered as a miss.");
            return None;
        };
        let started = std::time::Instant::now();
        match tokio::time::timeout(LOOKUP_TIMEOUT, lookup.key_authorization(token)).await {
            Ok(found) => {
                tracing::debug!(
                    found = found.is_some(),
                    elapsed = ?started.elapsed(),
                    "Challenge answer looked up."
                );
                found.map(Arc::from)
            }
            Err(_) => {
                tracing::warn!(
                    limit = ?LOOKUP_TIMEOUT,
                    "A challenge answer lookup did not finish in time; answered as a miss."
                );
                None
            }
        }
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

    #[derive(Debug)]
    struct Elsewhere;

    impl ChallengeLookup for Elsewhere {
        fn key_authorization<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Option<String>> {
            Box::pin(async move { (token == "remote").then(|| "remote.key".to_owned()) })
        }
    }

    #[tokio::test]
    async fn a_token_held_elsewhere_is_looked_up() {
        let s = ChallengeStore::new();
        assert!(!s.may_answer());
        assert!(s.answer("remote").await.is_none(), "no lookup set");
        s.set_lookup(Arc::new(Elsewhere));
        assert!(s.may_answer());
        assert_eq!(s.answer("remote").await.as_deref(), Some("remote.key"));
        assert!(s.answer("other").await.is_none());
        assert!(s.answer("../remote").await.is_none(), "not a token");
        s.insert("local", "local.key");
        assert_eq!(s.answer("local").await.as_deref(), Some("local.key"));
        s.clear_lookup();
        assert!(s.answer("remote").await.is_none());
    }
}
