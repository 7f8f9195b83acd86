//! The closed set of runtime events and the sender that numbers them.
//!
//! Every state change in kinfra flows out as an [`Event`] on one `tokio::sync::broadcast`
//! channel. Consumers (store, bus, dashboard, CLI) subscribe; a slow consumer lags and is told
//! so by the channel, it never stalls the producer.

use crate::progress::Progress;
use crate::state::{Health, ServiceState};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::SystemTime;
use tokio::sync::broadcast;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, when it exited normally.
    pub code: Option<i32>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i32>,
}

impl ExitInfo {
    /// True for exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit code {code}"),
            (None, Some(sig)) => write!(f, "signal {sig}"),
            (None, None) => f.write_str("unknown exit"),
        }
    }
}

/// What happened. A closed enum: adding a variant is a contract change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// The runtime finished starting.
    RuntimeStarted {
        /// Project name.
        project: String,
    },
    /// The runtime began a graceful shutdown.
    RuntimeStopping {
        /// Why (signal, `runtime down`, API call).
        reason: String,
    },
    /// A resource moved from one lifecycle state to another.
    StateChanged {
        /// Resource name.
        service: String,
        /// Previous state.
        from: ServiceState,
        /// New state.
        to: ServiceState,
        /// Human-readable status message.
        message: String,
    },
    /// The readiness probe result changed.
    HealthChanged {
        /// Resource name.
        service: String,
        /// New health.
        health: Health,
        /// Last probe output or error, for people.
        message: String,
    },
    /// A process was spawned.
    ProcessStarted {
        /// Resource name.
        service: String,
        /// Its PID.
        pid: u32,
    },
    /// A process exited.
    ProcessExited {
        /// Resource name.
        service: String,
        /// Its PID.
        pid: u32,
        /// How it ended.
        exit: ExitInfo,
    },
    /// A restart was scheduled after an exit or a failed liveness probe.
    RestartScheduled {
        /// Resource name.
        service: String,
        /// Delay before the new process is spawned, in milliseconds.
        delay_ms: u64,
        /// How many restarts in a row this is.
        attempt: u32,
    },
    /// The crash-loop guard tripped: no more restarts until a manual start.
    CrashLoop {
        /// Resource name.
        service: String,
        /// Failures counted in the window.
        failures: u32,
    },
    /// A port was assigned to a resource (auto ports, at first start).
    PortAssigned {
        /// Resource name.
        service: String,
        /// The port.
        port: u16,
    },
    /// A new config was applied.
    ConfigReloaded {
        /// Names of resources added.
        added: Vec<String>,
        /// Names of resources removed.
        removed: Vec<String>,
        /// Names of resources restarted because their config changed.
        changed: Vec<String>,
    },
    /// Maintenance mode was switched on or off for a service, or (service `*`) globally.
    MaintenanceChanged {
        /// The service, or `*` for everything.
        service: String,
        /// In maintenance now.
        on: bool,
    },
    /// A config reload was rejected; the running set was left as it was.
    ConfigRejected {
        /// The error, as shown to a person.
        error: String,
    },
    /// The message bus connection changed state.
    BusStateChanged {
        /// `connecting`, `connected`, `reconnecting`, `in_process` or `closed`.
        state: String,
        /// Where the bus comes from: `external`, `managed` or `in_process`.
        backend: String,
        /// What happened, for people (never holds credentials).
        message: String,
    },
    /// An ACME certificate was issued (first time or renewal) and is being served.
    CertIssued {
        /// The domains on the certificate, sorted.
        domains: Vec<String>,
        /// When it expires, RFC 3339.
        not_after: String,
        /// True when it replaced an earlier certificate for the same domains.
        renewal: bool,
    },
    /// Getting or renewing an ACME certificate failed; it is retried after `retry_in_ms`.
    CertRenewalFailed {
        /// The domains of the order, sorted.
        domains: Vec<String>,
        /// What went wrong, for people (the CA's problem detail; never holds keys).
        error: String,
        /// Failures in a row, this one included.
        attempt: u32,
        /// Delay before the next attempt, in milliseconds.
        retry_in_ms: u64,
    },
    /// A provider resource's command was run (or refused after it was sent). Parameter values
    /// are never kept (they may hold secrets): only their names.
    CommandExecuted {
        /// The resource.
        resource: String,
        /// The command's id.
        command: String,
        /// The names of the parameters given, sorted.
        #[serde(default)]
        params: Vec<String>,
        /// A dry-run: nothing was sent.
        dry_run: bool,
        /// The command succeeded.
        success: bool,
        /// The long-running operation it started, when the provider reports one.
        #[serde(default)]
        operation: Option<String>,
        /// Why it failed (secrets masked).
        #[serde(default)]
        error: Option<String>,
    },
    /// Long work on a resource moved on (an image pull, a cloud operation): sent at most
    /// four times a second per resource, and once more with `progress: null` when the work
    /// ended (it is then also gone from the resource's status).
    Progress {
        /// Resource name.
        service: String,
        /// Where the work stands; `None` once it ended.
        progress: Option<Progress>,
    },
}

impl EventKind {
    /// The resource this event is about, or `"runtime"` for runtime-wide events. Used as the
    /// `<resource>` token of the NATS subject.
    pub fn resource(&self) -> &str {
        match self {
            Self::StateChanged { service, .. }
            | Self::HealthChanged { service, .. }
            | Self::ProcessStarted { service, .. }
            | Self::ProcessExited { service, .. }
            | Self::RestartScheduled { service, .. }
            | Self::CrashLoop { service, .. }
            | Self::PortAssigned { service, .. }
            | Self::Progress { service, .. } => service,
            Self::CommandExecuted { resource, .. } => resource,
            Self::CertIssued { .. } | Self::CertRenewalFailed { .. } => "acme",
            Self::MaintenanceChanged { service, .. } if service != "*" => service,
            Self::RuntimeStarted { .. }
            | Self::RuntimeStopping { .. }
            | Self::ConfigReloaded { .. }
            | Self::ConfigRejected { .. }
            | Self::BusStateChanged { .. }
            | Self::MaintenanceChanged { .. } => "runtime",
        }
    }

    /// The snake_case name of the variant, used as the `<kind>` token of the NATS subject.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RuntimeStarted { .. } => "runtime_started",
            Self::RuntimeStopping { .. } => "runtime_stopping",
            Self::StateChanged { .. } => "state_changed",
            Self::HealthChanged { .. } => "health_changed",
            Self::ProcessStarted { .. } => "process_started",
            Self::ProcessExited { .. } => "process_exited",
            Self::RestartScheduled { .. } => "restart_scheduled",
            Self::CrashLoop { .. } => "crash_loop",
            Self::PortAssigned { .. } => "port_assigned",
            Self::ConfigReloaded { .. } => "config_reloaded",
            Self::ConfigRejected { .. } => "config_rejected",
            Self::MaintenanceChanged { .. } => "maintenance_changed",
            Self::BusStateChanged { .. } => "bus_state_changed",
            Self::CertIssued { .. } => "cert_issued",
            Self::CertRenewalFailed { .. } => "cert_renewal_failed",
            Self::CommandExecuted { .. } => "command_executed",
            Self::Progress { .. } => "progress",
        }
    }
}

/// One numbered event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Increases by one per event, per runtime, starting at 1.
    pub seq: u64,
    /// When it was emitted, RFC 3339 with milliseconds, UTC.
    pub timestamp: String,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Numbers events and puts them on the broadcast channel. Cheap to clone; never blocks.
#[derive(Debug, Clone)]
pub struct EventSender {
    inner: std::sync::Arc<EventSenderInner>,
}

#[derive(Debug)]
struct EventSenderInner {
    tx: broadcast::Sender<Event>,
    next_seq: Mutex<u64>,
}

impl EventSender {
    /// A new channel that keeps up to `capacity` events for slow receivers.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(16));
        Self {
            inner: std::sync::Arc::new(EventSenderInner {
                tx,
                next_seq: Mutex::new(1),
            }),
        }
    }

    /// Numbers and sends an event, returning it. Sending with no receiver is not an error.
    pub fn emit(&self, kind: EventKind) -> Event {
        // The lock keeps seq order and channel order the same.
        let mut next = match self.inner.next_seq.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let event = Event {
            seq: *next,
            timestamp: now_rfc3339(),
            kind,
        };
        *next += 1;
        let _ = self.inner.tx.send(event.clone());
        event
    }

    /// A receiver of every event emitted from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.tx.subscribe()
    }

    /// The seq the next event will get.
    pub fn next_seq(&self) -> u64 {
        match self.inner.next_seq.lock() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }
}

/// Current time as RFC 3339 with milliseconds, UTC (`2026-11-21T20:00:00.123Z`).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_increases_without_gaps() {
        let tx = EventSender::new(64);
        let mut rx = tx.subscribe();
        for _ in 0..10 {
            tx.emit(EventKind::PortAssigned {
                service: "api".into(),
                port: 1,
            });
        }
        let seqs: Vec<u64> = (0..10)
            .filter_map(|_| rx.try_recv().ok())
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
        assert_eq!(tx.next_seq(), 11);
    }

    #[test]
    fn json_shape_is_flat_with_type_tag() {
        let tx = EventSender::new(16);
        let ev = tx.emit(EventKind::ProcessStarted {
            service: "api".into(),
            pid: 42,
        });
        let json = serde_json::to_value(&ev).unwrap_or_default();
        assert_eq!(json["type"], "process_started");
        assert_eq!(json["service"], "api");
        assert_eq!(json["seq"], 1);
        assert_eq!(ev.kind.resource(), "api");
        assert_eq!(ev.kind.name(), "process_started");
    }
}
