//! Commands that talk to a running runtime over its control socket: down, status, logs,
//! restart, stop, start.

use super::output::{ColorChoice, Prefixer, history_table, status_table};
use super::{ConfigArg, InputError, NotRunning, load};
use anyhow::Context;
use kinfra::{Action, ControlRequest, ControlResponse};
use kinfra_core::control::SOCKET_FILE;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedReadHalf;

/// An open control connection.
pub(super) struct Connection {
    lines: Lines<BufReader<OwnedReadHalf>>,
    write: tokio::net::unix::OwnedWriteHalf,
}

pub(super) async fn connect(state_dir: &Path) -> anyhow::Result<Connection> {
    let path: PathBuf = state_dir.join(SOCKET_FILE);
    let not_running = || {
        NotRunning(format!(
            "no kinfra runtime is running here (no control socket at {}); start one with `kinfra runtime up`",
            path.display()
        ))
    };
    // A socket this user cannot reach (another user's runtime, a 0700 state dir) is not
    // "no runtime": say whose it is and why it cannot be reached.
    let unreachable = |error: &std::io::Error| {
        let owner = std::fs::metadata(state_dir)
            .map(|m| {
                format!(
                    " (the state dir belongs to {})",
                    kinfra::user_name(std::os::unix::fs::MetadataExt::uid(&m))
                )
            })
            .unwrap_or_default();
        NotRunning(format!(
            "a kinfra runtime may be running here, but this user ({}) cannot reach its control socket {}: {error}{owner}; run the command as the user that started it",
            kinfra::user_name(nix::unistd::geteuid().as_raw()),
            std::path::absolute(&path)
                .unwrap_or_else(|_| path.clone())
                .display()
        ))
    };
    match std::fs::symlink_metadata(&path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(unreachable(&e).into());
        }
        Err(_) => return Err(not_running().into()),
    }
    let stream =
        match tokio::time::timeout(Duration::from_secs(5), UnixStream::connect(&path)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                ) =>
            {
                return Err(not_running().into());
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(unreachable(&e).into());
            }
            Ok(Err(e)) => {
                return Err(e).with_context(|| format!("cannot connect to {}", path.display()));
            }
            Err(_) => anyhow::bail!("timed out connecting to {}", path.display()),
        };
    let (read, write) = stream.into_split();
    Ok(Connection {
        lines: BufReader::new(read).lines(),
        write,
    })
}

impl Connection {
    pub(super) async fn send(&mut self, request: &ControlRequest) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        self.write
            .write_all(&line)
            .await
            .context("the runtime closed the control connection")
    }

    /// The next response; `None` at the end of the stream.
    pub(super) async fn next(&mut self) -> anyhow::Result<Option<ControlResponse>> {
        match self.lines.next_line().await? {
            None => Ok(None),
            Some(line) => {
                Ok(Some(serde_json::from_str(&line).with_context(|| {
                    format!("unexpected reply from the runtime: {line}")
                })?))
            }
        }
    }

    pub(super) async fn next_within(
        &mut self,
        limit: Duration,
    ) -> anyhow::Result<Option<ControlResponse>> {
        tokio::time::timeout(limit, self.next())
            .await
            .map_err(|_| anyhow::anyhow!("the runtime did not answer within {limit:?}"))?
    }
}

/// `kinfra runtime down`
pub async fn down(arg: &ConfigArg) -> anyhow::Result<ExitCode> {
    let state_dir = load::state_dir(arg)?;
    let mut conn = connect(&state_dir).await?;
    conn.send(&ControlRequest::Shutdown).await?;
    match conn.next_within(Duration::from_secs(10)).await? {
        Some(ControlResponse::Ok { .. }) => {}
        Some(ControlResponse::Error { error }) => anyhow::bail!("the runtime refused: {error}"),
        other => anyhow::bail!("unexpected reply from the runtime: {other:?}"),
    }
    println!("Stopping the runtime in {} ...", state_dir.display());
    // The runtime keeps the connection open until it has stopped.
    let wait = Duration::from_secs(120);
    match tokio::time::timeout(wait, async { while let Ok(Some(_)) = conn.next().await {} }).await {
        Ok(()) => {
            println!("Stopped.");
            Ok(ExitCode::SUCCESS)
        }
        Err(_) => anyhow::bail!("the runtime did not stop within {wait:?}"),
    }
}

/// `kinfra runtime status [--json]`
pub async fn status(arg: &ConfigArg, json: bool) -> anyhow::Result<ExitCode> {
    let state_dir = load::state_dir(arg)?;
    let mut conn = connect(&state_dir).await?;
    conn.send(&ControlRequest::Status).await?;
    match conn.next_within(Duration::from_secs(10)).await? {
        Some(ControlResponse::Status { report }) => {
            let text = if json {
                serde_json::to_string_pretty(&report)? + "\n"
            } else {
                status_table(&report)
            };
            write_stdout(&text)
        }
        Some(ControlResponse::Error { error }) => anyhow::bail!("{error}"),
        other => anyhow::bail!("unexpected reply from the runtime: {other:?}"),
    }
}

/// `kinfra runtime logs [SERVICE] [-f] [-n N]`
pub async fn logs(
    arg: &ConfigArg,
    service: Option<String>,
    lines: usize,
    follow: bool,
    color: ColorChoice,
) -> anyhow::Result<ExitCode> {
    let state_dir = load::state_dir(arg)?;
    let mut conn = connect(&state_dir).await?;
    conn.send(&ControlRequest::Logs {
        service: service.clone(),
        lines,
        follow,
    })
    .await?;
    let mut prefixer: Option<Prefixer> = None;
    let color = color.enabled();
    // One listener for the whole loop: a Ctrl-C that arrives while a line is printed is kept
    // for the next turn instead of being lost (a fresh `ctrl_c()` per turn would miss it).
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot listen for Ctrl-C")?;
    loop {
        let next = if follow {
            tokio::select! {
                next = conn.next() => next?,
                _ = interrupt.recv() => return Ok(ExitCode::SUCCESS),
            }
        } else {
            conn.next_within(Duration::from_secs(30)).await?
        };
        match next {
            Some(ControlResponse::Log { line }) => {
                let p = prefixer.get_or_insert_with(|| {
                    Prefixer::new(color, service.as_deref().or(Some(line.service.as_str())))
                });
                let text = p.log_line(&line) + "\n";
                if let Some(done) = write_stdout_or_end(&text)? {
                    return Ok(done);
                }
            }
            Some(ControlResponse::Error { error }) if error.starts_with("unknown service") => {
                return Err(InputError(error).into());
            }
            Some(ControlResponse::Error { error }) => eprintln!("warning: {error}"),
            Some(ControlResponse::End) | None => return Ok(ExitCode::SUCCESS),
            Some(other) => anyhow::bail!("unexpected reply from the runtime: {other:?}"),
        }
    }
}

/// `kinfra runtime restart|stop|start|wake|sleep SERVICE`
pub async fn action(arg: &ConfigArg, action: Action, service: &str) -> anyhow::Result<ExitCode> {
    let state_dir = load::state_dir(arg)?;
    let mut conn = connect(&state_dir).await?;
    // Stopping waits for the service's grace period; allow for it. A wake waits up to the
    // target's `wake_timeout`.
    let mut wait = Duration::from_secs(120);
    if action == Action::Wake {
        conn.send(&ControlRequest::Status).await?;
        if let Some(ControlResponse::Status { report }) =
            conn.next_within(Duration::from_secs(30)).await?
            && let Some(sleep) = report.services.get(service).and_then(|s| s.sleep.as_ref())
        {
            wait = wait.max(Duration::from_secs(sleep.wake_timeout_s.saturating_add(30)));
        }
    }
    conn.send(&ControlRequest::Action {
        action,
        service: service.to_owned(),
    })
    .await?;
    match conn.next_within(wait).await? {
        Some(ControlResponse::Ok { .. }) => {
            let done = match action {
                Action::Restart => "restarted",
                Action::Stop => "stopped",
                Action::Start => "started",
                Action::MaintenanceOn => "in maintenance",
                Action::MaintenanceOff => "out of maintenance",
                Action::Wake => "awake",
                Action::Sleep => "asleep",
            };
            let who = if service == kinfra_core::view::ALL_SERVICES {
                "everything"
            } else {
                service
            };
            println!("{who}: {done}");
            Ok(ExitCode::SUCCESS)
        }
        Some(ControlResponse::Error { error }) if error.starts_with("unknown service") => {
            Err(InputError(error).into())
        }
        Some(ControlResponse::Error { error }) => anyhow::bail!("{error}"),
        other => anyhow::bail!("unexpected reply from the runtime: {other:?}"),
    }
}

/// `kinfra runtime history [SERVICE] [-n N] [--json]`
pub async fn history(
    arg: &ConfigArg,
    service: Option<String>,
    limit: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let state_dir = load::state_dir(arg)?;
    let mut conn = connect(&state_dir).await?;
    conn.send(&ControlRequest::History { service, limit })
        .await?;
    match conn.next_within(Duration::from_secs(30)).await? {
        Some(ControlResponse::History { runs, commands }) => {
            if json {
                // One shape whatever the data: scripts read `.runs` and `.commands`.
                let both = serde_json::json!({"runs": runs, "commands": commands});
                println!("{}", serde_json::to_string_pretty(&both)?);
            } else {
                if runs.is_empty() && commands.is_empty() {
                    println!("no runs recorded");
                } else if !runs.is_empty() {
                    print!("{}", history_table(&runs));
                }
                if !commands.is_empty() {
                    if !runs.is_empty() {
                        println!();
                    }
                    print!("{}", command_table(&commands));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(ControlResponse::Error { error }) if error.starts_with("unknown service") => {
            Err(InputError(error).into())
        }
        Some(ControlResponse::Error { error }) => anyhow::bail!("{error}"),
        other => anyhow::bail!("unexpected reply from the runtime: {other:?}"),
    }
}

/// `kinfra runtime reload`
pub async fn reload(arg: &ConfigArg) -> anyhow::Result<ExitCode> {
    // Check the file here first: a broken edit is the user's input error (exit 2), and the
    // running runtime is not bothered with it.
    let (_, source) = load::load(arg)?;
    if source == load::ConfigSource::Embedded {
        return Err(InputError(
            "there is no kinfra.toml here to reload (the runtime runs the built-in default)".into(),
        )
        .into());
    }
    let state_dir = load::state_dir(arg)?;
    let mut conn = connect(&state_dir).await?;
    conn.send(&ControlRequest::Reload).await?;
    match conn.next_within(Duration::from_secs(300)).await? {
        Some(ControlResponse::Reloaded { outcome }) => {
            println!("{}", outcome.message);
            Ok(ExitCode::SUCCESS)
        }
        Some(ControlResponse::Error { error }) => anyhow::bail!("reload rejected: {error}"),
        other => anyhow::bail!("unexpected reply from the runtime: {other:?}"),
    }
}

/// `kinfra dashboard url`
pub async fn dashboard_url(arg: &ConfigArg) -> anyhow::Result<ExitCode> {
    let (config, _) = load::load(arg)?;
    let state_dir = config.state_dir();
    let mut conn = connect(&state_dir).await?;
    conn.send(&ControlRequest::Info).await?;
    let addr = match conn.next_within(Duration::from_secs(10)).await? {
        Some(ControlResponse::Info { info }) => info
            .dashboard
            .ok_or_else(|| anyhow::anyhow!("the dashboard is disabled in this runtime"))?,
        other => anyhow::bail!("unexpected reply from the runtime: {other:?}"),
    };
    let (token, _) = kinfra::dashboard_token(&config, &state_dir)?;
    println!("http://{addr}/kinfra/login#{}", token.expose());
    Ok(ExitCode::SUCCESS)
}

/// A resource's command executions as a table, newest first (parameter names only).
/// Writes `text` to stdout; a reader that went away (`| head`) ends the command quietly, as
/// Unix tools do, instead of a panic on the broken pipe.
fn write_stdout(text: &str) -> anyhow::Result<ExitCode> {
    Ok(write_stdout_or_end(text)?.unwrap_or(ExitCode::SUCCESS))
}

/// Writes `text` to stdout: `Some(exit)` when the reader went away and the command should
/// end, `None` to go on.
fn write_stdout_or_end(text: &str) -> anyhow::Result<Option<ExitCode>> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Some(ExitCode::SUCCESS)),
        Err(e) => Err(e).context("cannot write to standard output"),
    }
}

fn command_table(commands: &[kinfra_core::status::CommandRecord]) -> String {
    let mut rows = vec![vec![
        "COMMAND".to_string(),
        "AT".into(),
        "DRY-RUN".into(),
        "PARAMS".into(),
        "OPERATION".into(),
        "RESULT".into(),
    ]];
    for c in commands {
        let result = match (&c.error, c.success) {
            (Some(error), _) => format!("failed: {error}"),
            (None, true) => "ok".into(),
            (None, false) => "failed".into(),
        };
        rows.push(vec![
            c.command.clone(),
            c.timestamp.clone(),
            if c.dry_run { "yes" } else { "no" }.into(),
            if c.params.is_empty() {
                "-".into()
            } else {
                c.params.join(",")
            },
            c.operation.clone().unwrap_or_else(|| "-".into()),
            result,
        ]);
    }
    super::output::table(&rows)
}
