//! The supervisor's durable state as exchanged with whatever keeps it (kinfra's store): what a
//! service's history says at start, the sink changes go to, and the processes a killed
//! instance left running. Here, in the shared vocabulary, so the store and the supervisor
//! meet without either depending on the other.
//!
//! By default the supervisor keeps auto ports in `ports.json` and user stops in
//! `stopped.json`, and restart counts live only as long as the process. A caller with a
//! database starts it with [`Persistence`] instead: the known ports, restart counts, last
//! exits and user stops come in at start, and every change goes out through a [`StateSink`].
//! The supervisor never waits on the sink, and `pids.json` stays its own synchronous
//! crash-recovery record either way.

use crate::event::ExitInfo;
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

/// Durable state the supervisor starts from.
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

/// A process an earlier, killed instance recorded as running and that is still the same
/// process (PID and `/proc` start time): the store finds them, the supervisor stops them at
/// boot, before anything starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeftRunning {
    /// Its PID.
    pub pid: i32,
    /// Its start time (`/proc/PID/stat` field 22), so a reused PID is never touched.
    pub start_time: u64,
}
