//! `kinfra runtime up`: run the runtime in the foreground until Ctrl-C, SIGTERM or
//! `kinfra runtime down`.

use super::ConfigArg;
use super::load::{self, ConfigSource};
use super::output::{ColorChoice, Prefixer};
use kinfra::{Event, EventKind, EventSender, RuntimeOptions, ServiceLogLine};
use kinfra_core::progress::Progress;
use kinfra_core::status::BacklogJoin;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::broadcast;

/// kinfra's own diagnostics go to stderr. State changes are already printed as `kinfra |`
/// lines, so the default level is `warn`; `KINFRA_LOG=info` (or `debug`) shows more.
/// The format of kinfra's own log lines (`--log-format`, `KINFRA_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines (the default).
    #[default]
    Text,
    /// One JSON object a line: timestamp, level, fields (message among them), target.
    Json,
}

fn init_tracing(color: bool, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KINFRA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    use tracing_subscriber::prelude::*;
    // `TlsHandshakeLog` takes pingora's ERROR line per failed client handshake out of the log
    // and counts it by reason for /metrics (a rate-limited summary is logged at warn).
    let _ = match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(color && std::io::stderr().is_terminal())
            .with_target(false)
            .compact()
            .finish()
            .with(kinfra_proxy::TlsHandshakeLog)
            .try_init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .json()
            .finish()
            .with(kinfra_proxy::TlsHandshakeLog)
            .try_init(),
    };
}

/// Runs the runtime in the foreground.
pub async fn run(
    arg: &ConfigArg,
    color: ColorChoice,
    quiet: bool,
    log_format: LogFormat,
) -> anyhow::Result<ExitCode> {
    let color = color.enabled();
    init_tracing(color, log_format);
    let (config, source) = load::load(arg)?;
    let prefixer = Prefixer::new(color, config.services.keys().map(String::as_str));
    if source == ConfigSource::Embedded {
        println!(
            "{}",
            prefixer
                .kinfra_line("No kinfra.toml in this directory: running the built-in demo config.")
        );
        println!(
            "{}",
            prefixer.kinfra_line(
                "Write a kinfra.toml to run your own services (see the README's quick start), and check it with `kinfra config check`."
            )
        );
    }
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    // Subscribe before starting, so the first events and log lines are not missed.
    let events = EventSender::new(4096);
    let event_rx = events.subscribe();
    let config_file = match &source {
        ConfigSource::File(path) => Some(std::path::absolute(path)?),
        ConfigSource::Embedded => None,
    };
    let runtime = kinfra::start_with(
        config,
        RuntimeOptions {
            events: Some(events),
            config_file,
            ..RuntimeOptions::default()
        },
    )
    .await?;
    // Once settled, give the startup-only code back to the system (kinfra::pages); the task
    // ends with the runtime's tokio runtime.
    drop(tokio::spawn(async {
        tokio::time::sleep(kinfra::pages::SETTLE).await;
        match tokio::task::spawn_blocking(kinfra::pages::page_out_executable).await {
            Ok(Ok(done)) => tracing::debug!(
                mappings = done.mappings,
                resident_before_kib = done.resident_before_kib,
                resident_after_kib = done.resident_after_kib,
                "Startup code paged out."
            ),
            Ok(Err(error)) => tracing::debug!(%error, "Paging out the startup code failed."),
            Err(error) => tracing::debug!(%error, "Paging out the startup code failed."),
        }
    }));
    // Lines written before we subscribed are in the ring: print them first, then the live
    // stream without the lines both have.
    // Quiet: no subscription at all (a receiver never read still costs the capture a broadcast
    // line per log line); the printer never polls this unconnected receiver.
    let log_rx = if quiet {
        broadcast::channel(1).1
    } else {
        runtime.logs()
    };
    let backlog = runtime.recent_logs(None, 1000).unwrap_or_default();
    let join = BacklogJoin::new(&backlog);
    if !quiet {
        for line in &backlog {
            println!("{}", prefixer.log_line(line));
        }
    }

    let project = runtime.config().project.name;
    println!(
        "{}",
        prefixer.kinfra_line(&format!(
            "kinfra {} — project `{project}`",
            env!("CARGO_PKG_VERSION")
        ))
    );
    match runtime.dashboard_addr() {
        Some(addr) => println!(
            "{}",
            prefixer.kinfra_line(&format!(
                "dashboard   http://{addr}/kinfra   (status JSON: http://{addr}/__status__)"
            ))
        ),
        None => println!("{}", prefixer.kinfra_line("dashboard   disabled")),
    }
    match runtime.proxy_addr() {
        Some(addr) => println!(
            "{}",
            prefixer.kinfra_line(&format!("proxy       http://{addr}/"))
        ),
        None => println!("{}", prefixer.kinfra_line("proxy       disabled")),
    }
    let bus = match runtime.bus().backend() {
        kinfra_bus::BusBackend::External { url } => format!("NATS at {url}"),
        kinfra_bus::BusBackend::Managed {
            url, token_file, ..
        } => format!(
            "managed nats-server at {url} (token in {})",
            token_file.display()
        ),
        kinfra_bus::BusBackend::InProcess => {
            "in-process (no NATS server configured or installed)".to_owned()
        }
    };
    println!("{}", prefixer.kinfra_line(&format!("bus         {bus}")));
    println!(
        "{}",
        prefixer.kinfra_line(&format!(
            "control     {}   (kinfra runtime status | logs | restart | down)",
            runtime.control_socket().display()
        ))
    );
    println!("{}", prefixer.kinfra_line("Press Ctrl-C to stop."));

    let printer = tokio::spawn(print_stream(
        prefixer.clone(),
        event_rx,
        log_rx,
        join,
        quiet,
    ));

    let mut sighup = signal(SignalKind::hangup())?;
    // systemd (Type=notify): READY=1 once the dashboard and the proxy answer, WATCHDOG=1 from
    // this loop, RELOADING=1/READY=1 around a SIGHUP reload, STOPPING=1 below.
    let notifier = kinfra::sd_notify::Notifier::from_process();
    let mut watchdog = notifier.watchdog_ticker();
    let serving = serving_status(&runtime);
    let answering = kinfra::sd_notify::wait_answering(runtime.dashboard_addr());
    tokio::pin!(answering);
    let mut ready = !notifier.is_active();
    let reason = loop {
        tokio::select! {
            () = &mut answering, if !ready => {
                ready = true;
                notifier.ready(&serving);
            }
            () = watchdog.tick() => notifier.watchdog(),
            _ = sigint.recv() => break "Ctrl-C".to_string(),
            _ = sigterm.recv() => break "SIGTERM".to_string(),
            reason = runtime.shutdown_requested() => break reason,
            _ = sighup.recv() => {
                if ready {
                    notifier.reloading("Reloading the config (SIGHUP)");
                }
                let reloaded = notifier
                    .pinging_while(&mut watchdog, runtime.reload_from_file())
                    .await;
                if ready {
                    notifier.ready(&serving);
                }
                let text = match reloaded {
                    Ok(report) => {
                        let summary = &report.services;
                        let mut text = format!(
                            "SIGHUP: config reloaded (added {}, removed {}, restarted {}{})",
                            summary.added.len(), summary.removed.len(), summary.changed.len(),
                            if report.routes_changed { ", routes applied" } else { "" }
                        );
                        if !report.needs_restart.is_empty() {
                            text.push_str(&format!(
                                "\nneeds_restart: {} (applies when kinfra restarts)",
                                report.needs_restart.join(", ")
                            ));
                        }
                        text
                    }
                    Err(error) => format!("SIGHUP: reload rejected, nothing changed:\n{error}"),
                };
                for line in text.lines() {
                    println!("{}", prefixer.kinfra_line(line));
                }
            }
        }
    };
    println!(
        "{}",
        prefixer.kinfra_line(&format!(
            "{reason}: stopping gracefully (Ctrl-C again to force) ..."
        ))
    );
    notifier.stopping(&format!("Stopping ({reason})"));
    // A second Ctrl-C (or SIGTERM) forces: exit at once. Children die with us through their
    // parent-death signal; anything that escaped is found and stopped by the next `up`.
    tokio::spawn(async move {
        tokio::select! {
            _ = sigint.recv() => {},
            _ = sigterm.recv() => {},
        }
        eprintln!("kinfra: forced exit");
        std::process::exit(130);
    });
    let result = runtime.shutdown_because(&reason).await;
    printer.abort();
    match result {
        Ok(()) => {
            println!("{}", prefixer.kinfra_line("Stopped."));
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("error: {error}");
            Ok(ExitCode::from(1))
        }
    }
}

/// The `STATUS=` text of `READY=1`: where the dashboard and the proxy answer.
fn serving_status(runtime: &kinfra::Runtime) -> String {
    let url = |addr: Option<std::net::SocketAddr>, path: &str| {
        addr.map_or("disabled".to_owned(), |a| format!("http://{a}{path}"))
    };
    format!(
        "Serving: dashboard {}, proxy {}",
        url(runtime.dashboard_addr(), "/kinfra"),
        url(runtime.proxy_addr(), "/")
    )
}

/// Prints service logs and state changes until aborted.
async fn print_stream(
    prefixer: Prefixer,
    mut events: broadcast::Receiver<Event>,
    mut logs: broadcast::Receiver<ServiceLogLine>,
    mut join: BacklogJoin,
    quiet: bool,
) {
    let mut progress = ProgressLines::new(std::io::stdout().is_terminal());
    loop {
        tokio::select! {
            line = logs.recv(), if !quiet => match line {
                Ok(line) if join.is_replay(&line) => {}
                Ok(line) => println!("{}", prefixer.log_line(&line)),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    println!("{}", prefixer.kinfra_line(&format!("({n} log lines not shown: output too fast; see `kinfra runtime logs`)")));
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            event = events.recv() => match event {
                Ok(event) => {
                    if let EventKind::Progress { service, progress: now } = &event.kind {
                        if let Some(text) = progress.line(service, now.as_ref(), Instant::now()) {
                            println!("{}", prefixer.kinfra_line(&text));
                        }
                    } else if let Some(text) = describe(&event.kind) {
                        println!("{}", prefixer.kinfra_line(&text));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Which `progress` events become lines: a new phase always; otherwise at most one a second
/// on a terminal, and when stdout is not one (a log file, a pipe) every 10 percent or 5 s,
/// so a pull is followed without flooding a file.
struct ProgressLines {
    terminal: bool,
    /// Per resource: when the last line was printed, its phase and percent.
    last: HashMap<String, (Instant, String, Option<f64>)>,
}

impl ProgressLines {
    fn new(terminal: bool) -> Self {
        Self {
            terminal,
            last: HashMap::new(),
        }
    }

    /// The line to print for `service`'s progress `now` at `at`, if one is due.
    fn line(&mut self, service: &str, now: Option<&Progress>, at: Instant) -> Option<String> {
        let Some(p) = now else {
            self.last.remove(service);
            return None;
        };
        let due = match self.last.get(service) {
            None => true,
            Some((when, phase, percent)) => {
                let since = at.saturating_duration_since(*when);
                *phase != p.phase
                    || if self.terminal {
                        since >= Duration::from_secs(1)
                    } else {
                        since >= Duration::from_secs(5)
                            || match (percent, p.percent) {
                                (Some(a), Some(b)) => (b / 10.0).floor() > (a / 10.0).floor(),
                                (None, Some(_)) => true,
                                _ => false,
                            }
                    }
            }
        };
        if !due {
            return None;
        }
        self.last
            .insert(service.to_owned(), (at, p.phase.clone(), p.percent));
        Some(format!("{service}: {}", p.text()))
    }
}

fn describe(kind: &EventKind) -> Option<String> {
    match kind {
        EventKind::StateChanged {
            service,
            to,
            message,
            ..
        } => Some(format!("{service}: {to} — {message}")),
        EventKind::HealthChanged {
            service, health, ..
        } => Some(format!("{service}: {health}")),
        EventKind::CrashLoop { service, failures } => Some(format!(
            "{service}: crash loop ({failures} failures); not restarting until `kinfra runtime start {service}`"
        )),
        EventKind::PortAssigned { service, port } => Some(format!("{service}: port {port}")),
        EventKind::ConfigReloaded {
            added,
            removed,
            changed,
        } => Some(format!(
            "config reloaded: added [{}], removed [{}], restarted [{}]",
            added.join(", "),
            removed.join(", "),
            changed.join(", ")
        )),
        EventKind::ConfigRejected { error } => Some(format!("config rejected: {error}")),
        EventKind::MaintenanceChanged { service, on } => Some(format!(
            "{}: maintenance {}",
            if service == "*" {
                "everything"
            } else {
                service
            },
            if *on { "on" } else { "off" }
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pull(phase: &str, percent: Option<f64>) -> Progress {
        Progress {
            task: "pull".into(),
            phase: phase.into(),
            target: Some("postgres:16".into()),
            current: Some(10),
            total: Some(100),
            unit: Some("bytes".into()),
            percent,
            elapsed_s: 1,
        }
    }

    /// Feeds 4 updates a second for 20 s (percent rising 1 point each) and counts the lines.
    fn lines_for(terminal: bool) -> Vec<String> {
        let mut lines = ProgressLines::new(terminal);
        let t0 = Instant::now();
        let mut out = Vec::new();
        for i in 0..80u32 {
            let p = pull("downloading", Some(f64::from(i)));
            let at = t0 + Duration::from_millis(250 * u64::from(i));
            out.extend(lines.line("db", Some(&p), at));
        }
        let done = pull("complete", Some(100.0));
        out.extend(lines.line("db", Some(&done), t0 + Duration::from_secs(20)));
        assert_eq!(lines.line("db", None, t0 + Duration::from_secs(21)), None);
        out
    }

    #[test]
    fn not_a_terminal_gets_a_line_every_ten_percent_or_five_seconds() {
        let out = lines_for(false);
        // The first, then 10, 20, ... 70 (each before 5 s passed), then complete.
        assert_eq!(out.len(), 9, "{out:#?}");
        assert!(out[0].starts_with("db: pulling postgres:16 (downloading)  0%"));
        assert!(out[1].contains(" 10%"), "{out:#?}");
        assert!(
            out.last()
                .is_some_and(|l| l.starts_with("db: pulled postgres:16"))
        );
    }

    #[test]
    fn a_terminal_gets_at_most_a_line_a_second() {
        let out = lines_for(true);
        assert_eq!(out.len(), 21, "{out:#?}");
    }
}
