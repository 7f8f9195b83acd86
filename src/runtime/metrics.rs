//! The runtime's own Prometheus series: the bus, the store, the proxy, certificates and
//! scale to zero.

use super::core::RuntimeCore;

/// The store's write counters in the Prometheus text format.
pub(super) fn store_metrics(s: &kinfra_store::StoreStats) -> String {
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, kind: &str, value: u64| {
        out.push_str(&format!(
            "# HELP kinfra_store_{name} {help}\n# TYPE kinfra_store_{name} {kind}\nkinfra_store_{name} {value}\n"
        ));
    };
    counter(
        "writes_total",
        "Changes committed to the store.",
        "counter",
        s.written,
    );
    counter(
        "commits_total",
        "Store transactions committed.",
        "counter",
        s.commits,
    );
    counter(
        "write_failures_total",
        "Store write attempts that failed (each retried).",
        "counter",
        s.failures,
    );
    counter(
        "abandoned_total",
        "Changes the store rejected and gave up on.",
        "counter",
        s.abandoned,
    );
    counter(
        "dropped_total",
        "Changes dropped because the store queue was full.",
        "counter",
        s.dropped,
    );
    counter(
        "lagged_total",
        "Events the store missed because it fell behind.",
        "counter",
        s.lagged,
    );
    counter(
        "queued",
        "Changes waiting to be written.",
        "gauge",
        s.queued,
    );
    out
}

/// Expiry of each ACME certificate as a Unix timestamp, in the Prometheus text format.
pub(super) fn certificate_metrics(certs: &[kinfra_acme::CertStatus]) -> String {
    let mut out = String::new();
    for c in certs {
        let Some(expiry) = c
            .not_after
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        else {
            continue;
        };
        if out.is_empty() {
            out.push_str(
                "# HELP kinfra_certificate_expiry_timestamp_seconds When the served certificate \
                 of a domain expires (Unix time).\n\
                 # TYPE kinfra_certificate_expiry_timestamp_seconds gauge\n",
            );
        }
        let domain = kinfra_core::metrics::label_value(&c.domain);
        out.push_str(&format!(
            "kinfra_certificate_expiry_timestamp_seconds{{domain=\"{domain}\"}} {}\n",
            expiry.as_secs()
        ));
    }
    out
}

/// Everything the runtime adds to `/metrics` besides the dashboard's own series.
/// `kinfra_node_info{node="..."} 1` (this node's name, for joining with other series) and
/// the fleet's nodes by state as this node sees them.
fn node_metrics(core: &RuntimeCore) -> String {
    let Some(node) = core.bus.node() else {
        return String::new();
    };
    let mut out = format!(
        "# HELP kinfra_node_info This kinfra node ([node] name, default the hostname).\n\
         # TYPE kinfra_node_info gauge\n\
         kinfra_node_info{{node=\"{}\"}} 1\n",
        kinfra_core::metrics::label_value(node)
    );
    if let Some(fleet) = core.bus.fleet() {
        out.push_str(
            "# HELP kinfra_fleet_node_up 1 while a node of the fleet heartbeats, 0 once it is down.\n\
             # TYPE kinfra_fleet_node_up gauge\n",
        );
        for n in &fleet.nodes {
            out.push_str(&format!(
                "kinfra_fleet_node_up{{node=\"{}\"}} {}\n",
                kinfra_core::metrics::label_value(&n.node),
                u8::from(n.state == "up")
            ));
        }
    }
    out
}

pub(super) fn runtime_metrics(core: &RuntimeCore) -> String {
    let b = core.bus.status();
    let (mode, state) = (b.backend.kind(), b.state.as_str());
    format!(
        "# HELP kinfra_bus_connected 1 while the bus holds a live connection to a NATS server \
         (never for the in-process bus); mode is managed, external or in_process.\n\
         # TYPE kinfra_bus_connected gauge\n\
         kinfra_bus_connected{{mode=\"{mode}\",state=\"{state}\"}} {}\n\
         # HELP kinfra_bus_events_published_total Events handed to the bus.\n\
         # TYPE kinfra_bus_events_published_total counter\n\
         kinfra_bus_events_published_total {}\n\
         # HELP kinfra_bus_events_dropped_total Events the bus could not keep.\n\
         # TYPE kinfra_bus_events_dropped_total counter\n\
         kinfra_bus_events_dropped_total {}\n\
         # HELP kinfra_bus_reconnects_total Reconnections after a lost connection.\n\
         # TYPE kinfra_bus_reconnects_total counter\n\
         kinfra_bus_reconnects_total {}\n",
        u8::from(b.state == kinfra_bus::BusState::Connected),
        b.published,
        b.dropped,
        b.reconnects
    ) + &node_metrics(core)
        + &core
            .store
            .as_ref()
            .map(|s| store_metrics(&s.stats()))
            .unwrap_or_default()
        + &core
            .proxy_metrics
            .as_ref()
            .map(kinfra_proxy::ProxyMetricsHandle::render)
            .unwrap_or_default()
        + &certificate_metrics(&core.certificates())
        + &core.scale.metrics()
}
