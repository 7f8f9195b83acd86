//! The shapes the store hands out: runs, stored events, ACME material, counters.

use kinfra_core::event::{Event, ExitInfo};
use serde::{Deserialize, Serialize};

/// One process start of a service, with how it ended (`kinfra runtime history`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Increases by one per run, across restarts of kinfra.
    pub n: u64,
    /// The start of kinfra that ran it.
    pub boot: String,
    /// The service.
    pub service: String,
    /// Its PID.
    pub pid: u32,
    /// Its start time in `/proc/PID/stat` (clock ticks after boot), when it could be read;
    /// with the PID it identifies the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
    /// When it started, RFC 3339.
    pub started_at: String,
    /// When it ended, RFC 3339; absent while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// How it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitInfo>,
    /// Why it ended: `exited`, `crashed`, `stopped`, `shutdown`, `killed at boot` (left by an
    /// instance that was killed), `lost` (gone when the next instance looked), `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl RunRecord {
    /// True while no end is recorded.
    pub fn is_live(&self) -> bool {
        self.ended_at.is_none()
    }
}

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
