//! [`DockerResource`]: one resource's container behind the [`Resource`] trait. Start adopts
//! the container left by a previous run when its config hash matches (no duplicate),
//! recreates it when the hash changed, and otherwise pulls (only if missing), creates and
//! starts it. Output is streamed from the engine's log; the exit code comes from `wait`.

use crate::engine::Engine;
use crate::error::DockerError;
use crate::host_check::HostCheck;
use crate::secrets::Secrets;
use crate::spec::{ContainerSpec, LABEL_HASH};
use crate::template::{self, Resolved};
use bollard::container::LogOutput;
use bollard::models::{ContainerStateStatusEnum, ContainerSummaryStateEnum, HealthStatusEnum};
use bollard::query_parameters::{LogsOptionsBuilder, WaitContainerOptionsBuilder};
use futures_util::StreamExt;
use kinfra_core::config::{PortSpec, ResourceConfig};
use kinfra_core::event::ExitInfo;
use kinfra_core::resource::{
    BoxFuture, Connection, Observed, OutputLine, Resource, ResourceError, Run,
};
use kinfra_core::state::Health;
use kinfra_core::status::LogStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OnceCell, mpsc, oneshot};
use tracing::{debug, info, warn};

/// A lazily connected engine shared by every resource of a runtime. Cheap to clone. A failed
/// connection is retried on the next use, so a resource can be started again once the
/// engine is up.
#[derive(Debug, Clone, Default)]
pub struct EngineHandle {
    host: Option<String>,
    cell: Arc<OnceCell<Engine>>,
}

impl EngineHandle {
    /// The engine at `DOCKER_HOST` or the local socket.
    pub fn local() -> Self {
        Self::default()
    }

    /// The engine at `host` (`unix:///path`).
    pub fn at(host: impl Into<String>) -> Self {
        Self {
            host: Some(host.into()),
            cell: Arc::default(),
        }
    }

    /// The connected engine, connecting now if needed.
    pub async fn get(&self) -> Result<Engine, DockerError> {
        self.cell
            .get_or_try_init(|| async {
                match &self.host {
                    Some(h) => Engine::connect_to(h).await,
                    None => Engine::connect().await,
                }
            })
            .await
            .cloned()
    }

    /// The host port a resource gets: when its container from a previous run still runs
    /// and publishes the wanted port (the fixed one, or `saved` for `auto`), that port is
    /// kept without a free-port check, since kinfra's own container holds it; otherwise
    /// `resolve` decides, as for a service (a fixed port must be free, an auto port is
    /// reused or allocated).
    pub async fn host_port<E>(
        &self,
        project: &str,
        name: &str,
        spec: Option<PortSpec>,
        saved: Option<u16>,
        resolve: impl FnOnce(PortSpec) -> Result<u16, E>,
    ) -> Result<Option<u16>, E> {
        let Some(spec) = spec else { return Ok(None) };
        let wanted = match spec {
            PortSpec::Fixed(p) => Some(p),
            PortSpec::Auto => saved,
        };
        if let Some(port) = wanted
            && self.publishes(project, name, port).await
        {
            return Ok(Some(port));
        }
        resolve(spec).map(Some)
    }

    async fn publishes(&self, project: &str, name: &str, port: u16) -> bool {
        let Ok(engine) = self.get().await else {
            return false;
        };
        let labels = crate::spec::Labels {
            project: project.to_owned(),
            resource: name.to_owned(),
        };
        let Ok(list) = engine.find(&labels).await else {
            return false;
        };
        list.iter().any(|c| {
            c.state == Some(ContainerSummaryStateEnum::RUNNING)
                && c.ports
                    .iter()
                    .flatten()
                    .any(|p| p.public_port == Some(port))
        })
    }
}

type Progress = Arc<dyn Fn(String) + Send + Sync>;

/// A resource's container. See the module docs.
pub struct DockerResource {
    name: String,
    spec: ContainerSpec,
    connection: Connection,
    engine: EngineHandle,
    current: Mutex<Option<String>>,
    own_health: AtomicBool,
    host_check: Option<HostCheck>,
    /// The host check passed since the container started: a failure now means unhealthy
    /// (before that, it is still starting).
    host_check_passed: AtomicBool,
    progress: Option<Progress>,
    /// The image pull of the current start, while it runs and once it completed (until the
    /// next start): what [`Resource::progress`] reports.
    pull: Arc<Mutex<Option<kinfra_core::progress::Progress>>>,
}

impl std::fmt::Debug for DockerResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerResource")
            .field("name", &self.name)
            .field("container", &self.spec.name)
            .field("image", &self.spec.image)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn now_secs() -> i32 {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    i32::try_from(s).unwrap_or(i32::MAX)
}

impl DockerResource {
    /// A resource from a resolved template.
    pub fn new(name: impl Into<String>, resolved: Resolved, engine: EngineHandle) -> Self {
        Self {
            name: name.into(),
            spec: resolved.spec,
            connection: resolved.connection,
            engine,
            current: Mutex::new(None),
            own_health: AtomicBool::new(false),
            host_check: resolved.host_check,
            host_check_passed: AtomicBool::new(false),
            progress: None,
            pull: Arc::default(),
        }
    }

    /// A resource from its `[resources.NAME]` block, with `host_port` resolved (see
    /// [`EngineHandle::host_port`]) and generated passwords kept in `secrets`.
    pub fn from_config(
        project: &str,
        name: &str,
        cfg: &ResourceConfig,
        host_port: Option<u16>,
        secrets: &Secrets,
        engine: EngineHandle,
    ) -> Result<Self, DockerError> {
        let resolved = template::resolve(project, name, cfg, host_port, secrets)?;
        Ok(Self::new(name, resolved, engine))
    }

    /// Where image pull progress goes (the CLI, the dashboard); it also reaches the log.
    pub fn with_progress(mut self, progress: impl Fn(String) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(progress));
        self
    }

    /// The container this resource is.
    pub fn spec(&self) -> &ContainerSpec {
        &self.spec
    }

    async fn engine(&self) -> Result<Engine, ResourceError> {
        self.engine.get().await.map_err(ResourceError::from)
    }

    /// The container by label: the current one when known, else the newest.
    async fn container_id(&self, engine: &Engine) -> Result<Option<String>, DockerError> {
        if let Some(id) = lock(&self.current).clone() {
            return Ok(Some(id));
        }
        Ok(engine
            .find(&self.spec.labels)
            .await?
            .into_iter()
            .find_map(|c| c.id))
    }

    /// Finds, adopts, recreates or creates the container; returns its id and what it was.
    async fn ensure(
        &self,
        engine: &Engine,
        early: &mut Vec<OutputLine>,
    ) -> Result<(String, Found), DockerError> {
        let hash = self.spec.hash();
        let mut keep: Option<(String, Found)> = None;
        for c in engine.find(&self.spec.labels).await? {
            let Some(id) = c.id else { continue };
            let same = c
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_HASH))
                .is_some_and(|h| *h == hash);
            if same && keep.is_none() {
                let found = if c.state == Some(ContainerSummaryStateEnum::RUNNING) {
                    Found::Running
                } else {
                    Found::Stopped
                };
                keep = Some((id, found));
                continue;
            }
            let why = if same {
                "a duplicate"
            } else {
                "its config changed"
            };
            info!(resource = %self.name, container = %short(&id), why, "Removing a container.");
            early.push(system(format!(
                "Removing container {} ({why}); volumes are kept",
                short(&id)
            )));
            engine.stop(&id, Duration::from_secs(10)).await?;
            engine.remove(&id).await?;
        }
        if let Some(found) = keep {
            return Ok(found);
        }
        let progress = self.progress.clone();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = lines.clone();
        let name = self.name.clone();
        let report = move |line: String| {
            info!(resource = %name, "{line}");
            if let Some(p) = &progress {
                p(line.clone());
            }
            lock(&sink).push(line);
        };
        let pull = self.pull.clone();
        let on_update = move |p: &crate::pull::PullProgress| {
            *lock(&pull) = Some(p.snapshot());
        };
        let pulled = engine
            .ensure_image(&self.spec.image, &report, &on_update)
            .await;
        early.extend(lock(&lines).drain(..).map(system));
        pulled?;
        engine.ensure_volumes(&self.spec).await?;
        let id = engine.create(&self.spec).await?;
        early.push(system(format!(
            "Created container {} from {}",
            short(&id),
            self.spec.image
        )));
        Ok((id, Found::Created))
    }

    fn follow(&self, engine: &Engine, id: &str, since: i32, early: Vec<OutputLine>) -> Run {
        let (out_tx, out_rx) = mpsc::channel(256);
        let docker = engine.client().clone();
        let cid = id.to_owned();
        let name = self.name.clone();
        tokio::spawn(async move {
            for line in early {
                let _ = out_tx.send(line).await;
            }
            let opts = LogsOptionsBuilder::new()
                .follow(true)
                .stdout(true)
                .stderr(true)
                .since(since)
                .build();
            let mut logs = docker.logs(&cid, Some(opts));
            let mut partial = [String::new(), String::new()];
            while let Some(item) = logs.next().await {
                let (stream, bytes, slot) = match item {
                    Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                        (LogStream::Stdout, message, 0)
                    }
                    Ok(LogOutput::StdErr { message }) => (LogStream::Stderr, message, 1),
                    Ok(LogOutput::StdIn { .. }) => continue,
                    Err(error) => {
                        warn!(resource = %name, %error, "Log stream failed.");
                        break;
                    }
                };
                partial[slot].push_str(&String::from_utf8_lossy(&bytes));
                while let Some(nl) = partial[slot].find('\n') {
                    let text: String = partial[slot].drain(..=nl).collect();
                    let text = text.trim_end_matches(['\n', '\r']).to_owned();
                    if out_tx.send(OutputLine { stream, text }).await.is_err() {
                        return;
                    }
                }
            }
            for (slot, stream) in [(0, LogStream::Stdout), (1, LogStream::Stderr)] {
                if !partial[slot].is_empty() {
                    let text = std::mem::take(&mut partial[slot]);
                    let _ = out_tx.send(OutputLine { stream, text }).await;
                }
            }
        });
        let (exit_tx, exit_rx) = oneshot::channel();
        let engine = engine.clone();
        let cid = id.to_owned();
        tokio::spawn(async move {
            let opts = WaitContainerOptionsBuilder::new()
                .condition("not-running")
                .build();
            let mut wait = engine.client().wait_container(&cid, Some(opts));
            let code = match wait.next().await {
                Some(Ok(r)) => Some(r.status_code),
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                    Some(code)
                }
                _ => None,
            };
            // The engine's record is the authority (wait can end early on a lost stream).
            let code = match engine.inspect(&cid).await {
                Ok(Some(i)) => i
                    .state
                    .as_ref()
                    .filter(|s| s.running != Some(true))
                    .and_then(|s| s.exit_code)
                    .or(code),
                _ => code,
            };
            if let Some(code) = code {
                let _ = exit_tx.send(ExitInfo {
                    code: i32::try_from(code).ok(),
                    signal: None,
                });
            }
        });
        Run {
            id: id.to_owned(),
            pid: None,
            adopted: false,
            output: out_rx,
            exit: exit_rx,
        }
    }

    async fn start_inner(&self) -> Result<Run, DockerError> {
        *lock(&self.pull) = None;
        let engine = self.engine.get().await?;
        let mut early = Vec::new();
        let (id, found) = self.ensure(&engine, &mut early).await?;
        // A new container's whole output; an existing one's from now on.
        let since = if found == Found::Created {
            0
        } else {
            now_secs()
        };
        let running = found == Found::Running;
        if running {
            early.push(system(format!("Adopted running container {}", short(&id))));
        } else {
            engine.start(&id).await?;
        }
        *lock(&self.current) = Some(id.clone());
        let inspected = engine.inspect(&id).await?;
        let has_check = inspected
            .as_ref()
            .and_then(|i| i.config.as_ref())
            .and_then(|c| c.healthcheck.as_ref())
            .and_then(|h| h.test.as_ref())
            .is_some_and(|t| !t.is_empty() && t[0] != "NONE");
        self.own_health.store(has_check, Ordering::SeqCst);
        self.host_check_passed.store(false, Ordering::SeqCst);
        let pid = inspected
            .as_ref()
            .and_then(|i| i.state.as_ref())
            .and_then(|s| s.pid)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0);
        let mut run = self.follow(&engine, &id, since, early);
        run.adopted = running;
        run.pid = pid;
        Ok(run)
    }
}

/// What [`DockerResource::ensure`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// Our container, running (adopted).
    Running,
    /// Our container, not running.
    Stopped,
    /// Nothing usable; created now.
    Created,
}

fn system(text: String) -> OutputLine {
    OutputLine {
        stream: LogStream::System,
        text,
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

impl Resource for DockerResource {
    fn kind(&self) -> &'static str {
        "docker"
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn start(&self) -> BoxFuture<'_, Result<Run, ResourceError>> {
        Box::pin(async move {
            self.start_inner().await.map_err(|error| {
                warn!(resource = %self.name, %error, "Container start failed.");
                ResourceError::from(error)
            })
        })
    }

    fn stop(&self, grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            let engine = self.engine().await?;
            if let Some(id) = self.container_id(&engine).await? {
                engine.stop(&id, grace).await?;
            }
            Ok(())
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<Observed, ResourceError>> {
        Box::pin(async move {
            let engine = self.engine().await?;
            let Some(id) = self.container_id(&engine).await? else {
                return Ok(Observed::Absent);
            };
            let Some(info) = engine.inspect(&id).await? else {
                return Ok(Observed::Absent);
            };
            let state = info.state.unwrap_or_default();
            Ok(match state.status {
                Some(ContainerStateStatusEnum::RUNNING)
                | Some(ContainerStateStatusEnum::RESTARTING) => Observed::Running,
                Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD) => {
                    Observed::Exited(ExitInfo {
                        code: state.exit_code.and_then(|c| i32::try_from(c).ok()),
                        signal: None,
                    })
                }
                _ => Observed::Idle,
            })
        })
    }

    fn health(&self) -> BoxFuture<'_, Result<Health, ResourceError>> {
        Box::pin(async move {
            let engine = self.engine().await?;
            let Some(id) = self.container_id(&engine).await? else {
                return Ok(Health::Unknown);
            };
            let status = engine
                .inspect(&id)
                .await?
                .and_then(|i| i.state)
                .and_then(|s| s.health)
                .and_then(|h| h.status);
            if let (None, Some(check)) = (&status, &self.host_check) {
                return Ok(match check.run().await {
                    Ok(()) => {
                        self.host_check_passed.store(true, Ordering::SeqCst);
                        Health::Healthy
                    }
                    Err(error) => {
                        debug!(resource = %self.name, %error, "Host health check failed.");
                        if self.host_check_passed.load(Ordering::SeqCst) {
                            Health::Unhealthy
                        } else {
                            Health::Unknown
                        }
                    }
                });
            }
            Ok(match status {
                Some(HealthStatusEnum::HEALTHY) => Health::Healthy,
                Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
                _ => Health::Unknown,
            })
        })
    }

    fn progress(&self) -> Option<kinfra_core::progress::Progress> {
        lock(&self.pull).clone()
    }

    fn has_own_health(&self) -> bool {
        self.own_health.load(Ordering::SeqCst)
            || self.spec.health.is_some()
            || self.host_check.is_some()
    }

    fn connection(&self) -> Connection {
        self.connection.clone()
    }

    fn logs(&self, tail: usize) -> BoxFuture<'_, Result<Vec<OutputLine>, ResourceError>> {
        Box::pin(async move {
            let engine = self.engine().await?;
            let Some(id) = self.container_id(&engine).await? else {
                return Ok(Vec::new());
            };
            let opts = LogsOptionsBuilder::new()
                .stdout(true)
                .stderr(true)
                .tail(&tail.to_string())
                .build();
            let mut stream = engine.client().logs(&id, Some(opts));
            let mut out = Vec::new();
            while let Some(item) = stream.next().await {
                let (stream, bytes) = match item {
                    Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                        (LogStream::Stdout, message)
                    }
                    Ok(LogOutput::StdErr { message }) => (LogStream::Stderr, message),
                    Ok(LogOutput::StdIn { .. }) => continue,
                    Err(e) => return Err(ResourceError::op("read logs", e)),
                };
                for text in String::from_utf8_lossy(&bytes).lines() {
                    out.push(OutputLine {
                        stream,
                        text: text.to_owned(),
                    });
                }
            }
            Ok(out)
        })
    }

    fn remove(&self, volumes: bool) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            let engine = self.engine().await?;
            for c in engine.find(&self.spec.labels).await? {
                if let Some(id) = c.id {
                    engine.remove(&id).await?;
                }
            }
            *lock(&self.current) = None;
            if volumes {
                let removed = engine.remove_volumes(&self.spec.labels).await?;
                info!(resource = %self.name, volumes = removed.len(), "Volumes removed.");
            }
            Ok(())
        })
    }
}
