//! The shapes the store hands out: runs, stored events, ACME material, counters.

use kinfra_core::event::Event;
pub use kinfra_core::status::RunRecord;
use serde::{Deserialize, Serialize};

/// An event as stored, with where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Increases by one per stored event, across restarts of kinfra.
    pub n: u64,
    /// The start of kinfra that emitted it (its `seq` restarts at 1 with each).
    pub boot: String,
    /// The event.
    pub event: Event,
}

/// An ACME certificate with its private key, by domain set. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCertificate {
    /// The domains, sorted.
    pub domains: Vec<String>,
    /// The certificate chain, PEM.
    pub cert_pem: String,
    /// The private key, PEM. Secret.
    pub key_pem: String,
    /// When the certificate expires, milliseconds since the Unix epoch, when known.
    pub not_after_ms: Option<u64>,
}

impl std::fmt::Debug for StoredCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCertificate")
            .field("domains", &self.domains)
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .field("not_after_ms", &self.not_after_ms)
            .finish()
    }
}

/// Write counters, for `/__status__` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    /// Where the data is: a path, `mem://` or a URL without credentials.
    pub location: String,
    /// Queued changes written (committed).
    pub written: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Write attempts that failed (each is retried).
    pub failures: u64,
    /// Changes given up on because the store rejected them while healthy (each logged).
    pub abandoned: u64,
    /// Changes dropped because the queue was full (the store was failing for long).
    pub dropped: u64,
    /// Events the store missed because it fell behind the event channel.
    pub lagged: u64,
    /// Changes waiting to be written.
    pub queued: u64,
    /// Highest event `seq` of this run whose writes are committed.
    pub acknowledged_seq: u64,
    /// The last write error, if the last attempt failed.
    pub last_error: Option<String>,
}
