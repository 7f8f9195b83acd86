//! The trait through which the dashboard, the control socket and the bus read runtime state
//! and act on it, without knowing how the runtime is put together.

use crate::event::Event;
use crate::status::{CommandRecord, LogLine, RunRecord, ServiceLogLine, StatusReport};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use tokio::sync::broadcast;

/// A boxed, sendable future (keeps [`RuntimeControl`] object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A per-service action a user can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Stop, then start again.
    Restart,
    /// Stop and keep stopped (no restart policy applies).
    Stop,
    /// Start a stopped or failed service (clears the crash-loop guard).
    Start,
    /// Put a service (or, with service `*`, everything) in maintenance: the proxy serves the
    /// maintenance page; processes keep running.
    #[serde(rename = "maintenance-on")]
    MaintenanceOn,
    /// End maintenance of a service (or, with `*`, the global maintenance).
    #[serde(rename = "maintenance-off")]
    MaintenanceOff,
    /// Wake a sleeping target (`scale_to_zero`), its sleeping dependencies first; done once it
    /// is ready (running and healthy) or its `wake_timeout` passed. A target that is awake
    /// counts the wake as activity (its idle time starts again).
    Wake,
    /// Put a target with `scale_to_zero` to sleep now, as if it had been idle.
    Sleep,
}

/// The service name that means "everything" for maintenance actions.
pub const ALL_SERVICES: &str = "*";

impl Action {
    /// The contract name, as in `/__action__/{action}/{service}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Restart => "restart",
            Self::Stop => "stop",
            Self::Start => "start",
            Self::MaintenanceOn => "maintenance-on",
            Self::MaintenanceOff => "maintenance-off",
            Self::Wake => "wake",
            Self::Sleep => "sleep",
        }
    }
}

impl std::str::FromStr for Action {
    type Err = ActionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "restart" => Ok(Self::Restart),
            "stop" => Ok(Self::Stop),
            "start" => Ok(Self::Start),
            "maintenance-on" => Ok(Self::MaintenanceOn),
            "maintenance-off" => Ok(Self::MaintenanceOff),
            "wake" => Ok(Self::Wake),
            "sleep" => Ok(Self::Sleep),
            other => Err(ActionError::UnknownAction(other.to_owned())),
        }
    }
}

/// Why an action or a query was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ActionError {
    /// No service or resource has this name.
    #[error("unknown service `{0}`")]
    UnknownService(String),
    /// No action has this name.
    #[error(
        "unknown action `{0}` (expected restart, stop, start, wake, sleep, maintenance-on or maintenance-off)"
    )]
    UnknownAction(String),
    /// The action makes no sense in the current state.
    #[error("cannot {action} `{service}`: {reason}")]
    NotAvailable {
        /// The action asked for.
        action: String,
        /// The service.
        service: String,
        /// Why not.
        reason: String,
    },
    /// The runtime is shutting down and takes no more actions.
    #[error("the runtime is shutting down")]
    ShuttingDown,
}

/// Read and act on a running runtime. Implemented by the facade's `Runtime`; used by the
/// dashboard, the control socket and the bus, so none of them depends on the others.
pub trait RuntimeControl: Send + Sync + 'static {
    /// A snapshot of every resource. A read by someone looking (a view, a client): the
    /// runtime samples CPU and memory while status is read.
    fn status(&self) -> StatusReport;
    /// The same snapshot for the runtime's own machinery (the proxy's route table): it does
    /// not count as someone looking, so it starts no CPU/memory sampling; the CPU and memory
    /// in it may be old or absent.
    fn status_unobserved(&self) -> StatusReport {
        self.status()
    }
    /// The last `lines` log lines of a service (all services, interleaved by time, for `None`).
    fn logs(&self, service: Option<&str>, lines: usize)
    -> Result<Vec<ServiceLogLine>, ActionError>;
    /// Every event from now on.
    fn subscribe_events(&self) -> broadcast::Receiver<Event>;
    /// Every captured log line from now on.
    fn subscribe_logs(&self) -> broadcast::Receiver<ServiceLogLine>;
    /// Restart, stop or start one service; resolves when the action has been carried out.
    fn act(&self, action: Action, service: &str) -> BoxFuture<'_, Result<(), ActionError>>;
    /// Asks the whole runtime to shut down gracefully; returns at once.
    fn request_shutdown(&self, reason: &str);

    /// Re-reads the config from where it came from and applies it as a diff: added services
    /// start, removed ones stop, changed ones restart, unchanged ones are not touched. An
    /// invalid config is rejected and the running set is left as it was. Resolves with a
    /// summary for people and the keys that only apply after a restart, or the error.
    fn reload(&self) -> BoxFuture<'_, Result<ReloadOutcome, String>> {
        Box::pin(async { Err("this runtime cannot reload its config".to_owned()) })
    }

    /// Recent runs of one service (or of all), newest first, from the store; survives
    /// restarts of kinfra. Errors (no store, an unknown service) are for people.
    fn history(
        &self,
        service: Option<&str>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<RunRecord>, String>> {
        let _ = (service, limit);
        Box::pin(async { Err("this runtime keeps no run history".to_owned()) })
    }

    /// Recent executions of one resource's commands, newest first, from the store; survives
    /// restarts of kinfra. A runtime without a store has none.
    fn command_history(
        &self,
        resource: &str,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<CommandRecord>, String>> {
        let _ = (resource, limit);
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Runs a provider resource's typed command. `params` are checked against the command's
    /// spec (string values of integer, number and boolean parameters are parsed, as the CLI
    /// sends text). Resolves with the command's result as JSON (`{success, data, warnings,
    /// dry_run, operation, requests}`), secrets masked.
    fn command(&self, call: CommandCall) -> BoxFuture<'_, Result<serde_json::Value, CommandError>> {
        let _ = call;
        Box::pin(async {
            Err(CommandError::Failed(
                "this runtime runs no commands".to_owned(),
            ))
        })
    }

    /// The typed commands of a provider resource, as JSON (its `CommandSpec`s: `{id, name,
    /// description, params, dry_run, confirm, ...}`), for the dashboard's command list. A
    /// resource that is not a provider resource has none; an unknown one is an error for
    /// people.
    fn commands(&self, resource: &str) -> Result<Vec<serde_json::Value>, String> {
        let _ = resource;
        Ok(Vec::new())
    }

    /// Metrics of other subsystems (bus, store, proxy), already in the Prometheus text
    /// format, appended to `/metrics`.
    fn extra_metrics(&self) -> String {
        String::new()
    }

    /// The proxy's request totals by route since start (empty without a proxy): read by the
    /// dashboard's history, which keeps rates and latency percentiles over time.
    fn route_totals(&self) -> Vec<crate::metrics::RouteTotals> {
        Vec::new()
    }

    /// Every event of every node of the fleet from now on (this node's included), each the
    /// event's JSON with its `node`, as it came over the bus; `None` when this runtime has
    /// no fleet view.
    fn subscribe_fleet_events(&self) -> Option<broadcast::Receiver<std::sync::Arc<str>>> {
        None
    }
}

/// Keeps only the message text of log lines; handy for tests and plain output.
pub fn messages(lines: &[LogLine]) -> Vec<&str> {
    lines.iter().map(|l| l.message.as_str()).collect()
}

/// What a reload did, as the control socket and the CLI report it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReloadOutcome {
    /// What was applied, for people.
    pub message: String,
    /// Changed keys that only take effect when kinfra restarts (`proxy.http`,
    /// `dashboard.listen`, ...); the runtime keeps running with their old values.
    pub needs_restart: Vec<String>,
}

/// A provider resource's command to run (see [`RuntimeControl::command`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommandCall {
    /// The resource.
    pub resource: String,
    /// The command's id.
    pub command: String,
    /// Its parameters by name.
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Send nothing; answer with the requests it would send.
    #[serde(default)]
    pub dry_run: bool,
    /// Confirms a command that needs it (a delete, say).
    #[serde(default)]
    pub yes: bool,
}

/// Why a command did not run, or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum CommandError {
    /// The request is wrong (unknown resource or command, invalid parameters, a missing
    /// confirmation): every problem, one each, naming what is at fault.
    #[error("{}", .0.join("\n"))]
    Input(Vec<String>),
    /// The command ran and failed (secrets masked).
    #[error("{0}")]
    Failed(String),
}
