//! Request counts and latency histograms by route and status class, rendered for `/metrics`.
//!
//! The request path reads an immutable map of series (no lock) and bumps atomics; a new
//! route replaces the map once, under a lock only writers take. Routes are the services the config names plus `dashboard` and `none`, so
//! the label set stays as small as the config.

use arc_swap::ArcSwap;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the latency buckets, in microseconds (Prometheus `le`, in seconds).
const BUCKETS_US: [u64; 14] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 10_000_000,
];

/// The label of requests no route matched (the proxy's own pages).
pub(crate) const NO_ROUTE: &str = "none";

/// One (route, status class) series.
#[derive(Debug, Default)]
struct Series {
    /// Per bucket (not cumulative; summed when rendered), then the overflow.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Series {
    fn observe(&self, micros: u64) {
        let i = BUCKETS_US
            .iter()
            .position(|b| micros <= *b)
            .unwrap_or(BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(micros, Ordering::Relaxed);
    }
}

/// Status classes, in the order of [`RouteSeries::by_class`].
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// The index in [`CLASSES`] of a status; `error` when no response was written.
fn class(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100) - 1,
        _ => 5,
    }
}

/// One route's series, one per status class.
#[derive(Debug, Default)]
struct RouteSeries {
    by_class: [Series; 6],
}

/// Series by route.
type RouteMap = HashMap<Arc<str>, Arc<RouteSeries>>;

/// Counters of every request the proxy answered.
#[derive(Debug, Default)]
pub(crate) struct ProxyMetrics {
    /// Read by every request without a lock; replaced (copied) when a route is first seen.
    routes: ArcSwap<RouteMap>,
    /// Serializes the replacements, so no new route is lost.
    adding: parking_lot::Mutex<()>,
}

impl ProxyMetrics {
    /// Counts one finished request.
    pub(crate) fn record(&self, route: &str, status: u16, micros: u64) {
        let class = class(status);
        if let Some(series) = self.routes.load().get(route) {
            series.by_class[class].observe(micros);
            return;
        }
        let _adding = self.adding.lock();
        let mut map = RouteMap::clone(&self.routes.load());
        let series = map.entry(Arc::from(route)).or_default().clone();
        self.routes.store(Arc::new(map));
        series.by_class[class].observe(micros);
    }

    /// Every route's totals as data, sorted by route: requests, errors (5xx and no answer)
    /// and the latency histogram over every status class.
    pub(crate) fn totals(&self) -> Vec<kinfra_core::metrics::RouteTotals> {
        let mut out: Vec<kinfra_core::metrics::RouteTotals> = self
            .routes
            .load()
            .iter()
            .map(|(route, series)| {
                let mut buckets = [0u64; BUCKETS_US.len() + 1];
                let (mut requests, mut errors) = (0u64, 0u64);
                for (i, s) in series.by_class.iter().enumerate() {
                    for (slot, b) in buckets.iter_mut().zip(s.buckets.iter()) {
                        let n = b.load(Ordering::Relaxed);
                        *slot += n;
                        requests += n;
                        if i >= 4 {
                            errors += n;
                        }
                    }
                }
                let bounds = BUCKETS_US
                    .iter()
                    .map(|b| *b as f64 / 1e6)
                    .chain(std::iter::once(f64::INFINITY));
                kinfra_core::metrics::RouteTotals {
                    route: route.to_string(),
                    requests,
                    errors,
                    latency_buckets: bounds.zip(buckets).collect(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.route.cmp(&b.route));
        out
    }

    /// The Prometheus text: `kinfra_proxy_requests_total{route,code}` and the
    /// `kinfra_proxy_request_duration_seconds` histogram with the same labels.
    pub(crate) fn render(&self) -> String {
        let mut routes: Vec<(Arc<str>, Arc<RouteSeries>)> = self
            .routes
            .load()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        routes.sort_by(|a, b| a.0.cmp(&b.0));
        // (labels, total, series) of every class that saw a request.
        let mut rows: Vec<(String, u64, &Series)> = Vec::new();
        for (route, series) in &routes {
            for (code, s) in CLASSES.iter().zip(series.by_class.iter()) {
                let total: u64 = s.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum();
                if total > 0 {
                    rows.push((labels(route, code), total, s));
                }
            }
        }
        let mut out = String::from(
            "# HELP kinfra_proxy_requests_total Requests the proxy answered, by route (service) \
             and status class.\n# TYPE kinfra_proxy_requests_total counter\n",
        );
        for (labels, total, _) in &rows {
            let _ = writeln!(out, "kinfra_proxy_requests_total{{{labels}}} {total}");
        }
        out.push_str(
            "# HELP kinfra_proxy_request_duration_seconds Time from request to the end of the \
             response, by route (service) and status class.\n\
             # TYPE kinfra_proxy_request_duration_seconds histogram\n",
        );
        for (labels, total, s) in &rows {
            let mut cumulative = 0u64;
            for (i, bound) in BUCKETS_US.iter().enumerate() {
                cumulative += s.buckets[i].load(Ordering::Relaxed);
                let le = *bound as f64 / 1e6;
                let _ = writeln!(
                    out,
                    "kinfra_proxy_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "kinfra_proxy_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {total}"
            );
            let sum = s.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "kinfra_proxy_request_duration_seconds_sum{{{labels}}} {sum}\n\
                 kinfra_proxy_request_duration_seconds_count{{{labels}}} {total}"
            );
        }
        out
    }
}

/// Requests held while their target woke up, and the wakes requests started, by service.
/// Only the slow path of a sleeping target touches these.
#[derive(Debug)]
pub(crate) struct WakeMetrics {
    /// Rendered at all (there are targets that sleep when idle).
    tracking: bool,
    held: parking_lot::Mutex<BTreeMap<Arc<str>, u64>>,
    wakes: parking_lot::Mutex<BTreeMap<(Arc<str>, &'static str), u64>>,
}

impl WakeMetrics {
    /// Counters, rendered when `tracking`.
    pub(crate) fn new(tracking: bool) -> Self {
        Self {
            tracking,
            held: parking_lot::Mutex::new(BTreeMap::new()),
            wakes: parking_lot::Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts one request held for a wake of `service`.
    pub(crate) fn held(&self, service: &Arc<str>) {
        *self.held.lock().entry(service.clone()).or_default() += 1;
    }

    /// Counts one wake of `service` that ended with `outcome` (`ok`, `failed`, `timeout`).
    pub(crate) fn wake(&self, service: &Arc<str>, outcome: &'static str) {
        *self
            .wakes
            .lock()
            .entry((service.clone(), outcome))
            .or_default() += 1;
    }

    /// The Prometheus text: `kinfra_proxy_held_requests_total{service}` and
    /// `kinfra_proxy_wakes_total{service,outcome}`; empty when nothing sleeps.
    pub(crate) fn render(&self) -> String {
        if !self.tracking {
            return String::new();
        }
        let mut out = String::from(
            "# HELP kinfra_proxy_held_requests_total Requests held until their sleeping target \
             woke up, by service.\n# TYPE kinfra_proxy_held_requests_total counter\n",
        );
        for (service, n) in self.held.lock().iter() {
            let service = kinfra_core::metrics::label_value(service);
            let _ = writeln!(
                out,
                "kinfra_proxy_held_requests_total{{service=\"{service}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP kinfra_proxy_wakes_total Wakes of sleeping targets started by requests, by \
             service and outcome (ok, failed, timeout).\n# TYPE kinfra_proxy_wakes_total counter\n",
        );
        for ((service, outcome), n) in self.wakes.lock().iter() {
            let service = kinfra_core::metrics::label_value(service);
            let _ = writeln!(
                out,
                "kinfra_proxy_wakes_total{{service=\"{service}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        out
    }
}

/// `route="…",code="…"`, with the route escaped as Prometheus label values require.
fn labels(route: &str, code: &str) -> String {
    let escaped = kinfra_core::metrics::label_value(route);
    format!("route=\"{escaped}\",code=\"{code}\"")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_histogram_by_route_and_class() {
        let m = ProxyMetrics::default();
        m.record("api", 200, 300);
        m.record("api", 204, 30_000);
        m.record("api", 502, 5);
        m.record(NO_ROUTE, 404, 20_000_000);
        let text = m.render();
        assert!(text.contains("kinfra_proxy_requests_total{route=\"api\",code=\"2xx\"} 2"));
        assert!(text.contains("kinfra_proxy_requests_total{route=\"api\",code=\"5xx\"} 1"));
        assert!(text.contains("kinfra_proxy_requests_total{route=\"none\",code=\"4xx\"} 1"));
        // 300 µs is above the 250 µs bucket and within 500 µs; 30 ms within 50 ms.
        assert!(text.contains(
            "kinfra_proxy_request_duration_seconds_bucket{route=\"api\",code=\"2xx\",le=\"0.00025\"} 0"
        ));
        assert!(text.contains(
            "kinfra_proxy_request_duration_seconds_bucket{route=\"api\",code=\"2xx\",le=\"0.0005\"} 1"
        ));
        assert!(text.contains(
            "kinfra_proxy_request_duration_seconds_bucket{route=\"api\",code=\"2xx\",le=\"0.05\"} 2"
        ));
        // Beyond the last bucket: only +Inf counts it.
        assert!(text.contains(
            "kinfra_proxy_request_duration_seconds_bucket{route=\"none\",code=\"4xx\",le=\"10\"} 0"
        ));
        assert!(text.contains(
            "kinfra_proxy_request_duration_seconds_bucket{route=\"none\",code=\"4xx\",le=\"+Inf\"} 1"
        ));
        assert!(text.contains(
            "kinfra_proxy_request_duration_seconds_sum{route=\"api\",code=\"2xx\"} 0.0303"
        ));
        // The same counts as data: errors are the 5xx, buckets over every class.
        let totals = m.totals();
        assert_eq!(totals.len(), 2);
        let api = &totals[0];
        assert_eq!(
            (api.route.as_str(), api.requests, api.errors),
            ("api", 3, 1)
        );
        let le = |bound: f64| -> u64 {
            api.latency_buckets
                .iter()
                .filter(|(b, _)| *b <= bound)
                .map(|(_, n)| n)
                .sum()
        };
        assert_eq!(le(0.00025), 1, "the 5 µs 502");
        assert_eq!(le(0.0005), 2);
        assert_eq!(le(0.05), 3);
        assert_eq!(totals[1].latency_buckets.last(), Some(&(f64::INFINITY, 1)));
    }

    #[test]
    fn routes_first_seen_at_the_same_time_lose_no_count() {
        let m = Arc::new(ProxyMetrics::default());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        m.record(&format!("r{}", i % 20), 200, 10);
                        m.record(&format!("t{t}"), 500, 10);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = m.render();
        for r in 0..20 {
            assert!(
                text.contains(&format!(
                    "kinfra_proxy_requests_total{{route=\"r{r}\",code=\"2xx\"}} 40\n"
                )),
                "{text}"
            );
        }
        for t in 0..4 {
            assert!(text.contains(&format!(
                "kinfra_proxy_requests_total{{route=\"t{t}\",code=\"5xx\"}} 200\n"
            )));
        }
    }

    #[test]
    fn wake_counters_by_service_and_outcome() {
        assert_eq!(WakeMetrics::new(false).render(), "");
        let m = WakeMetrics::new(true);
        let api: Arc<str> = Arc::from("api");
        m.held(&api);
        m.held(&api);
        m.wake(&api, "ok");
        m.wake(&Arc::from("d\"b"), "timeout");
        let text = m.render();
        assert!(text.contains("kinfra_proxy_held_requests_total{service=\"api\"} 2\n"));
        assert!(text.contains("kinfra_proxy_wakes_total{service=\"api\",outcome=\"ok\"} 1\n"));
        assert!(
            text.contains("kinfra_proxy_wakes_total{service=\"d\\\"b\",outcome=\"timeout\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            labels("a\"b\\c", "2xx"),
            "route=\"a\\\"b\\\\c\",code=\"2xx\""
        );
        assert_eq!(CLASSES[class(0)], "error");
        assert_eq!(CLASSES[class(101)], "1xx");
        assert_eq!(CLASSES[class(599)], "5xx");
    }
}
