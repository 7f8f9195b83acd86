//! The `command` provider: CLI tools as resources (start, stop, status and health commands).
//!
//! KInfra's CommandAdapter in Rust: a resource is whatever a few commands say it is, e.g.
//! `kubectl scale deployment api --replicas=1` to start, `--replicas=0` to stop and
//! `kubectl get deployment api -o jsonpath={.status.readyReplicas}` to observe. Each command
//! is a shell string (run by `sh -c`) or an argv array, runs in its own process group with
//! kinfra's death signal ([`kinfra_core::child::tie_to_parent`]) and is killed with its whole
//! group when it outlives its `timeout` or the call waiting on it is dropped.
//! (The death signal follows the forking thread: commands are spawned from the runtime's
//! worker threads, which live as long as kinfra's runtime.) A command that exits normally
//! may leave a daemon behind in its group (`cloudflared ... &`): that is the command's
//! business, and its output keeps reaching the log.
//!
//! How `status` reads the state: `status_map` (regex → state, first match in key order) on
//! its stdout, then `status_running`: `exit0` (the default: exit code 0 is running, any other
//! is stopped) or a regex (a match on stdout is running, none is stopped). With a pattern, a
//! status command that exits non-zero is an error, not a state.
//!
//! A [`Run`] stays up while the periodic `status` (every `interval`, jittered) says running;
//! it ends when status says `failed`, or `stopped`/`sleeping`/`absent` once it has said
//! running (before that, a not-yet-running answer is taken as still starting). Every line a
//! command prints goes to the run's output and the resource's log, prefixed `[start]`,
//! `[status]`, ...; values of secret-named `env` entries are masked there and in dry-runs.

use crate::command::{CommandSpec, ValidatedParams};
use crate::metadata::{
    AuthMethod, Capability, Category, ConfigKeySpec, ConfigKind, ProviderMetadata, ResourceTypeSpec,
};
use crate::observe::ObserveConfig;
use crate::provider::{
    InstanceContext, KINFRA_KEYS, Provider, ProviderError, ResourceDecl, ResourceProblem,
    check_config,
};
use crate::result::{CommandResult, PlannedRequest, mask_text};
use crate::run_slot::{AbortOnDrop, RunSlot, SyncRecord};
use kinfra_core::event::ExitInfo;
use kinfra_core::resource::{
    BoxFuture, Connection, Observed, OutputLine, Resource, ResourceError, Run, SyncFacts,
};
use kinfra_core::state::Health;
use kinfra_core::status::LogStream;
use regex::Regex;
use serde_json::{Map, Value, json};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// The provider's id (`provider = "command"`).
pub const ID: &str = "command";

/// Its one resource type.
pub const RESOURCE_TYPE: &str = "command";

/// The keys that hold a command (a string or an argv array).
const COMMAND_KEYS: &[&str] = &["start", "stop", "status", "health"];

/// Bound on each command when `timeout` is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The status period when `interval` is not set.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// How many stderr lines a failure quotes.
const STDERR_QUOTE: usize = 5;

/// How many output lines [`Resource::logs`] keeps.
const LOG_KEEP: usize = 1000;

/// Room in a run's output channel; lines beyond it (a reader that stalls) are dropped from
/// the channel but kept in the log.
const OUTPUT_ROOM: usize = 1024;

/// How long output may keep arriving after a command exited (a pipe still draining).
const DRAIN: Duration = Duration::from_millis(250);

/// The `command` provider, ready for the registry.
pub fn provider() -> Arc<dyn Provider> {
    Arc::new(CommandProvider::new())
}

/// A command as configured: a shell string or an argv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandLine {
    /// Run by `sh -c`.
    Shell(String),
    /// Run directly: program and arguments.
    Argv(Vec<String>),
}

impl CommandLine {
    fn parse(key: &str, value: &Value) -> Result<Self, ResourceProblem> {
        let bad = |message: &str| ResourceProblem {
            key: Some(key.to_owned()),
            message: message.to_owned(),
        };
        match value {
            Value::String(s) if s.trim().is_empty() => Err(bad("empty command")),
            Value::String(s) => Ok(Self::Shell(s.clone())),
            Value::Array(items) => {
                let argv: Option<Vec<String>> = items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect();
                match argv {
                    None => Err(bad("expected an array of strings")),
                    Some(argv) if argv.first().is_none_or(|p| p.is_empty()) => {
                        Err(bad("empty command (the array needs a program)"))
                    }
                    Some(argv) => Ok(Self::Argv(argv)),
                }
            }
            _ => Err(bad("expected a shell string or an argv array of strings")),
        }
    }

    /// The command line as text: the shell string, or the argv shell-quoted.
    pub fn display(&self) -> String {
        match self {
            Self::Shell(s) => s.clone(),
            Self::Argv(argv) => argv
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    fn to_command(&self) -> std::process::Command {
        match self {
            Self::Shell(s) => {
                let mut cmd = std::process::Command::new("sh");
                cmd.arg("-c").arg(s);
                cmd
            }
            Self::Argv(argv) => {
                let mut cmd = std::process::Command::new(&argv[0]);
                cmd.args(&argv[1..]);
                cmd
            }
        }
    }
}

fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./=:,@%+-".contains(&b));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// A state a status command can report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandState {
    /// It runs.
    Running,
    /// It is stopped.
    Stopped,
    /// Stopped on purpose, woken by use (shown to the supervisor as idle).
    Sleeping,
    /// Coming up.
    Starting,
    /// It failed.
    Failed,
    /// It does not exist.
    Absent,
}

impl CommandState {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "running" => Self::Running,
            "stopped" => Self::Stopped,
            "sleeping" => Self::Sleeping,
            "starting" => Self::Starting,
            "failed" => Self::Failed,
            "absent" => Self::Absent,
            _ => return None,
        })
    }

    /// The state's name, e.g. `sleeping`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Sleeping => "sleeping",
            Self::Starting => "starting",
            Self::Failed => "failed",
            Self::Absent => "absent",
        }
    }
}

/// How the status command says "running" when no `status_map` entry matched.
#[derive(Debug, Clone)]
pub enum RunningRule {
    /// Exit code 0 is running, anything else stopped.
    ExitZero,
    /// A match on stdout is running, none is stopped.
    Pattern(Regex),
}

/// A command resource's config, parsed and checked.
#[derive(Debug, Clone)]
pub struct CommandConfig {
    /// Brings it up (optional: some things only need observing).
    pub start: Option<CommandLine>,
    /// Brings it down.
    pub stop: Option<CommandLine>,
    /// Observes it (required).
    pub status: CommandLine,
    /// Its own health check: exit 0 is healthy.
    pub health: Option<CommandLine>,
    /// How status says running.
    pub running: RunningRule,
    /// Output patterns to states, tried in order before `running`.
    pub status_map: Vec<(Regex, CommandState)>,
    /// Environment for every command.
    pub env: Vec<(String, String)>,
    /// Working directory for every command.
    pub cwd: Option<PathBuf>,
    /// Bound on each command.
    pub timeout: Duration,
    /// The status period of a live run.
    pub interval: Duration,
}

/// The resource type's config keys (what `check_config` and `kinfra providers show` use).
fn config_keys() -> Vec<ConfigKeySpec> {
    vec![
        ConfigKeySpec::optional(
            "start",
            ConfigKind::String,
            "Command that brings it up: a shell string or an argv array.",
        ),
        ConfigKeySpec::optional(
            "stop",
            ConfigKind::String,
            "Command that brings it down: a shell string or an argv array.",
        ),
        ConfigKeySpec::required(
            "status",
            ConfigKind::String,
            "Command that observes it: a shell string or an argv array.",
        ),
        ConfigKeySpec::optional(
            "health",
            ConfigKind::String,
            "Its own health check (exit 0 = healthy): a shell string or an argv array.",
        ),
        ConfigKeySpec::optional(
            "status_running",
            ConfigKind::String,
            "How status says running: `exit0` (default) or a regex on its stdout.",
        ),
        ConfigKeySpec::optional(
            "status_map",
            ConfigKind::Table,
            "Regex on status's stdout → running, stopped, sleeping, starting, failed or absent.",
        ),
        ConfigKeySpec::optional(
            "env",
            ConfigKind::Table,
            "Environment variables for every command.",
        ),
        ConfigKeySpec::optional(
            "cwd",
            ConfigKind::String,
            "Working directory for every command.",
        ),
        ConfigKeySpec::optional(
            "timeout",
            ConfigKind::Duration,
            "Bound on each command (default 30s); past it the command's process group is killed.",
        ),
    ]
}

fn problem(key: impl Into<String>, message: impl Into<String>) -> ResourceProblem {
    ResourceProblem {
        key: Some(key.into()),
        message: message.into(),
    }
}

fn duration_key(
    config: &Map<String, Value>,
    key: &str,
    default: Duration,
    problems: &mut Vec<ResourceProblem>,
) -> Duration {
    match config.get(key) {
        None => default,
        Some(Value::String(text)) => match kinfra_core::config::parse_duration(text) {
            Ok(d) if d.is_zero() => {
                problems.push(problem(key, "must be more than 0"));
                default
            }
            Ok(d) => d,
            Err(reason) => {
                problems.push(problem(key, reason));
                default
            }
        },
        Some(_) => {
            problems.push(problem(key, "expected a duration such as \"30s\""));
            default
        }
    }
}

impl CommandConfig {
    /// Parses a resource's table, reporting every problem at once, each naming its key.
    pub fn parse(config: &Map<String, Value>) -> Result<Self, Vec<ResourceProblem>> {
        let spec = resource_type();
        // check_config knows one kind per key; the command keys also take arrays, so their
        // kind is checked here instead.
        let mut problems: Vec<ResourceProblem> = check_config(&spec, config, KINFRA_KEYS)
            .into_iter()
            .filter(|p| {
                let command_key = p.key.as_deref().is_some_and(|k| COMMAND_KEYS.contains(&k));
                !(command_key && p.message.starts_with("expected"))
            })
            .filter(|p| !matches!(p.key.as_deref(), Some("timeout")))
            .collect();
        let mut command = |key: &str| match config.get(key) {
            // kinfra's own `health` is a probe table: not a command.
            Some(Value::Object(_)) if key == "health" => None,
            Some(value) => match CommandLine::parse(key, value) {
                Ok(line) => Some(line),
                Err(p) => {
                    problems.push(p);
                    None
                }
            },
            None => None,
        };
        let start = command("start");
        let stop = command("stop");
        let status = command("status");
        let health = command("health");

        let running = match config.get("status_running") {
            None => RunningRule::ExitZero,
            Some(Value::String(s)) if s == "exit0" => RunningRule::ExitZero,
            Some(Value::String(s)) => match Regex::new(s) {
                Ok(re) => RunningRule::Pattern(re),
                Err(e) => {
                    problems.push(problem(
                        "status_running",
                        format!("not `exit0` nor a valid regex: {e}"),
                    ));
                    RunningRule::ExitZero
                }
            },
            Some(_) => RunningRule::ExitZero, // check_config named the kind
        };

        let mut status_map = Vec::new();
        if let Some(Value::Object(map)) = config.get("status_map") {
            for (pattern, state) in map {
                let key = format!("status_map.{pattern}");
                let re = match Regex::new(pattern) {
                    Ok(re) => Some(re),
                    Err(e) => {
                        problems.push(problem(&key, format!("invalid regex: {e}")));
                        None
                    }
                };
                let state = match state.as_str().and_then(CommandState::parse) {
                    Some(s) => Some(s),
                    None => {
                        problems.push(problem(
                            &key,
                            "expected one of running, stopped, sleeping, starting, failed, absent",
                        ));
                        None
                    }
                };
                if let (Some(re), Some(state)) = (re, state) {
                    status_map.push((re, state));
                }
            }
        }

        let mut env = Vec::new();
        if let Some(Value::Object(map)) = config.get("env") {
            for (name, value) in map {
                let text = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => {
                        problems.push(problem(
                            format!("env.{name}"),
                            "expected a string, number or boolean",
                        ));
                        continue;
                    }
                };
                if name.is_empty() || name.contains('=') || name.contains('\0') {
                    problems.push(problem(format!("env.{name}"), "not a valid variable name"));
                    continue;
                }
                env.push((name.clone(), text));
            }
        }

        let cwd = config.get("cwd").and_then(Value::as_str).map(PathBuf::from);
        let timeout = duration_key(config, "timeout", DEFAULT_TIMEOUT, &mut problems);
        let interval = duration_key(config, "interval", DEFAULT_INTERVAL, &mut problems);

        match status {
            Some(status) if problems.is_empty() => Ok(Self {
                start,
                stop,
                status,
                health,
                running,
                status_map,
                env,
                cwd,
                timeout,
                interval,
            }),
            _ => Err(problems),
        }
    }

    /// The values of secret-named `env` entries, to mask wherever output is shown.
    fn secret_values(&self) -> Vec<String> {
        self.env
            .iter()
            .filter(|(name, _)| kinfra_core::secret::is_secret_name(name))
            .map(|(_, value)| value.clone())
            .filter(|v| !v.is_empty())
            .collect()
    }

    /// The state `output` and `code` of the status command say.
    fn state_of(&self, code: Option<i32>, stdout: &str) -> Result<CommandState, String> {
        for (re, state) in &self.status_map {
            if re.is_match(stdout) {
                return Ok(*state);
            }
        }
        match &self.running {
            RunningRule::ExitZero if code == Some(0) => Ok(CommandState::Running),
            RunningRule::ExitZero => Ok(CommandState::Stopped),
            RunningRule::Pattern(_) if code != Some(0) => {
                Err(format!("exited with {}", exit_text(code)))
            }
            RunningRule::Pattern(re) if re.is_match(stdout) => Ok(CommandState::Running),
            RunningRule::Pattern(_) => Ok(CommandState::Stopped),
        }
    }
}

fn exit_text(code: Option<i32>) -> String {
    match code {
        Some(code) => format!("exit code {code}"),
        None => "a signal".into(),
    }
}

fn resource_type() -> ResourceTypeSpec {
    ResourceTypeSpec {
        name: RESOURCE_TYPE.into(),
        description: "A CLI tool or script: start, stop, status and health commands.".into(),
        config: config_keys(),
    }
}

/// Where command output goes: the live run's channel (while there is one) and a ring of the
/// last lines for [`Resource::logs`]. Secret values are masked before either sees a line.
struct OutputSink {
    secrets: Vec<String>,
    inner: Mutex<SinkInner>,
}

#[derive(Default)]
struct SinkInner {
    /// The live run's output channel; the run (in its [`RunSlot`]) holds the sender, so the
    /// channel closes when the run ends, whatever the sink still points at.
    run: Option<mpsc::WeakSender<OutputLine>>,
    kept: VecDeque<OutputLine>,
}

impl OutputSink {
    fn new(secrets: Vec<String>) -> Self {
        Self {
            secrets,
            inner: Mutex::new(SinkInner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SinkInner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn mask(&self, text: &str) -> String {
        let values: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        mask_text(text, &values)
    }

    fn push(&self, stream: LogStream, which: &str, text: &str) {
        let line = OutputLine {
            stream,
            text: format!("[{which}] {}", self.mask(text)),
        };
        let mut inner = self.lock();
        if inner.kept.len() == LOG_KEEP {
            inner.kept.pop_front();
        }
        inner.kept.push_back(line.clone());
        if let Some(tx) = inner.run.as_ref().and_then(mpsc::WeakSender::upgrade) {
            let _ = tx.try_send(line);
        }
    }

    fn attach(&self, tx: &mpsc::Sender<OutputLine>) {
        self.lock().run = Some(tx.downgrade());
    }

    fn tail(&self, n: usize) -> Vec<OutputLine> {
        let inner = self.lock();
        let skip = inner.kept.len().saturating_sub(n);
        inner.kept.iter().skip(skip).cloned().collect()
    }
}

/// How a command ended.
#[derive(Debug)]
struct Finished {
    code: Option<i32>,
    stdout: Vec<String>,
    stderr: Vec<String>,
}

impl Finished {
    fn stderr_tail(&self) -> String {
        let skip = self.stderr.len().saturating_sub(STDERR_QUOTE);
        let tail: Vec<&str> = self.stderr[skip..].iter().map(String::as_str).collect();
        if tail.is_empty() {
            "no output on stderr".into()
        } else {
            tail.join(" | ")
        }
    }
}

/// Why a command could not finish.
#[derive(Debug)]
enum ExecError {
    Spawn(String),
    Wait(String),
    Timeout(Duration),
}

impl ExecError {
    fn describe(&self, which: &str) -> String {
        match self {
            Self::Spawn(e) => format!("`{which}` command could not start: {e}"),
            Self::Wait(e) => format!("`{which}` command could not be waited on: {e}"),
            Self::Timeout(t) => format!(
                "`{which}` command timed out after {} (timeout); its process group was killed",
                humantime::format_duration(*t)
            ),
        }
    }
}

/// SIGKILL to a process group, unless disarmed: the command is killed with everything it
/// started when the future waiting on it is dropped.
struct GroupKill(Option<i32>);

impl GroupKill {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take()
            && pgid > 0
        {
            // SAFETY: kill(2) with a negative PID signals that process group; no memory is
            // shared. tie_to_parent made the child the leader of its own group.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

fn forward<R: AsyncRead + Unpin + Send + 'static>(
    reader: R,
    stream: LogStream,
    which: &'static str,
    sink: Arc<OutputSink>,
    collected: mpsc::UnboundedSender<(LogStream, String)>,
) {
    tokio::spawn(async move {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf);
                    let text = text.trim_end_matches(['\n', '\r']);
                    sink.push(stream, which, text);
                    let _ = collected.send((stream, text.to_owned()));
                }
            }
        }
    });
}

/// Runs one command to completion within the config's timeout. Its output lines go to the
/// sink as they come and are returned; past the timeout (or when this future is dropped) its
/// process group is killed.
async fn exec(
    config: &CommandConfig,
    sink: &Arc<OutputSink>,
    which: &'static str,
    line: &CommandLine,
) -> Result<Finished, ExecError> {
    let mut std_cmd = line.to_command();
    std_cmd
        .envs(config.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(cwd) = &config.cwd {
        std_cmd.current_dir(cwd);
    }
    kinfra_core::child::tie_to_parent(&mut std_cmd);
    let mut cmd = tokio::process::Command::from(std_cmd);
    cmd.kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| ExecError::Spawn(sink.mask(&e.to_string())))?;
    let mut group = GroupKill(child.id().and_then(|p| i32::try_from(p).ok()));
    let (tx, mut rx) = mpsc::unbounded_channel();
    if let Some(out) = child.stdout.take() {
        forward(out, LogStream::Stdout, which, sink.clone(), tx.clone());
    }
    if let Some(err) = child.stderr.take() {
        forward(err, LogStream::Stderr, which, sink.clone(), tx.clone());
    }
    drop(tx);
    let status = match tokio::time::timeout(config.timeout, child.wait()).await {
        Err(_) => {
            group.kill();
            let _ = child.wait().await;
            return Err(ExecError::Timeout(config.timeout));
        }
        Ok(Err(e)) => return Err(ExecError::Wait(e.to_string())),
        Ok(Ok(status)) => status,
    };
    // It exited: whatever it left running in its group (a daemon) is its business.
    group.disarm();
    let mut finished = Finished {
        code: status.code(),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    let drained = tokio::time::Instant::now() + DRAIN;
    while let Ok(Some((stream, text))) = tokio::time::timeout_at(drained, rx.recv()).await {
        match stream {
            LogStream::Stderr => finished.stderr.push(text),
            _ => finished.stdout.push(text),
        }
    }
    Ok(finished)
}

/// What a status command said.
#[derive(Debug, Clone)]
struct StatusReading {
    state: CommandState,
    code: Option<i32>,
    stdout: String,
}

/// Runs the status command and records how it went in `sync`: the first line of its output
/// (masked) is the provider's state; a failure keeps the last one.
async fn read_status(
    config: &CommandConfig,
    sink: &Arc<OutputSink>,
    sync: &SyncRecord,
) -> Result<StatusReading, ResourceError> {
    let reading = read_status_once(config, sink).await;
    match &reading {
        Ok(r) => sync.ok(r
            .stdout
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_owned)),
        Err(error) => sync.failed(sink.mask(&error.to_string())),
    }
    reading
}

async fn read_status_once(
    config: &CommandConfig,
    sink: &Arc<OutputSink>,
) -> Result<StatusReading, ResourceError> {
    let finished = exec(config, sink, "status", &config.status)
        .await
        .map_err(|e| ResourceError::op("status command", e.describe("status")))?;
    let stdout = finished.stdout.join("\n");
    let state = config.state_of(finished.code, &stdout).map_err(|reason| {
        ResourceError::op(
            "status command",
            format!("{reason}: {}", sink.mask(&finished.stderr_tail())),
        )
    })?;
    Ok(StatusReading {
        state,
        code: finished.code,
        stdout: sink.mask(&stdout),
    })
}

fn observed(reading: &StatusReading) -> Observed {
    match reading.state {
        CommandState::Running | CommandState::Starting => Observed::Running,
        CommandState::Stopped | CommandState::Sleeping => Observed::Idle,
        CommandState::Absent => Observed::Absent,
        CommandState::Failed => Observed::Exited(ExitInfo {
            code: Some(reading.code.filter(|c| *c != 0).unwrap_or(1)),
            signal: None,
        }),
    }
}

/// The `command` provider.
pub struct CommandProvider {
    metadata: ProviderMetadata,
    commands: Vec<CommandSpec>,
}

impl Default for CommandProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl CommandProvider {
    /// The provider with its metadata and commands.
    pub fn new() -> Self {
        let command = |id: &str, name: &str, description: &str| {
            CommandSpec::new(id, name, description)
                .in_category("lifecycle")
                .for_resource_type(RESOURCE_TYPE)
                .with_dry_run()
        };
        Self {
            metadata: ProviderMetadata {
                id: ID.into(),
                name: ID.into(),
                display_name: "Command".into(),
                description: "CLI tools and scripts as resources: start, stop, status and \
                              health commands (kubectl, cloudflared, your own scripts)."
                    .into(),
                version: env!("CARGO_PKG_VERSION").into(),
                category: Category::Custom,
                capabilities: vec![Capability::Monitor, Capability::DryRun],
                resource_types: vec![resource_type()],
                auth_methods: vec![AuthMethod::None],
            },
            commands: vec![
                command("start", "Start", "Runs the resource's `start` command."),
                command("stop", "Stop", "Runs the resource's `stop` command."),
                command(
                    "status",
                    "Status",
                    "Runs the resource's `status` command and reports the state it says.",
                ),
            ],
        }
    }
}

fn parse_decl(decl: &ResourceDecl) -> Result<CommandConfig, ProviderError> {
    decl.parse_config(CommandConfig::parse)
}

fn planned(config: &CommandConfig, line: &CommandLine) -> PlannedRequest {
    let mut headers: Vec<(String, String)> = config.env.clone();
    if let Some(cwd) = &config.cwd {
        headers.push(("cwd".into(), cwd.display().to_string()));
    }
    headers.push((
        "timeout".into(),
        humantime::format_duration(config.timeout).to_string(),
    ));
    PlannedRequest {
        method: "EXEC".into(),
        url: line.display(),
        headers,
        body: None,
    }
}

impl Provider for CommandProvider {
    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    fn commands(&self) -> &[CommandSpec] {
        &self.commands
    }

    fn validate_resource<'a>(
        &'a self,
        _instance: &'a InstanceContext,
        decl: &'a ResourceDecl,
    ) -> BoxFuture<'a, Vec<ResourceProblem>> {
        Box::pin(async move { CommandConfig::parse(&decl.config).err().unwrap_or_default() })
    }

    fn resource(
        &self,
        instance: &InstanceContext,
        decl: &ResourceDecl,
    ) -> Result<Box<dyn Resource>, ProviderError> {
        let config = parse_decl(decl)?;
        Ok(Box::new(CommandResource::new(&decl.name, config, instance)))
    }

    fn execute<'a>(
        &'a self,
        instance: &'a InstanceContext,
        resource: &'a ResourceDecl,
        command: &'a CommandSpec,
        _params: ValidatedParams,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<CommandResult, ProviderError>> {
        Box::pin(async move {
            let config = parse_decl(resource)?;
            let which: &'static str = match command.id.as_str() {
                "start" => "start",
                "stop" => "stop",
                "status" => "status",
                other => {
                    return Err(ProviderError::unknown_command(ID, other));
                }
            };
            let line = match which {
                "start" => config.start.as_ref(),
                "stop" => config.stop.as_ref(),
                _ => Some(&config.status),
            };
            let Some(line) = line.cloned() else {
                let mut result = CommandResult::ok(Value::Null);
                result.dry_run = dry_run;
                result.warnings.push(format!(
                    "resource `{}` has no `{which}` command",
                    resource.name
                ));
                return Ok(result);
            };
            let env_secrets: Vec<kinfra_core::Secret> = config
                .secret_values()
                .into_iter()
                .map(kinfra_core::Secret::new)
                .collect();
            let mut secrets = instance.secrets();
            secrets.extend(env_secrets.iter());
            if dry_run {
                return Ok(CommandResult::planned(&[planned(&config, &line)], &secrets));
            }
            let resource = CommandResource::new(&resource.name, config, instance);
            let sink = &resource.sink;
            if which == "status" {
                let reading = read_status(&resource.config, sink, &resource.sync).await?;
                return Ok(CommandResult::ok(json!({
                    "state": reading.state.as_str(),
                    "exit_code": reading.code,
                    "stdout": reading.stdout,
                })));
            }
            let finished = exec(&resource.config, sink, which, &line)
                .await
                .map_err(|e| ProviderError::Command {
                    command: which.into(),
                    reason: e.describe(which),
                })?;
            let data = json!({
                "exit_code": finished.code,
                "stdout": sink.mask(&finished.stdout.join("\n")),
                "stderr": sink.mask(&finished.stderr.join("\n")),
            });
            if finished.code != Some(0) {
                return Err(ProviderError::Command {
                    command: which.into(),
                    reason: format!(
                        "exited with {}: {}",
                        exit_text(finished.code),
                        sink.mask(&finished.stderr_tail())
                    ),
                });
            }
            Ok(CommandResult::ok(data))
        })
    }
}

/// What a live run holds: the task watching its status, and its output channel's sender.
type Held = (AbortOnDrop, mpsc::Sender<OutputLine>);

/// A resource run by commands; see the module docs.
pub struct CommandResource {
    name: String,
    config: Arc<CommandConfig>,
    sink: Arc<OutputSink>,
    live: RunSlot<Held>,
    sync: SyncRecord,
}

impl CommandResource {
    /// The resource `name` run by `config`; `instance`'s secrets are masked like secret env.
    pub fn new(name: &str, config: CommandConfig, instance: &InstanceContext) -> Self {
        let mut secrets = config.secret_values();
        secrets.extend(instance.secrets().iter().map(|s| s.expose().to_owned()));
        Self {
            name: name.to_owned(),
            sink: Arc::new(OutputSink::new(secrets)),
            config: Arc::new(config),
            live: RunSlot::default(),
            sync: SyncRecord::default(),
        }
    }
}

impl Drop for CommandResource {
    /// A dropped resource stops watching: the watcher ends, and with it the run's exit and
    /// output channels (the run is lost track of, not ended).
    fn drop(&mut self) {
        self.live.forget();
    }
}

/// Watches a live run: every `interval` (jittered) it reads the status and ends the run when
/// it says failed, or stopped/sleeping/absent after having said running.
async fn watch_run(
    config: Arc<CommandConfig>,
    sink: Arc<OutputSink>,
    live: RunSlot<Held>,
    generation: u64,
    mut seen_running: bool,
    name: String,
    sync: SyncRecord,
) {
    // The observe loop's timing: the first read spread over the interval, then ±10 %.
    let timing = ObserveConfig::every(config.interval);
    let mut wait = timing.first_delay();
    loop {
        tokio::time::sleep(wait).await;
        wait = timing.next_delay();
        let reading = match read_status(&config, &sink, &sync).await {
            Ok(r) => r,
            Err(error) => {
                sink.push(LogStream::System, "status", &error.to_string());
                warn!(resource = %name, %error, "Status command failed.");
                continue;
            }
        };
        let info = match reading.state {
            CommandState::Running => {
                seen_running = true;
                continue;
            }
            CommandState::Starting => continue,
            CommandState::Stopped | CommandState::Sleeping | CommandState::Absent
                if !seen_running =>
            {
                continue;
            }
            CommandState::Stopped | CommandState::Sleeping | CommandState::Absent => ExitInfo {
                code: Some(0),
                signal: None,
            },
            CommandState::Failed => ExitInfo {
                code: Some(reading.code.filter(|c| *c != 0).unwrap_or(1)),
                signal: None,
            },
        };
        let first = reading.stdout.lines().next().unwrap_or("").to_owned();
        sink.push(
            LogStream::System,
            "status",
            &format!("says {}: run ended ({first})", reading.state.as_str()),
        );
        live.end(Some(generation), info);
        return;
    }
}

impl Resource for CommandResource {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn start(&self) -> BoxFuture<'_, Result<Run, ResourceError>> {
        Box::pin(async move {
            let (out_tx, out_rx) = mpsc::channel(OUTPUT_ROOM);
            let (exit_tx, exit_rx) = oneshot::channel();
            let already_live = self.live.is_live();
            let mut adopted = already_live;
            self.sink.attach(&out_tx);
            if !already_live {
                // Adopt what is already running rather than starting it twice.
                let running = matches!(
                    read_status(&self.config, &self.sink, &self.sync).await,
                    Ok(StatusReading {
                        state: CommandState::Running,
                        ..
                    })
                );
                adopted = running;
                if !running && let Some(line) = &self.config.start {
                    let result = exec(&self.config, &self.sink, "start", line).await;
                    let failure = match result {
                        Err(e) => Some(e.describe("start")),
                        Ok(f) if f.code != Some(0) => Some(format!(
                            "exited with {}: {}",
                            exit_text(f.code),
                            self.sink.mask(&f.stderr_tail())
                        )),
                        Ok(_) => None,
                    };
                    if let Some(reason) = failure {
                        return Err(ResourceError::op("start command", reason));
                    }
                }
            }
            self.live.begin(|generation| {
                let watcher = tokio::spawn(watch_run(
                    self.config.clone(),
                    self.sink.clone(),
                    self.live.clone(),
                    generation,
                    adopted,
                    self.name.clone(),
                    self.sync.clone(),
                ));
                (exit_tx, (AbortOnDrop(watcher), out_tx))
            });
            Ok(Run {
                id: self.name.clone(),
                pid: None,
                adopted,
                output: out_rx,
                exit: exit_rx,
            })
        })
    }

    fn stop(&self, _grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            if let Some(line) = &self.config.stop {
                let finished = exec(&self.config, &self.sink, "stop", line)
                    .await
                    .map_err(|e| ResourceError::op("stop command", e.describe("stop")))?;
                if finished.code != Some(0) {
                    return Err(ResourceError::op(
                        "stop command",
                        format!(
                            "exited with {}: {}",
                            exit_text(finished.code),
                            self.sink.mask(&finished.stderr_tail())
                        ),
                    ));
                }
            }
            self.live.end(
                None,
                ExitInfo {
                    code: Some(0),
                    signal: None,
                },
            );
            Ok(())
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<Observed, ResourceError>> {
        Box::pin(async move {
            let reading = read_status(&self.config, &self.sink, &self.sync).await?;
            Ok(observed(&reading))
        })
    }

    /// From the last status command (the periodic one, or one the supervisor asked for).
    fn sync(&self) -> Option<SyncFacts> {
        self.sync.facts()
    }

    fn health(&self) -> BoxFuture<'_, Result<Health, ResourceError>> {
        Box::pin(async move {
            let Some(line) = &self.config.health else {
                return Ok(Health::Unknown);
            };
            match exec(&self.config, &self.sink, "health", line).await {
                Ok(f) if f.code == Some(0) => Ok(Health::Healthy),
                Ok(_) => Ok(Health::Unhealthy),
                Err(e @ ExecError::Timeout(_)) => {
                    self.sink
                        .push(LogStream::System, "health", &e.describe("health"));
                    Ok(Health::Unhealthy)
                }
                Err(e) => Err(ResourceError::op("health command", e.describe("health"))),
            }
        })
    }

    fn has_own_health(&self) -> bool {
        self.config.health.is_some()
    }

    fn connection(&self) -> Connection {
        Connection::default()
    }

    fn logs(&self, tail: usize) -> BoxFuture<'_, Result<Vec<OutputLine>, ResourceError>> {
        Box::pin(async move { Ok(self.sink.tail(tail)) })
    }

    /// Nothing is created beyond what `start` does and `stop` undoes: removing is a no-op.
    fn remove(&self, _volumes: bool) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: Value) -> Result<CommandConfig, Vec<String>> {
        let Value::Object(map) = value else {
            panic!("not an object");
        };
        CommandConfig::parse(&map).map_err(|ps| ps.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn every_config_problem_names_its_key() {
        let problems = parse(json!({
            "provider": "command",
            "start": 7,
            "stop": [],
            "health": ["ok", 1],
            "status_running": "(unclosed",
            "status_map": { "ACTIVE": "awake", "[bad": "running" },
            "env": { "DEPTH": ["x"] },
            "timeout": "soon",
            "colour": "red",
        }))
        .err()
        .unwrap_or_default();
        let has = |prefix: &str| problems.iter().any(|p| p.starts_with(prefix));
        for key in [
            "`colour`: unknown key",
            "`status`: missing (required)",
            "`start`: expected a shell string or an argv array",
            "`stop`: empty command",
            "`health`: expected an array of strings",
            "`status_running`: not `exit0` nor a valid regex",
            "`status_map.ACTIVE`: expected one of running",
            "`status_map.[bad`: invalid regex",
            "`env.DEPTH`: expected a string",
            "`timeout`: invalid duration `soon`",
        ] {
            assert!(has(key), "no problem starting {key:?} in {problems:#?}");
        }
        assert_eq!(problems.len(), 10, "{problems:#?}");
    }

    #[test]
    fn a_good_config_parses_with_defaults() {
        let config = parse(json!({
            "provider": "command",
            "interval": "5s",
            "health": { "http": "http://127.0.0.1:1/" },
            "start": ["kubectl", "scale", "deployment", "api", "--replicas=1"],
            "status": "kubectl get deployment api",
            "env": { "KUBECONFIG": "/k", "API_TOKEN": "hunter22", "REPLICAS": 1 },
        }))
        .expect("valid");
        assert_eq!(config.timeout, DEFAULT_TIMEOUT);
        assert_eq!(config.interval, Duration::from_secs(5));
        assert!(
            config.health.is_none(),
            "kinfra's probe table is not a command"
        );
        assert!(matches!(config.running, RunningRule::ExitZero));
        assert_eq!(config.secret_values(), ["hunter22"]);
        assert_eq!(
            config.start.map(|s| s.display()).as_deref(),
            Some("kubectl scale deployment api --replicas=1")
        );
    }

    #[test]
    fn state_from_code_and_output() {
        let config = parse(json!({
            "status": "true",
            "status_running": "^up",
            "status_map": { "PAUSED": "sleeping" },
        }))
        .expect("valid");
        assert_eq!(config.state_of(Some(0), "up 3m"), Ok(CommandState::Running));
        assert_eq!(config.state_of(Some(0), "down"), Ok(CommandState::Stopped));
        assert_eq!(
            config.state_of(Some(0), "PAUSED"),
            Ok(CommandState::Sleeping)
        );
        assert!(config.state_of(Some(2), "up").is_err());
        let by_code = parse(json!({ "status": "true" })).expect("valid");
        assert_eq!(by_code.state_of(Some(0), ""), Ok(CommandState::Running));
        assert_eq!(by_code.state_of(Some(3), ""), Ok(CommandState::Stopped));
    }

    #[test]
    fn argv_is_shown_shell_quoted() {
        let line = CommandLine::Argv(vec!["echo".into(), "it's".into(), "a b".into()]);
        assert_eq!(line.display(), r"echo 'it'\''s' 'a b'");
    }
}
