//! The Cloudflare tunnel (`[tunnel]`): kinfra's public hostnames through cloudflared.
//!
//! After the proxy listens, a background task creates or adopts the named tunnel and its
//! proxied CNAMEs (`kinfra_tunnel`), writes cloudflared's ingress config from the route table
//! into `state_dir/tunnel/config.yml` (every public hostname → kinfra's own proxy, so its
//! loading / 503 / maintenance pages serve tunnel traffic too; path rules from the routes;
//! the 404 catch-all last) and adds cloudflared as the supervised service `tunnel` (the same
//! logs, restart policy and probes as any service; readiness = its metrics server's `/ready`).
//! A missing cloudflared or a failing API call fails the tunnel alone, with the cause in
//! status; the services, the proxy and the dashboard run on.
//!
//! A reload re-renders the config and, when the text changed, writes it atomically and
//! restarts the service once; a changed `[tunnel]` table sets the tunnel up again. At `runtime
//! down`, `on_down = "delete"` removes the DNS records pointing at the tunnel. The API token
//! never leaves this module but to the API client: not in status, events, logs or
//! cloudflared's arguments (an adopted tunnel without local credentials gets its run token
//! through cloudflared's `TUNNEL_TOKEN` environment variable).

use super::AbortOnDrop;
use super::core::RuntimeCore;
use super::dashboard::interpolated_routes;
use super::reload::effective_services;
use kinfra_core::config::{Config, RouteConfig, ServiceConfig, TunnelConfig, TunnelOnDown};
use kinfra_core::event::EventKind;
use kinfra_core::secret::Secret;
use kinfra_core::state::{Health, ServiceState};
use kinfra_core::status::ServiceStatus;
use kinfra_tunnel::{
    CloudflareSettings, CloudflareTunnels, DnsAction, IngressConfig, IngressRule, TunnelHandle,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The service cloudflared runs as.
pub(super) const SERVICE: &str = "tunnel";

/// What a missing cloudflared says.
const INSTALL_HINT: &str = "install cloudflared: https://pkg.cloudflare.com (Debian/Ubuntu: \
    `apt install cloudflared` from Cloudflare's package repository; other systems: \
    https://developers.cloudflare.com/cloudflare-one/connections/connect-networks/downloads/), \
    or set [tunnel] cloudflared = \"/path/to/cloudflared\"";

/// How often cloudflared's `/ready` is read while it runs (a local call).
const READY_EVERY: Duration = Duration::from_secs(2);
/// How often the API's view of the tunnel's connections is read.
const API_EVERY: Duration = Duration::from_secs(30);
/// The longest `runtime down` waits for the DNS records' removal.
const DOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// The tunnel as the runtime lives it: shared by status, reload and shutdown, moved by its
/// setup task.
#[derive(Default)]
pub(super) struct TunnelSlot {
    /// The core, for the setup task (set once at start).
    core: OnceLock<Weak<RuntimeCore>>,
    /// kinfra's proxy as cloudflared reaches it (`http://127.0.0.1:PORT`).
    origin: OnceLock<String>,
    state: Mutex<TunnelState>,
    /// The setup task, then its connection watch (replaced when the tunnel is set up again).
    task: Mutex<Option<AbortOnDrop>>,
}

/// Where the tunnel is.
#[derive(Default)]
struct TunnelState {
    /// The `[tunnel]` table it runs (`None`: no tunnel).
    config: Option<TunnelConfig>,
    phase: Phase,
    /// The tunnel's name at Cloudflare.
    name: String,
    /// Its id, once created or adopted.
    id: Option<String>,
    /// Whether this start created it (else adopted).
    created: Option<bool>,
    /// What the last DNS pass did, per hostname.
    dns: Vec<(String, &'static str)>,
    /// The last problem (setup, API poll, config write), secrets masked.
    last_error: Option<String>,
    /// Connections as the API lists them (last poll).
    api_connections: Option<Vec<kinfra_tunnel::TunnelConnection>>,
    /// `readyConnections` from cloudflared's `/ready` (last read).
    ready_connections: Option<u64>,
    /// Once the service is defined.
    running: Option<Running>,
}

/// The setup's stage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Phase {
    /// Not configured, or stopped with the runtime.
    #[default]
    Off,
    /// Setting up (binary, API, DNS, config), with what it is doing.
    Starting(String),
    /// The setup failed; nothing runs.
    Failed,
    /// cloudflared is the service `tunnel`: its state is the tunnel's.
    Service,
}

/// A tunnel whose cloudflared is (or is about to be) the service `tunnel`.
struct Running {
    client: Arc<CloudflareTunnels>,
    handle: TunnelHandle,
    service: ServiceConfig,
    config_file: PathBuf,
    metrics: SocketAddr,
    /// The config text last written.
    rendered: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// The config file and credentials directory: `state_dir/tunnel`, absolute (it is in
/// cloudflared's arguments and in status).
fn tunnel_dir(state_dir: &Path) -> PathBuf {
    let dir = state_dir.join("tunnel");
    std::path::absolute(&dir).unwrap_or(dir)
}

/// Starts the tunnel of `config` (when it has one) in the background: the proxy listens
/// (`proxy_http` is its plain HTTP address) and the core is set.
pub(super) fn start(core: &Arc<RuntimeCore>, config: &Config, proxy_http: Option<SocketAddr>) {
    let slot = &core.tunnel;
    let _ = slot.core.set(Arc::downgrade(core));
    if let Some(addr) = proxy_http {
        let host = match addr.ip() {
            ip if ip.is_unspecified() && addr.is_ipv4() => "127.0.0.1".to_owned(),
            ip if ip.is_unspecified() => "[::1]".to_owned(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let _ = slot.origin.set(format!("http://{host}:{}", addr.port()));
    }
    slot.set_up(config.tunnel.clone(), &config.project.name);
}

impl TunnelSlot {
    /// (Re)starts the setup for `config` (stopping any earlier one); `None` forgets the tunnel.
    fn set_up(&self, config: Option<TunnelConfig>, project: &str) {
        let previous = lock(&self.task).take();
        drop(previous);
        {
            let mut state = lock(&self.state);
            *state = TunnelState::default();
            if let Some(t) = &config {
                state.name = t.tunnel_name(project);
                state.phase = Phase::Starting("setting up the tunnel".into());
            }
            state.config = config.clone();
        }
        let (Some(tunnel), Some(core)) = (config, self.core.get().cloned()) else {
            return;
        };
        let task = tokio::spawn(run(core, tunnel));
        *lock(&self.task) = Some(AbortOnDrop(task));
    }

    fn set_phase(&self, phase: Phase) {
        lock(&self.state).phase = phase;
    }

    fn fail(&self, error: String) {
        tracing::warn!(%error, "The tunnel failed; everything else runs on.");
        let mut state = lock(&self.state);
        state.phase = Phase::Failed;
        state.last_error = Some(error);
    }

    /// Puts the `tunnel` service into the set a reload applies, when it runs and `[tunnel]`
    /// did not change (a changed one is set up again: its service leaves with this reload).
    pub(super) fn keep_service(
        &self,
        old: &Config,
        new: &Config,
        services: &mut BTreeMap<String, ServiceConfig>,
    ) {
        if old.tunnel != new.tunnel {
            return;
        }
        if let Some(running) = &lock(&self.state).running {
            services.insert(SERVICE.to_owned(), running.service.clone());
        }
    }

    /// After a reload was applied (the reload lock is held): a changed `[tunnel]` is set up
    /// again, and so is a failed one (a reload is how a user retries it); otherwise the config is rendered from the new routes and, when its text
    /// changed, written and cloudflared restarted once.
    pub(super) async fn reloaded(&self, core: &RuntimeCore, old: &Config, new: &Config) {
        let failed = lock(&self.state).phase == Phase::Failed;
        if old.tunnel != new.tunnel || failed {
            // A changed `[tunnel]` is set up anew; a failed one is tried again.
            self.set_up(new.tunnel.clone(), &new.project.name);
            return;
        }
        let changed = {
            let mut state = lock(&self.state);
            let Some(origin) = self.origin.get() else {
                return;
            };
            let Some(running) = state.running.as_mut() else {
                return;
            };
            let Some(tunnel) = &new.tunnel else {
                return;
            };
            match render(tunnel, new, origin, &running.handle, running.metrics) {
                Ok(text) if text == running.rendered => Ok(false),
                Ok(text) => match write_atomically(&running.config_file, &text) {
                    Ok(()) => {
                        running.rendered = text;
                        Ok(true)
                    }
                    Err(error) => Err(error),
                },
                Err(error) => Err(error),
            }
        };
        match changed {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!(
                    service = SERVICE,
                    "The routes changed: cloudflared's config was rewritten; restarting it."
                );
                if let Err(error) = core
                    .supervisor
                    .act(kinfra_core::view::Action::Restart, SERVICE)
                    .await
                {
                    self.note_error(format!("cannot restart cloudflared: {error}"));
                }
            }
            Err(error) => self.note_error(error),
        }
    }

    fn note_error(&self, error: String) {
        tracing::warn!(service = SERVICE, %error, "Tunnel problem.");
        lock(&self.state).last_error = Some(error);
    }

    /// At `runtime down`, after the services stopped: ends the watch and, with
    /// `on_down = "delete"`, removes the DNS records that point at the tunnel (bounded).
    pub(super) async fn down(&self) {
        let task = lock(&self.task).take();
        drop(task);
        let removal = {
            let mut state = lock(&self.state);
            state.phase = Phase::Off;
            match (&state.config, &state.running) {
                (Some(t), Some(running)) if t.on_down == TunnelOnDown::Delete => Some((
                    running.client.clone(),
                    running.handle.id.clone(),
                    t.hostnames.clone(),
                )),
                _ => None,
            }
        };
        let Some((client, id, hostnames)) = removal else {
            return;
        };
        match tokio::time::timeout(DOWN_TIMEOUT, client.remove_dns(&id, &hostnames)).await {
            Ok(Ok(changes)) => {
                for change in changes {
                    tracing::info!(hostname = %change.hostname, action = dns_action(change.action), "Tunnel DNS record at down.");
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "Cannot remove the tunnel's DNS records (on_down = \"delete\").")
            }
            Err(_) => tracing::warn!(
                timeout_s = DOWN_TIMEOUT.as_secs(),
                "The tunnel's DNS records were not removed in time (on_down = \"delete\")."
            ),
        }
    }

    /// The `tunnel` block of `/__status__` (`None` without `[tunnel]`).
    pub(super) fn report(
        &self,
        services: &BTreeMap<String, ServiceStatus>,
        config: &Config,
    ) -> Option<Value> {
        let state = lock(&self.state);
        let tunnel = state.config.as_ref()?;
        let service = services.get(SERVICE);
        let (word, message) = match &state.phase {
            Phase::Off => ("stopped".to_owned(), "stopped".to_owned()),
            Phase::Starting(doing) => ("starting".to_owned(), doing.clone()),
            Phase::Failed => (
                "failed".to_owned(),
                state.last_error.clone().unwrap_or_default(),
            ),
            Phase::Service => match service {
                Some(s) if s.state == ServiceState::Running && s.health == Health::Healthy => {
                    ("running".to_owned(), s.status_message.clone())
                }
                Some(s) if s.state == ServiceState::Running => (
                    "starting".to_owned(),
                    "cloudflared runs; waiting for /ready".to_owned(),
                ),
                Some(s) => (s.state.as_str().to_owned(), s.status_message.clone()),
                None => ("starting".to_owned(), "adding the service".to_owned()),
            },
        };
        let published = published_routes(tunnel, config);
        let hostnames: Vec<Value> = tunnel
            .hostnames
            .iter()
            .map(|host| {
                let urls: Vec<String> = published
                    .iter()
                    .filter(|(h, _)| h == host)
                    .map(|(h, path)| format!("https://{h}{path}"))
                    .collect();
                json!({"hostname": host, "urls": urls})
            })
            .collect();
        let urls: Vec<String> = published
            .iter()
            .map(|(h, path)| format!("https://{h}{path}"))
            .collect();
        let running = state.running.as_ref();
        Some(json!({
            "provider": tunnel.provider_id(),
            "state": word,
            "message": message,
            "name": state.name,
            "id": state.id,
            "created": state.created,
            "service": SERVICE,
            "hostnames": hostnames,
            "urls": urls,
            "dns": state.dns.iter().map(|(h, a)| json!({"hostname": h, "action": a})).collect::<Vec<_>>(),
            "connections": state.api_connections.as_ref().map(Vec::len),
            "colos": state.api_connections.as_ref().map(|c| {
                let mut colos: Vec<&str> = c.iter().map(|c| c.colo.as_str()).collect();
                colos.sort_unstable();
                colos.dedup();
                colos
            }),
            "ready_connections": state.ready_connections,
            "metrics": running.map(|r| r.metrics.to_string()),
            "config_file": running.map(|r| r.config_file.display().to_string()),
            "origin": self.origin.get(),
            "on_down": tunnel.on_down,
            "last_error": state.last_error,
        }))
    }
}

/// The routes each tunnel hostname publishes, as (hostname, path): a route without a host
/// is on every hostname; one with a host only on the hostnames it matches.
fn published_routes(tunnel: &TunnelConfig, config: &Config) -> Vec<(String, String)> {
    let routes = interpolated_routes(config);
    let mut out = Vec::new();
    for host in &tunnel.hostnames {
        for route in &routes {
            if route_matches(route, host) {
                let pair = (host.clone(), route.path.clone());
                if !out.contains(&pair) {
                    out.push(pair);
                }
            }
        }
    }
    out
}

/// Whether `route` answers requests for `hostname` (the proxy's host match: exact, or a
/// `*.example.com` route over a name under it).
fn route_matches(route: &RouteConfig, hostname: &str) -> bool {
    let Some(host) = &route.host else {
        return true;
    };
    let host = host.to_ascii_lowercase();
    let hostname = hostname.to_ascii_lowercase();
    match host.strip_prefix("*.") {
        Some(suffix) => hostname
            .strip_suffix(suffix)
            .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
        None => host == hostname,
    }
}

/// cloudflared's `config.yml` for the routes of `config`.
fn render(
    tunnel: &TunnelConfig,
    config: &Config,
    origin: &str,
    handle: &TunnelHandle,
    metrics: SocketAddr,
) -> Result<String, String> {
    let mut rules: Vec<IngressRule> = tunnel.hostnames.iter().map(IngressRule::host).collect();
    for (host, path) in published_routes(tunnel, config) {
        if path.trim_end_matches('/').is_empty() {
            continue;
        }
        rules.push(IngressRule::path(host, path));
    }
    IngressConfig {
        tunnel_id: handle.id.clone(),
        credentials_file: handle.credentials_file.clone(),
        origin: origin.to_owned(),
        metrics: Some(metrics),
        rules,
    }
    .render()
    .map_err(|e| {
        format!(
            "cannot write cloudflared's config: {}",
            e.problems.join("; ")
        )
    })
}

/// Writes `text` to `path` through a temporary file and a rename (0600), so cloudflared never
/// reads half a file.
fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let tmp = path.with_extension("yml.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(text.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// `${VAR}` in `text` from the environment (an unset one is an error naming `key`).
fn from_env(key: &str, text: &str) -> Result<String, String> {
    let lookup = |name: &str| {
        if name == "PORT" || name.contains('.') {
            None
        } else {
            std::env::var(name).ok()
        }
    };
    kinfra_core::config::interpolate::interpolate(text, &lookup)
        .map_err(|e| format!("tunnel.{key}: {e}"))
}

/// The API settings: `${VAR}` filled in, the token read from `token_file` (the user's own,
/// not writable by others).
fn settings(tunnel: &TunnelConfig, config: &Config) -> Result<CloudflareSettings, String> {
    let account_id = from_env("account_id", tunnel.account_id.as_deref().unwrap_or(""))?;
    let zone_id = from_env("zone_id", tunnel.zone_id.as_deref().unwrap_or(""))?;
    let token = match (&tunnel.token, &tunnel.token_file) {
        (Some(token), _) => Secret::new(from_env("token", token.expose())?),
        (None, Some(file)) => {
            let path = config.resolve_path(file);
            crate::ownership::check_private(&path)
                .map_err(|e| format!("tunnel.token_file: {e}"))?;
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("tunnel.token_file: cannot read {}: {e}", path.display()))?;
            Secret::new(text.trim())
        }
        (None, None) => return Err("tunnel.token: no API token".into()),
    };
    if token.expose().trim().is_empty() {
        return Err("tunnel.token: the API token is empty".into());
    }
    let base_url = match &tunnel.base_url {
        Some(url) => Some(from_env("base_url", url)?),
        None => None,
    };
    Ok(CloudflareSettings {
        account_id,
        zone_id,
        token,
        base_url,
        timeout: None,
    })
}

/// The cloudflared program: a path (relative to the config file's directory) or a name on
/// PATH; an error with the install hint when it is nowhere.
fn find_cloudflared(tunnel: &TunnelConfig, config: &Config) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let program = tunnel.cloudflared_program();
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = config.resolve_path(Path::new(program));
        if executable(&path) {
            return Ok(path);
        }
        return Err(format!(
            "cloudflared not found at {} ({INSTALL_HINT})",
            path.display()
        ));
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| executable(p))
    });
    found.ok_or_else(|| format!("`{program}` is not on PATH ({INSTALL_HINT})"))
}

/// `metrics`, or 127.0.0.1 on a port free now.
fn metrics_addr(tunnel: &TunnelConfig) -> Result<SocketAddr, String> {
    if let Some(text) = &tunnel.metrics {
        return text
            .parse()
            .map_err(|_| format!("tunnel.metrics: invalid address `{text}`"));
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot find a free port for cloudflared's metrics: {e}"))?;
    listener
        .local_addr()
        .map_err(|e| format!("cannot find a free port for cloudflared's metrics: {e}"))
}

/// cloudflared as a service: `cloudflared tunnel --no-autoupdate --config FILE --metrics
/// ADDR run`, ready when `http://ADDR/ready` answers 200; a run token only through the
/// environment.
fn service_config(
    program: &Path,
    config_file: &Path,
    metrics: SocketAddr,
    run_token: Option<&Secret>,
) -> Result<ServiceConfig, String> {
    let mut env = serde_json::Map::new();
    if let Some(token) = run_token {
        env.insert("TUNNEL_TOKEN".into(), token.expose().into());
    }
    let spec = json!({
        "command": [
            program.display().to_string(), "tunnel", "--no-autoupdate",
            "--config", config_file.display().to_string(),
            "--metrics", metrics.to_string(), "run",
        ],
        "env": env,
        "health": {"http": format!("http://{metrics}/ready"), "interval": "2s", "timeout": "2s"},
        "stop_grace": "10s",
    });
    serde_json::from_value(spec).map_err(|e| format!("the cloudflared service: {e}"))
}

/// The setup, then the connection watch, for as long as the core lives.
async fn run(core: Weak<RuntimeCore>, tunnel: TunnelConfig) {
    let Some(strong) = core.upgrade() else {
        return;
    };
    if let Err(error) = set_up(&strong, &tunnel).await {
        strong.tunnel.fail(error.clone());
        // Said like a service's failure: in `runtime up`'s output, the stream the dashboard
        // follows (its panel reads the block again), the bus and the store.
        strong.events.emit(EventKind::StateChanged {
            service: SERVICE.to_owned(),
            from: ServiceState::Starting,
            to: ServiceState::Failed,
            message: format!("tunnel: {error}"),
        });
        return;
    }
    drop(strong);
    watch(core).await;
}

/// Binary, API (tunnel, DNS), config file, service.
async fn set_up(core: &Arc<RuntimeCore>, tunnel: &TunnelConfig) -> Result<(), String> {
    let slot = &core.tunnel;
    let config = core.current_config();
    let program = find_cloudflared(tunnel, &config)?;
    let origin = slot
        .origin
        .get()
        .cloned()
        .ok_or("the proxy has no HTTP listener for cloudflared to forward to")?;
    let settings = settings(tunnel, &config)?;
    let client = Arc::new(CloudflareTunnels::new(settings).map_err(|e| e.to_string())?);
    let dir = tunnel_dir(&core.state_dir);
    create_private_dir(&dir)?;
    let name = tunnel.tunnel_name(&config.project.name);
    slot.set_phase(Phase::Starting(format!(
        "creating or adopting tunnel `{name}`"
    )));
    let handle = client
        .ensure_tunnel(&name, &dir)
        .await
        .map_err(|e| e.to_string())?;
    {
        let mut state = lock(&slot.state);
        state.id = Some(handle.id.clone());
        state.created = Some(handle.created);
        state.phase = Phase::Starting("setting the DNS records".into());
    }
    tracing::info!(tunnel = %handle.name, id = %handle.id, created = handle.created, "Tunnel ready at Cloudflare.");
    let changes = client
        .ensure_dns(&handle.id, &tunnel.hostnames)
        .await
        .map_err(|e| e.to_string())?;
    for change in &changes {
        tracing::info!(hostname = %change.hostname, action = dns_action(change.action), "Tunnel DNS record.");
    }
    lock(&slot.state).dns = changes
        .iter()
        .map(|c| (c.hostname.clone(), dns_action(c.action)))
        .collect();
    let metrics = metrics_addr(tunnel)?;
    let config_file = dir.join("config.yml");
    let service = service_config(&program, &config_file, metrics, handle.run_token.as_ref())?;
    // Under the reload lock: the config is rendered from the routes that run, and the service
    // joins the set the supervisor runs exactly as a reload would add it.
    let _one_at_a_time = core.reloading.lock().await;
    if core.shutting_down.load(Ordering::SeqCst) {
        return Err("the runtime is stopping".into());
    }
    let config = core.current_config();
    if config.tunnel.as_ref() != Some(tunnel) {
        // A reload changed `[tunnel]` meanwhile; its own setup follows.
        return Ok(());
    }
    let rendered = render(tunnel, &config, &origin, &handle, metrics)?;
    write_atomically(&config_file, &rendered)?;
    {
        let mut state = lock(&slot.state);
        state.phase = Phase::Service;
        state.running = Some(Running {
            client,
            handle,
            service: service.clone(),
            config_file,
            metrics,
            rendered,
        });
    }
    let mut services = effective_services(&config);
    services.insert(SERVICE.to_owned(), service);
    // Not a reload of the user's config: no `config reloaded` event for it.
    core.supervisor
        .apply_unannounced(&services)
        .await
        .map_err(|e| format!("cannot add the service `{SERVICE}`: {e}"))?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

fn dns_action(action: DnsAction) -> &'static str {
    match action {
        DnsAction::Created => "created",
        DnsAction::Updated => "updated",
        DnsAction::Unchanged => "unchanged",
        DnsAction::Deleted => "deleted",
        DnsAction::Kept => "kept",
    }
}

/// While the core lives: cloudflared's `readyConnections` every [`READY_EVERY`] while the
/// service runs, and the API's connections when a new cloudflared process is ready and every
/// [`API_EVERY`].
async fn watch(core: Weak<RuntimeCore>) {
    let mut last_api: Option<tokio::time::Instant> = None;
    let mut polled_pid: Option<u32> = None;
    loop {
        tokio::time::sleep(READY_EVERY).await;
        let Some(core) = core.upgrade() else {
            return;
        };
        if core.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        let slot = &core.tunnel;
        let (metrics, client, id) = {
            let state = lock(&slot.state);
            let Some(running) = &state.running else {
                continue;
            };
            (
                running.metrics,
                running.client.clone(),
                running.handle.id.clone(),
            )
        };
        let pid = core
            .supervisor
            .status()
            .get(SERVICE)
            .filter(|s| s.state == ServiceState::Running)
            .and_then(|s| s.pid);
        let ready = match pid {
            Some(_) => read_ready(metrics).await,
            None => None,
        };
        lock(&slot.state).ready_connections = ready;
        let new_process = ready.is_some() && pid != polled_pid;
        if new_process {
            polled_pid = pid;
        }
        if new_process || last_api.is_none_or(|at| at.elapsed() >= API_EVERY) {
            last_api = Some(tokio::time::Instant::now());
            match client.connections(&id).await {
                Ok(connections) => lock(&slot.state).api_connections = Some(connections),
                Err(error) => slot.note_error(error.to_string()),
            }
        }
    }
}

/// `readyConnections` from `GET http://ADDR/ready` (200 with a JSON body), or `None`.
async fn read_ready(addr: SocketAddr) -> Option<u64> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET /ready HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        stream.take(64 * 1024).read_to_end(&mut answer).await.ok()?;
        Some(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()??;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status_ok = head
        .lines()
        .next()
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("200"));
    if !status_ok {
        return None;
    }
    serde_json::from_str::<Value>(body.trim())
        .ok()?
        .get("readyConnections")?
        .as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, path: &str) -> RouteConfig {
        RouteConfig {
            host: host.map(str::to_owned),
            path: path.to_owned(),
            strip_prefix: false,
            service: Some("web".into()),
            upstream: None,
        }
    }

    #[test]
    fn routes_are_published_on_the_hostnames_they_match() {
        assert!(route_matches(&route(None, "/"), "app.example.com"));
        assert!(route_matches(
            &route(Some("App.Example.com"), "/"),
            "app.example.com"
        ));
        assert!(!route_matches(
            &route(Some("localhost"), "/"),
            "app.example.com"
        ));
        assert!(route_matches(
            &route(Some("*.example.com"), "/"),
            "app.example.com"
        ));
        assert!(!route_matches(
            &route(Some("*.example.com"), "/"),
            "example.com"
        ));
    }
}
