//! The routing snapshot: the static route table plus what each service can take right now,
//! rebuilt when the runtime reports a change and swapped atomically; requests only load it.

use crate::pages::Page;
use crate::routes::{RouteTable, Target, strip_path_prefix};
use crate::upstream::Pool;
use arc_swap::{ArcSwap, Guard};
use kinfra_core::activity::{ActivityBoard, TargetActivity};
use kinfra_core::status::StatusReport;
use kinfra_core::{Health, ServiceState};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What one service can do with a request right now.
#[derive(Debug, Clone)]
pub(crate) enum ServiceEntry {
    /// Forward to these backends; the activity of a target that sleeps when idle.
    Up(Arc<Pool>, Option<Arc<TargetActivity>>),
    /// Answer with this page.
    Page(Arc<Page>),
    /// A target that wakes on request and is asleep (or on its way to sleep, or waking):
    /// browsers get this (loading) page while it wakes, other requests wait for it. `true`
    /// when it needs a wake (asleep or going to sleep), `false` when it is already starting.
    Wake(Arc<Page>, Arc<TargetActivity>, bool),
}

/// One immutable view of everything a request needs to be routed.
#[derive(Debug)]
pub(crate) struct Snapshot {
    routes: Arc<RouteTable>,
    services: HashMap<String, ServiceEntry>,
    /// The maintenance page for every route, when global maintenance is on.
    maintenance: Option<Arc<Page>>,
    dashboard: Option<Arc<Pool>>,
    not_found: Arc<Page>,
}

/// The outcome of routing one request.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Forward the request.
    Proxy {
        /// Backends to pick from.
        pool: Arc<Pool>,
        /// The service, for pages and logs (`None` for fixed upstreams and the dashboard).
        service: Option<Arc<str>>,
        /// The path to send upstream instead of the original one (prefix stripped).
        new_path: Option<String>,
        /// This is the dashboard.
        dashboard: bool,
        /// The activity of a target that sleeps when idle (`None` for the others).
        activity: Option<Arc<TargetActivity>>,
    },
    /// Answer with a page.
    Page(Arc<Page>),
    /// Wake the service first: the request waits (or a browser gets `page`) until it is up.
    Wake {
        /// The service to wake.
        service: Arc<str>,
        /// The loading page for browsers.
        page: Arc<Page>,
        /// Its activity (wake timeout, open requests).
        activity: Arc<TargetActivity>,
        /// It is asleep or going to sleep, so it has to be woken; otherwise it is already
        /// starting and requests only wait for it.
        asleep: bool,
    },
}

impl Snapshot {
    /// Routes a request by host (normalized, without port) and path (without query).
    pub(crate) fn decide(&self, host: Option<&str>, path: &str) -> Decision {
        if let Some(dashboard) = &self.dashboard
            && self.routes.is_reserved(path)
        {
            return Decision::Proxy {
                pool: dashboard.clone(),
                service: None,
                new_path: None,
                dashboard: true,
                activity: None,
            };
        }
        if let Some(page) = &self.maintenance {
            return Decision::Page(page.clone());
        }
        let Some(route) = self.routes.find(host, path) else {
            return Decision::Page(self.not_found.clone());
        };
        let new_path = route
            .strip_prefix
            .then(|| strip_path_prefix(&route.prefix, path).into_owned());
        match &route.target {
            Target::Fixed(pool) => Decision::Proxy {
                pool: pool.clone(),
                service: None,
                new_path,
                dashboard: false,
                activity: None,
            },
            Target::Service(name) => match self.services.get(&**name) {
                Some(ServiceEntry::Up(pool, activity)) => Decision::Proxy {
                    pool: pool.clone(),
                    service: Some(name.clone()),
                    new_path,
                    dashboard: false,
                    activity: activity.clone(),
                },
                Some(ServiceEntry::Page(page)) => Decision::Page(page.clone()),
                Some(ServiceEntry::Wake(page, activity, asleep)) => Decision::Wake {
                    service: name.clone(),
                    page: page.clone(),
                    activity: activity.clone(),
                    asleep: *asleep,
                },
                None => Decision::Page(Arc::new(Page::plain(
                    503,
                    "unknown_service",
                    &format!("{name} is not available"),
                    "The runtime does not know this service (yet).",
                ))),
            },
        }
    }
}

/// What the runtime last said about one service.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    state: ServiceState,
    health: Health,
    message: String,
    port: Option<u16>,
}

/// The inputs of a snapshot; only writers touch it.
#[derive(Debug)]
struct Inputs {
    routes: Arc<RouteTable>,
    dashboard: Option<Arc<Pool>>,
    seen: BTreeMap<String, Seen>,
    maintenance_config: bool,
    maintenance_all: bool,
    maintenance_services: HashSet<String>,
    /// Pools by service, kept across rebuilds while the port stays the same (so round-robin
    /// and failure marks survive).
    pools: HashMap<String, Arc<Pool>>,
    fail_timeout: Duration,
    upstream_host: std::net::IpAddr,
    /// The targets that sleep when idle, read at each build.
    activity: Option<Arc<ActivityBoard>>,
}

/// True for the states a target that wakes on request is woken from: asleep, on its way to
/// sleep, or already starting (after a wake began).
fn wakes_from(state: ServiceState) -> bool {
    matches!(
        state,
        ServiceState::Sleeping
            | ServiceState::Stopping
            | ServiceState::Pending
            | ServiceState::Starting
    )
}

impl Inputs {
    fn build(&mut self) -> Snapshot {
        let mut services = HashMap::with_capacity(self.seen.len());
        let mut pools = HashMap::with_capacity(self.pools.len());
        for (name, seen) in &self.seen {
            let activity = self.activity.as_ref().and_then(|board| board.get(name));
            let entry = if self.maintenance_services.contains(name) {
                ServiceEntry::Page(Arc::new(Page::maintenance(Some(name))))
            } else if let Some(activity) = activity
                .as_ref()
                .filter(|a| a.wakes_on_request() && wakes_from(seen.state))
                // On its way to sleep it comes back for requests: the sleeping page.
                && let Some(page) = Page::for_service(
                    name,
                    match seen.state {
                        ServiceState::Stopping => ServiceState::Sleeping,
                        state => state,
                    },
                    seen.health,
                    &seen.message,
                )
            {
                let asleep = matches!(seen.state, ServiceState::Sleeping | ServiceState::Stopping);
                ServiceEntry::Wake(Arc::new(page), activity.clone(), asleep)
            } else if let Some(page) =
                Page::for_service(name, seen.state, seen.health, &seen.message)
            {
                ServiceEntry::Page(Arc::new(page))
            } else if let Some(port) = seen.port {
                let addr = SocketAddr::new(self.upstream_host, port);
                let pool = match self.pools.get(name) {
                    Some(pool) if pool.addrs().eq(std::iter::once(addr)) => pool.clone(),
                    _ => Arc::new(Pool::single(addr, self.fail_timeout)),
                };
                pools.insert(name.clone(), pool.clone());
                ServiceEntry::Up(pool, activity)
            } else {
                ServiceEntry::Page(Arc::new(Page::plain(
                    503,
                    "service_without_port",
                    &format!("{name} has no port"),
                    "It is running, but kinfra does not know a port to send requests to.",
                )))
            };
            services.insert(name.clone(), entry);
        }
        self.pools = pools;
        Snapshot {
            routes: self.routes.clone(),
            services,
            maintenance: (self.maintenance_config || self.maintenance_all)
                .then(|| Arc::new(Page::maintenance(None))),
            dashboard: self.dashboard.clone(),
            not_found: Arc::new(Page::plain(
                404,
                "no_route",
                "Nothing is served here",
                "No route of this kinfra runtime matches this address.",
            )),
        }
    }
}

/// The live routing state: a snapshot to read and the inputs to rebuild it.
#[derive(Debug)]
pub(crate) struct RouteState {
    current: ArcSwap<Snapshot>,
    inputs: parking_lot::Mutex<Inputs>,
    /// Bumped after each new snapshot, for requests waiting for a target to be served.
    changed: tokio::sync::watch::Sender<u64>,
}

impl RouteState {
    /// A state with no service known yet.
    pub(crate) fn new(
        routes: RouteTable,
        dashboard: Option<SocketAddr>,
        maintenance_config: bool,
        fail_timeout: Duration,
        activity: Option<Arc<ActivityBoard>>,
    ) -> Self {
        let mut inputs = Inputs {
            routes: Arc::new(routes),
            dashboard: dashboard
                .map(|addr| Arc::new(Pool::single(addr, Duration::from_millis(500)))),
            seen: BTreeMap::new(),
            maintenance_config,
            maintenance_all: false,
            maintenance_services: HashSet::new(),
            pools: HashMap::new(),
            fail_timeout,
            upstream_host: std::net::IpAddr::from([127, 0, 0, 1]),
            activity,
        };
        let first = inputs.build();
        Self {
            current: ArcSwap::from_pointee(first),
            inputs: parking_lot::Mutex::new(inputs),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The current snapshot (lock-free).
    pub(crate) fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Follows snapshot changes: `changed()` resolves after the next swap.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Swaps in a snapshot built from `inputs` (held locked by the caller) and tells the
    /// waiting requests.
    fn swap(&self, inputs: &mut Inputs) {
        self.current.store(Arc::new(inputs.build()));
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Rebuilds the snapshot from what is known (after the activity board's targets
    /// changed).
    pub(crate) fn rebuild(&self) {
        let mut inputs = self.inputs.lock();
        self.swap(&mut inputs);
    }

    /// Takes in a status report; rebuilds only when something that matters for routing changed.
    /// Returns true when the snapshot was replaced.
    pub(crate) fn apply_status(&self, report: &StatusReport) -> bool {
        let seen: BTreeMap<String, Seen> = report
            .services
            .iter()
            .map(|(name, s)| {
                (
                    name.clone(),
                    Seen {
                        state: s.state,
                        health: s.health,
                        message: s.status_message.clone(),
                        port: s.port,
                    },
                )
            })
            .collect();
        let mut inputs = self.inputs.lock();
        if inputs.seen == seen {
            return false;
        }
        inputs.seen = seen;
        self.swap(&mut inputs);
        true
    }

    /// Replaces the route table, keeping what the runtime said about each service and the
    /// maintenance flags; requests see the new table from their next routing decision on.
    pub(crate) fn set_routes(&self, routes: RouteTable) {
        let mut inputs = self.inputs.lock();
        inputs.routes = Arc::new(routes);
        self.swap(&mut inputs);
    }

    /// Turns maintenance on or off for one service, or for everything (`None`).
    pub(crate) fn set_maintenance(&self, service: Option<&str>, on: bool) {
        let mut inputs = self.inputs.lock();
        match (service, on) {
            (None, on) => inputs.maintenance_all = on,
            (Some(s), true) => {
                inputs.maintenance_services.insert(s.to_owned());
            }
            (Some(s), false) => {
                inputs.maintenance_services.remove(s);
            }
        }
        self.swap(&mut inputs);
    }

    /// `(global, services)` maintenance flags set through [`RouteState::set_maintenance`].
    pub(crate) fn maintenance(&self) -> (bool, Vec<String>) {
        let inputs = self.inputs.lock();
        let mut services: Vec<String> = inputs.maintenance_services.iter().cloned().collect();
        services.sort();
        (inputs.maintenance_all, services)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pages::PageKind;
    use kinfra_core::config::RouteConfig;
    use kinfra_core::status::ServiceStatus;

    fn status(state: ServiceState, health: Health, port: Option<u16>) -> ServiceStatus {
        ServiceStatus {
            kind: "process".into(),
            state,
            health,
            status_message: "exited with code 3".into(),
            port,
            pid: None,
            uptime_s: None,
            uptime: None,
            restarts: 0,
            last_exit: None,
            logs: Vec::new(),
            cpu_percent: None,
            memory_bytes: None,
            last_sync: None,
            provider_state: None,
            sleep: None,
            progress: None,
        }
    }

    fn state() -> RouteState {
        let routes = RouteTable::build(
            &[RouteConfig {
                host: None,
                path: "/api".into(),
                strip_prefix: true,
                service: Some("api".into()),
                upstream: None,
            }],
            &["/kinfra".to_owned()],
            Duration::from_secs(1),
        )
        .unwrap();
        RouteState::new(
            routes,
            Some("127.0.0.1:9".parse().unwrap()),
            false,
            Duration::from_secs(1),
            None,
        )
    }

    fn report(s: ServiceStatus) -> StatusReport {
        StatusReport::new("t", BTreeMap::from([("api".to_owned(), s)]))
    }

    fn page_kind(d: Decision) -> Option<(PageKind, u16)> {
        match d {
            Decision::Page(p) => Some((p.kind, p.status)),
            Decision::Proxy { .. } | Decision::Wake { .. } => None,
        }
    }

    #[test]
    fn decisions_follow_state() {
        let st = state();
        // unknown service until the first report
        assert_eq!(
            page_kind(st.load().decide(None, "/api/x")),
            Some((PageKind::Error, 503))
        );
        assert!(st.apply_status(&report(status(
            ServiceState::Starting,
            Health::Unknown,
            Some(5)
        ))));
        assert!(!st.apply_status(&report(status(
            ServiceState::Starting,
            Health::Unknown,
            Some(5)
        ))));
        assert_eq!(
            page_kind(st.load().decide(None, "/api/x")),
            Some((PageKind::Loading, 503))
        );
        st.apply_status(&report(status(
            ServiceState::Running,
            Health::Healthy,
            Some(5),
        )));
        let Decision::Proxy {
            pool,
            new_path,
            service,
            dashboard,
            ..
        } = st.load().decide(None, "/api/x")
        else {
            panic!("expected proxy");
        };
        assert_eq!(
            pool.addrs().collect::<Vec<_>>(),
            ["127.0.0.1:5".parse().unwrap()]
        );
        assert_eq!(new_path.as_deref(), Some("/x"));
        assert_eq!(service.as_deref(), Some("api"));
        assert!(!dashboard);
        // the pool survives a rebuild with the same port
        st.apply_status(&report(status(
            ServiceState::Running,
            Health::Unknown,
            Some(5),
        )));
        let Decision::Proxy { pool: again, .. } = st.load().decide(None, "/api") else {
            panic!("expected proxy");
        };
        assert!(Arc::ptr_eq(&pool, &again));
        st.apply_status(&report(status(
            ServiceState::Running,
            Health::Unhealthy,
            Some(5),
        )));
        assert_eq!(
            page_kind(st.load().decide(None, "/api")),
            Some((PageKind::Error, 503))
        );
        st.apply_status(&report(status(
            ServiceState::Maintenance,
            Health::Unknown,
            Some(5),
        )));
        assert_eq!(
            page_kind(st.load().decide(None, "/api")),
            Some((PageKind::Maintenance, 503))
        );
        assert_eq!(
            page_kind(st.load().decide(None, "/")),
            Some((PageKind::Error, 404))
        );
    }

    #[test]
    fn tracked_targets_wake_and_carry_their_activity() {
        let board = Arc::new(ActivityBoard::new());
        let policy = |wakes_on_request| kinfra_core::activity::TargetPolicy {
            wakes_on_request,
            wake_timeout: Duration::from_secs(3),
        };
        let routes = RouteTable::build(
            &[RouteConfig {
                host: None,
                path: "/api".into(),
                strip_prefix: false,
                service: Some("api".into()),
                upstream: None,
            }],
            &[],
            Duration::from_secs(1),
        )
        .unwrap();
        let st = RouteState::new(
            routes,
            None,
            false,
            Duration::from_secs(1),
            Some(board.clone()),
        );
        let mut changes = st.subscribe();
        let sleeping = report(status(ServiceState::Sleeping, Health::Unknown, Some(5)));
        st.apply_status(&sleeping);
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        // Not on the board: today's sleeping page.
        assert_eq!(
            page_kind(st.load().decide(None, "/api")),
            Some((PageKind::Loading, 503))
        );
        board.set_targets([("api".to_owned(), policy(true))]);
        st.rebuild();
        assert!(changes.has_changed().unwrap());
        for (state, needs_wake) in [
            (ServiceState::Sleeping, true),
            (ServiceState::Stopping, true),
            (ServiceState::Pending, false),
            (ServiceState::Starting, false),
        ] {
            st.apply_status(&report(status(state, Health::Unknown, Some(5))));
            let Decision::Wake {
                service,
                page,
                activity,
                asleep,
            } = st.load().decide(None, "/api")
            else {
                panic!("{state:?}: expected a wake");
            };
            assert_eq!(&*service, "api");
            assert_eq!(page.kind, PageKind::Loading, "{state:?}");
            assert_eq!(activity.wake_timeout(), Duration::from_secs(3));
            assert_eq!(asleep, needs_wake, "{state:?}");
        }
        // Stopped or failed by the user: today's pages, no wake.
        for state in [ServiceState::Stopped, ServiceState::Failed] {
            st.apply_status(&report(status(state, Health::Unknown, Some(5))));
            assert_eq!(
                page_kind(st.load().decide(None, "/api")),
                Some((PageKind::Error, 503)),
                "{state:?}"
            );
        }
        // Maintenance wins over waking.
        st.apply_status(&sleeping);
        st.set_maintenance(Some("api"), true);
        assert_eq!(
            page_kind(st.load().decide(None, "/api")),
            Some((PageKind::Maintenance, 503))
        );
        st.set_maintenance(Some("api"), false);
        // Running: proxied, with the target's activity.
        st.apply_status(&report(status(
            ServiceState::Running,
            Health::Healthy,
            Some(5),
        )));
        let Decision::Proxy { activity, .. } = st.load().decide(None, "/api") else {
            panic!("expected proxy");
        };
        assert!(Arc::ptr_eq(&activity.unwrap(), &board.get("api").unwrap()));
        // wake = "manual": a sleeping target is not woken by requests.
        board.set_targets([("api".to_owned(), policy(false))]);
        st.apply_status(&sleeping);
        assert_eq!(
            page_kind(st.load().decide(None, "/api")),
            Some((PageKind::Loading, 503))
        );
    }

    #[test]
    fn maintenance_flags_and_dashboard() {
        let st = state();
        st.apply_status(&report(status(
            ServiceState::Running,
            Health::Healthy,
            Some(5),
        )));
        st.set_maintenance(Some("api"), true);
        assert_eq!(
            page_kind(st.load().decide(None, "/api")),
            Some((PageKind::Maintenance, 503))
        );
        st.set_maintenance(Some("api"), false);
        assert!(page_kind(st.load().decide(None, "/api")).is_none());
        st.set_maintenance(None, true);
        assert_eq!(
            page_kind(st.load().decide(None, "/api")),
            Some((PageKind::Maintenance, 503))
        );
        // the dashboard answers even in global maintenance
        assert!(matches!(
            st.load().decide(None, "/kinfra"),
            Decision::Proxy {
                dashboard: true,
                ..
            }
        ));
        assert_eq!(st.maintenance(), (true, vec![]));
        st.set_maintenance(None, false);
        assert!(page_kind(st.load().decide(None, "/api")).is_none());
    }
}
