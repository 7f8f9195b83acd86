//! The bus's connection state, its counters, and the `bus_state_changed` event.

use kinfra_core::event::{EventKind, EventSender};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::watch;

/// The state of the bus connection, as `/__status__` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusState {
    /// Trying to reach the server for the first time.
    Connecting,
    /// Connected; events flow.
    Connected,
    /// The connection was lost; reconnecting with backoff while events are buffered.
    Reconnecting,
    /// No NATS server: the bus runs inside this process.
    InProcess,
    /// Shut down.
    Closed,
}

impl BusState {
    /// The contract name (`connected`, `reconnecting`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Connected => "connected",
            Self::Reconnecting => "reconnecting",
            Self::InProcess => "in_process",
            Self::Closed => "closed",
        }
    }

    /// True when a publish goes out now rather than into the buffer.
    pub fn is_up(self) -> bool {
        matches!(self, Self::Connected | Self::InProcess)
    }
}

impl std::fmt::Display for BusState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the bus comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BusBackend {
    /// A NATS server given by `[bus] url`.
    External {
        /// The URL, without any user name or password in it.
        url: String,
    },
    /// A `nats-server` kinfra started and supervises.
    Managed {
        /// `nats://127.0.0.1:<port>`.
        url: String,
        /// PID of the current server process (0 while it is being restarted).
        pid: u32,
        /// File (mode 0600) holding the token clients need to connect.
        token_file: PathBuf,
    },
    /// No server: the bus works inside this process only.
    InProcess,
}

impl BusBackend {
    /// `external`, `managed` or `in_process`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::External { .. } => "external",
            Self::Managed { .. } => "managed",
            Self::InProcess => "in_process",
        }
    }

    /// The server URL, when there is a server.
    pub fn url(&self) -> Option<&str> {
        match self {
            Self::External { url } | Self::Managed { url, .. } => Some(url),
            Self::InProcess => None,
        }
    }
}

/// Everything the bus reports about itself (for `/__status__` and `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusStatus {
    /// Where the bus comes from.
    pub backend: BusBackend,
    /// Connection state.
    pub state: BusState,
    /// Events handed to the connection.
    pub published: u64,
    /// Events lost: the buffer overflowed while the server was unreachable, or the bus fell
    /// behind the event channel.
    pub dropped: u64,
    /// Events waiting in the buffer now.
    pub buffered: usize,
    /// Reconnections after a lost connection.
    pub reconnects: u64,
    /// Times the managed server was restarted after it died.
    pub server_restarts: u64,
    /// Control requests answered.
    pub control_requests: u64,
    /// The last connection error, for people.
    pub last_error: Option<String>,
}

/// State shared by the bus handle and its tasks.
pub(crate) struct Shared {
    pub(crate) backend_kind: &'static str,
    state: watch::Sender<BusState>,
    events: Option<EventSender>,
    last_error: Mutex<Option<String>>,
    pub(crate) reconnects: AtomicU64,
    pub(crate) control_requests: AtomicU64,
}

impl Shared {
    pub(crate) fn new(
        backend_kind: &'static str,
        initial: BusState,
        events: Option<EventSender>,
    ) -> Self {
        Self {
            backend_kind,
            state: watch::Sender::new(initial),
            events,
            last_error: Mutex::new(None),
            reconnects: AtomicU64::new(0),
            control_requests: AtomicU64::new(0),
        }
    }

    pub(crate) fn state(&self) -> BusState {
        *self.state.borrow()
    }

    pub(crate) fn watch(&self) -> watch::Receiver<BusState> {
        self.state.subscribe()
    }

    /// Moves to `new`; when that is a change, logs it and emits `bus_state_changed`.
    ///
    /// The event is emitted (and the reconnect counted) while the state is still locked, so
    /// whoever sees the new state (a watcher, [`Shared::state`]) sees it after its event:
    /// events emitted by others from then on come after it.
    pub(crate) fn set_state(&self, new: BusState, message: &str) {
        let mut old = new;
        self.state.send_if_modified(|state| {
            old = *state;
            if old == new {
                return false;
            }
            *state = new;
            if old == BusState::Reconnecting && new == BusState::Connected {
                self.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            self.emit(new, message);
            true
        });
        if old == new {
            return;
        }
        match new {
            BusState::Reconnecting => {
                tracing::warn!(from = %old, to = %new, message, "Bus connection lost.")
            }
            _ => tracing::info!(from = %old, to = %new, message, "Bus state changed."),
        }
    }

    /// Emits a `bus_state_changed` event with the current state (used once at start).
    pub(crate) fn emit(&self, state: BusState, message: &str) {
        if let Some(events) = &self.events {
            events.emit(EventKind::BusStateChanged {
                state: state.as_str().to_owned(),
                backend: self.backend_kind.to_owned(),
                message: message.to_owned(),
            });
        }
    }

    pub(crate) fn set_last_error(&self, error: String) {
        let mut guard = match self.last_error.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *guard = Some(error);
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        match self.last_error.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}
