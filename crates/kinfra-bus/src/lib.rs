//! kinfra's message bus: every runtime event goes out on NATS, and the runtime can be
//! controlled over it.
//!
//! Where the bus comes from, in this order: `[bus] url` (an external NATS server, with
//! user/password, token, nkey, credentials file and TLS); else a `nats-server` found on PATH
//! that the bus starts and supervises on a loopback port (JetStream on, store under
//! `<state_dir>/nats`); else an in-process bus with the same API.
//!
//! Subjects: events on `kinfra.<project>.events.<resource>.<kind>` (the JSON of
//! [`kinfra_core::Event`], with its `seq`), control requests on
//! `kinfra.<project>.control.<action>` (`status`, `restart`, `stop`, `start`, `command`). The bus only
//! knows [`RuntimeControl`]; it reads events from it and acts through it.
//!
//! With a node name ([`BusOptions::node`]) each event also goes out on
//! `kinfra.<project>.<node>.events.<resource>.<kind>` with a `node` field, control is also
//! served on `kinfra.<project>.<node>.control.<action>` (addressed to this node only), and the
//! node takes part in the fleet: a heartbeat on `kinfra.<project>.<node>.heartbeat` and a
//! table of every node heard ([`Bus::fleet`]).
//!
//! While the server is unreachable the runtime goes on: events wait in a bounded buffer (the
//! oldest are dropped and counted when it is full), the client reconnects with backoff, and
//! [`Bus::state`] and a `bus_state_changed` event say so.

mod control;
mod events;
mod fleet;
mod local;
mod managed;
mod nats;
mod redact;
mod state;
pub mod subject;
mod transport;

pub use async_nats;
pub use bytes::Bytes;
pub use control::{MAX_IN_FLIGHT, MAX_REQUEST_BYTES};
pub use fleet::{FleetNode, FleetView, Heartbeat, ServiceSummary};
pub use managed::{ManagedError, find_binary};
pub use nats::display_url;
pub use state::{BusBackend, BusState, BusStatus};
pub use transport::{BusMessage, Subscription};

use crate::events::Outbox;
use crate::local::LocalBus;
use crate::managed::ManagedServer;
use crate::redact::Redactor;
use crate::state::Shared;
use crate::transport::Transport;
use kinfra_core::Secret;
use kinfra_core::config::BusConfig;
use kinfra_core::event::EventSender;
use kinfra_core::view::RuntimeControl;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long [`Bus::start`] waits for a first connection to an external server before it
/// returns anyway (events are buffered until the connection comes).
const EXTERNAL_CONNECT_WAIT: Duration = Duration::from_secs(2);
/// The same for the managed server, which is known to be up.
const MANAGED_CONNECT_WAIT: Duration = Duration::from_secs(5);

/// What [`Bus::start`] needs.
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// Project name; its subject-safe form is the second token of every subject.
    pub project: String,
    /// The runtime's state dir; the managed server keeps its files in `<state_dir>/nats`.
    pub state_dir: PathBuf,
    /// `[bus]`.
    pub config: BusConfig,
    /// Directory that relative paths in `config` (credentials, TLS files) are resolved
    /// against: the config file's directory.
    pub base_dir: PathBuf,
    /// Where `bus_state_changed` events are emitted; none are when absent.
    pub events: Option<EventSender>,
    /// Values masked (`***`) in everything the bus publishes, besides the bus's own password
    /// and token: typically the values of secret-named environment variables.
    pub secrets: Vec<Secret>,
    /// The PATH-style list searched for `nats-server`; the process's `PATH` when absent.
    pub search_path: Option<OsString>,
    /// This node's name (a subject token, `[node] name`); absent: no node subjects, no
    /// heartbeat, no fleet view.
    pub node: Option<String>,
    /// How often the node's heartbeat goes out (`[node] heartbeat`).
    pub heartbeat: Duration,
}

impl BusOptions {
    /// Options with the given project, state dir and config; `base_dir` is `.`, no event
    /// sender, no extra secrets, the process's PATH.
    pub fn new(
        project: impl Into<String>,
        state_dir: impl Into<PathBuf>,
        config: BusConfig,
    ) -> Self {
        Self {
            project: project.into(),
            state_dir: state_dir.into(),
            config,
            base_dir: PathBuf::from("."),
            events: None,
            secrets: Vec::new(),
            search_path: None,
            node: None,
            heartbeat: Duration::from_secs(5),
        }
    }

    /// Takes part in the fleet as `node` (made subject-safe), heartbeating every `heartbeat`.
    pub fn with_node(mut self, node: impl Into<String>, heartbeat: Duration) -> Self {
        self.node = Some(node.into());
        self.heartbeat = heartbeat;
        self
    }

    /// Emits `bus_state_changed` events on this sender.
    pub fn with_events(mut self, events: EventSender) -> Self {
        self.events = Some(events);
        self
    }
}

/// Why a bus operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The subject cannot be used.
    #[error("invalid subject `{subject}`: {reason}")]
    InvalidSubject {
        /// The subject.
        subject: String,
        /// Why.
        reason: String,
    },
    /// `[bus]` is inconsistent.
    #[error("{0}")]
    Config(String),
    /// A credentials, nkey or TLS file cannot be read.
    #[error("cannot read {}: {source}", .path.display())]
    Credentials {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The client could not be set up.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL, without credentials.
        url: String,
        /// Why.
        reason: String,
    },
    /// Publishing failed.
    #[error("publish failed: {0}")]
    Publish(String),
    /// Subscribing failed.
    #[error("subscribe failed: {0}")]
    Subscribe(String),
    /// A request failed.
    #[error("request failed: {0}")]
    Request(String),
    /// No reply came in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// Nobody listens on the subject.
    #[error("no responders")]
    NoResponders,
    /// The bus was shut down.
    #[error("the bus is shut down")]
    Closed,
}

/// A handle to the running bus. Clones share the bus; [`Bus::shutdown`] stops it for all
/// of them, and dropping the last handle stops it too (without the graceful flush).
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("project", &self.inner.project)
            .field("backend", &self.backend())
            .field("state", &self.state())
            .finish()
    }
}

struct Inner {
    project: String,
    fleet: Option<Arc<fleet::Fleet>>,
    transport: Transport,
    shared: Arc<Shared>,
    outbox: Arc<Outbox>,
    external_url: Option<String>,
    managed: Mutex<Option<ManagedServer>>,
    managed_info: Option<(String, PathBuf)>,
    closing: CancellationToken,
    abort: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    sender_task: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.closing.cancel();
        self.abort.cancel();
        if let Transport::Local(bus) = &self.transport {
            bus.close();
        }
        // A managed server still here is killed by its own Drop.
    }
}

enum Chosen {
    External(String),
    Managed(ManagedServer),
    InProcess { reason: String, warn: bool },
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Bus {
    /// Brings the bus up: connects to `[bus] url`, or starts a managed `nats-server`, or
    /// falls back to the in-process bus; then publishes every event of
    /// `control.subscribe_events()` and serves control requests. Returns once the control
    /// subscription is in place (or, for an external server that cannot be reached yet,
    /// after a short wait: the bus keeps trying in the background).
    ///
    /// Events emitted before this is called are not seen; start the bus before the
    /// supervisor to publish every event.
    pub async fn start(
        options: BusOptions,
        control: Arc<dyn RuntimeControl>,
    ) -> Result<Bus, BusError> {
        let events_rx = control.subscribe_events();
        let project = subject::token(&options.project);
        let node = options.node.as_deref().map(subject::token);
        let config = &options.config;
        let mut secrets = options.secrets.clone();
        secrets.extend(config.password.iter().cloned());
        secrets.extend(config.token.iter().cloned());
        if let Some(url) = &config.url {
            secrets.extend(nats::url_secrets(url));
        }
        let redactor = Redactor::new(&secrets);

        let chosen = choose(&options).await;
        let (transport, shared, external_url, managed, managed_info) = match chosen {
            Chosen::InProcess { reason, warn } => {
                if warn {
                    tracing::warn!(reason = %reason, "The bus runs in-process: other programs cannot reach it.");
                } else {
                    tracing::info!(reason = %reason, "The bus runs in-process.");
                }
                let shared = Arc::new(Shared::new(
                    "in_process",
                    BusState::InProcess,
                    options.events.clone(),
                ));
                shared.emit(BusState::InProcess, &reason);
                let transport = Transport::Local(Arc::new(LocalBus::default()));
                (transport, shared, None, None, None)
            }
            Chosen::External(url) => {
                let shared = Arc::new(Shared::new(
                    "external",
                    BusState::Connecting,
                    options.events.clone(),
                ));
                let target = nats::Target { url, token: None };
                let client = connect(&options, &project, &target, &shared).await?;
                wait_connected(&shared, EXTERNAL_CONNECT_WAIT, &target.url).await;
                let display = display_url(&target.url);
                (Transport::Nats(client), shared, Some(display), None, None)
            }
            Chosen::Managed(mut server) => {
                let shared = Arc::new(Shared::new(
                    "managed",
                    BusState::Connecting,
                    options.events.clone(),
                ));
                let target = nats::Target {
                    url: server.url(),
                    token: Some(server.token().clone()),
                };
                let client = match connect(&options, &project, &target, &shared).await {
                    Ok(c) => c,
                    Err(e) => {
                        server.stop(Duration::from_secs(2)).await;
                        return Err(e);
                    }
                };
                wait_connected(&shared, MANAGED_CONNECT_WAIT, &target.url).await;
                let info = (server.url(), server.token_file().to_path_buf());
                (
                    Transport::Nats(client),
                    shared,
                    None,
                    Some(server),
                    Some(info),
                )
            }
        };

        let outbox = Arc::new(Outbox::new(config.buffer));
        let closing = CancellationToken::new();
        let abort = CancellationToken::new();
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(events::intake(
            events_rx,
            outbox.clone(),
            project.clone(),
            node.clone(),
            redactor.clone(),
            closing.clone(),
        )));
        let sender_task = tokio::spawn(events::sender(
            outbox.clone(),
            transport.clone(),
            shared.clone(),
            abort.clone(),
        ));
        let prefix = subject::control_subject(&project, "");
        let control_sub = transport
            .subscribe(subject::control_subject(&project, ">"))
            .await;
        let control_sub = match control_sub {
            Ok(sub) => sub,
            Err(e) => {
                closing.cancel();
                abort.cancel();
                if let Some(mut server) = managed {
                    server.stop(Duration::from_secs(2)).await;
                }
                return Err(e);
            }
        };
        let node_control_sub = match &node {
            Some(node) => match transport
                .subscribe(subject::node_control_subject(&project, node, ">"))
                .await
            {
                Ok(sub) => Some((subject::node_control_subject(&project, node, ""), sub)),
                Err(error) => {
                    tracing::warn!(%error, node = %node, "Cannot serve control addressed to this node.");
                    None
                }
            },
            None => None,
        };
        let ctx = control::ControlContext {
            control: control.clone(),
            transport: transport.clone(),
            prefix,
            redactor,
            shared: shared.clone(),
        };
        if let Some((prefix, sub)) = node_control_sub {
            let ctx = control::ControlContext {
                prefix,
                ..ctx.clone()
            };
            tasks.push(tokio::spawn(control::serve(ctx, sub, closing.clone())));
        }
        tasks.push(tokio::spawn(control::serve(
            ctx,
            control_sub,
            closing.clone(),
        )));
        let fleet = node.as_ref().map(|node| {
            let fleet = Arc::new(fleet::Fleet::new(node.clone(), options.heartbeat));
            tasks.push(tokio::spawn(fleet::listen(
                fleet.clone(),
                transport.clone(),
                project.clone(),
                closing.clone(),
            )));
            fleet
        });
        if shared.state() == BusState::Connected {
            barrier(&transport).await;
        }
        // The first heartbeat only once the fleet subscriptions are in place.
        if let Some(fleet) = &fleet {
            tasks.push(tokio::spawn(fleet::beat(
                fleet.clone(),
                control.clone(),
                transport.clone(),
                shared.clone(),
                project.clone(),
                closing.clone(),
            )));
        }
        let backend_kind = shared.backend_kind;
        let bus = Bus {
            inner: Arc::new(Inner {
                project,
                fleet,
                transport,
                shared,
                outbox,
                external_url,
                managed: Mutex::new(managed),
                managed_info,
                closing,
                abort,
                tasks: Mutex::new(tasks),
                sender_task: Mutex::new(Some(sender_task)),
                closed: AtomicBool::new(false),
            }),
        };
        tracing::info!(
            backend = backend_kind,
            url = bus.backend().url().unwrap_or("-"),
            state = %bus.state(),
            "Bus started."
        );
        Ok(bus)
    }

    /// Where the bus comes from.
    pub fn backend(&self) -> BusBackend {
        if let Some((url, token_file)) = &self.inner.managed_info {
            let pid = lock(&self.inner.managed).as_ref().map_or(0, |s| s.pid());
            return BusBackend::Managed {
                url: url.clone(),
                pid,
                token_file: token_file.clone(),
            };
        }
        match &self.inner.external_url {
            Some(url) => BusBackend::External { url: url.clone() },
            None => BusBackend::InProcess,
        }
    }

    /// The connection state.
    pub fn state(&self) -> BusState {
        self.inner.shared.state()
    }

    /// A watch on the connection state (for waiting on a change).
    pub fn watch_state(&self) -> tokio::sync::watch::Receiver<BusState> {
        self.inner.shared.watch()
    }

    /// Backend, state and counters, for `/__status__` and `/metrics`.
    pub fn status(&self) -> BusStatus {
        let server_restarts = lock(&self.inner.managed)
            .as_ref()
            .map_or(0, |s| s.restarts());
        let local_drops = match &self.inner.transport {
            Transport::Local(bus) => bus.slow_drops(),
            Transport::Nats(_) => 0,
        };
        BusStatus {
            backend: self.backend(),
            state: self.state(),
            published: self.inner.outbox.published.load(Ordering::Relaxed),
            dropped: self.inner.outbox.dropped.load(Ordering::Relaxed) + local_drops,
            buffered: self.inner.outbox.len(),
            reconnects: self.inner.shared.reconnects.load(Ordering::Relaxed),
            server_restarts,
            control_requests: self.inner.shared.control_requests.load(Ordering::Relaxed),
            last_error: self.inner.shared.last_error(),
        }
    }

    /// The subject-safe project name used in subjects.
    pub fn project_token(&self) -> &str {
        &self.inner.project
    }

    /// `kinfra.<project>.events.>`: subscribe to it to see every event.
    pub fn events_subject(&self) -> String {
        subject::events_wildcard(&self.inner.project)
    }

    /// `kinfra.<project>.control.<action>`.
    pub fn control_subject(&self, action: &str) -> String {
        subject::control_subject(&self.inner.project, action)
    }

    /// This node's name in subjects, when the bus has one.
    pub fn node(&self) -> Option<&str> {
        self.inner.fleet.as_deref().map(fleet::Fleet::node)
    }

    /// `kinfra.<project>.<node>.control.<action>`: control addressed to one node.
    pub fn node_control_subject(&self, node: &str, action: &str) -> String {
        subject::node_control_subject(&self.inner.project, &subject::token(node), action)
    }

    /// Every node heard on the bus (this one included) with its state, last heartbeat and
    /// services; `None` when the bus has no node name.
    pub fn fleet(&self) -> Option<FleetView> {
        self.inner.fleet.as_ref().map(|f| f.view())
    }

    /// Every node's events from now on, as JSON with their `node` (this node's included, as
    /// they come back from the server); `None` when the bus has no node name.
    pub fn subscribe_fleet_events(&self) -> Option<tokio::sync::broadcast::Receiver<Arc<str>>> {
        self.inner.fleet.as_ref().map(|f| f.subscribe_events())
    }

    /// Sends a control request to one node (`restart`, `stop`, `start`, `status`, …) and
    /// returns its JSON reply. Whoever may connect to the bus may send it, as for
    /// project-wide control: the server's authorization is the gate.
    pub async fn request_node(
        &self,
        node: &str,
        action: &str,
        body: serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, BusError> {
        let subject = self.node_control_subject(node, action);
        let reply = self
            .request(subject, Bytes::from(body.to_string()), timeout)
            .await?;
        serde_json::from_slice(&reply)
            .map_err(|e| BusError::Request(format!("the node's reply is not JSON: {e}")))
    }

    fn check_open(&self) -> Result<(), BusError> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(BusError::Closed)
        } else {
            Ok(())
        }
    }

    /// Publishes `payload` on `subject` (no wildcards). Works on every backend. While a NATS
    /// server is unreachable, messages queue in the client and a full queue makes this wait.
    pub async fn publish(
        &self,
        subject: impl Into<String>,
        payload: Bytes,
    ) -> Result<(), BusError> {
        self.check_open()?;
        let subject = subject.into();
        subject::validate_publish(&subject)?;
        self.inner.transport.publish(subject, None, payload).await
    }

    /// Subscribes to `subject` (`*` and a final `>` allowed).
    pub async fn subscribe(&self, subject: impl Into<String>) -> Result<Subscription, BusError> {
        self.check_open()?;
        let subject = subject.into();
        subject::validate_subscribe(&subject)?;
        self.inner.transport.subscribe(subject).await
    }

    /// Sends a request and waits up to `timeout` for the first reply.
    pub async fn request(
        &self,
        subject: impl Into<String>,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        self.check_open()?;
        let subject = subject.into();
        subject::validate_publish(&subject)?;
        self.inner
            .transport
            .request(subject, payload, timeout)
            .await
    }

    /// The async-nats client, when a real server is used (the same connection the bus
    /// publishes on), so an application can use everything NATS offers, JetStream included.
    pub fn nats_client(&self) -> Option<async_nats::Client> {
        match &self.inner.transport {
            Transport::Nats(client) => Some(client.clone()),
            Transport::Local(_) => None,
        }
    }

    /// Stops the bus: stops taking control requests, publishes the events already emitted
    /// (as far as `grace` allows and the server is reachable), closes the connection and
    /// stops the managed server. Every handle is closed afterwards.
    pub async fn shutdown(self, grace: Duration) {
        let inner = &self.inner;
        if inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let deadline = Instant::now() + grace;
        let left = || deadline.saturating_duration_since(Instant::now());
        inner.closing.cancel();
        let sender = lock(&inner.sender_task).take();
        if let Some(mut sender) = sender {
            // Most of the grace goes to the events; the server gets the rest.
            let budget = left().mul_f32(0.6);
            if tokio::time::timeout(budget, &mut sender).await.is_err() {
                let left_behind = inner.outbox.len();
                tracing::warn!(left_behind, "Bus shutdown: events not published in time.");
                sender.abort();
            }
        }
        inner.abort.cancel();
        let tasks: Vec<JoinHandle<()>> = lock(&inner.tasks).drain(..).collect();
        for mut task in tasks {
            if tokio::time::timeout(Duration::from_millis(200), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        match &inner.transport {
            Transport::Nats(client) => {
                let wait = left().min(Duration::from_secs(1));
                let _ = tokio::time::timeout(wait, client.flush()).await;
                let _ = client.drain().await;
            }
            Transport::Local(bus) => bus.close(),
        }
        inner.shared.set_state(BusState::Closed, "bus shut down");
        let server = lock(&inner.managed).take();
        if let Some(mut server) = server {
            server.stop(left().max(Duration::from_millis(500))).await;
        }
        tracing::info!("Bus stopped.");
    }
}

async fn choose(options: &BusOptions) -> Chosen {
    let config = &options.config;
    if !config.enabled {
        return Chosen::InProcess {
            reason: "[bus] enabled = false".into(),
            warn: false,
        };
    }
    if let Some(url) = config.url.as_ref().filter(|u| !u.trim().is_empty()) {
        return Chosen::External(url.clone());
    }
    if !config.managed {
        return Chosen::InProcess {
            reason: "no [bus] url and [bus] managed = false".into(),
            warn: false,
        };
    }
    let binary = match &config.nats_server {
        Some(path) => {
            let path = if path.is_absolute() {
                path.clone()
            } else {
                options.base_dir.join(path)
            };
            Some(path).filter(|p| std::fs::metadata(p).is_ok())
        }
        None => {
            let search = options
                .search_path
                .clone()
                .or_else(|| std::env::var_os("PATH"))
                .unwrap_or_default();
            find_binary(&search)
        }
    };
    let Some(binary) = binary else {
        return Chosen::InProcess {
            reason: format!(
                "no [bus] url and no {} found{}",
                managed::BINARY,
                if config.nats_server.is_some() {
                    " at [bus] nats_server"
                } else {
                    " on PATH"
                }
            ),
            warn: true,
        };
    };
    let port = config.port.filter(|p| *p != 0);
    match ManagedServer::start(binary, &options.state_dir, &options.project, port).await {
        Ok(server) => Chosen::Managed(server),
        Err(error) => Chosen::InProcess {
            reason: format!("the managed nats-server could not start: {error}"),
            warn: true,
        },
    }
}

async fn connect(
    options: &BusOptions,
    project: &str,
    target: &nats::Target,
    shared: &Arc<Shared>,
) -> Result<async_nats::Client, BusError> {
    let opts = nats::options(
        &options.config,
        &options.base_dir,
        project,
        target,
        shared.clone(),
    )
    .await?;
    nats::connect(target, opts).await
}

async fn wait_connected(shared: &Shared, wait: Duration, url: &str) {
    let mut rx = shared.watch();
    let connected = tokio::time::timeout(wait, rx.wait_for(|s| *s == BusState::Connected)).await;
    if !matches!(connected, Ok(Ok(_))) {
        tracing::warn!(
            url = %display_url(url),
            last_error = shared.last_error().unwrap_or_default(),
            "The NATS server is not reachable yet; events are buffered until it is."
        );
    }
}

/// A round trip through the server: once our own message comes back, the server has
/// processed every earlier subscription of this connection.
async fn barrier(transport: &Transport) {
    let inbox = format!("_INBOX.kinfra.{}", random_hex(8));
    let Ok(mut sub) = transport.subscribe(inbox.clone()).await else {
        return;
    };
    if transport.publish(inbox, None, Bytes::new()).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), sub.next()).await;
    }
}

/// `n` random bytes from the OS ([`kinfra_core::random`]) as lowercase hex, for names that
/// must be unique (inboxes). Should the OS refuse, the PID and a counter keep them unique.
pub(crate) fn random_hex(n: usize) -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    kinfra_core::random::hex(n).unwrap_or_else(|_| {
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{:x}x{n:x}", std::process::id())
    })
}

/// A random number for jitter (not for secrets); 0 should the OS refuse.
pub(crate) fn random_u64() -> u64 {
    kinfra_core::random::u64().unwrap_or(0)
}
