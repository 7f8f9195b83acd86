//! The control-socket protocol between the CLI and a running runtime: one JSON object per
//! line in each direction over the Unix socket `<state_dir>/control.sock`.

use crate::status::{RunRecord, ServiceLogLine, StatusReport};
use crate::view::Action;
use serde::{Deserialize, Serialize};

/// File name of the control socket inside the state dir.
pub const SOCKET_FILE: &str = "control.sock";

/// A request from the CLI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ControlRequest {
    /// Answered with [`ControlResponse::Status`].
    Status,
    /// Answered with `Log` lines, then `End` (or, with `follow`, lines until the client goes).
    Logs {
        /// One service, or all when `None`.
        service: Option<String>,
        /// How many past lines to send first.
        lines: usize,
        /// Keep streaming new lines.
        follow: bool,
    },
    /// Restart, stop or start one service. Answered with `Ok` or `Error`.
    Action {
        /// What to do.
        action: Action,
        /// To which service.
        service: String,
    },
    /// Graceful shutdown of the whole runtime. Answered with `Ok` at once.
    Shutdown,
    /// Re-read and apply the config file. Answered with `Reloaded` or `Error`.
    Reload,
    /// Where the runtime listens. Answered with [`ControlResponse::Info`].
    Info,
    /// Recent runs and how they ended, newest first, from the store. Answered with
    /// [`ControlResponse::History`] or `Error`.
    History {
        /// One service, or all when `None`.
        service: Option<String>,
        /// At most this many runs.
        limit: usize,
    },
    /// Run a provider resource's command. Answered with `CommandResult`, `CommandRefused`
    /// (input errors) or `Error` (it failed).
    Command {
        /// The resource.
        resource: String,
        /// The command's id.
        command: String,
        /// Its parameters (string values are typed by the command's spec).
        #[serde(default)]
        params: serde_json::Map<String, serde_json::Value>,
        /// Send nothing; answer with the planned requests.
        #[serde(default)]
        dry_run: bool,
        /// Confirms a command that needs it.
        #[serde(default)]
        yes: bool,
    },
}

/// Facts about a running runtime, for the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// kinfra version.
    pub version: String,
    /// PID of the runtime process.
    pub pid: u32,
    /// Dashboard address, when enabled.
    pub dashboard: Option<String>,
    /// Proxy HTTP address, when enabled.
    pub proxy: Option<String>,
}

/// A response line from the runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(
    clippy::large_enum_variant,
    reason = "one response per request or log line, serialised at once: the status report's size costs nothing here"
)]
pub enum ControlResponse {
    /// The status report.
    Status {
        /// The report, as `/__status__` has it.
        report: StatusReport,
    },
    /// One log line.
    Log {
        /// The line.
        line: ServiceLogLine,
    },
    /// The request was carried out.
    Ok {
        /// What happened, for people.
        message: String,
    },
    /// A reload was applied.
    Reloaded {
        /// What was applied, and what needs a restart of kinfra.
        outcome: crate::view::ReloadOutcome,
    },
    /// The request failed.
    Error {
        /// Why, for people.
        error: String,
    },
    /// Facts about the runtime.
    Info {
        /// The facts.
        info: RuntimeInfo,
    },
    /// Recent runs, newest first.
    History {
        /// The runs.
        runs: Vec<RunRecord>,
        /// Recent command executions of the resource asked about, newest first (none when
        /// all services were asked about).
        #[serde(default)]
        commands: Vec<crate::status::CommandRecord>,
    },
    /// A command's result, secrets masked.
    CommandResult {
        /// `{success, data, warnings, dry_run, operation, requests}`.
        result: serde_json::Value,
    },
    /// A command was refused for its input: every problem, one each.
    CommandRefused {
        /// The problems.
        problems: Vec<String>,
    },
    /// No more lines follow.
    End,
}
