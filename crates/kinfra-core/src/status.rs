//! The status report shapes: `/__status__`, `runtime status --json`, and log lines.

use crate::event::ExitInfo;
use crate::state::{Health, ServiceState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which output stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A line kinfra wrote about the service (spawn, exit, probe).
    System,
}

impl LogStream {
    /// The contract name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::System => "system",
        }
    }
}

/// One captured line of output.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LogLine {
    /// RFC 3339 with milliseconds, UTC, taken when the line was read.
    pub timestamp: String,
    /// `info`, `warn`, `error` or `debug`, guessed from the line (stderr defaults to `warn`
    /// only when the line itself says so; otherwise `info`).
    pub level: String,
    /// Where the line came from.
    pub stream: LogStream,
    /// The line, without its trailing newline.
    pub message: String,
}

/// Everything the status API says about one resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// `process`, `docker`, ...
    pub kind: String,
    /// Lifecycle state.
    pub state: ServiceState,
    /// Readiness.
    pub health: Health,
    /// Human-readable status message.
    pub status_message: String,
    /// Port the resource listens on, when it has one.
    pub port: Option<u16>,
    /// PID of the main process, when alive.
    pub pid: Option<u32>,
    /// Seconds since the current process started, when alive.
    pub uptime_s: Option<u64>,
    /// The same, for people (`5m 32s`).
    pub uptime: Option<String>,
    /// Restarts since kinfra started managing it.
    pub restarts: u32,
    /// How the previous process ended.
    pub last_exit: Option<ExitInfo>,
    /// The last few log lines.
    pub logs: Vec<LogLine>,
    /// CPU use of the process and its descendants, in percent of one core, averaged over the
    /// last sampling interval (when sampled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    /// Resident memory of the process and its descendants, in bytes (when sampled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// How the last sync with the provider went (provider resources only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<LastSync>,
    /// The provider's own word for the state (`ACTIVE`), before kinfra mapped it
    /// (provider resources only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_state: Option<String>,
    /// Scale to zero, for targets that have it: idle time and when it will sleep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep: Option<SleepStatus>,
    /// Long work under way on it (an image pull, a cloud operation); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<crate::progress::Progress>,
}

/// Where a `scale_to_zero` target stands with respect to sleep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SleepStatus {
    /// The configured idle time before sleep, in seconds.
    pub idle_after_s: u64,
    /// The configured wake timeout, in seconds.
    pub wake_timeout_s: u64,
    /// `request` or `manual`: what wakes it.
    pub wake: String,
    /// Requests and connections open through the proxy now.
    pub open: u32,
    /// Seconds without activity so far (0 while something is open or it sleeps).
    pub idle_s: u64,
    /// When it will be put to sleep if nothing happens (RFC 3339, UTC); `None` while it
    /// sleeps, is not running, or something keeps it awake.
    #[serde(default)]
    pub sleeps_at: Option<String>,
    /// The same as seconds from now.
    #[serde(default)]
    pub sleeps_in_s: Option<u64>,
    /// Why it stays awake when it would otherwise sleep (`2 open connections`, `dependent
    /// web is awake`).
    #[serde(default)]
    pub kept_awake_by: Option<String>,
    /// Wakes since kinfra started.
    pub wakes: u64,
}

/// The outcome of a resource's last sync with its provider, so a failing poll is never
/// hidden behind an old `running`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSync {
    /// When it ended (RFC 3339, UTC).
    pub at: String,
    /// Whether the provider answered.
    pub ok: bool,
    /// Why it failed (secrets masked); `None` when `ok`.
    #[serde(default)]
    pub error: Option<String>,
}

/// Counts over all resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Number of resources.
    pub total: usize,
    /// In state `running`.
    pub running: usize,
    /// In `pending` or `starting`.
    pub starting: usize,
    /// In `failed` or `backoff`.
    pub error: usize,
}

/// The whole `/__status__` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Project name.
    pub project: String,
    /// When the report was made, RFC 3339 UTC.
    pub timestamp: String,
    /// Counts.
    pub stats: Stats,
    /// One entry per service and resource, by name.
    pub services: BTreeMap<String, ServiceStatus>,
    /// The message bus: backend, connection state and counters (when it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<serde_json::Value>,
    /// The store: engine, durability and write counters (when it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<serde_json::Value>,
    /// Proxy routes (when the proxy runs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<serde_json::Value>,
    /// Certificates with their domains and expiry (when there are any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<serde_json::Value>,
    /// Config keys changed by a reload that only take effect when kinfra restarts
    /// (`proxy.http`, ...). Everything else in the report describes what runs now.
    #[serde(default)]
    pub pending_restart: Vec<String>,
    /// The configured provider instances (`[providers.NAME]`), by name, with where each is
    /// in its lifecycle (when there are any). Never holds a token.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub providers: BTreeMap<String, ProviderInstanceStatus>,
    /// The Cloudflare tunnel (`[tunnel]`): state, id, name, hostnames with their public
    /// URLs, connections and the last error (when configured). Never holds a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<serde_json::Value>,
    /// The kinfra build that made the report (see [`set_build_info`]); absent when the
    /// process did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Box<BuildInfo>>,
    /// This node's name (`[node] name`, default the hostname); absent from runtimes that do
    /// not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The fleet: every node heard on the bus (this one included), with whether it is up,
    /// when it was last heard and its services' states (when the bus runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<serde_json::Value>,
}

/// Which kinfra build runs: `kinfra --version`'s facts, in `runtime status --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildInfo {
    /// The crate version (`0.1.0`).
    pub version: String,
    /// The git commit it was built from (short), or `unknown` (a source tarball).
    pub commit: String,
    /// The build date, `YYYY-MM-DD` (UTC).
    pub date: String,
}

static BUILD_INFO: std::sync::OnceLock<BuildInfo> = std::sync::OnceLock::new();

/// Records the running binary's build facts once, for every [`StatusReport`] made later.
/// Later calls are ignored.
pub fn set_build_info(info: BuildInfo) {
    let _ = BUILD_INFO.set(info);
}

/// The build facts recorded by [`set_build_info`], if any.
pub fn build_info() -> Option<&'static BuildInfo> {
    BUILD_INFO.get()
}

/// One configured provider instance (`[providers.NAME]`) as the runtime lives it: its
/// provider, where that comes from, its lifecycle state and the resources that use it. No
/// token, token file contents or other secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderInstanceStatus {
    /// The provider's id.
    pub provider: String,
    /// Where the provider comes from: `builtin`, `plugin`, or `missing` when it is nowhere.
    pub source: String,
    /// The plugin's executable (plugins only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The lifecycle state: `uninitialized`, `initializing`, `ready`, `active`,
    /// `suspended`, `terminated` or `failed`.
    pub state: String,
    /// Why it is in that state (always set when `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The `[resources.NAME]` that use the instance.
    #[serde(default)]
    pub resources: Vec<String>,
    /// When it entered the state (RFC 3339, UTC).
    pub since: String,
}

impl StatusReport {
    /// Builds a report, computing the stats from the services.
    pub fn new(project: impl Into<String>, services: BTreeMap<String, ServiceStatus>) -> Self {
        let mut stats = Stats {
            total: services.len(),
            ..Stats::default()
        };
        for s in services.values() {
            match s.state {
                ServiceState::Running => stats.running += 1,
                ServiceState::Pending | ServiceState::Starting => stats.starting += 1,
                state if state.is_error() => stats.error += 1,
                _ => {}
            }
        }
        Self {
            project: project.into(),
            timestamp: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            stats,
            services,
            node: None,
            fleet: None,
            bus: None,
            store: None,
            routes: Vec::new(),
            certificates: Vec::new(),
            pending_restart: Vec::new(),
            providers: BTreeMap::new(),
            tunnel: None,
            build: build_info().cloned().map(Box::new),
        }
    }
}

/// Formats seconds for people: `45s`, `5m 32s`, `2h 3m`, `3d 4h`.
pub fn format_uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_formats() {
        assert_eq!(format_uptime(0), "0s");
        assert_eq!(format_uptime(332), "5m 32s");
        assert_eq!(format_uptime(7380), "2h 3m");
        assert_eq!(format_uptime(273_600), "3d 4h");
    }

    #[test]
    fn stats_count_states() {
        let mk = |state| ServiceStatus {
            kind: "process".into(),
            state,
            health: Health::Unknown,
            status_message: String::new(),
            port: None,
            pid: None,
            uptime_s: None,
            uptime: None,
            restarts: 0,
            last_exit: None,
            logs: vec![],
            cpu_percent: None,
            memory_bytes: None,
            last_sync: None,
            provider_state: None,
            sleep: None,
            progress: None,
        };
        let services = BTreeMap::from([
            ("a".to_string(), mk(ServiceState::Running)),
            ("b".to_string(), mk(ServiceState::Backoff)),
            ("c".to_string(), mk(ServiceState::Starting)),
            ("d".to_string(), mk(ServiceState::Stopped)),
        ]);
        let r = StatusReport::new("demo", services);
        assert_eq!(
            r.stats,
            Stats {
                total: 4,
                running: 1,
                starting: 1,
                error: 1
            }
        );
    }
}

/// A log line with the name of the resource that wrote it, as streamed to followers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceLogLine {
    /// Resource name.
    pub service: String,
    /// The line.
    #[serde(flatten)]
    pub line: LogLine,
}

/// Joins a backlog of log lines with a live stream subscribed before the backlog was read:
/// live lines that are also in the backlog are replays and are skipped, so the reader sees
/// every line exactly once.
#[derive(Debug, Default)]
pub struct BacklogJoin {
    backlog: std::collections::HashSet<ServiceLogLine>,
}

impl BacklogJoin {
    /// Remembers the backlog that was (or is about to be) shown.
    pub fn new(backlog: &[ServiceLogLine]) -> Self {
        Self {
            backlog: backlog.iter().cloned().collect(),
        }
    }

    /// True when this live line was already shown as part of the backlog. The first live line
    /// that is new ends the overlap: nothing after it is a replay.
    pub fn is_replay(&mut self, line: &ServiceLogLine) -> bool {
        if self.backlog.is_empty() {
            return false;
        }
        if self.backlog.contains(line) {
            return true;
        }
        self.backlog.clear();
        false
    }
}

#[cfg(test)]
mod join_tests {
    use super::*;

    fn line(n: u32) -> ServiceLogLine {
        ServiceLogLine {
            service: "a".into(),
            line: LogLine {
                timestamp: "2026-11-21T20:00:00.000Z".into(),
                level: "info".into(),
                stream: LogStream::Stdout,
                message: format!("line {n}"),
            },
        }
    }

    #[test]
    fn overlap_is_skipped_once() {
        let backlog = vec![line(1), line(2), line(3)];
        let mut join = BacklogJoin::new(&backlog);
        let live = [line(2), line(3), line(4), line(2)];
        let shown: Vec<bool> = live.iter().map(|l| !join.is_replay(l)).collect();
        // 2 and 3 were in the backlog; 4 is new; a later "line 2" is a new line.
        assert_eq!(shown, vec![false, false, true, true]);
    }
}

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

/// One execution of a provider resource's command (`kinfra runtime history NAME`). Parameter
/// values are never kept (they may hold secrets): only their names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRecord {
    /// When it ran, RFC 3339.
    pub timestamp: String,
    /// The resource.
    pub resource: String,
    /// The command's id.
    pub command: String,
    /// The names of the parameters given, sorted.
    #[serde(default)]
    pub params: Vec<String>,
    /// A dry-run: nothing was sent.
    pub dry_run: bool,
    /// It succeeded.
    pub success: bool,
    /// The long-running operation it started, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// Why it failed (secrets masked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
