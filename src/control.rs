//! The control socket server: answers the CLI's JSON-line requests on
//! `<state_dir>/control.sock` (mode 0600, so only the owner can talk to it).

use kinfra_core::control::{ControlRequest, ControlResponse, RuntimeInfo, SOCKET_FILE};
use kinfra_core::view::RuntimeControl;
use kinfra_dashboard::accept::AcceptBackoff;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlServerError {
    /// Binding or securing the socket failed.
    #[error("cannot create the control socket {}: {source}", .path.display())]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A bound, not yet serving, control socket.
#[derive(Debug)]
pub struct BoundControl {
    path: PathBuf,
    listener: UnixListener,
}

/// A serving control socket.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ControlServer {
    /// Binds `<state_dir>/control.sock`. The caller holds the state-dir lock, so a socket file
    /// left there is stale and is replaced.
    pub fn bind(state_dir: &Path) -> Result<BoundControl, ControlServerError> {
        let path = state_dir.join(SOCKET_FILE);
        let err = |source| ControlServerError::Bind {
            path: path.clone(),
            source,
        };
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::debug!(path = %path.display(), "Removed a stale control socket."),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let listener = UnixListener::bind(&path).map_err(err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        Ok(BoundControl { path, listener })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, ends open connections (followers, `down` waiting for the end) and
    /// removes the socket file.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let _ = std::fs::remove_file(&self.path);
    }
}

impl BoundControl {
    /// Serves requests until [`ControlServer::shutdown`].
    pub fn serve(self, control: Arc<dyn RuntimeControl>, info: RuntimeInfo) -> ControlServer {
        let info = Arc::new(info);
        let (stop, stopped) = watch::channel(false);
        let listener = self.listener;
        let task = tokio::spawn(async move {
            let mut stop_rx = stopped.clone();
            let mut connections = tokio::task::JoinSet::new();
            // Out of descriptors (EMFILE), accept fails at once and again: pause, doubling,
            // instead of spinning, and warn once per interval with a count.
            let mut backoff = AcceptBackoff::new("control socket");
            loop {
                tokio::select! {
                    _ = stop_rx.changed() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            backoff.succeeded();
                            connections.spawn(handle(stream, control.clone(), info.clone(), stopped.clone()));
                        }
                        Err(error) if AcceptBackoff::is_connection_error(&error) => {}
                        Err(error) => {
                            let pause = backoff.failed(&error);
                            tokio::select! {
                                _ = stop_rx.changed() => break,
                                _ = tokio::time::sleep(pause) => {}
                            }
                        }
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
            drop(listener);
            // Connections see the stop signal and finish; give them a moment, then abort.
            let drain = async { while connections.join_next().await.is_some() {} };
            if tokio::time::timeout(std::time::Duration::from_secs(2), drain)
                .await
                .is_err()
            {
                connections.abort_all();
            }
        });
        ControlServer {
            path: self.path,
            stop,
            task,
        }
    }
}

async fn send(stream: &mut (impl AsyncWriteExt + Unpin), response: &ControlResponse) -> bool {
    let mut line = match serde_json::to_vec(response) {
        Ok(line) => line,
        Err(error) => {
            tracing::error!(%error, "Cannot encode a control response.");
            return false;
        }
    };
    line.push(b'\n');
    stream.write_all(&line).await.is_ok()
}

/// Reads one line of at most [`MAX_REQUEST`] bytes; `None` at end of stream or when too long.
async fn read_request(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Option<Result<ControlRequest, String>> {
    let mut buf = Vec::new();
    loop {
        let available = reader.fill_buf().await.ok()?;
        if available.is_empty() {
            return None;
        }
        match available.iter().position(|b| *b == b'\n') {
            Some(pos) => {
                buf.extend_from_slice(&available[..pos]);
                reader.consume(pos + 1);
                break;
            }
            None => {
                let n = available.len();
                buf.extend_from_slice(available);
                reader.consume(n);
            }
        }
        if buf.len() > MAX_REQUEST {
            return Some(Err(format!("request longer than {MAX_REQUEST} bytes")));
        }
    }
    Some(serde_json::from_slice(&buf).map_err(|e| format!("malformed request: {e}")))
}

async fn handle(
    stream: UnixStream,
    control: Arc<dyn RuntimeControl>,
    info: Arc<RuntimeInfo>,
    mut stopped: watch::Receiver<bool>,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let request = tokio::select! {
            _ = stopped.changed() => return,
            request = read_request(&mut reader) => request,
        };
        let request = match request {
            None => return,
            Some(Err(error)) => {
                send(&mut write, &ControlResponse::Error { error }).await;
                return;
            }
            Some(Ok(request)) => request,
        };
        let keep_going = match request {
            ControlRequest::Status => {
                let report = control.status();
                send(&mut write, &ControlResponse::Status { report }).await
            }
            ControlRequest::Action { action, service } => {
                let response = match control.act(action, &service).await {
                    Ok(()) => ControlResponse::Ok {
                        message: format!("{} {service}: done", action.as_str()),
                    },
                    Err(error) => ControlResponse::Error {
                        error: error.to_string(),
                    },
                };
                send(&mut write, &response).await
            }
            ControlRequest::Logs {
                service,
                lines,
                follow,
            } => {
                stream_logs(&mut write, &*control, service, lines, follow, &mut stopped).await;
                return;
            }
            ControlRequest::Info => {
                let info = RuntimeInfo::clone(&info);
                send(&mut write, &ControlResponse::Info { info }).await
            }
            ControlRequest::History { service, limit } => {
                let response = match control.history(service.as_deref(), limit).await {
                    Ok(runs) => {
                        let commands = match &service {
                            Some(name) => control.command_history(name, limit).await,
                            None => Ok(Vec::new()),
                        };
                        match commands {
                            Ok(commands) => ControlResponse::History { runs, commands },
                            Err(error) => ControlResponse::Error { error },
                        }
                    }
                    Err(error) => ControlResponse::Error { error },
                };
                send(&mut write, &response).await
            }
            ControlRequest::Command {
                resource,
                command,
                params,
                dry_run,
                yes,
            } => {
                let call = kinfra_core::view::CommandCall {
                    resource,
                    command,
                    params,
                    dry_run,
                    yes,
                };
                let response = match control.command(call).await {
                    Ok(result) => ControlResponse::CommandResult { result },
                    Err(kinfra_core::view::CommandError::Input(problems)) => {
                        ControlResponse::CommandRefused { problems }
                    }
                    Err(kinfra_core::view::CommandError::Failed(error)) => {
                        ControlResponse::Error { error }
                    }
                };
                send(&mut write, &response).await
            }
            ControlRequest::Reload => {
                let response = match control.reload().await {
                    Ok(outcome) => ControlResponse::Reloaded { outcome },
                    Err(error) => ControlResponse::Error { error },
                };
                send(&mut write, &response).await
            }
            ControlRequest::Shutdown => {
                let sent = send(
                    &mut write,
                    &ControlResponse::Ok {
                        message: "shutting down".into(),
                    },
                )
                .await;
                control.request_shutdown("runtime down");
                if sent {
                    // Hold the connection until the runtime has stopped: the client waits
                    // for the end of the stream to know the shutdown finished.
                    let _ = stopped.wait_for(|s| *s).await;
                }
                return;
            }
        };
        if !keep_going {
            return;
        }
    }
}

async fn stream_logs(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    control: &dyn RuntimeControl,
    service: Option<String>,
    lines: usize,
    follow: bool,
    stopped: &mut watch::Receiver<bool>,
) {
    // Subscribe before reading the backlog so no line falls between the two.
    let mut live = control.subscribe_logs();
    let backlog = match control.logs(service.as_deref(), lines) {
        Ok(backlog) => backlog,
        Err(error) => {
            send(
                write,
                &ControlResponse::Error {
                    error: error.to_string(),
                },
            )
            .await;
            return;
        }
    };
    let mut join = kinfra_core::status::BacklogJoin::new(&backlog);
    for line in backlog {
        if !send(write, &ControlResponse::Log { line }).await {
            return;
        }
    }
    if !follow {
        send(write, &ControlResponse::End).await;
        return;
    }
    loop {
        let line = tokio::select! {
            _ = stopped.changed() => break,
            line = live.recv() => line,
        };
        match line {
            Ok(line) => {
                if service.as_deref().is_some_and(|s| s != line.service) || join.is_replay(&line) {
                    continue;
                }
                if !send(write, &ControlResponse::Log { line }).await {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let notice = ControlResponse::Error {
                    error: format!("{n} log lines skipped: the reader was too slow"),
                };
                if !send(write, &notice).await {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    send(write, &ControlResponse::End).await;
}
