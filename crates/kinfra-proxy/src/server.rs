//! Starting and stopping the proxy: listeners are bound first (so a taken port fails at once),
//! then pingora runs on its own OS threads via `Server::run` with a shutdown signal we control.
//!
//! pingora is given the already-bound sockets through a listen-fd table, and its listening
//! service gets a shutdown watch of ours: flipping it stops accepting, ends keep-alive and sends
//! HTTP/2 GOAWAY, while requests in flight go on. When they are done (or the grace period is
//! over) pingora is told to stop and its threads are joined.

use crate::access::{self, AccessLog};
use crate::acme::ChallengeStore;
use crate::edge::{Edge, InFlight, PROBE_HEADER, Settings, Shared};
use crate::error::ProxyError;
use crate::metrics::ProxyMetrics;
use crate::pages::Templates;
use crate::routes::RouteTable;
use crate::state::RouteState;
use crate::tls::{CertSource, CertStore, load_or_create};
use crate::wake::Wakes;
use async_trait::async_trait;
use kinfra_core::EventKind;
use kinfra_core::config::{ProxyConfig, RouteConfig};
use kinfra_core::view::RuntimeControl;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::{
    Fds, ListenFds, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch,
};
use pingora::services::listening::Service as ListeningService;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, oneshot, watch};

/// How long a backend that refused a connection is skipped.
const FAIL_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the route table is refreshed from the runtime's status even without events: a
/// slow safety net (rebuilds follow events; a lagged receiver rebuilds at once), which also
/// takes in a status message that changed without a state change.
const REFRESH_EVERY: Duration = Duration::from_secs(15);
/// How long `start` waits for pingora to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the proxy needs to start.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// `[proxy]`.
    pub config: ProxyConfig,
    /// `[[routes]]`, with upstream URLs already interpolated.
    pub routes: Vec<RouteConfig>,
    /// Where the reserved paths (`/kinfra`, `/__status__`, ...) go; `None` routes them like
    /// any other path.
    pub dashboard_addr: Option<SocketAddr>,
    /// The runtime's state dir; certificates live in its `certs/`.
    pub state_dir: PathBuf,
    /// Host names that get a certificate (self-signed when none is present), besides
    /// `localhost` and the hosts of the routes.
    pub tls_hosts: Vec<String>,
    /// The targets that sleep when idle (`scale_to_zero`): the proxy records their requests
    /// and open connections here and wakes them through `RuntimeControl::act(Wake)`.
    /// `None`: nothing sleeps.
    pub activity: Option<Arc<kinfra_core::activity::ActivityBoard>>,
}

/// The running proxy. Stop it with [`ProxyServer::shutdown`]; dropping it stops pingora
/// without waiting.
pub struct ProxyServer {
    http_addr: Option<SocketAddr>,
    https_addr: Option<SocketAddr>,
    certs: Arc<CertStore>,
    challenges: Arc<ChallengeStore>,
    shared: Arc<Shared>,
    stop_listeners: watch::Sender<bool>,
    stop_server: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    /// Writes the summaries of failed TLS handshakes (with an HTTPS listener).
    handshake_reports: Option<tokio::task::JoinHandle<()>>,
    /// `proxy.reserved_paths`, kept for route tables built on reload.
    reserved_paths: Vec<String>,
    /// Where certificates live, when there is an HTTPS listener (new route hosts get one).
    certs_dir: Option<PathBuf>,
    /// Serializes [`ProxyServer::set_routes`] calls.
    reload: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ProxyServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyServer")
            .field("http_addr", &self.http_addr)
            .field("https_addr", &self.https_addr)
            .finish_non_exhaustive()
    }
}

/// Reads the proxy's request counters; see [`ProxyServer::metrics`].
#[derive(Clone)]
pub struct ProxyMetricsHandle {
    shared: Arc<Shared>,
    /// There is an HTTPS listener (so handshake failures are reported).
    tls: bool,
}

impl std::fmt::Debug for ProxyMetricsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyMetricsHandle").finish_non_exhaustive()
    }
}

impl ProxyMetricsHandle {
    /// Requests, errors and the latency histogram of every route since start, as data.
    pub fn route_totals(&self) -> Vec<kinfra_core::metrics::RouteTotals> {
        self.shared.metrics.totals()
    }

    /// Requests and latency by route and status class, in the Prometheus text format
    /// (`kinfra_proxy_requests_total`, `kinfra_proxy_request_duration_seconds`), plus the
    /// requests in flight, with targets that sleep when idle the requests held for a wake
    /// (`kinfra_proxy_held_requests_total{service}`) and the wakes requests started
    /// (`kinfra_proxy_wakes_total{service,outcome}`), and, with an HTTPS listener, the
    /// clients' failed TLS handshakes by
    /// reason (`kinfra_proxy_tls_handshake_failures_total`, counted for the whole process
    /// by [`crate::TlsHandshakeLog`]).
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}# HELP kinfra_proxy_requests_in_flight Requests being handled now.\n\
             # TYPE kinfra_proxy_requests_in_flight gauge\n\
             kinfra_proxy_requests_in_flight {}\n{}",
            self.shared.metrics.render(),
            self.shared.inflight.count(),
            self.shared.wakes.metrics.render(),
        );
        if self.tls {
            out.push_str(&crate::handshake::render());
        }
        out
    }
}

fn parse_listen(
    key: &'static str,
    value: Option<&String>,
) -> Result<Option<SocketAddr>, ProxyError> {
    value
        .map(|v| {
            v.trim()
                .parse::<SocketAddr>()
                .map_err(|_| ProxyError::InvalidListen {
                    key,
                    addr: v.clone(),
                })
        })
        .transpose()
}

fn bind(key: &'static str, addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ProxyError> {
    let err = |source| ProxyError::Bind { key, addr, source };
    let listener = TcpListener::bind(addr).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

/// A token only this process knows, for the readiness probe.
fn probe_token() -> Result<String, ProxyError> {
    kinfra_core::random::hex(16)
        .map_err(|e| ProxyError::Setup(format!("no random bytes for the probe token: {e}")))
}

/// The loopback address to reach a listener bound to `addr` (`0.0.0.0` → `127.0.0.1`).
fn reachable(addr: SocketAddr) -> SocketAddr {
    let mut a = addr;
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    a
}

/// pingora's shutdown signal: fires when we say so (or when the `ProxyServer` is dropped).
struct StopSignal(parking_lot::Mutex<Option<oneshot::Receiver<()>>>);

#[async_trait]
impl ShutdownSignalWatch for StopSignal {
    async fn recv(&self) -> ShutdownSignal {
        let rx = self.0.lock().take();
        if let Some(rx) = rx {
            let _ = rx.await;
        }
        ShutdownSignal::FastShutdown
    }
}

/// The pingora service: the listening proxy service with our pre-bound sockets and our own
/// shutdown watch.
struct EdgeService {
    inner: ListeningService<HttpProxy<Edge>>,
    fds: ListenFds,
    shutdown: ShutdownWatch,
    started: Option<oneshot::Sender<()>>,
    threads: usize,
}

#[async_trait]
impl pingora::services::Service for EdgeService {
    async fn start_service(
        &mut self,
        _fds: Option<ListenFds>,
        _server_shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        if let Some(started) = self.started.take() {
            let _ = started.send(());
        }
        pingora::services::Service::start_service(
            &mut self.inner,
            Some(self.fds.clone()),
            self.shutdown.clone(),
            listeners_per_fd,
        )
        .await;
    }

    fn name(&self) -> &str {
        "kinfra-proxy"
    }

    fn threads(&self) -> Option<usize> {
        Some(self.threads)
    }
}

fn cert_err(name: &str) -> impl FnOnce(crate::tls::TlsError) -> ProxyError {
    let name = name.to_owned();
    move |source| ProxyError::Certificate { name, source }
}

fn load_certificates(certs_dir: &Path, hosts: &[String]) -> Result<Arc<CertStore>, ProxyError> {
    let store = Arc::new(CertStore::new());
    let (localhost, source) = load_or_create(certs_dir, "localhost", &["127.0.0.1", "::1"])
        .map_err(cert_err("localhost"))?;
    tracing::debug!(name = "localhost", ?source, "TLS certificate loaded.");
    let localhost = Arc::new(localhost);
    store.insert("localhost", localhost.clone());
    store.set_default(localhost);
    add_certificates(&store, certs_dir, hosts)?;
    Ok(store)
}

/// Loads (or makes) a certificate for each of `hosts` the store has none for yet; a
/// certificate already served (one ACME installed, say) is kept as it is.
fn add_certificates(
    store: &CertStore,
    certs_dir: &Path,
    hosts: &[String],
) -> Result<(), ProxyError> {
    let known = store.names();
    let mut names: Vec<String> = hosts
        .iter()
        .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
        .filter(|h| !h.is_empty() && h != "localhost" && h != "*")
        .filter(|h| !known.contains(h))
        .collect();
    names.sort();
    names.dedup();
    // All or nothing: a name that fails leaves the store as it was.
    let mut loaded = Vec::with_capacity(names.len());
    for name in names {
        let (key, source) = load_or_create(certs_dir, &name, &[]).map_err(cert_err(&name))?;
        if source == CertSource::SelfSigned {
            tracing::info!(name = %name, "Using a self-signed certificate.");
        }
        loaded.push((name, Arc::new(key)));
    }
    for (name, key) in loaded {
        store.insert(&name, key);
    }
    Ok(())
}

/// Keeps the route table in step with the runtime: rebuilt on relevant events, and every
/// [`REFRESH_EVERY`] in case something changed without one. Reads status as the runtime's
/// own machinery (`status_unobserved`), which starts no CPU/memory sampling.
async fn watch_runtime(
    control: Arc<dyn RuntimeControl>,
    mut events: broadcast::Receiver<kinfra_core::Event>,
    shared: Arc<Shared>,
) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let refresh = tokio::select! {
            event = events.recv() => match event {
                Ok(event) => matches!(
                    event.kind,
                    EventKind::StateChanged { .. }
                        | EventKind::HealthChanged { .. }
                        | EventKind::PortAssigned { .. }
                        | EventKind::ProcessStarted { .. }
                        | EventKind::ProcessExited { .. }
                        | EventKind::ConfigReloaded { .. }
                        | EventKind::MaintenanceChanged { .. }
                        | EventKind::RuntimeStarted { .. }
                ),
                Err(broadcast::error::RecvError::Lagged(_)) => true,
                Err(broadcast::error::RecvError::Closed) => {
                    // The runtime is going away; keep the last table and stop watching.
                    return;
                }
            },
            _ = tick.tick() => true,
        };
        if refresh {
            // Take in whatever else is already queued, then rebuild once.
            while events.try_recv().is_ok() {}
            if shared.routes.apply_status(&control.status_unobserved()) {
                tracing::debug!("Proxy route table rebuilt.");
            }
        }
    }
}

/// Sends a probe request the proxy answers itself; true on `204`.
async fn probe(addr: SocketAddr, token: &str) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!(
            "GET / HTTP/1.1\r\nHost: kinfra-probe\r\n{PROBE_HEADER}: {token}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut buf = [0u8; 64];
        let mut got = 0;
        while got < 12 {
            let n = stream.read(&mut buf[got..]).await.ok()?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Some(buf[..got].starts_with(b"HTTP/1.1 204"))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

impl ProxyServer {
    /// Binds the listeners (so a taken port fails here, before anything else starts), loads or
    /// makes certificates, and starts pingora on its own OS threads via
    /// `Server::run(RunArgs { shutdown_signal })`. Returns once the proxy answers.
    ///
    /// Must be called within a tokio runtime: a task of the caller's runtime follows the
    /// runtime's events to keep the route table current.
    pub async fn start(
        options: ProxyOptions,
        control: Arc<dyn RuntimeControl>,
    ) -> Result<ProxyServer, ProxyError> {
        let config = &options.config;
        if !config.enabled {
            return Err(ProxyError::Disabled);
        }
        // pingora's rustls listener takes rustls' process-wide provider.
        kinfra_core::tls::install_crypto_provider();
        let http = parse_listen("proxy.http", config.http.as_ref())?;
        let https = parse_listen("proxy.https", config.https.as_ref())?;
        if http.is_none() && https.is_none() {
            return Err(ProxyError::NoListener);
        }
        let http = http.map(|a| bind("proxy.http", a)).transpose()?;
        let https = https.map(|a| bind("proxy.https", a)).transpose()?;
        let http_addr = http.as_ref().map(|(_, a)| *a);
        let https_addr = https.as_ref().map(|(_, a)| *a);

        let routes = RouteTable::build(&options.routes, &config.reserved_paths, FAIL_TIMEOUT)?;
        let templates =
            Templates::load(config.pages_dir.as_deref()).map_err(|source| ProxyError::Pages {
                dir: config.pages_dir.clone().unwrap_or_default(),
                source,
            })?;
        let certs_dir = https.is_some().then(|| options.state_dir.join("certs"));
        let certs = if let Some(certs_dir) = certs_dir.clone() {
            let mut names = options.tls_hosts.clone();
            names.extend(routes.hosts());
            tokio::task::spawn_blocking(move || load_certificates(&certs_dir, &names))
                .await
                .map_err(|e| ProxyError::Setup(format!("certificate task failed: {e}")))??
        } else {
            Arc::new(CertStore::new())
        };

        let route_state = RouteState::new(
            routes,
            options.dashboard_addr,
            config.maintenance,
            FAIL_TIMEOUT,
            options.activity.clone(),
        );
        let events = control.subscribe_events();
        route_state.apply_status(&control.status_unobserved());
        let route_state = Arc::new(route_state);
        let wakes = Arc::new(Wakes::new(
            control.clone(),
            tokio::runtime::Handle::current(),
            route_state.clone(),
            options.activity.is_some(),
        ));

        let (access_log, access_rx) = AccessLog::new();
        let challenges = Arc::new(ChallengeStore::new());
        let shared = Arc::new(Shared {
            routes: route_state,
            templates,
            settings: Settings {
                connect_timeout: config.connect_timeout.0,
                read_timeout: config.read_timeout.0,
                idle_timeout: config.idle_timeout.0,
                max_body: config.max_body_size.0,
                redirect_https_port: match (config.redirect_https, https_addr) {
                    (true, Some(a)) => Some(a.port()),
                    _ => None,
                },
            },
            inflight: Arc::new(InFlight::default()),
            access: access_log,
            challenges: challenges.clone(),
            probe_token: probe_token()?,
            metrics: ProxyMetrics::default(),
            wakes,
        });

        let threads = config.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        let conf = ServerConf {
            daemon: false,
            threads: threads.max(1),
            max_retries: 4,
            upstream_keepalive_pool_size: 512,
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(0),
            // pingora's "fast" timeouts run a clock thread that wakes every 10 ms for as
            // long as the process lives, once any request used one: idle CPU with nobody
            // connected. Timeouts of a second or more (all of kinfra's defaults, keep-alive
            // included) use tokio's timer instead, which sleeps when nothing is due.
            fast_timeout_to_tokio_threshold_seconds: Some(0),
            ..ServerConf::default()
        };
        let mut server = Server::new_with_opt_and_conf(None, conf);
        let conf = server.configuration.clone();

        let mut proxy = pingora::proxy::http_proxy(
            &conf,
            Edge {
                shared: shared.clone(),
            },
        );
        proxy.server_options = Some(HttpServerOptions::default());
        let mut service = ListeningService::new("kinfra-proxy".to_owned(), proxy);
        let tls_settings = if let Some((_, addr)) = &https {
            let mut tls = TlsSettings::intermediate("", "")
                .map_err(|e| ProxyError::Setup(format!("TLS settings for {addr}: {e}")))?;
            tls.set_cert_resolver(certs.clone());
            tls.enable_h2();
            Some(tls)
        } else {
            None
        };

        // From here on nothing fails before pingora owns the sockets.
        let mut fds = Fds::new();
        if let Some((listener, addr)) = http {
            let key = addr.to_string();
            fds.add(key.clone(), listener.into_raw_fd());
            service.add_tcp(&key);
        }
        if let (Some((listener, addr)), Some(tls)) = (https, tls_settings) {
            let key = addr.to_string();
            fds.add(key.clone(), listener.into_raw_fd());
            // TLS-ALPN-01 validation is answered before pingora's own handshake.
            service
                .endpoints()
                .set_pre_tls_callback(Arc::new(crate::tls::AcmeAlpnResponder::new(
                    challenges.clone(),
                )));
            service.add_tls_with_settings(&key, None, tls);
        }
        let (stop_listeners, listeners_rx) = watch::channel(false);
        let (started_tx, started_rx) = oneshot::channel();
        server.add_service(EdgeService {
            inner: service,
            fds: Arc::new(parking_lot::Mutex::new(fds)),
            shutdown: listeners_rx,
            started: Some(started_tx),
            threads: conf.threads,
        });

        let (stop_tx, stop_rx) = oneshot::channel();
        let signal = StopSignal(parking_lot::Mutex::new(Some(stop_rx)));
        let thread = std::thread::Builder::new()
            .name("kinfra-proxy".into())
            .spawn(move || {
                server.run(RunArgs {
                    shutdown_signal: Box::new(signal),
                });
            })
            .map_err(ProxyError::Thread)?;

        tokio::spawn(access::run(access_rx));
        let watcher = tokio::spawn(watch_runtime(control, events, shared.clone()));
        let handshake_reports = https_addr
            .is_some()
            .then(|| tokio::spawn(crate::handshake::report_periodically()));

        let mut proxy_server = ProxyServer {
            http_addr,
            https_addr,
            certs,
            challenges,
            shared,
            stop_listeners,
            stop_server: Some(stop_tx),
            thread: Some(thread),
            watcher: Some(watcher),
            handshake_reports,
            reserved_paths: config.reserved_paths.clone(),
            certs_dir,
            reload: tokio::sync::Mutex::new(()),
        };

        let ready = async {
            started_rx
                .await
                .map_err(|_| "the proxy service did not start".to_owned())?;
            if let Some(addr) = http_addr {
                let addr = reachable(addr);
                let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
                while !probe(addr, &proxy_server.shared.probe_token).await {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(format!("no answer on {addr}"));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            Ok::<(), String>(())
        };
        match tokio::time::timeout(READY_TIMEOUT, ready).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                proxy_server.stop_now().await;
                return Err(ProxyError::NotReady(reason));
            }
            Err(_) => {
                proxy_server.stop_now().await;
                return Err(ProxyError::NotReady(format!(
                    "no answer within {READY_TIMEOUT:?}"
                )));
            }
        }
        tracing::info!(
            http = ?http_addr,
            https = ?https_addr,
            threads,
            "Proxy listening."
        );
        Ok(proxy_server)
    }

    /// The plain HTTP listener's address (the real port when the config said 0).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The HTTPS listener's address.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// The certificates served by SNI; add or swap certificates here at run time.
    pub fn cert_resolver(&self) -> Arc<CertStore> {
        self.certs.clone()
    }

    /// The ACME HTTP-01 challenge answers served on plain HTTP.
    pub fn acme_challenges(&self) -> Arc<ChallengeStore> {
        self.challenges.clone()
    }

    /// Turns maintenance on or off for one service, or for every route (`None`). The dashboard
    /// paths keep answering.
    pub fn set_maintenance(&self, service: Option<&str>, on: bool) {
        self.shared.routes.set_maintenance(service, on);
        tracing::info!(
            service = service.unwrap_or("*"),
            on,
            "Proxy maintenance mode changed."
        );
    }

    /// `(global, services)`: the maintenance flags set with [`ProxyServer::set_maintenance`].
    pub fn maintenance(&self) -> (bool, Vec<String>) {
        self.shared.routes.maintenance()
    }

    /// Requests being handled right now.
    pub fn in_flight(&self) -> usize {
        self.shared.inflight.count()
    }

    /// Access log entries dropped because the log could not keep up.
    pub fn access_log_dropped(&self) -> u64 {
        self.shared.access.dropped()
    }

    /// A handle on the proxy's request counters, for `/metrics` (it outlives nothing: it
    /// reads the live proxy's counters).
    pub fn metrics(&self) -> ProxyMetricsHandle {
        ProxyMetricsHandle {
            shared: self.shared.clone(),
            tls: self.https_addr.is_some(),
        }
    }

    /// Replaces the routes (`[[routes]]` of a reloaded config, upstream URLs interpolated).
    ///
    /// The new table is built and checked first (upstream URLs parsed, host names resolved,
    /// certificates loaded or made for new route hosts when there is an HTTPS listener); when
    /// anything is wrong the error is returned and the old table keeps serving. Otherwise the
    /// new table, with the services' current state and the maintenance flags applied, replaces
    /// the old one in one atomic swap: a request routed before the swap finishes where it was
    /// sent, the next one uses the new table. Reserved paths are kept from the start.
    /// Certificates of hosts no route names any more are kept (they are harmless, and may be
    /// ACME's).
    pub async fn set_routes(&self, routes: Vec<RouteConfig>) -> Result<(), ProxyError> {
        let _one_at_a_time = self.reload.lock().await;
        let reserved = self.reserved_paths.clone();
        let certs = self.certs.clone();
        let certs_dir = self.certs_dir.clone();
        let count = routes.len();
        let table = tokio::task::spawn_blocking(move || {
            let table = RouteTable::build(&routes, &reserved, FAIL_TIMEOUT)?;
            if let Some(dir) = certs_dir {
                add_certificates(&certs, &dir, &table.hosts())?;
            }
            Ok::<RouteTable, ProxyError>(table)
        })
        .await
        .map_err(|e| ProxyError::Setup(format!("route table task failed: {e}")))??;
        self.shared.routes.set_routes(table);
        tracing::info!(routes = count, "Proxy routes replaced.");
        Ok(())
    }

    /// Takes in a change of the activity board's targets or policies
    /// ([`kinfra_core::activity::ActivityBoard::set_targets`], at a reload): the routing
    /// snapshot is rebuilt now, so requests to a newly tracked target record activity and
    /// wake it, and a target no longer tracked is routed as before. Without this call the
    /// change is taken in at the next rebuild (the next state change of any service).
    pub fn activity_changed(&self) {
        self.shared.routes.rebuild();
    }

    /// Rebuilds the route table from the runtime's status now (it also follows events by
    /// itself).
    pub fn refresh(&self, control: &dyn RuntimeControl) {
        self.shared
            .routes
            .apply_status(&control.status_unobserved());
    }

    /// Stops accepting, lets requests in flight finish within `grace`, then stops pingora and
    /// joins its threads.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop_listeners.send(true);
        let inflight = self.shared.inflight.clone();
        if tokio::time::timeout(grace, inflight.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = inflight.count(),
                ?grace,
                "Proxy grace period over; cutting the remaining requests."
            );
        }
        self.stop_now().await;
        tracing::info!("Proxy stopped.");
    }

    async fn stop_now(&mut self) {
        let _ = self.stop_listeners.send(true);
        if let Some(tx) = self.stop_server.take() {
            let _ = tx.send(());
        }
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
        }
        if let Some(reports) = self.handshake_reports.take() {
            reports.abort();
            // What the last period saw is not lost with the task.
            crate::handshake::report();
        }
        if let Some(thread) = self.thread.take()
            && tokio::task::spawn_blocking(move || thread.join())
                .await
                .is_err()
        {
            tracing::warn!("The proxy thread could not be joined.");
        }
        // pingora closes its listening sockets as its runtimes wind down, which can trail the
        // thread's end: wait (bounded) until the addresses are free again, so a proxy started
        // right after this one (a restart in the same process) can bind them.
        for addr in [self.http_addr, self.https_addr].into_iter().flatten() {
            wait_released(addr, Duration::from_secs(3)).await;
        }
    }
}

/// Waits until `addr` can be bound again (at most `limit`).
async fn wait_released(addr: SocketAddr, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match TcpListener::bind(addr) {
            Ok(_) => return,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(%addr, "The proxy's listening address is still taken after shutdown.");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => return,
        }
    }
}

impl Drop for ProxyServer {
    fn drop(&mut self) {
        let _ = self.stop_listeners.send(true);
        if let Some(tx) = self.stop_server.take() {
            let _ = tx.send(());
        }
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
        }
        if let Some(reports) = self.handshake_reports.take() {
            reports.abort();
        }
    }
}
