//! The plugin host: an external provider is an executable (`kinfra-provider-<id>`) that speaks
//! JSON-RPC 2.0 over its stdin/stdout, one JSON object per line. Methods: `describe`,
//! `validate`, `start`, `stop`, `status`, `health`, `logs`, `execute`, `shutdown`.
//!
//! [`PluginProcess`] is one child: spawned on the first call with
//! [`kinfra_core::child::tie_to_parent`] (own process group, SIGKILL when the forking thread
//! dies: the call runs on a runtime worker thread, which lives as long as the runtime) and
//! `kill_on_drop`, one call at a time, each bounded by a timeout. A plugin that
//! exits, hangs past the timeout, prints something that is not JSON-RPC or answers with a
//! frame of the wrong shape gives a [`PluginError`] naming the plugin and what happened; the
//! child is then gone (killed when needed) and **the next call starts a new one**. Its exit
//! goes out with its cause ([`PluginExit`]: crashed, timed out, garbage, wrong shape), so
//! the runs it held end saying which. A JSON-RPC error, or a `result` of the wrong shape,
//! fails the call and keeps the child. Dropping the process sends `shutdown`, waits a short
//! grace and kills the child by its PID (SIGKILL to the process group it leads, so what it
//! started goes too). Its stderr lines go to tracing at debug, with the instance's secrets
//! masked.
//!
//! [`PluginProvider`] implements [`Provider`] by forwarding, with one child per provider
//! instance; its resources ([`PluginResource`]) call `start`, `stop`, `status`, `health` and
//! `logs`, and poll `status` every `interval` while a run is live.
//!
//! # Params and answers
//!
//! Every call carries the instance (`name`, `token`, `base_url`, `config`: the whole
//! `[providers.NAME]` table) and the resource (`name`, `config`) in its params. The
//! resource's `config` is its `[resources.NAME]` table's own keys (those kinfra does not
//! read) plus kinfra's [`KINFRA_RESOURCE_KEYS`]: only `interval` (the observe period, a
//! duration string such as `"30s"`). kinfra's other keys (`provider`, `depends_on`,
//! `restart`, `stop_grace`, `on_down`, a `health` probe table, ...) are not sent, so
//! `validate` may refuse any key it does not know beside those.
//!
//! - `describe` → `{metadata, commands}` ([`Description`]).
//! - `validate` → `{problems: [{key?, message}]}`; kinfra adds its own problems
//!   (a bad `interval`).
//! - `start` → `{id?, connection?: {host, port?, url?, fields?}}`.
//! - `stop` (params also `grace_ms`; `remove`, `volumes` for a remove) → anything.
//! - `status` → `{state, code?, provider_state?}`: `state` is `absent`, `idle`, `running` or
//!   `exited` (then `code` is its exit code); `provider_state` is the thing's state in the
//!   provider's own words (`"ACTIVE"`), shown as the resource's `provider_state` (the state's
//!   name when absent). The run ends when `state` says `exited`, or `idle`/`absent` after it
//!   said `running`.
//! - `health` → `{health: "healthy" | "unhealthy" | "unknown"}`.
//! - `logs` (params also `tail`) → `{lines: [{stream?, text}]}`.
//! - `execute` (params also `command`, `params`, `dry_run`) → a [`CommandResult`].
//! - `shutdown` → anything, then exit.

use crate::command::{CommandSpec, ValidatedParams};
use crate::metadata::ProviderMetadata;
use crate::observe::{self, ObserveConfig, ObserveError};
use crate::provider::{InstanceContext, Provider, ProviderError, ResourceDecl, ResourceProblem};
use crate::result::CommandResult;
use crate::run_slot::{AbortOnDrop, SyncRecord, lock};
use kinfra_core::Secret;
use kinfra_core::event::ExitInfo;
use kinfra_core::resource::{
    BoxFuture, Connection, Observed, OutputLine, Resource, ResourceError, Run, SyncFacts,
};
use kinfra_core::state::Health;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// Longest line accepted from a plugin's stdout or stderr.
const MAX_LINE: usize = 8 * 1024 * 1024;

/// How much of a bad line an error quotes.
const QUOTE: usize = 120;

/// Timeouts of the plugin host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginOptions {
    /// Bound on every call (spawn included).
    pub timeout: Duration,
    /// How long a plugin gets to exit after `shutdown` before it is killed.
    pub shutdown_grace: Duration,
}

impl Default for PluginOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

/// What went wrong talking to a plugin. Every variant names the plugin; none holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// The executable could not be started.
    #[error("plugin `{plugin}` ({path}) could not be started: {reason}")]
    Spawn {
        /// The plugin's id.
        plugin: String,
        /// Its executable.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The plugin exited (or closed its stdout) during a call.
    #[error("plugin `{plugin}` crashed during `{method}`: {status}")]
    Crashed {
        /// The plugin's id.
        plugin: String,
        /// The call.
        method: String,
        /// How it ended, e.g. `exit code 3`.
        status: String,
    },
    /// No answer within the timeout; the plugin was killed.
    #[error("plugin `{plugin}` did not answer `{method}` within {}; killed it", humantime::format_duration(*after))]
    Timeout {
        /// The plugin's id.
        plugin: String,
        /// The call.
        method: String,
        /// The timeout.
        after: Duration,
    },
    /// A line on stdout that is not JSON; the plugin was killed.
    #[error("plugin `{plugin}` printed garbage on stdout during `{method}`: {line:?}; killed it")]
    Garbage {
        /// The plugin's id.
        plugin: String,
        /// The call.
        method: String,
        /// The start of the line (secrets masked).
        line: String,
    },
    /// JSON that is not the answer expected: a frame that is not JSON-RPC (the plugin was
    /// killed) or a `result` of the wrong shape (the child stays).
    #[error(
        "plugin `{plugin}` answered `{method}` with the wrong shape: {detail}{}",
        if *killed { "; killed it" } else { "" }
    )]
    WrongShape {
        /// The plugin's id.
        plugin: String,
        /// The call.
        method: String,
        /// What was wrong.
        detail: String,
        /// Whether the child was killed for it.
        killed: bool,
    },
    /// The child a call was bound to (the one that started a resource's run) is gone; no new
    /// one was started for the call.
    #[error("plugin `{plugin}`: the child that served the run is gone (during `{method}`)")]
    Gone {
        /// The plugin's id.
        plugin: String,
        /// The call.
        method: String,
    },
    /// The plugin answered with a JSON-RPC error.
    #[error("plugin `{plugin}` refused `{method}`: {message} (code {code})")]
    Remote {
        /// The plugin's id.
        plugin: String,
        /// The call.
        method: String,
        /// The JSON-RPC error code.
        code: i64,
        /// The error message (secrets masked).
        message: String,
    },
    /// `describe` gave another id than the executable's name.
    #[error("plugin `{plugin}` describes itself as `{described}`")]
    IdMismatch {
        /// The id from the executable's name.
        plugin: String,
        /// The id `describe` gave.
        described: String,
    },
}

impl From<PluginError> for ResourceError {
    fn from(e: PluginError) -> Self {
        ResourceError::Operation {
            op: "plugin".into(),
            reason: e.to_string(),
        }
    }
}

/// Why a plugin child ended without kinfra asking it to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitCause {
    /// It exited on its own (or closed its stdout).
    Crashed,
    /// kinfra killed it: no answer to `method` within `after`.
    TimedOut {
        /// The call.
        method: String,
        /// The timeout.
        after: Duration,
    },
    /// kinfra killed it: a line on stdout that is not JSON during `method`.
    Garbage {
        /// The call.
        method: String,
    },
    /// kinfra killed it: a frame that is not a JSON-RPC answer to `method`.
    WrongShape {
        /// The call.
        method: String,
    },
}

/// An exit of a plugin child nobody asked for, and why it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginExit {
    /// The plugin's id.
    pub plugin: String,
    /// How the child ended.
    pub info: ExitInfo,
    /// Why.
    pub cause: ExitCause,
}

impl PluginExit {
    /// The fault in a few words: "plugin `x` crashed (exit code 3)", "plugin `x` timed out
    /// during `status` after 5s", "plugin `x` printed garbage on stdout during `status`" or
    /// "plugin `x` answered `status` with the wrong shape".
    pub fn reason(&self) -> String {
        let plugin = &self.plugin;
        match &self.cause {
            ExitCause::Crashed => format!("plugin `{plugin}` crashed ({})", exit_text(&self.info)),
            ExitCause::TimedOut { method, after } => format!(
                "plugin `{plugin}` timed out during `{method}` after {}",
                humantime::format_duration(*after)
            ),
            ExitCause::Garbage { method } => {
                format!("plugin `{plugin}` printed garbage on stdout during `{method}`")
            }
            ExitCause::WrongShape { method } => {
                format!("plugin `{plugin}` answered `{method}` with the wrong shape")
            }
        }
    }

    /// The line a run that ends with this exit gets in its output.
    fn output_line(&self) -> String {
        match self.cause {
            ExitCause::Crashed => format!("{}; the run ends with it", self.reason()),
            _ => format!(
                "{}; kinfra killed it ({}); the run ends with it",
                self.reason(),
                exit_text(&self.info)
            ),
        }
    }
}

/// A JSON-RPC answer: its `result` or its `error`.
enum Answer {
    Result(Value),
    Error(Value),
}

/// How a call failed below the JSON-RPC level.
enum Failure {
    Closed,
    Io(std::io::Error),
    Garbage(String),
    Shape(String),
}

/// A live child and its pipes.
struct Conn {
    pid: u32,
    /// Which spawn of its [`PluginProcess`] this is (1 for the first).
    generation: u64,
    /// Why kinfra kills it, set just before the kill (`None`: it ended on its own).
    cause: Arc<Mutex<Option<ExitCause>>>,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Dropped (or sent) to kill the child; the waiter task owns it.
    kill: Option<oneshot::Sender<()>>,
    /// How it ended, once it has.
    exited: watch::Receiver<Option<ExitInfo>>,
    /// Set before an exit kinfra asked for, so it is not reported as a crash.
    orderly: Arc<std::sync::atomic::AtomicBool>,
    next_id: u64,
}

impl Conn {
    async fn exchange(&mut self, id: u64, line: &str) -> Result<Answer, Failure> {
        self.stdin
            .write_all(line.as_bytes())
            .await
            .map_err(Failure::Io)?;
        self.stdin.flush().await.map_err(Failure::Io)?;
        loop {
            let Some(text) = read_line(&mut self.stdout).await.map_err(Failure::Io)? else {
                return Err(Failure::Closed);
            };
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            let value: Value =
                serde_json::from_str(text).map_err(|_| Failure::Garbage(text.to_owned()))?;
            let Value::Object(obj) = value else {
                return Err(Failure::Shape("not a JSON object".into()));
            };
            if obj.get("jsonrpc") != Some(&json!("2.0")) {
                return Err(Failure::Shape("`jsonrpc` is not \"2.0\"".into()));
            }
            // A notification from the plugin (no id): log it and keep reading.
            if obj.get("id").is_none() && obj.contains_key("method") {
                let notification = Value::Object(obj);
                tracing::debug!(pid = self.pid, %notification, "Plugin notification.");
                continue;
            }
            if obj.get("id") != Some(&json!(id)) {
                return Err(Failure::Shape(format!(
                    "answer for id {} while waiting for {id}",
                    obj.get("id").cloned().unwrap_or(Value::Null)
                )));
            }
            let mut obj = obj;
            if let Some(error) = obj.remove("error") {
                return Ok(Answer::Error(error));
            }
            return obj
                .remove("result")
                .map(Answer::Result)
                .ok_or_else(|| Failure::Shape("neither `result` nor `error`".into()));
        }
    }

    /// Sends `shutdown`, waits up to `grace` for the exit; dropping `self` then kills it.
    async fn shutdown(mut self, grace: Duration) {
        self.orderly
            .store(true, std::sync::atomic::Ordering::Release);
        let id = self.next_id;
        let line = request_line(id, "shutdown", json!({}));
        let mut exited = self.exited.clone();
        let _ = tokio::time::timeout(grace, async {
            let _ = self.exchange(id, &line).await;
            let _ = exited.wait_for(Option::is_some).await;
        })
        .await;
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The waiter task kills the child (by its PID, through tokio). Unless `shutdown` said
        // so first, the exit counts as one nobody asked for (a kill after a timeout or
        // garbage), so live runs end.
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
    }
}

/// One line, at most [`MAX_LINE`] bytes; `None` at the end of the stream.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() {
                None
            } else {
                Some(String::from_utf8_lossy(&buf).into_owned())
            });
        }
        if let Some(pos) = available.iter().position(|b| *b == b'\n') {
            buf.extend_from_slice(&available[..pos]);
            reader.consume(pos + 1);
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        let n = available.len();
        buf.extend_from_slice(available);
        reader.consume(n);
        if buf.len() > MAX_LINE {
            return Err(std::io::Error::other("line longer than 8 MiB"));
        }
    }
}

fn request_line(id: u64, method: &str, params: Value) -> String {
    let mut line =
        json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string();
    line.push('\n');
    line
}

/// SIGKILL to the process group the plugin leads ([`kinfra_core::child::tie_to_parent`]
/// made it a group leader).
fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid)
        && pid > 0
    {
        // SAFETY: kill(2) with a negative PID signals that process group; no memory is shared.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

fn exit_text(info: &ExitInfo) -> String {
    match (info.code, info.signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended".into(),
    }
}

fn quote(text: &str, secrets: &[Secret]) -> String {
    let values: Vec<&str> = secrets.iter().map(|s| s.expose()).collect();
    let masked = crate::result::mask_text(text, &values);
    match masked.char_indices().nth(QUOTE) {
        Some((at, _)) => format!("{}…", &masked[..at]),
        None => masked,
    }
}

/// One plugin child (spawned on first use, again after it died) and calls to it.
pub struct PluginProcess {
    plugin: String,
    path: PathBuf,
    options: PluginOptions,
    secrets: Vec<Secret>,
    conn: tokio::sync::Mutex<Option<Conn>>,
    /// Children spawned so far.
    spawns: std::sync::atomic::AtomicU64,
    /// Exits nobody asked for (crashes, kills after a timeout or garbage).
    exits: broadcast::Sender<PluginExit>,
}

impl std::fmt::Debug for PluginProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginProcess")
            .field("plugin", &self.plugin)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl PluginProcess {
    /// A process for plugin `plugin` at `path`; nothing runs until the first call. `secrets`
    /// are masked in its stderr lines and in errors.
    pub fn new(plugin: &str, path: &Path, options: PluginOptions, secrets: Vec<Secret>) -> Self {
        Self {
            plugin: plugin.to_owned(),
            path: path.to_owned(),
            options,
            secrets,
            conn: tokio::sync::Mutex::new(None),
            spawns: std::sync::atomic::AtomicU64::new(0),
            exits: broadcast::channel(4).0,
        }
    }

    /// The plugin's id.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The PID of the running child, if one runs.
    pub async fn pid(&self) -> Option<u32> {
        self.conn.lock().await.as_ref().map(|c| c.pid)
    }

    /// Exits of the child nobody asked for, with their cause, from now on.
    pub fn subscribe_exits(&self) -> broadcast::Receiver<PluginExit> {
        self.exits.subscribe()
    }

    fn spawn(&self) -> Result<Conn, PluginError> {
        let spawn_error = |reason: String| PluginError::Spawn {
            plugin: self.plugin.clone(),
            path: self.path.display().to_string(),
            reason,
        };
        let mut std_cmd = std::process::Command::new(&self.path);
        std_cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        kinfra_core::child::tie_to_parent(&mut std_cmd);
        let mut cmd = tokio::process::Command::from(std_cmd);
        cmd.kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| spawn_error(e.to_string()))?;
        let pid = child.id().unwrap_or_default();
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(spawn_error("no pipes".into()));
        };
        let plugin = self.plugin.clone();
        let secrets = self.secrets.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr);
            while let Ok(Some(line)) = read_line(&mut reader).await {
                let line = quote(&line, &secrets);
                tracing::debug!(plugin = %plugin, pid, line = %line, "Plugin stderr.");
            }
        });
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        let (exit_tx, exit_rx) = watch::channel(None);
        let orderly = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let exits = self.exits.clone();
        let orderly_flag = orderly.clone();
        let cause: Arc<Mutex<Option<ExitCause>>> = Arc::new(Mutex::new(None));
        let kill_cause = cause.clone();
        let generation = self
            .spawns
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let plugin = self.plugin.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                _ = kill_rx => {
                    // Not reaped yet, so the group id cannot name anything else.
                    kill_group(pid);
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            // What it started in its group goes with it (no orphans). Leftovers keep the
            // group id alive, so it names no other group while one exists.
            if kinfra_core::procstat::all()
                .iter()
                .any(|p| u32::try_from(p.pgid) == Ok(pid))
            {
                kill_group(pid);
            }
            let info = match status {
                Ok(s) => ExitInfo {
                    code: s.code(),
                    signal: s.signal(),
                },
                Err(_) => ExitInfo {
                    code: None,
                    signal: None,
                },
            };
            if !orderly_flag.load(std::sync::atomic::Ordering::Acquire) {
                let exit = PluginExit {
                    plugin: plugin.clone(),
                    info,
                    cause: lock(&kill_cause).take().unwrap_or(ExitCause::Crashed),
                };
                let reason = exit.reason();
                tracing::warn!(plugin = %plugin, pid, status = %exit_text(&info), %reason, "Plugin exited.");
                let _ = exits.send(exit);
            }
            let _ = exit_tx.send(Some(info));
        });
        Ok(Conn {
            pid,
            generation,
            cause,
            stdin,
            stdout: BufReader::new(stdout),
            kill: Some(kill_tx),
            exited: exit_rx,
            orderly,
            next_id: 1,
        })
    }

    /// Calls `method` and returns its `result`. See the module docs for what each failure
    /// does to the child.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, PluginError> {
        self.call_on(None, method, params)
            .await
            .map(|(value, _)| value)
    }

    /// [`PluginProcess::call`], bound to child `bound` when given: when that child is gone
    /// the call fails with [`PluginError::Gone`] instead of starting a new one. Also says
    /// which child answered.
    async fn call_on(
        &self,
        bound: Option<u64>,
        method: &str,
        params: Value,
    ) -> Result<(Value, u64), PluginError> {
        let mut guard = self.conn.lock().await;
        let live = guard.take().filter(|c| c.exited.borrow().is_none());
        let gone = || PluginError::Gone {
            plugin: self.plugin.clone(),
            method: method.to_owned(),
        };
        let conn = match (live, bound) {
            (Some(conn), Some(generation)) if conn.generation != generation => {
                *guard = Some(conn);
                return Err(gone());
            }
            (Some(conn), _) => conn,
            (None, Some(_)) => return Err(gone()),
            (None, None) => self.spawn()?,
        };
        let conn = guard.insert(conn);
        let generation = conn.generation;
        let id = conn.next_id;
        conn.next_id += 1;
        let line = request_line(id, method, params);
        let outcome = tokio::time::timeout(self.options.timeout, conn.exchange(id, &line)).await;
        let method = method.to_owned();
        let plugin = self.plugin.clone();
        match outcome {
            Ok(Ok(Answer::Result(result))) => Ok((result, generation)),
            Ok(Ok(Answer::Error(error))) => {
                let code = error.get("code").and_then(Value::as_i64);
                let message = error.get("message").and_then(Value::as_str);
                match (code, message) {
                    (Some(code), Some(message)) => Err(PluginError::Remote {
                        plugin,
                        method,
                        code,
                        message: quote(message, &self.secrets),
                    }),
                    _ => {
                        let cause = ExitCause::WrongShape {
                            method: method.clone(),
                        };
                        self.kill(guard.take(), cause).await;
                        Err(PluginError::WrongShape {
                            plugin,
                            method,
                            detail: "`error` without a code and a message".into(),
                            killed: true,
                        })
                    }
                }
            }
            Err(_) => {
                let cause = ExitCause::TimedOut {
                    method: method.clone(),
                    after: self.options.timeout,
                };
                self.kill(guard.take(), cause).await;
                Err(PluginError::Timeout {
                    plugin,
                    method,
                    after: self.options.timeout,
                })
            }
            Ok(Err(Failure::Garbage(line))) => {
                let cause = ExitCause::Garbage {
                    method: method.clone(),
                };
                self.kill(guard.take(), cause).await;
                Err(PluginError::Garbage {
                    plugin,
                    method,
                    line: quote(&line, &self.secrets),
                })
            }
            Ok(Err(Failure::Shape(detail))) => {
                let cause = ExitCause::WrongShape {
                    method: method.clone(),
                };
                self.kill(guard.take(), cause).await;
                Err(PluginError::WrongShape {
                    plugin,
                    method,
                    detail: quote(&detail, &self.secrets),
                    killed: true,
                })
            }
            Ok(Err(failure @ (Failure::Closed | Failure::Io(_)))) => {
                let Some(conn) = guard.take() else {
                    return Err(PluginError::Crashed {
                        plugin,
                        method,
                        status: "gone".into(),
                    });
                };
                let mut exited = conn.exited.clone();
                let waited = tokio::time::timeout(
                    self.options.shutdown_grace,
                    exited.wait_for(Option::is_some),
                )
                .await;
                let status = match waited {
                    Ok(Ok(info)) => info.as_ref().map(exit_text).unwrap_or_default(),
                    _ => match failure {
                        Failure::Io(e) => format!("broken pipe ({e})"),
                        _ => "closed its stdout".into(),
                    },
                };
                drop(conn);
                Err(PluginError::Crashed {
                    plugin,
                    method,
                    status,
                })
            }
        }
    }

    /// Kills the child for `cause` and waits (up to the shutdown grace) until it is reaped,
    /// so that its exit has gone out to [`PluginProcess::subscribe_exits`] when the failed
    /// call returns.
    async fn kill(&self, conn: Option<Conn>, cause: ExitCause) {
        let Some(conn) = conn else {
            return;
        };
        *lock(&conn.cause) = Some(cause);
        let mut exited = conn.exited.clone();
        drop(conn);
        let _ = tokio::time::timeout(
            self.options.shutdown_grace,
            exited.wait_for(Option::is_some),
        )
        .await;
    }

    /// [`PluginProcess::call_on`], its result deserialized as `T`.
    async fn call_on_as<T: DeserializeOwned>(
        &self,
        bound: Option<u64>,
        method: &str,
        params: Value,
    ) -> Result<(T, u64), PluginError> {
        let (value, generation) = self.call_on(bound, method, params).await?;
        let answer = serde_json::from_value(value).map_err(|e| PluginError::WrongShape {
            plugin: self.plugin.clone(),
            method: method.to_owned(),
            // serde quotes the offending value, which may be a secret.
            detail: quote(&e.to_string(), &self.secrets),
            killed: false,
        })?;
        Ok((answer, generation))
    }

    /// [`PluginProcess::call`], its result deserialized as `T` (a mismatch is
    /// [`PluginError::WrongShape`]; the child stays).
    pub async fn call_as<T: DeserializeOwned>(
        &self,
        method: &str,
        params: Value,
    ) -> Result<T, PluginError> {
        self.call_on_as(None, method, params)
            .await
            .map(|(answer, _)| answer)
    }

    /// Sends `shutdown`, waits the grace, then kills the child. Nothing runs afterwards
    /// until the next call.
    pub async fn shutdown(&self) {
        let conn = self.conn.lock().await.take();
        if let Some(conn) = conn {
            conn.shutdown(self.options.shutdown_grace).await;
        }
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        let Some(conn) = self.conn.get_mut().take() else {
            return;
        };
        let grace = self.options.shutdown_grace;
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(conn.shutdown(grace));
            }
            // No runtime left: kill at once (dropping the connection does).
            Err(_) => drop(conn),
        }
    }
}

/// What `describe` answers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Description {
    /// The provider's metadata.
    pub metadata: ProviderMetadata,
    /// Its commands.
    #[serde(default)]
    pub commands: Vec<CommandSpec>,
}

/// Starts the plugin at `path`, asks `describe`, checks the id against `id` and shuts the
/// child down again.
pub async fn describe(
    id: &str,
    path: &Path,
    options: PluginOptions,
) -> Result<Description, PluginError> {
    let process = PluginProcess::new(id, path, options, Vec::new());
    let answer = process.call_as::<Description>("describe", json!({})).await;
    process.shutdown().await;
    let description = answer?;
    if description.metadata.id != id {
        return Err(PluginError::IdMismatch {
            plugin: id.to_owned(),
            described: description.metadata.id,
        });
    }
    Ok(description)
}

fn instance_json(instance: &InstanceContext) -> Value {
    json!({
        "name": instance.instance,
        "token": instance.token.as_ref().map(|t| t.expose()),
        "base_url": instance.base_url,
        "config": instance.config,
    })
}

/// kinfra's own keys in the resource table a plugin gets (beside the resource's own keys):
/// `interval`, the observe period as a duration string ("30s"). Nothing else of kinfra's
/// (`provider`, `depends_on`, `restart`, a `health` probe table, ...) is sent, so a plugin's
/// `validate` may refuse every other key it does not know.
pub const KINFRA_RESOURCE_KEYS: &[&str] = &["interval"];

/// The observe period of a resource whose table has no `interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// The resource's `interval` (kinfra writes it into every provider resource's table).
fn interval(decl: &ResourceDecl) -> Result<Duration, ResourceProblem> {
    match decl.config.get("interval") {
        None => Ok(DEFAULT_INTERVAL),
        Some(Value::String(text)) => match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() => Ok(d),
            _ => Err(ResourceProblem {
                key: Some("interval".into()),
                message: format!("expected a duration above 0 such as \"30s\", not `{text}`"),
            }),
        },
        Some(_) => Err(ResourceProblem {
            key: Some("interval".into()),
            message: "expected a duration such as \"30s\"".into(),
        }),
    }
}

fn resource_json(decl: &ResourceDecl) -> Value {
    json!({ "name": decl.name, "config": decl.config })
}

/// An external provider: forwards every [`Provider`] call to its plugin, one child per
/// provider instance.
pub struct PluginProvider {
    metadata: ProviderMetadata,
    commands: Vec<CommandSpec>,
    path: PathBuf,
    options: PluginOptions,
    processes: Mutex<HashMap<String, Arc<PluginProcess>>>,
}

impl std::fmt::Debug for PluginProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginProvider")
            .field("id", &self.metadata.id)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl PluginProvider {
    /// A provider for the plugin at `path` described by `description`.
    pub fn new(description: Description, path: &Path, options: PluginOptions) -> Self {
        Self {
            metadata: description.metadata,
            commands: description.commands,
            path: path.to_owned(),
            options,
            processes: Mutex::new(HashMap::new()),
        }
    }

    /// The executable.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The child of `instance` (created, not yet spawned, on first use).
    pub fn process(&self, instance: &InstanceContext) -> Arc<PluginProcess> {
        let mut map = match self.processes.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        map.entry(instance.instance.clone())
            .or_insert_with(|| {
                Arc::new(PluginProcess::new(
                    &self.metadata.id,
                    &self.path,
                    self.options,
                    instance.token.iter().cloned().collect(),
                ))
            })
            .clone()
    }

    /// Shuts every instance's child down (with kinfra).
    pub async fn shutdown(&self) {
        let all: Vec<Arc<PluginProcess>> = match self.processes.lock() {
            Ok(g) => g.values().cloned().collect(),
            Err(p) => p.into_inner().values().cloned().collect(),
        };
        for process in all {
            process.shutdown().await;
        }
    }
}

#[derive(Deserialize)]
struct ValidateAnswer {
    #[serde(default)]
    problems: Vec<ResourceProblem>,
}

impl Provider for PluginProvider {
    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    fn commands(&self) -> &[CommandSpec] {
        &self.commands
    }

    fn validate_resource<'a>(
        &'a self,
        instance: &'a InstanceContext,
        decl: &'a ResourceDecl,
    ) -> BoxFuture<'a, Vec<ResourceProblem>> {
        Box::pin(async move {
            let params =
                json!({"instance": instance_json(instance), "resource": resource_json(decl)});
            // kinfra's own keys are kinfra's to judge.
            let mut problems: Vec<ResourceProblem> = interval(decl).err().into_iter().collect();
            match self
                .process(instance)
                .call_as::<ValidateAnswer>("validate", params)
                .await
            {
                Ok(answer) => problems.extend(answer.problems),
                Err(e) => problems.push(ResourceProblem {
                    key: None,
                    message: e.to_string(),
                }),
            }
            problems
        })
    }

    fn resource(
        &self,
        instance: &InstanceContext,
        decl: &ResourceDecl,
    ) -> Result<Box<dyn Resource>, ProviderError> {
        let interval = interval(decl).map_err(|problem| ProviderError::InvalidResource {
            resource: decl.name.clone(),
            problems: vec![problem],
        })?;
        Ok(Box::new(PluginResource {
            process: self.process(instance),
            instance: instance.clone(),
            decl: decl.clone(),
            interval,
            run: Mutex::new(None),
            connection: Mutex::new(Connection::default()),
            exit_reason: Arc::new(Mutex::new(None)),
            sync: SyncRecord::default(),
        }))
    }

    fn execute<'a>(
        &'a self,
        instance: &'a InstanceContext,
        resource: &'a ResourceDecl,
        command: &'a CommandSpec,
        params: ValidatedParams,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<CommandResult, ProviderError>> {
        Box::pin(async move {
            if dry_run && !command.dry_run {
                return Err(ProviderError::NoDryRun(command.id.clone()));
            }
            let call = json!({
                "instance": instance_json(instance),
                "resource": resource_json(resource),
                "command": command.id,
                "params": params.to_json_exposed(),
                "dry_run": dry_run,
            });
            let process = self.process(instance);
            let result = process.call_as::<CommandResult>("execute", call).await?;
            if dry_run && !result.dry_run {
                return Err(PluginError::WrongShape {
                    plugin: self.metadata.id.clone(),
                    method: "execute".into(),
                    detail: "a dry-run answered without `dry_run: true`".into(),
                    killed: false,
                }
                .into());
            }
            let mut secrets = instance.secrets();
            secrets.extend(params.secrets());
            Ok(result.mask(&secrets))
        })
    }
}

/// A live run of a plugin resource. Dropping it stops its observe loop.
struct LiveRun {
    /// Set once, by whoever ends the run (stop, the observe loop, the plugin's exit).
    end: Arc<watch::Sender<Option<ExitInfo>>>,
    /// The observe loop.
    _observe: AbortOnDrop,
}

/// How a run's end came about.
enum Ended {
    /// Stop, or the observe loop, ended it (`None`: the run was dropped).
    Own(Option<ExitInfo>),
    /// The plugin's child exited under it.
    Lost(Result<PluginExit, broadcast::error::RecvError>),
    /// The supervisor dropped the run.
    LetGo,
}

/// Ends the run behind `end` with `info`, unless it has ended already.
fn end_once(end: &watch::Sender<Option<ExitInfo>>, info: ExitInfo) {
    end.send_if_modified(|e| {
        if e.is_none() {
            *e = Some(info);
            true
        } else {
            false
        }
    });
}

/// A resource run by a plugin: `start`, `stop`, `status`, `health` and `logs` are calls;
/// `remove` is `stop` with `remove: true`.
///
/// A run is observed: every `interval` (jittered, backing off after failures; see
/// [`crate::observe`]) the loop asks `status` of the child that served `start`, keeps the
/// answer as [`Resource::sync`] (`last_sync`, and `provider_state`: the plugin's own word, or
/// the state's name) and ends the run when the plugin says `exited` (with its code), or
/// `idle`/`absent` after it said `running` (code 0). A poll the plugin refuses (a JSON-RPC
/// error) or answers with a result of the wrong shape is a failed sync; the run goes on.
///
/// If the child exits while a run is live (it crashed, or kinfra killed it after a timeout, a
/// garbage line or a frame of the wrong shape, during a poll or any other call), the run ends
/// with the child's exit, a line in its output and [`Resource::exit_reason`] naming the fault
/// ([`PluginExit::reason`]), so the supervisor's restart policy applies (the next start
/// spawns a new child).
pub struct PluginResource {
    process: Arc<PluginProcess>,
    instance: InstanceContext,
    decl: ResourceDecl,
    interval: Duration,
    run: Mutex<Option<LiveRun>>,
    connection: Mutex<Connection>,
    /// Why the last run ended, when the plugin's child was lost under it.
    exit_reason: Arc<Mutex<Option<String>>>,
    /// What the observe loop learnt last (kept after the run ends).
    sync: SyncRecord,
}

#[derive(Deserialize)]
struct StartAnswer {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    connection: Option<ConnectionAnswer>,
}

#[derive(Deserialize)]
struct ConnectionAnswer {
    #[serde(default)]
    host: String,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    url: Option<Secret>,
    #[serde(default)]
    fields: BTreeMap<String, Secret>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StateAnswer {
    Absent,
    Idle,
    Running,
    Exited,
}

impl StateAnswer {
    fn as_str(self) -> &'static str {
        match self {
            Self::Absent => "absent",
            Self::Idle => "idle",
            Self::Running => "running",
            Self::Exited => "exited",
        }
    }
}

#[derive(Deserialize)]
struct StatusAnswer {
    state: StateAnswer,
    #[serde(default)]
    code: Option<i32>,
    #[serde(default)]
    provider_state: Option<String>,
}

#[derive(Deserialize)]
struct HealthAnswer {
    health: Health,
}

#[derive(Deserialize)]
struct LogsAnswer {
    #[serde(default)]
    lines: Vec<LogLineAnswer>,
}

#[derive(Deserialize)]
struct LogLineAnswer {
    #[serde(default = "stdout")]
    stream: kinfra_core::status::LogStream,
    text: String,
}

fn stdout() -> kinfra_core::status::LogStream {
    kinfra_core::status::LogStream::Stdout
}

/// What one run's observe loop needs.
struct Poll {
    process: Arc<PluginProcess>,
    params: Value,
    /// The child that served `start`: polls never start another.
    child: u64,
    end: Arc<watch::Sender<Option<ExitInfo>>>,
    sync: SyncRecord,
    /// Held through a poll and its record, so a lost child ends the run after the record.
    busy: Arc<tokio::sync::Mutex<()>>,
    seen_running: std::sync::atomic::AtomicBool,
    secrets: Vec<Secret>,
}

impl Poll {
    /// Asks `status`, records the answer and ends the run when it says so.
    async fn once(&self) -> Result<String, ObserveError> {
        let _busy = self.busy.lock().await;
        if self.end.borrow().is_some() {
            return Err(ObserveError::Failed("the run has ended".into()));
        }
        let answer = self
            .process
            .call_on_as::<StatusAnswer>(Some(self.child), "status", self.params.clone())
            .await;
        let answer = match answer {
            Ok((answer, _)) => answer,
            // The child is gone under the run: its exit ends the run and says why.
            Err(error @ PluginError::Gone { .. }) => {
                return Err(ObserveError::Failed(error.to_string()));
            }
            Err(error) => {
                let error = error.to_string();
                self.sync.failed(error.clone());
                return Err(ObserveError::Failed(error));
            }
        };
        let word = match &answer.provider_state {
            Some(word) => {
                let values: Vec<&str> = self.secrets.iter().map(|s| s.expose()).collect();
                crate::result::mask_text(word, &values)
            }
            None => answer.state.as_str().to_owned(),
        };
        self.sync.ok(Some(word.clone()));
        let seen_running = &self.seen_running;
        let ended = match answer.state {
            StateAnswer::Running => {
                seen_running.store(true, std::sync::atomic::Ordering::Relaxed);
                None
            }
            StateAnswer::Exited => Some(ExitInfo {
                code: answer.code,
                signal: None,
            }),
            StateAnswer::Idle | StateAnswer::Absent
                if seen_running.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                Some(ExitInfo {
                    code: Some(0),
                    signal: None,
                })
            }
            StateAnswer::Idle | StateAnswer::Absent => None,
        };
        if let Some(info) = ended {
            end_once(&self.end, info);
        }
        Ok(word)
    }
}

impl PluginResource {
    fn params(&self, extra: Map<String, Value>) -> Value {
        let mut params = Map::new();
        params.insert("instance".into(), instance_json(&self.instance));
        params.insert("resource".into(), resource_json(&self.decl));
        params.extend(extra);
        Value::Object(params)
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Option<LiveRun>> {
        lock(&self.run)
    }
}

impl Drop for PluginResource {
    /// A dropped resource stops observing (its run is lost track of, not ended).
    fn drop(&mut self) {
        self.live().take();
    }
}

impl Resource for PluginResource {
    fn kind(&self) -> &'static str {
        "plugin"
    }

    fn name(&self) -> &str {
        &self.decl.name
    }

    fn start(&self) -> BoxFuture<'_, Result<Run, ResourceError>> {
        Box::pin(async move {
            let mut lost = self.process.subscribe_exits();
            let (answer, child): (StartAnswer, u64) = self
                .process
                .call_on_as(None, "start", self.params(Map::new()))
                .await?;
            if let Some(c) = answer.connection {
                *lock(&self.connection) = Connection {
                    host: c.host,
                    port: c.port,
                    url: c.url,
                    fields: c.fields,
                };
            }
            let id = answer.id.unwrap_or_else(|| self.decl.name.clone());
            *lock(&self.exit_reason) = None;
            let (end_tx, mut end_rx) = watch::channel(None::<ExitInfo>);
            let end = Arc::new(end_tx);
            let busy = Arc::new(tokio::sync::Mutex::new(()));
            let poll = Arc::new(Poll {
                process: self.process.clone(),
                params: self.params(Map::new()),
                child,
                end: end.clone(),
                sync: self.sync.clone(),
                busy: busy.clone(),
                seen_running: std::sync::atomic::AtomicBool::new(false),
                secrets: self.instance.token.iter().cloned().collect(),
            });
            let mut stop = end_rx.clone();
            let (_, observe) = observe::spawn(
                ObserveConfig::every(self.interval),
                move || {
                    let poll = poll.clone();
                    async move { poll.once().await }
                },
                async move {
                    let _ = stop.wait_for(Option::is_some).await;
                },
            );
            let adopted = {
                let mut live = self.live();
                let adopted = live.as_ref().is_some_and(|r| r.end.borrow().is_none());
                *live = Some(LiveRun {
                    end: Arc::clone(&end),
                    _observe: AbortOnDrop(observe),
                });
                adopted
            };
            // The run's end goes to the supervisor; the child's exit under it ends it too,
            // saying why (after a poll in flight has recorded its failure).
            let (out_tx, out_rx) = mpsc::channel(64);
            let (exit_tx, exit) = oneshot::channel();
            let end = Arc::downgrade(&end);
            let reason = self.exit_reason.clone();
            // A poll in flight finishes within one call timeout.
            let poll_bound = self.process.options.timeout;
            tokio::spawn(async move {
                let mut exit_tx = exit_tx;
                let unknown = ExitInfo {
                    code: None,
                    signal: None,
                };
                let ended = tokio::select! {
                    own = end_rx.wait_for(Option::is_some) => Ended::Own(own.ok().and_then(|e| *e)),
                    lost = lost.recv() => Ended::Lost(lost),
                    () = exit_tx.closed() => Ended::LetGo,
                };
                let info = match ended {
                    Ended::Own(info) => info,
                    Ended::Lost(Ok(exit)) => {
                        let _ = tokio::time::timeout(poll_bound, busy.lock()).await;
                        let _ = out_tx.try_send(OutputLine {
                            stream: kinfra_core::status::LogStream::Stderr,
                            text: exit.output_line(),
                        });
                        *lock(&reason) = Some(exit.reason());
                        Some(exit.info)
                    }
                    // Missed exits still mean the child is gone.
                    Ended::Lost(Err(broadcast::error::RecvError::Lagged(_))) => Some(unknown),
                    Ended::Lost(Err(broadcast::error::RecvError::Closed)) => None,
                    // The supervisor let go of the run: stop observing.
                    Ended::LetGo => Some(unknown),
                };
                if let (Some(info), Some(end)) = (info, end.upgrade()) {
                    end_once(&end, info);
                }
                drop(out_tx);
                if let Some(info) = info {
                    let _ = exit_tx.send(info);
                }
            });
            Ok(Run {
                id,
                pid: None,
                adopted,
                output: out_rx,
                exit,
            })
        })
    }

    fn stop(&self, grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            let mut extra = Map::new();
            extra.insert("grace_ms".into(), json!(grace.as_millis() as u64));
            self.process.call("stop", self.params(extra)).await?;
            if let Some(run) = self.live().take() {
                end_once(
                    &run.end,
                    ExitInfo {
                        code: Some(0),
                        signal: None,
                    },
                );
            }
            Ok(())
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<Observed, ResourceError>> {
        Box::pin(async move {
            let answer: StatusAnswer = self
                .process
                .call_as("status", self.params(Map::new()))
                .await?;
            Ok(match answer.state {
                StateAnswer::Absent => Observed::Absent,
                StateAnswer::Idle => Observed::Idle,
                StateAnswer::Running => Observed::Running,
                StateAnswer::Exited => Observed::Exited(ExitInfo {
                    code: answer.code,
                    signal: None,
                }),
            })
        })
    }

    fn health(&self) -> BoxFuture<'_, Result<Health, ResourceError>> {
        Box::pin(async move {
            let answer: HealthAnswer = self
                .process
                .call_as("health", self.params(Map::new()))
                .await?;
            Ok(answer.health)
        })
    }

    fn connection(&self) -> Connection {
        lock(&self.connection).clone()
    }

    fn logs(&self, tail: usize) -> BoxFuture<'_, Result<Vec<OutputLine>, ResourceError>> {
        Box::pin(async move {
            let mut extra = Map::new();
            extra.insert("tail".into(), json!(tail));
            let answer: LogsAnswer = self.process.call_as("logs", self.params(extra)).await?;
            Ok(answer
                .lines
                .into_iter()
                .map(|l| OutputLine {
                    stream: l.stream,
                    text: l.text,
                })
                .collect())
        })
    }

    fn exit_reason(&self) -> Option<String> {
        lock(&self.exit_reason).clone()
    }

    /// The observe loop's last word: `last_sync` and `provider_state` (kept after the run).
    fn sync(&self) -> Option<SyncFacts> {
        self.sync.facts()
    }

    fn remove(&self, volumes: bool) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            let mut extra = Map::new();
            extra.insert("remove".into(), json!(true));
            extra.insert("volumes".into(), json!(volumes));
            self.process.call("stop", self.params(extra)).await?;
            Ok(())
        })
    }
}
