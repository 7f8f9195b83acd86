//! Starting the subsystems after the store, one step each, in the order they must start.
//!
//! Order: the dashboard's event history → the listeners (dashboard, control socket) → the
//! bus → the proxy → ACME → the supervisor with services and resources → the runtime core →
//! serving the dashboard and the control socket. Each step that fails stops what the steps
//! before it started (`Edge::stop`); the caller closes the store.

use super::core::{LateControl, RuntimeCore, sample_processes};
use super::dashboard::{dashboard_hosts, dashboard_token, interpolated_routes, secret_values};
use super::providers::{
    CommandTarget, ProviderInstances, follow_instances, provider_resources, runtime_catalog,
};
use super::reload::effective_services;
use super::resources::container_resources;
use super::scale::ScaleToZero;
use super::{AbortOnDrop, ProxyFacts, Runtime, RuntimeOptions, StartError, shutdown_timeout};
use crate::control::{BoundControl, ControlServer};
use crate::lock::StateLock;
use crate::maintenance::Maintenance;
use crate::procstat::ProcessSampler;
use kinfra_bus::{Bus, BusOptions};
use kinfra_core::config::Config;
use kinfra_core::control::RuntimeInfo;
use kinfra_core::event::{EventKind, EventSender};
use kinfra_core::view::RuntimeControl;
use kinfra_dashboard::auth::AccessPolicy;
use kinfra_dashboard::sse::EventHistory;
use kinfra_dashboard::{ConnectionLimits, DashboardOptions, DashboardServer};
use kinfra_proxy::{ProxyOptions, ProxyServer};
use kinfra_store::{Persistence, Store};
use kinfra_supervisor::{Supervisor, SupervisorOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio::sync::watch;

/// The listeners, bound before anything runs so a taken port fails first.
struct Listeners {
    /// The dashboard's access rules (the core keeps a clone to update its hosts on reload).
    policy: AccessPolicy,
    dashboard: Option<tokio::net::TcpListener>,
    control: BoundControl,
}

/// The edge of the runtime (bus, proxy, ACME), stopped again if a later step fails.
struct Edge {
    bus: Bus,
    proxy: Option<ProxyServer>,
    acme: Option<kinfra_acme::AcmeHandle>,
}

impl Edge {
    /// Stops, in reverse start order, everything started.
    async fn stop(self) {
        if let Some(acme) = self.acme {
            acme.shutdown().await;
        }
        if let Some(proxy) = self.proxy {
            proxy.shutdown(Duration::from_secs(2)).await;
        }
        self.bus.shutdown(Duration::from_secs(2)).await;
    }
}

/// Everything after the store: listeners, bus, proxy, ACME, supervisor, dashboard, control.
/// On an error, what this started is stopped again (the caller closes the store).
pub(super) async fn start_subsystems(
    config: Config,
    options: RuntimeOptions,
    state_dir: PathBuf,
    lock: StateLock,
    events: EventSender,
    store: Option<Store>,
    persistence: Option<Persistence>,
) -> Result<Runtime, StartError> {
    // The dashboard keeps recent events for streams that resume; it records from before the
    // first service starts.
    let history = EventHistory::new(10_000);
    let history_task = AbortOnDrop(history.clone().record(events.subscribe()));
    let listeners = bind_listeners(&config, &state_dir).await?;
    let dashboard_addr = listeners
        .dashboard
        .as_ref()
        .and_then(|l| l.local_addr().ok());

    // Subsystems that start before the core see it through this late-bound control: events
    // from the first one, everything else once the core is set.
    let late = Arc::new(LateControl::new(events.clone(), &config.project.name));
    // Scale to zero: the proxy records activity on this board from its first request.
    let activity = ScaleToZero::board_for(&config);
    let edge = start_edge(EdgeInputs {
        config: &config,
        state_dir: &state_dir,
        events: &events,
        store: store.as_ref(),
        dashboard_addr,
        late: &late,
        activity: &activity,
    })
    .await?;
    // Before any service starts, so the controller sees every target turn running.
    let scale_events = events.subscribe();
    let (supervisor, command_targets, instances) = match start_supervisor(
        &config,
        &state_dir,
        &events,
        store.as_ref(),
        persistence,
        &options.providers,
    )
    .await
    {
        Ok(started) => started,
        Err(error) => {
            edge.stop().await;
            return Err(error);
        }
    };
    let Edge { bus, proxy, acme } = edge;
    let scale = Arc::new(ScaleToZero::new(
        activity,
        supervisor.clone(),
        events.clone(),
    ));

    let (shutdown_requested, _) = watch::channel(None);
    let core = Arc::new(RuntimeCore {
        project: config.project.name.clone(),
        events: events.clone(),
        supervisor,
        shutdown_requested,
        shutting_down: AtomicBool::new(false),
        current: std::sync::Mutex::new(config.clone()),
        config_file: options.config_file.clone(),
        reloading: tokio::sync::Mutex::new(()),
        sampler: ProcessSampler::default(),
        maintenance: std::sync::Mutex::new(Maintenance::load(&state_dir, &config)),
        state_dir: state_dir.clone(),
        bus,
        store,
        proxy: tokio::sync::Mutex::new(None),
        proxy_enabled: proxy.is_some(),
        proxy_metrics: proxy.as_ref().map(ProxyServer::metrics),
        pending_restart: std::sync::Mutex::new(Vec::new()),
        providers: options.providers.clone(),
        instances,
        command_targets: std::sync::Mutex::new(command_targets),
        dashboard_policy: listeners
            .dashboard
            .is_some()
            .then(|| listeners.policy.clone()),
        acme: std::sync::Mutex::new(acme),
        tunnel: Default::default(),
        scale,
    });
    late.set(core.clone());
    core.scale.set_targets(&config, Some(scale_events));
    // Ends by itself at `RuntimeStopping` or once the core is gone.
    drop(tokio::spawn(follow_instances(
        Arc::downgrade(&core),
        events.subscribe(),
    )));
    if let Some(proxy) = &proxy {
        proxy.refresh(&*core);
    }
    let sampler_task = AbortOnDrop(tokio::spawn(sample_processes(
        core.supervisor.clone(),
        core.sampler.clone(),
    )));

    let proxy_facts = proxy.as_ref().map(ProxyFacts::of);
    *core.proxy.lock().await = proxy;
    // The proxy listens: the tunnel (when configured) is set up in the background.
    super::tunnel::start(&core, &config, proxy_facts.as_ref().and_then(|p| p.http));
    let (dashboard, control) =
        match serve_views(&config, &core, listeners, history, proxy_facts.as_ref()) {
            Ok(views) => views,
            Err(error) => {
                core.supervisor.shutdown(shutdown_timeout(&config)).await;
                return Err(error);
            }
        };
    events.emit(EventKind::RuntimeStarted {
        project: config.project.name.clone(),
    });
    tracing::info!(project = %config.project.name, state_dir = %state_dir.display(), "Runtime started.");
    Ok(Runtime {
        core,
        config,
        state_dir,
        dashboard,
        proxy: proxy_facts,
        control,
        _history_task: history_task,
        _sampler_task: sampler_task,
        _lock: lock,
    })
}

/// Binds the dashboard listener and the control socket (nothing is served yet).
async fn bind_listeners(config: &Config, state_dir: &Path) -> Result<Listeners, StartError> {
    let (token, token_configured) = dashboard_token(config, state_dir)?;
    let dashboard = if config.dashboard.enabled {
        Some(DashboardServer::bind(&config.dashboard.listen, token_configured).await?)
    } else {
        None
    };
    let control = ControlServer::bind(state_dir)?;
    Ok(Listeners {
        policy: AccessPolicy::new(token, dashboard_hosts(config)),
        dashboard,
        control,
    })
}

/// What the edge's subsystems start from.
#[derive(Clone, Copy)]
struct EdgeInputs<'a> {
    config: &'a Config,
    state_dir: &'a Path,
    events: &'a EventSender,
    store: Option<&'a Store>,
    dashboard_addr: Option<std::net::SocketAddr>,
    late: &'a Arc<LateControl>,
    /// Scale to zero's activity board (the proxy records requests on it).
    activity: &'a Arc<kinfra_core::activity::ActivityBoard>,
}

/// The bus, then the proxy and ACME. The bus starts before the first service so every event
/// is published; the proxy binds its ports before any service starts; stored certificates are
/// served before any service starts, and orders and renewals run in the background. A failure
/// stops what this started.
async fn start_edge(at: EdgeInputs<'_>) -> Result<Edge, StartError> {
    let EdgeInputs {
        config,
        state_dir,
        events,
        late,
        ..
    } = at;
    let bus = Bus::start(
        BusOptions {
            project: config.project.name.clone(),
            state_dir: state_dir.to_path_buf(),
            config: config.bus.clone(),
            base_dir: config.base_dir.clone(),
            events: Some(events.clone()),
            secrets: secret_values(config),
            search_path: None,
            node: Some(config.node.effective_name()),
            heartbeat: config.node.heartbeat.0,
        },
        late.clone(),
    )
    .await?;
    let mut edge = Edge {
        bus,
        proxy: None,
        acme: None,
    };
    match start_proxy_and_acme(at, &mut edge).await {
        Ok(()) => Ok(edge),
        Err(error) => {
            edge.stop().await;
            Err(error)
        }
    }
}

/// The proxy (when enabled) and ACME (when `[acme]` is set), into `edge` as each comes up.
async fn start_proxy_and_acme(at: EdgeInputs<'_>, edge: &mut Edge) -> Result<(), StartError> {
    let EdgeInputs {
        config,
        state_dir,
        events,
        store,
        dashboard_addr,
        late,
        activity,
    } = at;
    if !config.proxy.enabled {
        return Ok(());
    }
    let proxy = ProxyServer::start(
        ProxyOptions {
            config: config.proxy.clone(),
            routes: interpolated_routes(config),
            dashboard_addr,
            state_dir: state_dir.to_path_buf(),
            tls_hosts: dashboard_hosts(config),
            activity: Some(activity.clone()),
        },
        late.clone(),
    )
    .await?;
    let proxy = edge.proxy.insert(proxy);
    // (Validation made sure the proxy serves HTTPS and the store runs when `[acme]` is set.)
    if let (Some(acme_config), Some(store)) = (&config.acme, store) {
        let acme = kinfra_acme::AcmeService::start(
            acme_config.clone(),
            kinfra_acme::AcmeOptions {
                state_dir: Some(state_dir.to_path_buf()),
                ..kinfra_acme::AcmeOptions::default()
            },
            store.clone(),
            proxy.cert_resolver(),
            proxy.acme_challenges(),
            events.clone(),
        )
        .await?;
        edge.acme = Some(acme);
    }
    Ok(())
}

/// Builds the container resources (ports from the same registry as the services') and the
/// provider resources, and starts the supervisor with them and the services. The provider
/// instances are initialized first (provider found, token read: ready, or failed with the
/// reason).
async fn start_supervisor(
    config: &Config,
    state_dir: &Path,
    events: &EventSender,
    store: Option<&Store>,
    mut persistence: Option<Persistence>,
    providers: &[Arc<dyn kinfra_provider::provider::Provider>],
) -> Result<
    (
        Supervisor,
        BTreeMap<String, CommandTarget>,
        ProviderInstances,
    ),
    StartError,
> {
    let mut resources = container_resources(
        config,
        state_dir,
        events,
        persistence.as_mut().map(|p| &mut p.ports),
        store,
    )
    .await?;
    let catalog = runtime_catalog(config, state_dir, providers).await;
    let instances = ProviderInstances::default();
    instances.reconcile(config, catalog.as_ref());
    let built = provider_resources(config, catalog.as_ref()).await?;
    resources.extend(built.specs);
    let options = SupervisorOptions {
        project: config.project.name.clone(),
        state_dir: state_dir.to_path_buf(),
        base_dir: config.base_dir.clone(),
        // Merged into each service by `effective_services`, so reloads see it.
        global_env: BTreeMap::new(),
        events: events.clone(),
        external: Vec::new(),
        resources,
        persistence,
    };
    Ok((
        Supervisor::start(&effective_services(config), options).await?,
        built.targets,
        instances,
    ))
}

/// Serves the dashboard and the control socket on the listeners bound at the start.
fn serve_views(
    config: &Config,
    core: &Arc<RuntimeCore>,
    listeners: Listeners,
    history: Arc<EventHistory>,
    proxy: Option<&ProxyFacts>,
) -> Result<(Option<DashboardServer>, ControlServer), StartError> {
    let view: Arc<dyn RuntimeControl> = core.clone();
    let dashboard = match listeners.dashboard {
        Some(listener) => {
            let options = DashboardOptions {
                policy: listeners.policy,
                history,
                limits: ConnectionLimits::from_config(&config.dashboard),
            };
            Some(DashboardServer::serve(listener, view.clone(), options)?)
        }
        None => None,
    };
    let control = listeners.control.serve(
        view,
        RuntimeInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            dashboard: dashboard.as_ref().map(|d| d.addr().to_string()),
            proxy: proxy.and_then(|p| p.http).map(|a| a.to_string()),
        },
    );
    Ok((dashboard, control))
}
