//! The access log: one `tracing` event per request, emitted by a background task so the
//! request path only does a non-blocking channel send (and nothing when the log is off).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The `tracing` target of access log lines.
pub const ACCESS_TARGET: &str = "kinfra::access";

/// Entries waiting to be logged; more are dropped (and counted) rather than slowing requests.
const QUEUE: usize = 4096;

/// One finished request.
#[derive(Debug)]
pub(crate) struct AccessEntry {
    pub method: http::Method,
    pub host: Option<String>,
    pub path: String,
    pub status: u16,
    pub micros: u64,
    pub client: Option<IpAddr>,
    pub upstream: Option<SocketAddr>,
    pub service: Option<Arc<str>>,
    pub bytes: usize,
    pub error: Option<String>,
}

/// The sending side, shared by all requests.
#[derive(Debug)]
pub(crate) struct AccessLog {
    tx: mpsc::Sender<AccessEntry>,
    dropped: std::sync::atomic::AtomicU64,
}

impl AccessLog {
    /// A log and the receiver its task drains.
    pub(crate) fn new() -> (Self, mpsc::Receiver<AccessEntry>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (
            Self {
                tx,
                dropped: std::sync::atomic::AtomicU64::new(0),
            },
            rx,
        )
    }

    /// True when access lines would be written at all.
    pub(crate) fn enabled() -> bool {
        tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO)
    }

    /// Queues an entry without waiting.
    pub(crate) fn send(&self, entry: AccessEntry) {
        if self.tx.try_send(entry).is_err() {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Entries dropped because the queue was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Writes queued entries until every sender is gone.
pub(crate) async fn run(mut rx: mpsc::Receiver<AccessEntry>) {
    while let Some(e) = rx.recv().await {
        tracing::info!(
            target: ACCESS_TARGET,
            method = %e.method,
            host = e.host.as_deref().unwrap_or("-"),
            path = %e.path,
            status = e.status,
            duration_us = e.micros,
            client = ?e.client,
            upstream = ?e.upstream,
            service = e.service.as_deref().unwrap_or("-"),
            bytes = e.bytes,
            error = e.error.as_deref().unwrap_or(""),
            "request"
        );
    }
}
