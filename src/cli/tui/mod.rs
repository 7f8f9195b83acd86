//! `kinfra runtime tui`: a terminal UI on a running runtime, attached over its control socket
//! (status every second, the selected service's live log, actions). It opens no listener:
//! whoever can use the 0600 control socket may use it, the dashboard token's authority.
//!
//! When the runtime goes away the TUI leaves the screen, says so and exits with status 1. The
//! terminal is restored on every way out: quit, error, signal and panic (a panic hook).

mod app;
mod draw;

use super::ConfigArg;
use super::client::{self, Connection};
use super::load;
use anyhow::Context;
use app::{App, Command, Notice, command_for};
use crossterm::event::{Event, KeyEventKind};
use kinfra::{Action, ControlRequest, ControlResponse};
use kinfra_core::status::{ServiceLogLine, StatusReport};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use std::io::Stdout;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How often the list is refreshed.
const REFRESH: Duration = Duration::from_secs(1);

/// How many past lines a newly selected service's log pane starts with.
const BACKLOG_LINES: usize = 500;

/// Everything the main loop reacts to.
#[derive(Debug)]
enum Incoming {
    /// A key was pressed.
    Key(crossterm::event::KeyEvent),
    /// The terminal was resized.
    Resize,
    /// Reading the terminal failed.
    InputFailed(String),
    /// A fresh status report.
    Status(Box<StatusReport>),
    /// The runtime is gone (the status connection closed or failed).
    RuntimeGone(String),
    /// A log line of subscription `generation`.
    Log(u64, ServiceLogLine),
    /// A notice from subscription `generation` (skipped lines, an error).
    LogNotice(u64, String),
    /// An action finished.
    ActionDone(Notice),
}

/// `kinfra runtime tui`
pub async fn run(arg: &ConfigArg) -> anyhow::Result<ExitCode> {
    let state_dir = load::state_dir(arg)?;
    // Connect before touching the terminal: with no runtime, the error is printed plainly.
    let status_conn = client::connect(&state_dir).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let poller = tokio::spawn(poll_status(status_conn, tx.clone()));

    let mut screen = Screen::enter()?;
    spawn_input_reader(tx.clone());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")?;
    // Ctrl-C in raw mode is a key; a SIGINT from elsewhere still ends the TUI cleanly.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot listen for SIGINT")?;

    let mut app = App::new();
    let mut logs = LogSubscription::default();
    // A signal ends the TUI with the shell's code for it (128 + its number), screen restored.
    let outcome: anyhow::Result<ExitCode> = loop {
        screen.draw(&app)?;
        let first = tokio::select! {
            incoming = rx.recv() => incoming,
            _ = terminate.recv() => break Ok(ExitCode::from(143)),
            _ = hangup.recv() => break Ok(ExitCode::from(129)),
            _ = interrupt.recv() => break Ok(ExitCode::from(130)),
        };
        let Some(first) = first else {
            break Err(anyhow::anyhow!("the TUI's event channel closed"));
        };
        // Take everything that is waiting, then draw once.
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut done = None;
        for incoming in batch {
            if let Some(exit) = handle(&mut app, &mut logs, &state_dir, &tx, incoming) {
                done = Some(exit);
                break;
            }
        }
        if let Some(exit) = done {
            break exit;
        }
        logs.follow(&mut app, &state_dir, &tx);
    };
    poller.abort();
    logs.stop();
    drop(screen);
    outcome
}

/// Applies one incoming event; `Some` ends the TUI with that outcome.
fn handle(
    app: &mut App,
    logs: &mut LogSubscription,
    state_dir: &Path,
    tx: &mpsc::UnboundedSender<Incoming>,
    incoming: Incoming,
) -> Option<anyhow::Result<ExitCode>> {
    match incoming {
        Incoming::Key(key) => {
            if key.kind != KeyEventKind::Press {
                return None;
            }
            let command = command_for(app.mode, key);
            if command == Command::Quit {
                return Some(Ok(ExitCode::SUCCESS));
            }
            if let Some((action, service)) = app.apply(command) {
                app.notice = Notice {
                    text: format!("{} {service} ...", action.as_str()),
                    error: false,
                };
                tokio::spawn(act(state_dir.to_path_buf(), action, service, tx.clone()));
            }
        }
        Incoming::Resize => {}
        Incoming::InputFailed(error) => {
            return Some(Err(anyhow::anyhow!("cannot read the terminal: {error}")));
        }
        Incoming::Status(report) => app.set_report(*report),
        Incoming::RuntimeGone(why) => {
            return Some(Err(anyhow::anyhow!("runtime stopped: {why}")));
        }
        Incoming::Log(generation, line) => {
            if generation == logs.generation {
                app.push_log(line);
            }
        }
        Incoming::LogNotice(generation, text) => {
            if generation == logs.generation {
                app.notice = Notice { text, error: true };
            }
        }
        Incoming::ActionDone(notice) => app.notice = notice,
    }
    None
}

/// The terminal in raw mode on the alternate screen; restored on drop and on panic.
struct Screen {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl Screen {
    fn enter() -> anyhow::Result<Self> {
        crossterm::terminal::enable_raw_mode()
            .context("cannot switch the terminal to raw mode (is this a terminal?)")?;
        install_panic_hook();
        let mut stdout = std::io::stdout();
        if let Err(error) = crossterm::execute!(
            stdout,
            crossterm::terminal::EnterAlternateScreen,
            crossterm::cursor::Hide
        ) {
            restore_terminal();
            return Err(error).context("cannot enter the alternate screen");
        }
        match Terminal::new(CrosstermBackend::new(stdout)) {
            Ok(terminal) => Ok(Self { terminal }),
            Err(error) => {
                restore_terminal();
                Err(error).context("cannot set up the terminal")
            }
        }
    }

    fn draw(&mut self, app: &App) -> anyhow::Result<()> {
        self.terminal
            .draw(|f| draw::frame(f, app))
            .context("cannot draw to the terminal")?;
        Ok(())
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Raw mode off, cursor shown, alternate screen left. Safe to call more than once.
fn restore_terminal() {
    let _ = crossterm::terminal::disable_raw_mode();
    let _ = crossterm::execute!(
        std::io::stdout(),
        crossterm::terminal::LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

/// A panic restores the terminal before the message is printed, so it is readable.
fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        previous(info);
    }));
}

/// Reads terminal events on a thread of its own (crossterm's read blocks) and forwards them.
fn spawn_input_reader(tx: mpsc::UnboundedSender<Incoming>) {
    std::thread::Builder::new()
        .name("kinfra-tui-input".into())
        .spawn(move || {
            loop {
                let incoming = match crossterm::event::read() {
                    Ok(Event::Key(key)) => Incoming::Key(key),
                    Ok(Event::Resize(..)) => Incoming::Resize,
                    Ok(_) => continue,
                    Err(error) => Incoming::InputFailed(error.to_string()),
                };
                let failed = matches!(incoming, Incoming::InputFailed(_));
                if tx.send(incoming).is_err() || failed {
                    return;
                }
            }
        })
        .map(drop)
        .unwrap_or_else(|error| {
            tracing::error!(%error, "Cannot start the TUI's input thread.");
        });
}

/// Asks for the status every [`REFRESH`] on one connection; says when the runtime is gone.
async fn poll_status(mut conn: Connection, tx: mpsc::UnboundedSender<Incoming>) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let gone = |why: String| {
            let _ = tx.send(Incoming::RuntimeGone(why));
        };
        if let Err(error) = conn.send(&ControlRequest::Status).await {
            return gone(format!("{error:#}"));
        }
        let message = match conn.next_within(Duration::from_secs(10)).await {
            Ok(Some(ControlResponse::Status { report })) => Incoming::Status(Box::new(report)),
            Ok(Some(ControlResponse::Error { error })) => Incoming::ActionDone(Notice {
                text: error,
                error: true,
            }),
            Ok(Some(other)) => {
                return gone(format!("unexpected reply from the runtime: {other:?}"));
            }
            Ok(None) => return gone("the control connection closed".into()),
            Err(error) => return gone(format!("{error:#}")),
        };
        if tx.send(message).is_err() {
            return;
        }
    }
}

/// The log stream of the selected service; a new selection replaces it.
#[derive(Default)]
struct LogSubscription {
    service: Option<String>,
    generation: u64,
    task: Option<JoinHandle<()>>,
}

impl LogSubscription {
    /// Follows the selected service's log, if that is not already the one followed.
    fn follow(&mut self, app: &mut App, state_dir: &Path, tx: &mpsc::UnboundedSender<Incoming>) {
        if app.selected == self.service {
            return;
        }
        self.stop();
        app.reset_logs();
        self.generation += 1;
        self.service = app.selected.clone();
        if let Some(service) = self.service.clone() {
            self.task = Some(tokio::spawn(follow_logs(
                state_dir.to_path_buf(),
                service,
                self.generation,
                tx.clone(),
            )));
        }
    }

    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Streams one service's log (backlog, then live lines) into the main loop.
async fn follow_logs(
    state_dir: PathBuf,
    service: String,
    generation: u64,
    tx: mpsc::UnboundedSender<Incoming>,
) {
    let notice = |text: String| {
        let _ = tx.send(Incoming::LogNotice(generation, text));
    };
    let mut conn = match client::connect(&state_dir).await {
        Ok(conn) => conn,
        Err(error) => return notice(format!("logs of {service}: {error:#}")),
    };
    let request = ControlRequest::Logs {
        service: Some(service.clone()),
        lines: BACKLOG_LINES,
        follow: true,
    };
    if let Err(error) = conn.send(&request).await {
        return notice(format!("logs of {service}: {error:#}"));
    }
    loop {
        match conn.next().await {
            Ok(Some(ControlResponse::Log { line })) => {
                if tx.send(Incoming::Log(generation, line)).is_err() {
                    return;
                }
            }
            Ok(Some(ControlResponse::Error { error })) => {
                notice(format!("logs of {service}: {error}"))
            }
            Ok(Some(ControlResponse::End) | None) => return,
            Ok(Some(other)) => {
                return notice(format!("logs of {service}: unexpected reply {other:?}"));
            }
            Err(error) => return notice(format!("logs of {service}: {error:#}")),
        }
    }
}

/// Sends one action on a connection of its own and reports how it went.
async fn act(
    state_dir: PathBuf,
    action: Action,
    service: String,
    tx: mpsc::UnboundedSender<Incoming>,
) {
    let verb = action.as_str();
    let result = async {
        let mut conn = client::connect(&state_dir).await?;
        conn.send(&ControlRequest::Action {
            action,
            service: service.clone(),
        })
        .await?;
        // Stopping waits for the service's grace period; allow for it.
        match conn.next_within(Duration::from_secs(120)).await? {
            Some(ControlResponse::Ok { message }) => Ok(message),
            Some(ControlResponse::Error { error }) => Err(anyhow::anyhow!(error)),
            other => Err(anyhow::anyhow!(
                "unexpected reply from the runtime: {other:?}"
            )),
        }
    }
    .await;
    let notice = match result {
        Ok(message) => Notice {
            text: message,
            error: false,
        },
        Err(error) => Notice {
            text: format!("{verb} {service} failed: {error:#}"),
            error: true,
        },
    };
    let _ = tx.send(Incoming::ActionDone(notice));
}

#[cfg(test)]
mod tests {
    use super::draw::{HELP, log_line};
    use ratatui::style::Modifier;

    #[test]
    fn help_names_every_key_and_the_access_rule() {
        let help = HELP.join("\n");
        for key in [
            " r ",
            " s ",
            " S ",
            " m ",
            " f ",
            " / ",
            "n / N",
            " ? ",
            "q, Ctrl-C",
        ] {
            assert!(help.contains(key), "help lacks {key:?}");
        }
        assert!(help.contains("0600"));
        assert!(help.contains("no\nnetwork listener") || help.contains("no network listener"));
    }

    #[test]
    fn log_lines_highlight_every_match() {
        let line = log_line(
            "2026-01-01T12:34:56.789Z",
            "info",
            "tick and TICK",
            "tick",
            false,
        );
        let text: String = line.spans.iter().map(|s| s.content.as_ref()).collect();
        assert_eq!(text, "12:34:56 tick and TICK");
        let highlighted: Vec<&str> = line
            .spans
            .iter()
            .filter(|s| s.style == super::draw::MATCH_STYLE)
            .map(|s| s.content.as_ref())
            .collect();
        assert_eq!(highlighted, ["tick", "TICK"]);
        // The match being shown stands out further.
        let current = log_line("t", "info", "a tick", "tick", true);
        assert!(
            current
                .spans
                .iter()
                .any(|s| s.style.add_modifier.contains(Modifier::UNDERLINED))
        );
    }
}
