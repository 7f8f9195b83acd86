//! The process adapter: a local process behind the [`Resource`] trait, so a process can be
//! driven by the same resource actor as a container and checked by the same conformance
//! suite ([`crate::conformance`]). Services from `[services]` keep their own, richer actor
//! ([`crate::actor`]); this adapter is the trait's reference implementation for processes.

use crate::logs::LineSplitter;
use crate::spawn::{self, SpawnSpec};
use kinfra_core::event::ExitInfo;
use kinfra_core::resource::{
    BoxFuture, Connection, Observed, OutputLine, Resource, ResourceError, Run,
};
use kinfra_core::state::Health;
use kinfra_core::status::LogStream;
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot, watch};

/// Output lines kept for [`Resource::logs`].
const RECENT_LINES: usize = 1000;
/// Longest output line.
const MAX_LINE: usize = 64 * 1024;
/// How long the exit report waits for the output to be drained first.
const EXIT_AFTER_OUTPUT: Duration = Duration::from_millis(200);

/// A local process as a [`Resource`]: own process group, output captured line by line, stop
/// by SIGTERM to the group, then SIGKILL after the grace.
pub struct ProcessResource {
    name: String,
    spec: SpawnSpec,
    port: Option<u16>,
    connection: Option<Connection>,
    current: Mutex<Option<Current>>,
    recent: Arc<Mutex<VecDeque<OutputLine>>>,
}

struct Current {
    pid: i32,
    exit: watch::Receiver<Option<ExitInfo>>,
    consumer: Arc<Mutex<Option<mpsc::Sender<OutputLine>>>>,
}

impl std::fmt::Debug for ProcessResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessResource")
            .field("name", &self.name)
            .field("program", &self.spec.program)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl ProcessResource {
    /// A process running `program` with `args`, kinfra's environment plus `env`, in `cwd`;
    /// `port` is what [`Resource::connection`] reports.
    pub fn new(
        name: impl Into<String>,
        program: impl Into<String>,
        args: Vec<String>,
        env: Vec<(String, String)>,
        cwd: impl Into<PathBuf>,
        port: Option<u16>,
    ) -> Self {
        let mut full_env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        full_env.retain(|(k, _)| !env.iter().any(|(e, _)| e == k));
        full_env.extend(env);
        Self {
            name: name.into(),
            spec: SpawnSpec {
                program: program.into(),
                args,
                env: full_env,
                cwd: cwd.into(),
            },
            port,
            connection: None,
            current: Mutex::new(None),
            recent: Arc::new(Mutex::new(VecDeque::new())),
        }
    }

    /// A `/bin/sh -c SCRIPT` process.
    pub fn shell(name: impl Into<String>, script: &str, port: Option<u16>) -> Self {
        Self::new(
            name,
            "/bin/sh",
            vec!["-c".into(), script.into()],
            Vec::new(),
            std::env::temp_dir(),
            port,
        )
    }

    /// Reports `connection` (a URL, secret fields) instead of just `127.0.0.1` and the port.
    pub fn with_connection(mut self, connection: Connection) -> Self {
        self.connection = Some(connection);
        self
    }

    fn live(&self) -> Option<(i32, watch::Receiver<Option<ExitInfo>>)> {
        let cur = lock(&self.current);
        cur.as_ref()
            .filter(|c| c.exit.borrow().is_none())
            .map(|c| (c.pid, c.exit.clone()))
    }

    /// A [`Run`] following the current process: its output goes to the new receiver.
    fn follow(&self) -> Option<Run> {
        let cur = lock(&self.current);
        let c = cur.as_ref().filter(|c| c.exit.borrow().is_none())?;
        let (tx, rx) = mpsc::channel(256);
        *lock(&c.consumer) = Some(tx);
        Some(Run {
            id: c.pid.to_string(),
            pid: u32::try_from(c.pid).ok(),
            adopted: true,
            output: rx,
            exit: exit_once(c.exit.clone()),
        })
    }
}

/// A one-shot that resolves when the watched exit is known.
fn exit_once(mut exit: watch::Receiver<Option<ExitInfo>>) -> oneshot::Receiver<ExitInfo> {
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        if let Ok(v) = exit.wait_for(Option::is_some).await
            && let Some(e) = *v
        {
            let _ = tx.send(e);
        }
    });
    rx
}

async fn read_output(
    fd: OwnedFd,
    stream: LogStream,
    consumer: Arc<Mutex<Option<mpsc::Sender<OutputLine>>>>,
    recent: Arc<Mutex<VecDeque<OutputLine>>>,
) {
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut splitter = LineSplitter::new(MAX_LINE);
    let mut buf = vec![0u8; 16 * 1024];
    let deliver = |text: String| {
        let line = OutputLine { stream, text };
        {
            let mut r = lock(&recent);
            if r.len() >= RECENT_LINES {
                r.pop_front();
            }
            r.push_back(line.clone());
        }
        lock(&consumer).clone().map(|tx| (tx, line))
    };
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for text in splitter.feed(&buf[..n]) {
            if let Some((tx, line)) = deliver(text) {
                let _ = tx.send(line).await;
            }
        }
    }
    if let Some(text) = splitter.finish()
        && let Some((tx, line)) = deliver(text)
    {
        let _ = tx.send(line).await;
    }
}

impl Resource for ProcessResource {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn start(&self) -> BoxFuture<'_, Result<Run, ResourceError>> {
        Box::pin(async move {
            if let Some(run) = self.follow() {
                return Ok(run);
            }
            let spawned = spawn::spawn(self.spec.clone()).await.map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    ResourceError::Invalid(format!("cannot run `{}`: {e}", self.spec.program))
                } else {
                    ResourceError::op("spawn", e)
                }
            })?;
            let (out_tx, out_rx) = mpsc::channel(256);
            let consumer = Arc::new(Mutex::new(Some(out_tx)));
            let mut readers = Vec::new();
            for (fd, stream) in [
                (spawned.stdout, LogStream::Stdout),
                (spawned.stderr, LogStream::Stderr),
            ] {
                if let Some(fd) = fd {
                    readers.push(tokio::spawn(read_output(
                        fd,
                        stream,
                        consumer.clone(),
                        self.recent.clone(),
                    )));
                }
            }
            let (exit_tx, exit_rx) = watch::channel(None);
            let pid = spawned.pid;
            // The output closes when the pipes are drained (every line handed over), however
            // long that takes after the exit, never at a cut-off.
            let closer = consumer.clone();
            let (drained_tx, drained_rx) = oneshot::channel::<()>();
            tokio::spawn(async move {
                for r in readers {
                    let _ = r.await;
                }
                lock(&closer).take();
                let _ = drained_tx.send(());
            });
            tokio::spawn(async move {
                let exit = spawn::wait_exit(pid).await;
                // The exit is known after the output when the pipes drain soon; a descendant
                // holding them open does not delay it.
                let _ = tokio::time::timeout(EXIT_AFTER_OUTPUT, drained_rx).await;
                let _ = exit_tx.send(Some(exit));
            });
            *lock(&self.current) = Some(Current {
                pid,
                exit: exit_rx.clone(),
                consumer,
            });
            Ok(Run {
                id: pid.to_string(),
                pid: u32::try_from(pid).ok(),
                adopted: false,
                output: out_rx,
                exit: exit_once(exit_rx),
            })
        })
    }

    fn stop(&self, grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            let Some((pid, mut exit)) = self.live() else {
                return Ok(());
            };
            spawn::signal_group(pid, libc::SIGTERM);
            let ended = tokio::time::timeout(grace, async {
                exit.wait_for(Option::is_some).await.is_ok()
            })
            .await;
            if ended.is_err() {
                spawn::signal_group(pid, libc::SIGKILL);
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    exit.wait_for(Option::is_some).await.is_ok()
                })
                .await;
            }
            Ok(())
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<Observed, ResourceError>> {
        Box::pin(async move {
            let cur = lock(&self.current);
            Ok(match cur.as_ref() {
                None => Observed::Absent,
                Some(c) => match *c.exit.borrow() {
                    None => Observed::Running,
                    Some(e) => Observed::Exited(e),
                },
            })
        })
    }

    fn health(&self) -> BoxFuture<'_, Result<Health, ResourceError>> {
        Box::pin(async { Ok(Health::Unknown) })
    }

    fn connection(&self) -> Connection {
        if let Some(c) = &self.connection {
            return c.clone();
        }
        Connection {
            host: "127.0.0.1".into(),
            port: self.port,
            url: None,
            fields: Default::default(),
        }
    }

    fn logs(&self, tail: usize) -> BoxFuture<'_, Result<Vec<OutputLine>, ResourceError>> {
        Box::pin(async move {
            let r = lock(&self.recent);
            let skip = r.len().saturating_sub(tail);
            Ok(r.iter().skip(skip).cloned().collect())
        })
    }

    fn remove(&self, _volumes: bool) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            self.stop(Duration::from_secs(5)).await?;
            *lock(&self.current) = None;
            Ok(())
        })
    }
}
