//! The `Resource` adapter trait: what the supervisor needs from anything it runs (a local
//! process, a container, later a cloud resource), so it drives them all with one state model,
//! one restart policy, the same probes and the same log pipeline.
//!
//! An adapter knows how to bring its thing up and down and how to observe it; it does not
//! decide when. Restart policy, backoff, probes, dependency order and events are the
//! supervisor's business. One [`Resource::start`] gives a [`Run`]: the live output and a
//! one-shot exit, which is what the supervisor watches.

use crate::event::ExitInfo;
use crate::secret::Secret;
use crate::state::{Health, ServiceState};
use crate::status::{LastSync, LogStream};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A boxed, sendable future (the trait is used as `dyn Resource`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why an adapter operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// The engine the resource needs (the Docker daemon, a cloud API) cannot be reached.
    /// Retrying soon will not help; the resource fails with this message.
    #[error("{engine} is not reachable: {reason}")]
    EngineUnavailable {
        /// What is missing, e.g. `the Docker engine`.
        engine: String,
        /// What the connection attempt said.
        reason: String,
    },
    /// The resource's definition cannot work (a missing image, a bad name). Permanent.
    #[error("{0}")]
    Invalid(String),
    /// One operation failed; a retry may succeed.
    #[error("{op} failed: {reason}")]
    Operation {
        /// The operation, e.g. `create container`.
        op: String,
        /// What went wrong.
        reason: String,
    },
}

impl ResourceError {
    /// True when retrying cannot help, so the restart policy does not apply.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::EngineUnavailable { .. } | Self::Invalid(_))
    }

    /// An [`ResourceError::Operation`].
    pub fn op(op: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::Operation {
            op: op.into(),
            reason: reason.to_string(),
        }
    }
}

/// One line of a resource's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    /// Which stream.
    pub stream: LogStream,
    /// The text, without the line end.
    pub text: String,
}

/// One run of a resource, from [`Resource::start`] until it ends.
#[derive(Debug)]
pub struct Run {
    /// The adapter's id of this run (a container id, a PID).
    pub id: String,
    /// The main process, when the adapter knows it.
    pub pid: Option<u32>,
    /// True when the run was already going (adopted from a previous kinfra) rather than
    /// started now.
    pub adopted: bool,
    /// Output lines from now on; closed when the run ends.
    pub output: mpsc::Receiver<OutputLine>,
    /// Resolves once, when the run ends, with how it ended. Dropped without a value when the
    /// adapter lost track of it (the supervisor then asks [`Resource::status`]).
    pub exit: oneshot::Receiver<ExitInfo>,
}

/// What an adapter sees of its resource right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Nothing exists (never created, or removed).
    Absent,
    /// It exists and is not running (created, or stopped without an exit known).
    Idle,
    /// It runs.
    Running,
    /// It ran and ended like this.
    Exited(ExitInfo),
}

/// How dependents reach a resource. Fields are what `${resources.NAME.FIELD}` resolves to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Connection {
    /// Host to connect to (`127.0.0.1` for anything kinfra publishes).
    pub host: String,
    /// Host port, when it has one.
    pub port: Option<u16>,
    /// Connection string (may hold a password, so it is secret).
    pub url: Option<Secret>,
    /// Further named values (`user`, `password`, `database`, ...). Secret, since some are.
    pub fields: BTreeMap<String, Secret>,
}

impl Connection {
    /// The value of `${resources.NAME.FIELD}`: `host`, `port`, `url` or one of `fields`.
    pub fn field(&self, field: &str) -> Option<String> {
        match field {
            "host" => Some(self.host.clone()),
            "port" => self.port.map(|p| p.to_string()),
            "url" => self.url.as_ref().map(|u| u.expose().to_owned()),
            other => self.fields.get(other).map(|v| v.expose().to_owned()),
        }
    }
}

/// What a provider resource knows of its last sync with the provider: shown beside `state`
/// and `health` in status (DESIGN, "Usable vs in sync").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncFacts {
    /// The last sync's outcome; `None` before the first one ended.
    pub last_sync: Option<LastSync>,
    /// The provider's raw state (`ACTIVE`) from the last successful sync.
    pub provider_state: Option<String>,
}

/// A state a resource's provider reports beyond what its run says (see
/// [`Resource::reported_state`]): a cloud project paused outside kinfra, under maintenance, or
/// in the middle of a long operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedState {
    /// The kinfra state it means.
    pub state: ServiceState,
    /// What to show as the status message (the provider's word, an operation's progress, a
    /// failure's reason); never a secret.
    pub message: String,
}

/// Something the supervisor runs. Implemented by the process adapter (kinfra-supervisor) and
/// the Docker adapter (kinfra-docker); both pass the same conformance suite.
///
/// Contract:
/// - [`start`](Resource::start) brings the resource up (creating it when needed, adopting a
///   matching one left running) and returns its [`Run`]; calling it while a run is live gives
///   that run again (`adopted = true`) rather than a second one.
/// - [`stop`](Resource::stop) asks it to end, waits up to `grace`, then forces it; the run's
///   `exit` resolves. Stopping something that does not run is not an error.
/// - [`status`](Resource::status) and [`health`](Resource::health) observe without changing
///   anything. `health` is the resource's own check (a Docker healthcheck): `Unknown` when it
///   has none; kinfra's probes are run by the supervisor on top.
/// - [`remove`](Resource::remove) deletes what start created; data volumes only when asked.
pub trait Resource: Send + Sync + 'static {
    /// The kind shown in status: `process`, `docker`, ...
    fn kind(&self) -> &'static str;

    /// The resource's name (the key in the config).
    fn name(&self) -> &str;

    /// Brings it up; see the trait docs.
    fn start(&self) -> BoxFuture<'_, Result<Run, ResourceError>>;

    /// Ends it within `grace`, then by force.
    fn stop(&self, grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>>;

    /// What it is doing now.
    fn status(&self) -> BoxFuture<'_, Result<Observed, ResourceError>>;

    /// Its own health check's verdict (`Unknown` without one).
    fn health(&self) -> BoxFuture<'_, Result<Health, ResourceError>>;

    /// True when the resource has a health check of its own (a Docker healthcheck), which
    /// [`Resource::health`] reports; the supervisor waits for it before calling it running.
    fn has_own_health(&self) -> bool {
        false
    }

    /// How to reach it (known before it starts: ports come from the port registry).
    fn connection(&self) -> Connection;

    /// The last `tail` lines of its output kept by the adapter or its engine.
    fn logs(&self, tail: usize) -> BoxFuture<'_, Result<Vec<OutputLine>, ResourceError>>;

    /// Removes what [`Resource::start`] created, and its data volumes when `volumes`.
    fn remove(&self, volumes: bool) -> BoxFuture<'_, Result<(), ResourceError>>;

    /// The resource's last sync with its provider, for resources that poll one (cloud and
    /// provider resources); `None` (the default) for the rest. Called when status is read, so
    /// it must answer at once from what the adapter already knows (no I/O).
    fn sync(&self) -> Option<SyncFacts> {
        None
    }

    /// Why the last run ended, when the adapter knows more than its [`ExitInfo`] says (a
    /// provider plugin that crashed under it); the supervisor adds it to the status message.
    /// `None` (the default) otherwise. Answers at once (no I/O).
    fn exit_reason(&self) -> Option<String> {
        None
    }

    /// What the resource's provider says it is doing, when that says more than the run: the
    /// supervisor shows a reported `Starting`, `Stopping` or `Maintenance` (with its message)
    /// while the run is live, and `Running` with its message once the provider says it is up;
    /// when the run ends, a reported `Stopped`, `Sleeping` or `Failed` is final (shown with
    /// its message, no restart policy). `None` (the default): the run and the probes decide.
    /// Answers at once (no I/O).
    fn reported_state(&self) -> Option<ReportedState> {
        None
    }

    /// Long work under way on it that the adapter measures itself (an image pull's bytes), or
    /// `None` (the default). The supervisor samples it a few times a second while the
    /// resource starts, puts it in status and sends it as `progress` events; for provider
    /// resources without their own, it shows the provider's phase and the time taken. Answers
    /// at once (no I/O).
    fn progress(&self) -> Option<crate::progress::Progress> {
        None
    }

    /// Lets go of the live run without changing the thing itself (`runtime down` of a provider
    /// resource whose `on_down` is `keep`): the run's exit resolves, the cloud resource stays
    /// as it is. The default stops it, for adapters whose thing cannot outlive kinfra's watch.
    fn release(&self, grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        self.stop(grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_fields_resolve_and_stay_secret() {
        let mut c = Connection {
            host: "127.0.0.1".into(),
            port: Some(6379),
            url: Some(Secret::new("redis://:pw@127.0.0.1:6379")),
            fields: BTreeMap::new(),
        };
        c.fields.insert("password".into(), Secret::new("pw"));
        assert_eq!(c.field("port").as_deref(), Some("6379"));
        assert_eq!(c.field("password").as_deref(), Some("pw"));
        assert_eq!(c.field("nope"), None);
        assert!(!format!("{c:?}").contains("pw@"));
    }

    #[test]
    fn permanence() {
        assert!(
            ResourceError::EngineUnavailable {
                engine: "the Docker engine".into(),
                reason: "no socket".into()
            }
            .is_permanent()
        );
        assert!(!ResourceError::op("start", "busy").is_permanent());
    }
}
