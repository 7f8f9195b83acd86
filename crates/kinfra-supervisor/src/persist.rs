//! Durable supervisor state kept somewhere other than the state-dir files (the store).
//!
//! By default the supervisor keeps auto ports in `ports.json` and user stops in
//! `stopped.json`, and restart counts live only as long as the process. A caller with a
//! database (kinfra's store) starts the supervisor with [`Persistence`] instead
//! ([`crate::Supervisor::start_persisted`]): the known ports, restart counts, last exits and user
//! stops come in at start, and every change goes out through a [`StateSink`]. The supervisor
//! stays store-agnostic: it never waits on the sink, and `pids.json` stays its own synchronous
//! crash-recovery record either way.

use kinfra_core::event::ExitInfo;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// What a service's history says at start: restart count and how its last process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServiceHistory {
    /// Restarts so far (automatic and manual), across runs of kinfra.
    pub restarts: u32,
    /// How the last process ended.
    pub last_exit: Option<ExitInfo>,
}

/// Receives the supervisor's durable state changes. Called from the service actors: an
/// implementation must not block or wait (queue the change and return).
pub trait StateSink: Send + Sync + std::fmt::Debug {
    /// The restart count or the last exit of `service` changed.
    fn history_changed(&self, service: &str, history: ServiceHistory);
    /// A user stopped (`true`) or started (`false`) `service`; an `unless-stopped` service
    /// that a user stopped stays stopped across restarts of kinfra.
    fn user_stopped_changed(&self, service: &str, stopped: bool);
}

/// Durable state handed to [`crate::Supervisor::start_persisted`].
#[derive(Debug, Clone)]
pub struct Persistence {
    /// Known `"auto"` ports, by service. New ones are announced by `PortAssigned` events.
    pub ports: BTreeMap<String, u16>,
    /// Restart counts and last exits, by service; status starts from these.
    pub history: BTreeMap<String, ServiceHistory>,
    /// Services a user stopped (kept stopped under `unless-stopped`).
    pub user_stopped: BTreeSet<String>,
    /// Where changes go.
    pub sink: Arc<dyn StateSink>,
}
